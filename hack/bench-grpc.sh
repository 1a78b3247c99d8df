#!/usr/bin/env bash
# bench-grpc.sh: gRPC unary latency at a fixed rate, direct vs through two sidecars (the
# caller's outbound listener, then the callee's inbound listener, HTTP/2 on every hop), all
# on loopback. hack/bench/grpc "rate" makes Health/Check calls open-loop at RATE/s for
# DURATION (three probes: direct, two sidecars, two
# haproxies) and prints p50/p99 from each call's scheduled start, the p99 each pair adds,
# and per sidecar the CPU, run-queue wait and context switches per call. Options are
# described where they act: SIDECAR_BIN, APP_GOMAXPROCS, SIDECAR_ENV, VCPU_SPIN, TRACE,
# CAPTURE, TURN, TURNS_ONLY, TURN_RUNS, MIXED, L4, GRPC_STATIC_WINDOWS.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
RATE=${RATE:-1000}
CONCURRENCY=${CONCURRENCY:-1} # each sidecar's worker threads (--concurrency)
# SIDECAR_BIN: a prebuilt sidecar to measure instead of building ./cmd/sidecar (A/B runs).
# APP_GOMAXPROCS: GOMAXPROCS of the load generator and the backend (the "apps"); unset, Go's
# default (the machine's CPUs, or a container's CPU limit since Go 1.25). 1 is what a pod
# with a one-CPU limit gets.
if [ -n "${APP_GOMAXPROCS:-}" ]; then app_env=(env GOMAXPROCS="$APP_GOMAXPROCS"); else app_env=(env); fi
# GRPC_STATIC_WINDOWS=1: the load generator and backend use fixed 1 MiB windows, which turns
# off grpc-go's BDP estimation and the PINGs it sends with it (every hop acknowledges them).
if [ "${GRPC_STATIC_WINDOWS:-}" = 1 ]; then app_env+=(GRPC_STATIC_WINDOWS=1); fi
# SIDECAR_ENV: environment for the two sidecars only, e.g. "GOGC=off GOMEMLIMIT=64MiB", to
# compare garbage-collector settings with the apps and haproxy unchanged.
read -r -a sidecar_env <<<"${SIDECAR_ENV:-}"
# VCPU_SPIN=1: one busy loop per CPU at SCHED_IDLE for the whole run (it runs only when
# nothing else can and yields at once to a woken task), so a virtual machine's vCPUs never
# halt. Without a cpuidle driver a guest halts an idle vCPU and the host must schedule it
# again to deliver a wake-up: that latency is otherwise part of every hop, direct or not.
BACKEND=127.0.0.1:28280
CALLEE=127.0.0.1:28206  # the callee sidecar's inbound listener
CALLER=127.0.0.1:28201  # the caller sidecar's outbound listener

"$(dirname "$0")/deps.sh" bench
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

go build -o "$work/helper" ./hack/bench/grpc
if [ "${VCPU_SPIN:-}" = 1 ]; then
  for cpu in $(seq 0 $(($(nproc) - 1))); do
    taskset -c "$cpu" chrt --idle 0 sh -c 'while :; do :; done' & pids+=($!)
  done
fi
if [ -n "${SIDECAR_BIN:-}" ]; then cp "$SIDECAR_BIN" "$work/sidecar"; else go build -o "$work/sidecar" ./cmd/sidecar; fi

"${app_env[@]}" "$work/helper" backend -addr "$BACKEND" & pids+=($!)
"$work/helper" config -name inbound_http -listen "$CALLEE" -backend "$BACKEND" >"$work/callee.json"
"$work/helper" config -name outbound_http -listen "$CALLER" -backend "$CALLEE" >"$work/caller.json"
env "${sidecar_env[@]}" "$work/sidecar" --concurrency "$CONCURRENCY" --static-config "$work/callee.json" \
  --admin-address 127.0.0.1:28300 --metrics-address 127.0.0.1:28320 2>"$work/callee.log" &
callee_pid=$!; pids+=($callee_pid)
env "${sidecar_env[@]}" "$work/sidecar" --concurrency "$CONCURRENCY" --static-config "$work/caller.json" \
  --admin-address 127.0.0.1:28400 --metrics-address 127.0.0.1:28420 2>"$work/caller.log" &
