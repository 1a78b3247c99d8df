#!/usr/bin/env bash
# bench-http.sh: throughput and latency of the Weft sidecar's HTTP proxy against a direct
# connection and haproxy, all on loopback on the same cores.
#
# Runs: wrk (10 s, 2 threads, 64 connections) against each target, then an open-loop
# fixed-rate probe at 1,000 req/s (hack/bench/http "rate"; Debian has no wrk2, so this
# stands in for `wrk -R 1000`), three rounds per target, interleaved, median kept. Prints
# req/s, p50/p99, the ratios sidecar/haproxy and
# sidecar/direct, the added p99 at 1,000 req/s and the sidecar's RSS.
#
# Then (MTLS=1, the default) sidecar to sidecar: a caller sidecar's outbound listener →
# the callee sidecar's inbound listener → the backend, in plaintext and in mutual TLS (the
# two sidecars in one process, go test -tags mtlsbench, sidecar/httpproxy/mtls_bench_test.go),
# next to two haproxy processes doing the same hop in plaintext and in mutual TLS (caller
# haproxy originates TLS with a client certificate, callee haproxy terminates and verifies
# it; ECDSA P-256 certificates with SPIFFE URI SANs made with openssl). Same wrk and probe;
# prints req/s, the two proxies' CPU per request, p50/p99 at the fixed rate and what mutual
# TLS costs each (issue 16's bar: at most 25 % of plaintext req/s, under 1 ms added p99).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
RATE=${RATE:-1000}
PROBE_ROUNDS=${PROBE_ROUNDS:-3} # fixed-rate probes per target, interleaved; the median is shown
CONCURRENCY=${CONCURRENCY:-1} # sidecar worker threads (its --concurrency; default 1); haproxy runs nbthread 2
MTLS=${MTLS:-1} # 0: skip the sidecar-to-sidecar mutual TLS comparison
SIDECAR_ARGS=${SIDECAR_ARGS:-} # more sidecar flags, e.g. --http-event-loop=false for the goroutine-per-connection path
BACKEND=127.0.0.1:28080
SIDECAR=127.0.0.1:28001
HAPROXY=127.0.0.1:28101
ADMIN=127.0.0.1:28000
METRICS=127.0.0.1:28020

"$(dirname "$0")/deps.sh" bench

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

go build -o "$work/helper" ./hack/bench/http
go build -o "$work/sidecar" ./cmd/sidecar

"$work/helper" backend -addr "$BACKEND" & pids+=($!)
"$work/helper" config -listen "$SIDECAR" -backend "$BACKEND" >"$work/sidecar.json"
# shellcheck disable=SC2086 # SIDECAR_ARGS is a list of flags
"$work/sidecar" --concurrency "$CONCURRENCY" $SIDECAR_ARGS --static-config "$work/sidecar.json" --admin-address "$ADMIN" --metrics-address "$METRICS" 2>"$work/sidecar.log" &
sidecar_pid=$!; pids+=($sidecar_pid)
cat >"$work/haproxy.cfg" <<CFG
global
  nbthread 2
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind $HAPROXY
  default_backend be
backend be
  server s1 $BACKEND
CFG
haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
haproxy_pid=$!; pids+=($haproxy_pid)

for _ in $(seq 100); do
  curl -fsS -o /dev/null -H 'Host: svc' "http://$SIDECAR/" 2>/dev/null &&
    curl -fsS -o /dev/null "http://$HAPROXY/" 2>/dev/null && break
  sleep 0.1
done

# to_ms converts wrk's "1.23ms" / "456.00us" / "1.02s" to milliseconds.
to_ms() { awk -v v="$1" 'BEGIN{ if (v ~ /us$/) {sub(/us$/,"",v); print v/1000} else if (v ~ /ms$/) {sub(/ms$/,"",v); print v+0} else {sub(/s$/,"",v); print v*1000} }'; }

