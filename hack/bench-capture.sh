#!/usr/bin/env bash
# bench-capture.sh: the captured (iptables REDIRECT) path measured against a direct
# connection, the HTTP_PROXY path and haproxy, in network namespaces as a pod has them.
#
#   pod namespace   : the app (uid 1000, captured), the sidecar (--concurrency 1, its
#                     capture listener on 127.0.0.1:15001), haproxy (nbthread 1), the HTTP
#                     backend and an iperf3 server on loopback
#   peer namespace  : an iperf3 server at 10.99.0.2, across a veth pair (the "node link"),
#                     optionally rate-limited with tc tbf on the pod side's egress
#
# TCP (iperf3 -t $T, one stream, client → server): direct, through the sidecar's TCP proxy
# (captured), through haproxy mode tcp; over loopback (CPU-bound: the proxy's copies
# compete with iperf3's on the same cores) and over the veth at each of $LINKS.
# HTTP/1.1 (wrk -t1 -c$CONNS -d$WRK_D): direct, captured, HTTP_PROXY (absolute-form
# requests to 15001), haproxy mode http. Proxy req/s per core = req/s ÷ (the proxy's
# CPU seconds ÷ wall seconds).
# gRPC unary (hack/bench/grpc rate, grpc-go health client and server, 1,000 calls/s for
# $GRPC_D per path): direct, captured (the app calls the Service address 10.96.0.40:50051,
# the sidecar relays it over HTTP/2 to the backend), haproxy mode http with h2 on both
# sides — called in turns, 500 ms each, so the machine carries 1,000 calls/s at every
# moment; the p99 each proxy adds over the direct calls of the same run is printed.
# Every case runs $RUNS times, interleaved; the median is printed with the spread (min–max).
# Each single measurement is ≤ 5 s; the whole run takes about 4 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
T=${T:-5}                            # iperf3 seconds per run
WRK_D=${WRK_D:-5s}                   # wrk duration per run
CONNS=${CONNS:-64}                   # wrk connections
LINKS=${LINKS:-"unlimited 10gbit 1gbit"} # veth link rates (tc tbf); "unlimited": no qdisc
SIDECAR_BIN=${SIDECAR_BIN:-}         # a prebuilt sidecar to measure (A/B runs)
SIDECAR_ARGS=${SIDECAR_ARGS:-}       # more sidecar flags, e.g. --http-event-loop=false
ONLY=${ONLY:-}                       # "tcp", "http" or "grpc": run one part
GRPC_D=${GRPC_D:-10s}                # gRPC calls per path per run (≤ 30 s)

[[ $(id -u) == 0 ]] || { echo "bench-capture: needs root (network namespaces, iptables)" >&2; exit 1; }
"$(dirname "$0")/deps.sh" bench