caller_pid=$!; pids+=($caller_pid)
sleep 1
# cpu_ticks prints a process's user+system CPU time in clock ticks.
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)
# runq_ns prints the nanoseconds a process's threads spent runnable but waiting for a CPU
# (schedstat's second field): the share of the added latency the machine, not the code, causes.
# ctxsw prints a process's context switches, voluntary and not, over all its threads.
ctxsw() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/{s+=$2} END{printf "%.0f\n", s}'; }
# syscw prints a process's write-side system calls (write, sendmsg, ...), /proc/PID/io.
syscw() { awk '/^syscw/{print $2}' "/proc/$1/io"; }
# gcs prints how many garbage collections a sidecar has finished (its admin address's
# heap profile ends with the runtime's MemStats).
gcs() { curl -fsS "http://127.0.0.1:$1/debug/pprof/heap?debug=1" | awk '/^# NumGC = /{print $4}'; }
# waitports waits (up to 5 s) until every given port on 127.0.0.1 accepts a connection.
waitports() {
  local p
  for _ in $(seq 50); do
    for p in "$@"; do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { sleep 0.1; continue 2; }; done
    return 0
  done
}
runq_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s+=$2} END{printf "%.0f\n", s}'; }

# TURNS_ONLY=1: only the "in turns" probe below (the bar's condition: the machine carries
# RATE calls/s at every moment), TURN_RUNS times (default 1); nothing sequential,
# paired or three-way.
full=1; [ "${TURNS_ONLY:-}" = 1 ] && full=0
p99() { sed -E 's/.*p99=([0-9.]+)ms.*/\1/' <<<"$1"; }
p50() { sed -E 's/.*p50=([0-9.]+)ms.*/\1/' <<<"$1"; }
if [ "$full" = 1 ]; then
  direct=$("${app_env[@]}" "$work/helper" rate -target "$BACKEND" -rps "$RATE" -d "$DURATION")
  echo "direct:           $direct"
  c0=$(cpu_ticks "$caller_pid"); e0=$(cpu_ticks "$callee_pid")
  cq0=$(runq_ns "$caller_pid"); eq0=$(runq_ns "$callee_pid")
  cs0=$(ctxsw "$caller_pid"); es0=$(ctxsw "$callee_pid")
  cw0=$(syscw "$caller_pid"); ew0=$(syscw "$callee_pid")
  cg0=$(gcs 28400); eg0=$(gcs 28300)
  # TRACE=1: a Go runtime trace of each sidecar (admin /debug/pprof/trace) during this probe,
  # read by hack/bench/schedlat: how long goroutines waited to run, and why, in the slow waits.
  if [ "${TRACE:-}" = 1 ]; then
    go build -o "$work/schedlat" ./hack/bench/schedlat
    secs=$(awk -v d="${DURATION%s}" 'BEGIN{ print (d > 2 ? d - 1 : d / 2) }')
    curl -fsS -o "$work/caller.trace" "http://127.0.0.1:28400/debug/pprof/trace?seconds=$secs" & tc=$!
    curl -fsS -o "$work/callee.trace" "http://127.0.0.1:28300/debug/pprof/trace?seconds=$secs" & te=$!
fi
sidecars=$("${app_env[@]}" "$work/helper" rate -target "$CALLER" -authority svc -rps "$RATE" -d "$DURATION")
c1=$(cpu_ticks "$caller_pid"); e1=$(cpu_ticks "$callee_pid")
cq1=$(runq_ns "$caller_pid"); eq1=$(runq_ns "$callee_pid")
cs1=$(ctxsw "$caller_pid"); es1=$(ctxsw "$callee_pid")
cw1=$(syscw "$caller_pid"); ew1=$(syscw "$callee_pid")
cg1=$(gcs 28400); eg1=$(gcs 28300)
echo "two sidecars:     $sidecars"
if [ "${TRACE:-}" = 1 ]; then
  wait "$tc" "$te"
  for who in caller callee; do echo "runtime trace, $who sidecar:"; "$work/schedlat" "$work/$who.trace" | sed 's/^/  /'; done