# cpu_ticks prints a process's user+system CPU time in clock ticks.
cpu_ticks() { [[ -n "$1" ]] && awk '{print $14+$15}' "/proc/$1/stat" || echo 0; }
TICKS=$(getconf CLK_TCK)

declare -A RPS P50 P99 RP50 RP99 CPU
run() { # name url pid
  local before; before=$(cpu_ticks "${3:-}")
  local out; out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H 'Host: svc' "$2")
  local after; after=$(cpu_ticks "${3:-}")
  local total; total=$(awk '/requests in/{print $1}' <<<"$out")
  CPU[$1]=$(awk -v a="$after" -v b="$before" -v n="$total" -v t="$TICKS" 'BEGIN{ if (n>0 && a>b) printf "%.1f", (a-b)/t/n*1e6; else print "n/a" }')
  RPS[$1]=$(awk '/^Requests\/sec/{print $2}' <<<"$out")
  P50[$1]=$(to_ms "$(awk '$1=="50%"{print $2}' <<<"$out")")
  P99[$1]=$(to_ms "$(awk '$1=="99%"{print $2}' <<<"$out")")
  echo "$1: wrk $(grep -E 'Requests/sec|Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | tr '\n' ' ')" >&2
}
run direct "http://$BACKEND/"
run sidecar "http://$SIDECAR/" "$sidecar_pid"
run haproxy "http://$HAPROXY/" "$haproxy_pid"

# The fixed-rate probe runs PROBE_ROUNDS times per target, interleaved, and the median is
# kept: on a shared VM a single 10-50 ms stall lands in some 10 s probe now and then and
# would decide its p99 alone, whichever target it hit.
declare -A URL=([direct]="http://$BACKEND/" [sidecar]="http://$SIDECAR/" [haproxy]="http://$HAPROXY/")
declare -A S50 S99
for round in $(seq "$PROBE_ROUNDS"); do
  for t in direct sidecar haproxy; do
    r=$("$work/helper" rate -url "${URL[$t]}" -host svc -rps "$RATE" -d "$DURATION")
    S50[$t]+="$(sed -E 's/.*p50=([0-9.]+)ms.*/\1/' <<<"$r") "
    S99[$t]+="$(sed -E 's/.*p99=([0-9.]+)ms.*/\1/' <<<"$r") "
    echo "$t: probe $round: $r" >&2
  done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
for t in direct sidecar haproxy; do
  RP50[$t]=$(median "${S50[$t]}")
  RP99[$t]=$(median "${S99[$t]}")
done

rss_kb=$(awk '/VmRSS/{print $2}' /proc/$sidecar_pid/status)
hwm_kb=$(awk '/VmHWM/{print $2}' /proc/$sidecar_pid/status)

echo
echo "HTTP proxy benchmark: wrk -t$THREADS -c$CONNS -d$DURATION; open-loop $RATE req/s for $DURATION, median of $PROBE_ROUNDS interleaved probes; $(nproc) cores shared by load generator, proxy and backend"
printf '%-8s %12s %10s %10s %14s %14s %16s\n' target "req/s" "p50 ms" "p99 ms" "p50@${RATE} ms" "p99@${RATE} ms" "proxy CPU us/req"
for t in direct sidecar haproxy; do
  printf '%-8s %12.0f %10.3f %10.3f %14.3f %14.3f %16s\n' "$t" "${RPS[$t]}" "${P50[$t]}" "${P99[$t]}" "${RP50[$t]}" "${RP99[$t]}" "${CPU[$t]:-n/a}"
done
awk -v s="${RPS[sidecar]}" -v h="${RPS[haproxy]}" -v d="${RPS[direct]}" \
  -v sp="${RP99[sidecar]}" -v dp="${RP99[direct]}" -v hp="${RP99[haproxy]}" -v rss="$rss_kb" -v hwm="$hwm_kb" 'BEGIN{
  printf "ratio req/s sidecar/haproxy: %.2f\n", s/h
  printf "ratio req/s sidecar/direct:  %.2f\n", s/d
  printf "added p99 at fixed rate: sidecar %.3f ms, haproxy %.3f ms (vs direct)\n", sp-dp, hp-dp
  printf "sidecar RSS: %.1f MB (peak %.1f MB)\n", rss/1024, hwm/1024
}'

