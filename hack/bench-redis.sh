#!/usr/bin/env bash
# bench-redis.sh: redis-benchmark directly against one shard, through the Weft
# Redis proxy and through nutcracker (twemproxy) over the same three shards,
# at pipeline 1 and 16. Prints requests/s, p50/p99 and Weft/nutcracker ratios.
#
# Needs redis-server, redis-benchmark and nutcracker
# (apt-get install -y redis-server redis-tools nutcracker).
# Env: N (requests, default 200000), C (clients, 50), PIPELINES ("1 16"),
#      TESTS (get,set), ROUNDS (3; targets interleaved, the median is shown),
#      BASE_PORT (17000), CONCURRENCY (Weft's worker threads, 1 as the sidecar's
#      default; nutcracker is single-threaded), KEEP_LOGS=1 to keep the temp dir.
set -euo pipefail

N=${N:-200000}
C=${C:-50}
PIPELINES=${PIPELINES:-"1 16"}
TESTS=${TESTS:-get,set}
ROUNDS=${ROUNDS:-3}
BASE_PORT=${BASE_PORT:-17000}
CONCURRENCY=${CONCURRENCY:-1} # the proxy's worker threads, as the sidecar's --concurrency (default 1)
ROOT=$(cd "$(dirname "$0")/.." && pwd)

"$ROOT/hack/deps.sh" bench

NAME=bench-redis
# shellcheck source=hack/redis/shards.sh
source "$ROOT/hack/redis/shards.sh"
start_shards

WEFT_PORT=$((BASE_PORT + 21))
NC_PORT=$((BASE_PORT + 22))
go build -o "$WORK/weft-redis-proxy" "$ROOT/hack/redis/weft-redis-proxy"
"$WORK/weft-redis-proxy" -concurrency "$CONCURRENCY" -listen "127.0.0.1:$WEFT_PORT" -servers "$(IFS=,; echo "${SERVERS[*]}")" 2>"$WORK/weft.log" &
WEFT_PID=$!
PIDS+=($!)
nutcracker_conf "$WORK/nutcracker.yml" "$NC_PORT"
nutcracker -c "$WORK/nutcracker.yml" -s $((BASE_PORT + 23)) -o "$WORK/nc.log" &
NC_PID=$!
PIDS+=($!)
wait_port "$WEFT_PORT"
wait_port "$NC_PORT"

# cpu_ticks PID → user+system clock ticks the process has used
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)
NTESTS=$(echo "$TESTS" | tr ',' '\n' | wc -l)

# run TARGET PORT P PID → lines "TARGET P TEST RPS P50 P99 CPU_US_PER_REQ"
# (CPU of the process serving PORT, averaged over the run's tests: less
# sensitive than requests/s to other load on the machine)
run() {
	local before after out
	before=$(cpu_ticks "$4")
	out=$(redis-benchmark -p "$2" -n "$N" -c "$C" -P "$3" -r 100000 -t "$TESTS" --csv -q 2>/dev/null)
	after=$(cpu_ticks "$4")
	echo "$out" | awk -F'","' -v t="$1" -v p="$3" -v cpu="$(( after - before ))" -v tck="$TCK" -v nreq="$(( N * NTESTS ))" \
		'NR>1 { gsub(/"/,""); split($0, f, ","); printf "%s %s %s %s %s %s %.2f\n", t, p, f[1], f[2], f[5], f[7], cpu * 1e6 / tck / nreq }'
}

RESULTS="$WORK/results"
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
	for p in $PIPELINES; do
		# rotate the order each round so no target always runs first
		case $((round % 3)) in
		1) order="direct weft nutcracker" ;;
		2) order="weft nutcracker direct" ;;
		0) order="nutcracker direct weft" ;;
		esac
		for t in $order; do
			case $t in
			direct) run direct-1-shard $((BASE_PORT + 1)) "$p" "$SHARD1_PID" >>"$RESULTS" ;;
			weft) run weft "$WEFT_PORT" "$p" "$WEFT_PID" >>"$RESULTS" ;;
			nutcracker) run nutcracker "$NC_PORT" "$p" "$NC_PID" >>"$RESULTS" ;;
			esac
		done
	done
done

# median over rounds of each column, per (target, P, test)
MEDIANS="$WORK/medians"
sort -k1,1 -k2,2n -k3,3 -k4,4n "$RESULTS" | awk '
	{ k=$1" "$2" "$3; n[k]++; rps[k, n[k]]=$4; p50[k, n[k]]=$5; p99[k, n[k]]=$6; cpu[k, n[k]]=$7 }
	END { for (k in n) { m=int((n[k]+1)/2); print k, rps[k, m], p50[k, m], p99[k, m], cpu[k, m] } }' >"$MEDIANS"

printf "%-16s %3s %-5s %12s %9s %9s %12s\n" target P test "requests/s" "p50 ms" "p99 ms" "CPU us/req"
sort -k2,2n -k3,3 -k1,1 "$MEDIANS" | awk '{ printf "%-16s %3s %-5s %12.0f %9.3f %9.3f %12.2f\n", $1, $2, $3, $4, $5, $6, $7 }'
echo "(median of $ROUNDS interleaved rounds, by requests/s; CPU us/req is the serving process's CPU per request, averaged over the tests of that run)"
echo
echo "ratios of median requests/s (weft / nutcracker, weft / direct):"
awk '{ k=$2" "$3; r[$1" "k]=$4; keys[k]=1 }
	END { for (k in keys) printf "  P=%s %-4s weft/nutcracker %.2f  weft/direct %.2f\n", substr(k,1,index(k," ")-1), substr(k,index(k," ")+1), r["weft "k]/r["nutcracker "k], r["weft "k]/r["direct-1-shard "k] }' "$MEDIANS" | sort -t= -k2,2n
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs (client, proxies and servers share them)"