APP=perf-app-$$
SRV=perf-srv-$$
VA=pfa$$
VB=pfb$$
work=$(mktemp -d)
cleanup() {
  # everything this script started runs in its two namespaces
  for ns in "$APP" "$SRV"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null || true
  done
  sleep 0.2
  ip netns del "$APP" 2>/dev/null || true
  ip netns del "$SRV" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/capture" ./hack/bench/capture
go build -o "$work/http" ./hack/bench/http
go build -o "$work/grpc" ./hack/bench/grpc
if [[ -n $SIDECAR_BIN ]]; then cp "$SIDECAR_BIN" "$work/sidecar"; else go build -o "$work/sidecar" ./cmd/sidecar; fi
chmod 755 "$work" # the app (uid 1000) reads wrk's script from here

ip netns add "$APP"
ip netns add "$SRV"
ip link add "$VA" type veth peer name "$VB"
ip link set "$VA" netns "$APP"
ip link set "$VB" netns "$SRV"
ip -n "$APP" addr add 10.99.0.1/24 dev "$VA"
ip -n "$SRV" addr add 10.99.0.2/24 dev "$VB"
for ns in "$APP" "$SRV"; do ip -n "$ns" link set lo up; done
ip -n "$APP" link set "$VA" up
ip -n "$SRV" link set "$VB" up
for a in 10.96.0.10 10.96.0.30 10.96.0.31 10.96.0.40; do ip -n "$APP" addr add "$a/32" dev lo; done
# istio-init's rules, reduced: the app's outbound TCP goes to the sidecar, except to
# 127.0.0.1 (Istio's ISTIO_OUTPUT returns it too: the app's direct and haproxy calls stay
# direct); the sidecar's own connections (root here, uid 1337 in a pod) are not captured
# again.
ip netns exec "$APP" iptables -t nat -A OUTPUT -p tcp -d 127.0.0.1/32 -j RETURN
ip netns exec "$APP" iptables -t nat -A OUTPUT -p tcp -m owner --uid-owner 1000 -j REDIRECT --to-ports 15001

inapp() { ip netns exec "$APP" "$@"; }
asapp() { ip netns exec "$APP" setpriv --reuid=1000 --regid=1000 --clear-groups env -i PATH="$PATH" "$@"; }

"$work/capture" config -listen 127.0.0.1:15001 -http 127.0.0.1:28080 -tcp 10.99.0.2:5201 -tcp-lo 127.0.0.1:5202 -grpc 127.0.0.1:28280 >"$work/sidecar.json"
inapp "$work/http" backend -addr 127.0.0.1:28080 &
inapp "$work/grpc" backend -addr 127.0.0.1:28280 &
# shellcheck disable=SC2086 # SIDECAR_ARGS is a list of flags
inapp "$work/sidecar" --concurrency 1 $SIDECAR_ARGS --static-config "$work/sidecar.json" \
  --admin-address 127.0.0.1:28600 --metrics-address 127.0.0.1:28620 2>"$work/sidecar.log" &
cat >"$work/haproxy.cfg" <<CFG
global
  nbthread 1
  maxconn 1000
defaults
  timeout connect 1s
  timeout client 60s
  timeout server 60s
frontend fe
  mode http
  option http-keep-alive
  bind 127.0.0.1:28101
  default_backend be
backend be
  mode http
  http-reuse always
  server s1 127.0.0.1:28080
frontend grpc
  mode http
  bind 127.0.0.1:28104 proto h2
  default_backend grpc-be
backend grpc-be
  mode http
  server s1 127.0.0.1:28280 proto h2
listen tcp-veth
  mode tcp
  option splice-auto
  bind 127.0.0.1:28102
  server s 10.99.0.2:5201
listen tcp-lo
  mode tcp
  option splice-auto
  bind 127.0.0.1:28103
  server s 127.0.0.1:5202
CFG
inapp haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
inapp iperf3 -s -B 127.0.0.1 -p 5202 >/dev/null 2>&1 &
ip netns exec "$SRV" iperf3 -s -B 10.99.0.2 -p 5201 >/dev/null 2>&1 &
cat >"$work/proxy.lua" <<'LUA'
-- an HTTP_PROXY client: absolute-form request target, sent to the proxy's address
wrk.path = "http://reviews:9080/"
wrk.headers["Host"] = "reviews:9080"
LUA
for _ in $(seq 100); do
  asapp curl -fsS -o /dev/null http://10.96.0.10:9080/ 2>/dev/null && inapp curl -fsS -o /dev/null http://127.0.0.1:28101/ 2>/dev/null && break
  sleep 0.1
done
sleep 0.5
# ip netns exec may fork: the proxies' own pids, for their CPU time
sidecar_pid=$(pgrep -n -f "^$work/sidecar ")
haproxy_pid=$(pgrep -n -f "^haproxy -f $work/haproxy.cfg")

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR]=$1} END {printf "%s (%s–%s)", v[int((NR+1)/2)], v[1], v[NR]}'; }

# iperf_gbps runs one iperf3 client (as the app when $1 is "app") and prints Gbit/s received.
iperf_gbps() {
  local who=$1 host=$2 port=$3 out
  if [[ $who == app ]]; then out=$(asapp iperf3 -c "$host" -p "$port" -t "$T" -J); else out=$(inapp iperf3 -c "$host" -p "$port" -t "$T" -J); fi
  python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))' <<<"$out"
}