fi
n=$(sed -E 's/.*n=([0-9]+).*/\1/' <<<"$sidecars")
awk -v c="$((c1-c0))" -v e="$((e1-e0))" -v t="$TICKS" -v n="$n" \
  'BEGIN{ printf "CPU per call (incl. 100 warm-up calls): caller sidecar %.0f us, callee sidecar %.0f us\n", c/t/(n+100)*1e6, e/t/(n+100)*1e6 }'
awk -v c="$((cq1-cq0))" -v e="$((eq1-eq0))" -v n="$n" \
  'BEGIN{ printf "run-queue wait per call (runnable, no CPU free): caller sidecar %.0f us, callee sidecar %.0f us\n", c/(n+100)/1e3, e/(n+100)/1e3 }'
awk -v c="$((cs1-cs0))" -v e="$((es1-es0))" -v n="$n" -v ct="$(ls /proc/$caller_pid/task | wc -l)" -v et="$(ls /proc/$callee_pid/task | wc -l)" \
  'BEGIN{ printf "context switches per call: caller sidecar %.1f (%d threads), callee sidecar %.1f (%d threads)\n", c/(n+100), ct, e/(n+100), et }'
awk -v c="$((cw1-cw0))" -v e="$((ew1-ew0))" -v n="$n" \
  'BEGIN{ printf "write system calls per call: caller sidecar %.1f, callee sidecar %.1f\n", c/(n+100), e/(n+100) }'
echo "garbage collections during the probe: caller sidecar $((cg1-cg0)), callee sidecar $((eg1-eg0))"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
awk -v a="$(p50 "$direct")" -v b="$(p50 "$sidecars")" -v c="$(p99 "$direct")" -v d="$(p99 "$sidecars")" \
  'BEGIN{ printf "added by two sidecars at the fixed rate: p50 +%.3f ms, p99 +%.3f ms\n", b-a, d-c }'
