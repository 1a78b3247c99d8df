#!/usr/bin/env bash
# bench-telemetry.sh: what the sidecar's telemetry costs in throughput. Three sidecars with
# the same static config in front of one backend — telemetry off (--istio-metrics=false),
# Istio metrics with tracing off (the default), and metrics plus a JSON access-log line per
# exchange (written to a file, as a container runtime captures stdout) — each driven by wrk
# in turn, ROUNDS rounds interleaved, the median kept. Each sidecar runs one worker thread
# (--concurrency 1) pinned to the last core; wrk and the backend share the others. Prints
# req/s, the sidecar's CPU per request (from /proc, the figure that decides throughput when
# the sidecar has a core of its own) and the cost of each setting against "off".
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-3}
BACKEND=127.0.0.1:28080

"$(dirname "$0")/deps.sh" bench

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

go build -o "$work/helper" ./hack/bench/http
go build -o "$work/sidecar" ./cmd/sidecar
last=$(($(nproc) - 1))
rest="0-$((last > 0 ? last - 1 : 0))"
taskset -c "$rest" "$work/helper" backend -addr "$BACKEND" & pids+=($!)

declare -A ARGS=([off]="--istio-metrics=false" [metrics]="" [accesslog]="--access-log")
declare -A PORT=([off]=28201 [metrics]=28202 [accesslog]=28203)
declare -A PID
n=0
for t in off metrics accesslog; do
  n=$((n + 1))
  "$work/helper" config -listen "127.0.0.1:${PORT[$t]}" -backend "$BACKEND" >"$work/$t.json"
  # shellcheck disable=SC2086 # ARGS holds a list of flags
  taskset -c "$last" "$work/sidecar" --concurrency 1 ${ARGS[$t]} --static-config "$work/$t.json" \
    --admin-address "127.0.0.1:2821$n" --metrics-address "127.0.0.1:2822$n" >"$work/$t.out" 2>"$work/$t.log" &
  PID[$t]=$!; pids+=($!)
done
for t in off metrics accesslog; do
  for _ in $(seq 100); do
    curl -fsS -o /dev/null -H 'Host: svc' "http://127.0.0.1:${PORT[$t]}/" 2>/dev/null && break
    sleep 0.1
  done
done

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
TICKS=$(getconf CLK_TCK)
declare -A RPS CPU
for round in $(seq "$ROUNDS"); do
  for t in off metrics accesslog; do
    before=$(cpu_ticks "${PID[$t]}")
    out=$(taskset -c "$rest" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -H 'Host: svc' "http://127.0.0.1:${PORT[$t]}/")
    after=$(cpu_ticks "${PID[$t]}")
    total=$(awk '/requests in/{print $1}' <<<"$out")
    rps=$(awk '/^Requests\/sec/{print $2}' <<<"$out")
    cpu=$(awk -v a="$after" -v b="$before" -v n="$total" -v t="$TICKS" 'BEGIN{ printf "%.2f", (a-b)/t/n*1e6 }')
    RPS[$t]+="$rps "; CPU[$t]+="$cpu "
    echo "round $round $t: $rps req/s, $cpu us CPU/req $(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | tr '\n' ' ')" >&2
  done
done
median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
lines=$(wc -l <"$work/accesslog.out")

echo
echo "Telemetry cost: wrk -t$THREADS -c$CONNS -d$DURATION per sidecar, $ROUNDS interleaved rounds, median; sidecar --concurrency 1 on core $last, wrk and the backend on cores $rest"
printf '%-10s %12s %18s %16s %16s\n' setting "req/s" "sidecar us/req" "req/s cost" "CPU/req cost"
ro=$(median "${RPS[off]}"); co=$(median "${CPU[off]}")
for t in off metrics accesslog; do
  r=$(median "${RPS[$t]}"); c=$(median "${CPU[$t]}")
  awk -v t="$t" -v r="$r" -v c="$c" -v ro="$ro" -v co="$co" 'BEGIN{ printf "%-10s %12.0f %18.2f %15.1f%% %15.1f%%\n", t, r, c, (1-r/ro)*100, (c/co-1)*100 }'
done
echo "access-log lines written: $lines"

# The share of the sidecar's CPU spent in telemetry code, from a CPU profile of the
# access-log sidecar under the same load: the cost that holds when wrk's noise hides it.
taskset -c "$rest" wrk -t"$THREADS" -c"$CONNS" -d12s -H 'Host: svc' "http://127.0.0.1:${PORT[accesslog]}/" >/dev/null &
load=$!
sleep 1
curl -fsS -o "$work/cpu.prof" "http://127.0.0.1:28213/debug/pprof/profile?seconds=10"
wait "$load"
go tool pprof -top -cum "$work/sidecar" "$work/cpu.prof" 2>/dev/null | awk '
  /^Duration/ { total = $0; sub(/.*Total samples = /, "", total); sub(/s .*/, "", total) }
  $6 ~ /telemetry\.\(\*Mesh\)\.Record$/        { rec = $4 }
  $6 ~ /telemetry\.\(\*AccessLog\)\.Log$/      { log_ = $4 }
  $6 ~ /telemetry\.\(\*AccessLog\)\.run$/      { run = $4 }
  $6 ~ /telemetry\.\(\*Mesh\)\.Propagate$/     { prop = $4 }
  function s(v) { sub(/s$/, "", v); if (v ~ /ms$/) { sub(/ms$/, "", v); return v / 1000 } return v + 0 }
  END {
    t = total + 0
    m = s(rec) - s(log_) + s(prop); a = s(log_) + s(run)
    printf "profile (%.2fs of sidecar CPU): metrics and request ids %.1f%%, access log %.1f%% (bars: 5%%, 15%%)\n", t, m / t * 100, a / t * 100
  }'