[[ "$MTLS" == 1 ]] || exit 0

# ---- sidecar to sidecar: plaintext and mutual TLS, Weft and haproxy -----------------------
pki="$work/pki"; mkdir -p "$pki"
openssl ecparam -name prime256v1 -genkey -noout -out "$pki/ca.key" 2>/dev/null
openssl req -x509 -new -key "$pki/ca.key" -subj "/O=bench mesh CA" -days 2 -out "$pki/ca.pem" 2>/dev/null
for who in caller callee; do
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/$who.key" 2>/dev/null
  openssl req -new -key "$pki/$who.key" -subj "/" -out "$pki/$who.csr" 2>/dev/null
  printf 'subjectAltName=critical,URI:spiffe://cluster.local/ns/bench/sa/%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n' "$who" >"$pki/$who.ext"
  openssl x509 -req -in "$pki/$who.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" -CAcreateserial -days 2 -extfile "$pki/$who.ext" -out "$pki/$who.crt" 2>/dev/null
  cat "$pki/$who.crt" "$pki/$who.key" >"$pki/$who.pem"
done
# hapair NAME IN OUT TLS: a caller haproxy on IN and a callee haproxy on OUT in front of the
# backend, one thread each (the two sidecars share one process with $(nproc) threads).
declare -A HPIDS
hapair() {
  local name=$1 in=$2 out=$3 tls=$4 up="" down=""
  if [[ "$tls" == 1 ]]; then
    up="ssl crt $pki/caller.pem ca-file $pki/ca.pem verify required alpn http/1.1"
    down="ssl crt $pki/callee.pem ca-file $pki/ca.pem verify required alpn http/1.1"
  fi
  for side in caller callee; do
    local bind=$in server="127.0.0.1:$out $up" opts=""
    if [[ $side == callee ]]; then bind=$out server="$BACKEND"; opts="$down"; fi
    cat >"$work/$name-$side.cfg" <<CFG
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$bind $opts
  default_backend be
backend be
  server s1 $server
CFG
    haproxy -f "$work/$name-$side.cfg" -db >"$work/$name-$side.log" 2>&1 &
    pids+=($!); HPIDS[$name-$side]=$!
  done
}
hapair ha-plain 28201 28202 0
hapair ha-mtls 28211 28212 1
for _ in $(seq 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:28201/" 2>/dev/null && curl -fsS -o /dev/null "http://127.0.0.1:28211/" 2>/dev/null && break
  sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:28211/" || { cat "$work"/ha-mtls-*.log >&2; echo "haproxy mutual TLS pair does not answer" >&2; exit 1; }

declare -A PRPS PCPU PP50 PP99
hapair_run() { # name port
  local b1 b2 out total a1 a2 r
  b1=$(cpu_ticks "${HPIDS[$1-caller]}"); b2=$(cpu_ticks "${HPIDS[$1-callee]}")
  out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$2/")
  a1=$(cpu_ticks "${HPIDS[$1-caller]}"); a2=$(cpu_ticks "${HPIDS[$1-callee]}")
  total=$(awk '/requests in/{print $1}' <<<"$out")
  PRPS[$1]=$(awk '/^Requests\/sec/{print $2}' <<<"$out")
  PCPU[$1]=$(awk -v a="$((a1 + a2))" -v b="$((b1 + b2))" -v n="$total" -v t="$TICKS" 'BEGIN{ if (n>0) printf "%.1f", (a-b)/t/n*1e6; else print "n/a" }')
  r=$("$work/helper" rate -url "http://127.0.0.1:$2/" -rps "$RATE" -d "$DURATION")
  PP50[$1]=$(sed -E 's/.*p50=([0-9.]+)ms.*/\1/' <<<"$r"); PP99[$1]=$(sed -E 's/.*p99=([0-9.]+)ms.*/\1/' <<<"$r")
  echo "$1: wrk $(grep -E 'Requests/sec|Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | tr '\n' ' '); probe: $r" >&2
}
hapair_run ha-plain 28201
hapair_run ha-mtls 28211
# The Weft pair: both sidecars in the go test process, the backend outside it, so the CPU
# counted is the two sidecars' own.
wout=$(WEFT_BENCH_DURATION="$DURATION" WEFT_BENCH_CONNS="$CONNS" WEFT_BENCH_BACKEND="$BACKEND" WEFT_BENCH_HELPER="$work/helper" \
  WEFT_BENCH_RATE="$RATE" WEFT_BENCH_CASES=plaintext,mtls go test -tags mtlsbench ./sidecar/httpproxy -run TestMTLSThroughputWithWrk -count=1 -v 2>&1) ||
  { echo "$wout" >&2; exit 1; }
grep WEFTPAIR <<<"$wout" >&2
for c in plaintext mtls; do
  l=$(grep "^WEFTPAIR $c " <<<"$wout")
  PRPS[weft-$c]=$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$l"); PCPU[weft-$c]=$(sed -E 's/.*cpu_us=([0-9.]+).*/\1/' <<<"$l")
  PP50[weft-$c]=$(sed -E 's/.*p50=([0-9.]+)ms.*/\1/' <<<"$l"); PP99[weft-$c]=$(sed -E 's/.*p99=([0-9.]+)ms.*/\1/' <<<"$l")
done
PRPS[weft-plain]=${PRPS[weft-plaintext]}; PCPU[weft-plain]=${PCPU[weft-plaintext]}; PP50[weft-plain]=${PP50[weft-plaintext]}; PP99[weft-plain]=${PP99[weft-plaintext]}

echo
echo "Sidecar to sidecar (two proxies, one hop between them): wrk -t$THREADS -c$CONNS -d$DURATION (connections reused); open loop $RATE req/s for $DURATION, one probe each; load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-10s %12s %18s %14s %14s\n' pair "req/s" "CPU us/req (both)" "p50@${RATE} ms" "p99@${RATE} ms"
for t in weft-plain weft-mtls ha-plain ha-mtls; do
  printf '%-10s %12.0f %18s %14s %14s\n' "$t" "${PRPS[$t]}" "${PCPU[$t]}" "${PP50[$t]}" "${PP99[$t]}"
done
awk -v wp="${PRPS[weft-plain]}" -v wm="${PRPS[weft-mtls]}" -v hp="${PRPS[ha-plain]}" -v hm="${PRPS[ha-mtls]}" \
  -v wpc="${PCPU[weft-plain]}" -v wmc="${PCPU[weft-mtls]}" -v hpc="${PCPU[ha-plain]}" -v hmc="${PCPU[ha-mtls]}" \
  -v wp99="${PP99[weft-plain]}" -v wm99="${PP99[weft-mtls]}" -v hp99="${PP99[ha-plain]}" -v hm99="${PP99[ha-mtls]}" 'BEGIN{
  printf "mutual TLS costs: Weft %.0f %% of its plaintext req/s (bar: <= 25 %%), haproxy %.0f %%\n", (1-wm/wp)*100, (1-hm/hp)*100
  printf "CPU per request added by mutual TLS: Weft %+.1f us, haproxy %+.1f us\n", wmc-wpc, hmc-hpc
  printf "p99 at the fixed rate added by mutual TLS: Weft %+.3f ms (bar: < 1 ms), haproxy %+.3f ms\n", wm99-wp99, hm99-hp99
  printf "Weft mutual TLS vs haproxy mutual TLS: %.2f x the req/s\n", wm/hm
}'