fi
# The same chain through two haproxies (one thread each, h2c on every hop): what a C
# event-loop proxy adds on this machine at this moment, so the figure above can be read
# as the machine's share or the code's.
# Paired: direct calls and calls through the two sidecars at the same rate, interleaved
# (half an interval apart), so both meet the same moments of a shared machine; the
# sequential figures above compare runs made seconds apart.
paired() { # $1: label, $2: target whose latency is compared with direct calls
  local out d s g0 g1
  g0=$(($(gcs 28400) + $(gcs 28300)))
  out=$("${app_env[@]}" "$work/helper" rate -target "$BACKEND" -pair "$2" -authority svc -rps "$RATE" -d "$DURATION")
  g1=$(($(gcs 28400) + $(gcs 28300)))
  d=$(sed -n 1p <<<"$out"); s=$(sed -n 2p <<<"$out")
  echo "paired, direct:   $d"
  echo "paired, $1: $s"
  awk -v a="$(p50 "$d")" -v b="$(p50 "$s")" -v c="$(p99 "$d")" -v e="$(p99 "$s")" -v l="$1" \
    'BEGIN{ printf "added by %s, paired with direct calls: p50 +%.3f ms, p99 +%.3f ms\n", l, b-a, e-c }'
  echo "  (sidecars' garbage collections meanwhile: $((g1-g0)))"
}
# three LABEL NAME1 NAME2 OUT: prints a run of three series (direct calls first, then NAME1's
# and NAME2's, a line each in OUT) and the p50 and p99 each of the two adds.
three() {
  local d a b
  d=$(sed -n 1p <<<"$4"); a=$(sed -n 2p <<<"$4"); b=$(sed -n 3p <<<"$4")
  echo "$1, direct: $d"
  echo "$1, $2: $a"
  echo "$1, $3: $b"
  awk -v a="$(p50 "$d")" -v b="$(p50 "$a")" -v c="$(p50 "$b")" -v x="$(p99 "$d")" -v y="$(p99 "$a")" -v z="$(p99 "$b")" \
    -v l="$1" -v n1="$2" -v n2="$3" \
    'BEGIN{ printf "added, %s: %s p50 +%.3f ms p99 +%.3f ms; %s p50 +%.3f ms p99 +%.3f ms\n", l, n1, b-a, y-x, n2, c-a, z-x }'
}
[ "$full" = 1 ] && paired "two sidecars" "$CALLER"
if command -v haproxy >/dev/null; then
  hacfg() {
    printf 'global\n  nbthread 1\n  maxconn 1000\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n'
    printf 'frontend f\n  bind %s proto h2\n  default_backend b\nbackend b\n  server s1 %s proto h2\n' "$1" "$2"
  }
  hacfg 127.0.0.1:28506 "$BACKEND" >"$work/ha-callee.cfg"
  hacfg 127.0.0.1:28501 127.0.0.1:28506 >"$work/ha-caller.cfg"
  haproxy -q -f "$work/ha-callee.cfg" & hae=$!; pids+=($hae)
  haproxy -q -f "$work/ha-caller.cfg" & hac=$!; pids+=($hac)
  waitports 28501
  if [ "$full" = 1 ]; then
    hc0=$(cpu_ticks "$hac"); he0=$(cpu_ticks "$hae"); hs0=$(ctxsw "$hac"); hes0=$(ctxsw "$hae")
    hq0=$(runq_ns "$hac"); heq0=$(runq_ns "$hae")
    ha=$("${app_env[@]}" "$work/helper" rate -target 127.0.0.1:28501 -authority svc -rps "$RATE" -d "$DURATION")
    hc1=$(cpu_ticks "$hac"); he1=$(cpu_ticks "$hae"); hs1=$(ctxsw "$hac"); hes1=$(ctxsw "$hae")
    hq1=$(runq_ns "$hac"); heq1=$(runq_ns "$hae")
    echo "two haproxies:    $ha"
    hn=$(sed -E 's/.*n=([0-9]+).*/\1/' <<<"$ha")
    awk -v c="$((hc1-hc0))" -v e="$((he1-he0))" -v t="$TICKS" -v n="$hn" \
      'BEGIN{ printf "CPU per call (incl. 100 warm-up calls): caller haproxy %.0f us, callee haproxy %.0f us\n", c/t/(n+100)*1e6, e/t/(n+100)*1e6 }'
    awk -v c="$((hq1-hq0))" -v e="$((heq1-heq0))" -v n="$hn" \
      'BEGIN{ printf "run-queue wait per call (runnable, no CPU free): caller haproxy %.0f us, callee haproxy %.0f us\n", c/(n+100)/1e3, e/(n+100)/1e3 }'
    awk -v c="$((hs1-hs0))" -v e="$((hes1-hes0))" -v n="$hn" \
      'BEGIN{ printf "context switches per call: caller haproxy %.1f, callee haproxy %.1f\n", c/(n+100), e/(n+100) }'
    awk -v a="$(p50 "$direct")" -v b="$(p50 "$ha")" -v c="$(p99 "$direct")" -v d="$(p99 "$ha")" \
      'BEGIN{ printf "added by two haproxies at the fixed rate: p50 +%.3f ms, p99 +%.3f ms\n", b-a, d-c }'
    paired "two haproxies" 127.0.0.1:28501
    # Three-way: direct, two sidecars and two haproxies interleaved (a third of an interval
    # apart, each at RATE/s), so the two proxies' figures meet the same moments of the machine.
    # Run twice, the two pairs swapping places, since the call a third of an interval after a
    # direct call meets a different machine from the one two thirds after it.
    for order in sidecars-first haproxies-first; do
      if [ "$order" = sidecars-first ]; then targets="$CALLER,127.0.0.1:28501"; else targets="127.0.0.1:28501,$CALLER"; fi
      # CAPTURE=1: a packet capture of the sidecars-first run, read by hack/bench/hoplat: how
      # long each HEADERS frame spent inside each proxy, and whole calls as the wire sees them
      # (from the request reaching the caller-side proxy to the trailers leaving it).
      if [ "${CAPTURE:-}" = 1 ] && [ "$order" = sidecars-first ]; then
        go build -o "$work/hoplat" ./hack/bench/hoplat
        tcpdump -i lo -s 0 -U -w "$work/cap.pcap" "tcp and (port ${CALLER##*:} or port ${CALLEE##*:} or port ${BACKEND##*:} or port 28501 or port 28506)" 2>"$work/tcpdump.log" & tdp=$!
        for _ in $(seq 50); do grep -q listening "$work/tcpdump.log" && break; sleep 0.1; done
      fi
      g0=$(($(gcs 28400) + $(gcs 28300)))
      log=()
      if [ "${CAPTURE:-}" = 1 ] && [ "$order" = sidecars-first ]; then
        log=(-log "$work/calls.log")
        # The callee proxies' connections to the backend, told apart by their local ports,
        # looked up mid-run: the relay closes its upstream connections with the caller's.
        (sleep 3; ss -tnpH "( dport = :${BACKEND##*:} )" >"$work/ss.txt") & ssp=$!
      fi
      out=$("${app_env[@]}" "$work/helper" rate -target "$BACKEND" -pair "$targets" -authority svc -rps "$RATE" -d "$DURATION" "${log[@]}")
      g1=$(($(gcs 28400) + $(gcs 28300)))
      if [ "${CAPTURE:-}" = 1 ] && [ "$order" = sidecars-first ]; then
        wait "$ssp"
        sp=$(awk '/"sidecar"/{n=split($4,a,":"); print a[n]; exit}' "$work/ss.txt")
        hp=$(awk '/"haproxy"/{n=split($4,a,":"); print a[n]; exit}' "$work/ss.txt")
        kill -INT "$tdp"; wait "$tdp" || true
        echo "packet capture of the next run ($(grep -E 'captured|dropped by kernel' "$work/tcpdump.log" | tr '\n' ' ')):"
        # Target 1 is the sidecar chain, 2 the haproxy chain (the -pair order above).
        "$work/hoplat" -hop "caller sidecar,${CALLER##*:},${CALLEE##*:}" -hop "callee sidecar,${CALLEE##*:},${BACKEND##*:},$sp" \
          -hop "caller haproxy,28501,28506" -hop "callee haproxy,28506,${BACKEND##*:},$hp" \
          -hop "backend from the callee sidecar,${BACKEND##*:},0,$sp" -hop "backend from the callee haproxy,${BACKEND##*:},0,$hp" \
          -calls "$work/calls.log" -client "1,${CALLER##*:}" -client 2,28501 "$work/cap.pcap" | sed 's/^/  /'
      fi
      # Printed sidecars first whatever the order, so every run's lines compare.
      if [ "$order" = haproxies-first ]; then
        out=$(printf '%s\n%s\n%s\n' "$(sed -n 1p <<<"$out")" "$(sed -n 3p <<<"$out")" "$(sed -n 2p <<<"$out")")
      fi
      three "three-way ($order)" "two sidecars" "two haproxies" "$out"
      echo "  (sidecars' garbage collections meanwhile: $((g1-g0)))"
    done
  fi
  # Turns: direct, two sidecars and two haproxies called one at a time, TURN (500 ms) each
  # in rotation, DURATION of calls each: the machine carries RATE calls/s at every moment —
  # the bar's condition — where the interleaved runs above carry two or three times that,
  # and each series still samples the whole run, unlike the sequential probes.
  for _ in $(seq "${TURN_RUNS:-1}"); do
    g0=$(($(gcs 28400) + $(gcs 28300)))
    out=$("${app_env[@]}" "$work/helper" rate -target "$BACKEND" -pair "$CALLER,127.0.0.1:28501" -block "${TURN:-500ms}" -authority svc -rps "$RATE" -d "$DURATION")
    g1=$(($(gcs 28400) + $(gcs 28300)))
    three "in turns" "two sidecars" "two haproxies" "$out"
    echo "  (sidecars' garbage collections meanwhile: $((g1-g0)))"
  done
  # MIXED=1: which hop makes the tail. The same three-way run with the chains crossed — a
  # sidecar caller in front of the haproxy callee, a haproxy caller in front of the sidecar
  # callee — against direct calls.
  if [ "${MIXED:-}" = 1 ]; then
    "$work/helper" config -name outbound_http -listen 127.0.0.1:28202 -backend 127.0.0.1:28506 >"$work/caller2.json"
    env "${sidecar_env[@]}" "$work/sidecar" --concurrency "$CONCURRENCY" --static-config "$work/caller2.json" \
      --admin-address 127.0.0.1:28410 --metrics-address 127.0.0.1:28430 2>"$work/caller2.log" & pids+=($!)
    hacfg 127.0.0.1:28502 "$CALLEE" >"$work/ha-caller2.cfg"
    haproxy -q -f "$work/ha-caller2.cfg" & pids+=($!)
    waitports 28502 28202
    out=$("${app_env[@]}" "$work/helper" rate -target "$BACKEND" -pair "127.0.0.1:28202,127.0.0.1:28502" -authority svc -rps "$RATE" -d "$DURATION")
    three mixed "sidecar caller + haproxy callee" "haproxy caller + sidecar callee" "$out"
  fi
