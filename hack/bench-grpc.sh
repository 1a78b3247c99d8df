#!/usr/bin/env bash
# bench-grpc.sh: gRPC unary latency at a fixed rate, direct vs through two sidecars (the
# caller's outbound listener, then the callee's inbound listener, HTTP/2 on every hop), all
# on loopback. hack/bench/grpc "rate" makes Health/Check calls open-loop at RATE/s for
# DURATION (≤ 30 s in all: two 10 s probes) and prints p50/p99 from each call's scheduled
# start. Prints the p99 the two sidecars add.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
RATE=${RATE:-1000}
CONCURRENCY=${CONCURRENCY:-1} # each sidecar's worker threads (--concurrency)
BACKEND=127.0.0.1:28280
CALLEE=127.0.0.1:28206  # the callee sidecar's inbound listener
CALLER=127.0.0.1:28201  # the caller sidecar's outbound listener

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

go build -o "$work/helper" ./hack/bench/grpc
go build -o "$work/sidecar" ./cmd/sidecar

"$work/helper" backend -addr "$BACKEND" & pids+=($!)
"$work/helper" config -name inbound_http -listen "$CALLEE" -backend "$BACKEND" >"$work/callee.json"
"$work/helper" config -name outbound_http -listen "$CALLER" -backend "$CALLEE" >"$work/caller.json"
"$work/sidecar" --concurrency "$CONCURRENCY" --static-config "$work/callee.json" \
  --admin-address 127.0.0.1:28300 --metrics-address 127.0.0.1:28320 2>"$work/callee.log" &
callee_pid=$!; pids+=($callee_pid)
"$work/sidecar" --concurrency "$CONCURRENCY" --static-config "$work/caller.json" \
  --admin-address 127.0.0.1:28400 --metrics-address 127.0.0.1:28420 2>"$work/caller.log" &
caller_pid=$!; pids+=($caller_pid)
sleep 1
# cpu_ticks prints a process's user+system CPU time in clock ticks.
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)

direct=$("$work/helper" rate -target "$BACKEND" -rps "$RATE" -d "$DURATION")
echo "direct:           $direct"
c0=$(cpu_ticks "$caller_pid"); e0=$(cpu_ticks "$callee_pid")
sidecars=$("$work/helper" rate -target "$CALLER" -authority svc -rps "$RATE" -d "$DURATION")
c1=$(cpu_ticks "$caller_pid"); e1=$(cpu_ticks "$callee_pid")
echo "two sidecars:     $sidecars"
n=$(sed -E 's/.*n=([0-9]+).*/\1/' <<<"$sidecars")
awk -v c="$((c1-c0))" -v e="$((e1-e0))" -v t="$TICKS" -v n="$n" \
  'BEGIN{ printf "CPU per call (incl. 100 warm-up calls): caller sidecar %.0f us, callee sidecar %.0f us\n", c/t/(n+100)*1e6, e/t/(n+100)*1e6 }'
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
p99() { sed -E 's/.*p99=([0-9.]+)ms.*/\1/' <<<"$1"; }
p50() { sed -E 's/.*p50=([0-9.]+)ms.*/\1/' <<<"$1"; }
awk -v a="$(p50 "$direct")" -v b="$(p50 "$sidecars")" -v c="$(p99 "$direct")" -v d="$(p99 "$sidecars")" \
  'BEGIN{ printf "added by two sidecars at the fixed rate: p50 +%.3f ms, p99 +%.3f ms\n", b-a, d-c }'
curl -fsS http://127.0.0.1:28420/stats 2>/dev/null | grep -E 'grpc_responses_total' || true