declare -A R C
# tcp_case key who host port proxy_pid: appends Gbit/s to R[key] and the proxy's CPU % to C[key].
tcp_case() {
  local key=$1 pid=${5:-} b a g
  [[ -n $pid ]] && b=$(cpu_ticks "$pid")
  g=$(iperf_gbps "$2" "$3" "$4")
  R[$key]+="$g "
  if [[ -n $pid ]]; then a=$(cpu_ticks "$pid"); C[$key]+="$(awk -v d=$((a-b)) -v t="$TICKS" -v s="$T" 'BEGIN{printf "%.0f", 100*d/t/s}') "; fi
  echo "  $key: $g Gbit/s" >&2
}

[[ -z $ONLY || $ONLY == tcp ]] && TCP_RUNS=$RUNS || { LINKS="" TCP_RUNS=0; }
echo "TCP, iperf3 -t $T, one stream, $TCP_RUNS interleaved runs per case" >&2
for r in $(seq "$TCP_RUNS"); do
  tcp_case lo/direct root 127.0.0.1 5202
  tcp_case lo/sidecar app 10.96.0.31 5201 "$sidecar_pid"
  tcp_case lo/haproxy root 127.0.0.1 28103 "$haproxy_pid"
done
for link in $LINKS; do
  case $link in
    unlimited) inapp tc qdisc del dev "$VA" root 2>/dev/null || true ;;
    # burst ≥ rate ÷ HZ (250 here), so tbf is not the bottleneck below its rate
    *) inapp tc qdisc replace dev "$VA" root tbf rate "$link" burst 8mb latency 50ms ;;
  esac
  for r in $(seq "$TCP_RUNS"); do
    tcp_case "veth-$link/direct" root 10.99.0.2 5201
    tcp_case "veth-$link/sidecar" app 10.96.0.30 5201 "$sidecar_pid"
    tcp_case "veth-$link/haproxy" root 127.0.0.1 28102 "$haproxy_pid"
  done
done
inapp tc qdisc del dev "$VA" root 2>/dev/null || true

# wrk_case key who url proxy_pid [wrk args...]: appends req/s to R[key] and req/s per core
# of the proxy to C[key].
wrk_case() {
  local key=$1 who=$2 url=$3 pid=${4:-} b a out rps
  shift 4 || shift $#
  [[ -n $pid ]] && b=$(cpu_ticks "$pid")
  local t0; t0=$(date +%s.%N)
  if [[ $who == app ]]; then out=$(asapp wrk -t1 -c"$CONNS" -d"$WRK_D" "$@" "$url"); else out=$(inapp wrk -t1 -c"$CONNS" -d"$WRK_D" "$@" "$url"); fi
  local t1; t1=$(date +%s.%N)
  rps=$(awk '/^Requests\/sec/{printf "%.0f", $2}' <<<"$out")
  if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then echo "  $key: $(grep -E 'Non-2xx|Socket errors' <<<"$out")" >&2; fi
  R[$key]+="$rps "
  if [[ -n $pid ]]; then
    a=$(cpu_ticks "$pid")
    C[$key]+="$(awk -v d=$((a-b)) -v t="$TICKS" -v w="$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" -v r="$rps" 'BEGIN{ if (d>0) printf "%.0f", r/((d/t)/w); else print 0 }') "
  fi
  echo "  $key: $rps req/s" >&2
}

[[ -z $ONLY || $ONLY == http ]] && HTTP_RUNS=$RUNS || HTTP_RUNS=0
echo "HTTP/1.1, wrk -t1 -c$CONNS -d$WRK_D, $HTTP_RUNS interleaved runs per case" >&2
for r in $(seq "$HTTP_RUNS"); do
  wrk_case http/direct root http://127.0.0.1:28080/ ""
  wrk_case http/captured app http://10.96.0.10:9080/ "$sidecar_pid"
  wrk_case http/http_proxy root http://127.0.0.1:15001/ "$sidecar_pid" -s "$work/proxy.lua"
  wrk_case http/haproxy root http://127.0.0.1:28101/ "$haproxy_pid"
done