fi
# L4=1: the reference without HTTP/2: two minimal Go TCP forwarders (hack/bench/grpc
# forward) and two haproxies in mode tcp, chained the same way, three-way with direct calls
# in both orders and in turns. grpc-go's client and server then speak HTTP/2 end to end;
# what the Go pair adds next to haproxy's is what the Go runtime alone adds to a hop. Then
# two minimal Go HTTP/2-terminating relays against the Go forwarders.
if [ "${L4:-}" = 1 ] && command -v haproxy >/dev/null; then
  "$work/helper" forward -listen 127.0.0.1:28606 -to "$BACKEND" & pids+=($!)
  "$work/helper" forward -listen 127.0.0.1:28601 -to 127.0.0.1:28606 & pids+=($!)
  tcpcfg() {
    printf 'global\n  nbthread 1\n  maxconn 1000\ndefaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n'
    printf 'frontend f\n  bind %s\n  default_backend b\nbackend b\n  server s1 %s\n' "$1" "$2"
  }
  tcpcfg 127.0.0.1:28706 "$BACKEND" >"$work/ha-tcp-callee.cfg"
  tcpcfg 127.0.0.1:28701 127.0.0.1:28706 >"$work/ha-tcp-caller.cfg"
  haproxy -q -f "$work/ha-tcp-callee.cfg" & pids+=($!)
  haproxy -q -f "$work/ha-tcp-caller.cfg" & pids+=($!)
  waitports 28706 28606 28701 28601
  out=$("${app_env[@]}" "$work/helper" rate -target "$BACKEND" -pair 127.0.0.1:28601,127.0.0.1:28701 -authority svc -rps "$RATE" -d "$DURATION")
  three "L4, three-way (Go first)" "two Go forwarders" "two haproxies (tcp)" "$out"
  out=$("${app_env[@]}" "$work/helper" rate -target "$BACKEND" -pair 127.0.0.1:28701,127.0.0.1:28601 -authority svc -rps "$RATE" -d "$DURATION")
  out=$(printf '%s\n%s\n%s\n' "$(sed -n 1p <<<"$out")" "$(sed -n 3p <<<"$out")" "$(sed -n 2p <<<"$out")")
  three "L4, three-way (haproxy first)" "two Go forwarders" "two haproxies (tcp)" "$out"
  out=$("${app_env[@]}" "$work/helper" rate -target "$BACKEND" -pair 127.0.0.1:28601,127.0.0.1:28701 -block "${TURN:-500ms}" -authority svc -rps "$RATE" -d "$DURATION")
  three "L4, in turns" "two Go forwarders" "two haproxies (tcp)" "$out"
  # The least an HTTP/2-terminating hop does (hack/bench/grpc h2relay: decode and encode
  # HEADERS, pass DATA on, answer SETTINGS and PINGs; no routing, policy or telemetry), in
  # Go, against the Go forwarders: what terminating HTTP/2 alone adds to a hop's tail.
  "$work/helper" h2relay -listen 127.0.0.1:28806 -to "$BACKEND" & pids+=($!)
  "$work/helper" h2relay -listen 127.0.0.1:28801 -to 127.0.0.1:28806 & pids+=($!)
  waitports 28806 28801
  out=$("${app_env[@]}" "$work/helper" rate -target "$BACKEND" -pair 127.0.0.1:28801,127.0.0.1:28601 -authority svc -rps "$RATE" -d "$DURATION")
  three "L4, three-way (relay first)" "two Go h2 relays" "two Go forwarders" "$out"
  out=$("${app_env[@]}" "$work/helper" rate -target "$BACKEND" -pair 127.0.0.1:28801,127.0.0.1:28601 -block "${TURN:-500ms}" -authority svc -rps "$RATE" -d "$DURATION")
  three "L4, in turns (relay first)" "two Go h2 relays" "two Go forwarders" "$out"
fi
for port in 28420 28320; do curl -fsS http://127.0.0.1:$port/stats 2>/dev/null | grep -E "^weft_cluster_grpc_responses_total|^weft_listener_frame_relay_connections_total" || true; done
