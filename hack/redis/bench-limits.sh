#!/usr/bin/env bash
# bench-limits.sh: the Redis proxy under the loads of issue 12, next to
# redis-server and nutcracker (twemproxy) over the same three shards:
#  1. a pipeline of N (100,000) commands of ~500 bytes (~50 MB; SETs, every
#     tenth a GET, ~5 MB of replies) written whole before any reply is read:
#     seconds, direct to one shard / Weft / nutcracker (median of ROUNDS);
#  2. SET and GET of SIZE-byte (64 MB) values under four keys: RSS of the
#     proxy idle, at peak (VmHWM), and each second for SETTLE (30) seconds
#     after, for Weft and nutcracker.
#
# Needs redis-server, redis-cli and nutcracker
# (apt-get install -y redis-server redis-tools nutcracker).
# Env: N (100000), ROUNDS (3), SIZE (64000000), SETTLE (30),
#      BASE_PORT (17100), KEEP_LOGS=1 to keep the temp dir.
set -euo pipefail

N=${N:-100000}
ROUNDS=${ROUNDS:-3}
SIZE=${SIZE:-64000000}
SETTLE=${SETTLE:-30}
BASE_PORT=${BASE_PORT:-17100}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

for bin in redis-server redis-cli nutcracker go; do
	command -v "$bin" >/dev/null || { echo "bench-limits: $bin not found; apt-get install -y redis-server redis-tools nutcracker" >&2; exit 1; }
done

NAME=bench-limits
# shellcheck source=hack/redis/shards.sh
source "$ROOT/hack/redis/shards.sh"
start_shards

go build -o "$WORK/weft-redis-proxy" "$ROOT/hack/redis/weft-redis-proxy"
go build -o "$WORK/redisload" "$ROOT/hack/redis/redisload"
WEFT_PORT=$((BASE_PORT + 21))
NC_PORT=$((BASE_PORT + 22))
nutcracker_conf "$WORK/nutcracker.yml" "$NC_PORT"

# start_proxies: fresh Weft and nutcracker processes (sets WEFT_PID, NC_PID)
start_proxies() {
	"$WORK/weft-redis-proxy" -listen "127.0.0.1:$WEFT_PORT" -servers "$(IFS=,; echo "${SERVERS[*]}")" 2>>"$WORK/weft.log" &
	WEFT_PID=$!
	PIDS+=($!)
	nutcracker -c "$WORK/nutcracker.yml" -s $((BASE_PORT + 23)) -o "$WORK/nc.log" &
	NC_PID=$!
	PIDS+=($!)
	wait_port "$WEFT_PORT"
	wait_port "$NC_PORT"
}
stop_proxies() {
	kill "$WEFT_PID" "$NC_PID" 2>/dev/null || true
	wait "$WEFT_PID" "$NC_PID" 2>/dev/null || true
}
rss_mb() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
hwm_mb() { awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
flushall() { for i in 1 2 3; do redis-cli -p $((BASE_PORT + i)) FLUSHALL >/dev/null; done; }

echo "1. pipeline of $N commands (~500 bytes each, 9 SETs : 1 GET) written before reading, seconds (median of $ROUNDS)"
start_proxies
declare -A T
for t in direct weft nutcracker; do T[$t]=""; done
for round in $(seq "$ROUNDS"); do
	for t in direct weft nutcracker; do
		case $t in
		direct) port=$((BASE_PORT + 1)) ;;
		weft) port=$WEFT_PORT ;;
		nutcracker) port=$NC_PORT ;;
		esac
		flushall
		s=$("$WORK/redisload" -addr "127.0.0.1:$port" -mode pipeline -n "$N" -timeout 120s) || s=failed
		T[$t]+="$s"$'\n'
	done
done
for t in direct weft nutcracker; do
	printf "  %-12s %s s   (runs: %s)\n" "$t" "$(printf %s "${T[$t]}" | median)" "$(printf %s "${T[$t]}" | tr '\n' ' ')"
done
stop_proxies

echo
echo "2. SET+GET of $SIZE-byte values under four keys (spread over the three shards), proxy RSS in MB"
start_proxies
flushall
printf "  %-12s %8s %8s %8s %8s %s\n" target idle peak "after" "+${SETTLE}s" "first second under 2x idle"
for t in weft nutcracker; do
	case $t in
	weft) port=$WEFT_PORT pid=$WEFT_PID ;;
	nutcracker) port=$NC_PORT pid=$NC_PID ;;
	esac
	idle=$(rss_mb "$pid")
	echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true # reset VmHWM to now
	"$WORK/redisload" -addr "127.0.0.1:$port" -mode bigvalue -size "$SIZE" -keys "big:alpha,big:bravo,big:charlie,big:delta" -timeout 300s >/dev/null
	peak=$(hwm_mb "$pid")
	after=$(rss_mb "$pid")
	under=never
	for s in $(seq "$SETTLE"); do
		sleep 1
		now=$(rss_mb "$pid")
		if [[ $under == never ]] && awk -v n="$now" -v i="$idle" 'BEGIN { exit !(n < 2 * i) }'; then under="${s}s"; fi
	done
	printf "  %-12s %8s %8s %8s %8s %s\n" "$t" "$idle" "$peak" "$after" "$now" "$under"
	dist="$(for i in 1 2 3; do redis-cli -p $((BASE_PORT + i)) DBSIZE; done | tr '\n' ' ')"
	flushall
done
echo "  values per shard: $dist"
stop_proxies
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs"