[[ -z $ONLY || $ONLY == grpc ]] && GRPC_RUNS=$RUNS || GRPC_RUNS=0
for _ in $(seq 100); do inapp bash -c 'exec 3<>/dev/tcp/127.0.0.1/28280 4<>/dev/tcp/127.0.0.1/28104' 2>/dev/null && break; sleep 0.1; done
echo "gRPC unary, 1,000 calls/s, $GRPC_D per path in turns (500 ms each), $GRPC_RUNS runs" >&2
pct() { sed -E "s/.* $1=([0-9.]+)ms.*/\1/"; }
for r in $(seq "$GRPC_RUNS"); do
  sb=$(cpu_ticks "$sidecar_pid"); hb=$(cpu_ticks "$haproxy_pid")
  # The app is captured: 10.96.0.40:50051 goes through the sidecar, 127.0.0.1 does not.
  out=$(asapp "$work/grpc" rate -target 127.0.0.1:28280 -pair 10.96.0.40:50051,127.0.0.1:28104 \
    -authority greeter:50051 -block 500ms -rps 1000 -d "$GRPC_D")
  sa=$(cpu_ticks "$sidecar_pid"); ha=$(cpu_ticks "$haproxy_pid")
  sed 's/^/  /' <<<"$out" >&2
  n=$(sed -n 1p <<<"$out" | sed -E 's/.* n=([0-9]+).*/\1/')
  for q in p50 p99; do
    d=$(sed -n 1p <<<"$out" | pct $q)
    R[grpc/captured/$q]+="$(awk -v a="$(sed -n 2p <<<"$out" | pct $q)" -v d="$d" 'BEGIN{printf "%+.3f", a-d}') "
    R[grpc/haproxy/$q]+="$(awk -v a="$(sed -n 3p <<<"$out" | pct $q)" -v d="$d" 'BEGIN{printf "%+.3f", a-d}') "
  done
  # CPU per call; the sidecar's includes the warm-up calls and nothing else runs meanwhile.
  C[grpc/captured]+="$(awk -v d=$((sa-sb)) -v t="$TICKS" -v n="$n" 'BEGIN{printf "%.0f", d/t/(n+100)*1e6}') "
  C[grpc/haproxy]+="$(awk -v d=$((ha-hb)) -v t="$TICKS" -v n="$n" 'BEGIN{printf "%.0f", d/t/(n+100)*1e6}') "
  echo "  run $r: p99 added, captured sidecar $(awk '{print $NF}' <<<"${R[grpc/captured/p99]}") ms, haproxy $(awk '{print $NF}' <<<"${R[grpc/haproxy/p99]}") ms" >&2
done

echo
echo "bench-capture: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), kernel $(uname -r), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(iperf3 -v | head -1 | cut -d' ' -f1-2), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "median (min–max) of $RUNS runs"
printf '%-22s %-28s %-18s\n' "TCP case" "Gbit/s" "proxy CPU %"
[[ $TCP_RUNS == 0 ]] || for k in lo/direct lo/sidecar lo/haproxy $(for l in $LINKS; do echo "veth-$l/direct veth-$l/sidecar veth-$l/haproxy"; done); do
  printf '%-22s %-28s %-18s\n' "$k" "$(median "${R[$k]}")" "$( [[ -n ${C[$k]:-} ]] && median "${C[$k]}" || echo -)"
done
printf '%-22s %-28s %-18s\n' "HTTP case" "req/s" "proxy req/s per core"
[[ $HTTP_RUNS == 0 ]] || for k in http/direct http/captured http/http_proxy http/haproxy; do
  printf '%-22s %-28s %-18s\n' "$k" "$(median "${R[$k]}")" "$( [[ -n ${C[$k]:-} ]] && median "${C[$k]}" || echo -)"
done
printf '%-22s %-28s %-28s %-18s\n' "gRPC case (in turns)" "p50 added, ms" "p99 added, ms" "proxy CPU µs/call"
[[ $GRPC_RUNS == 0 ]] || for k in captured haproxy; do
  printf '%-22s %-28s %-28s %-18s\n' "grpc/$k" "$(median "${R[grpc/$k/p50]}")" "$(median "${R[grpc/$k/p99]}")" "$(median "${C[grpc/$k]}")"
done
