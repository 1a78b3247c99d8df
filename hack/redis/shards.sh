# hack/redis/shards.sh — sourced by hack/bench-redis.sh and hack/redis/bench-limits.sh: a work
# directory cleaned up on exit (KEEP_LOGS=1 keeps it), and three redis-server shards on
# BASE_PORT+1..3. After start_shards: SERVERS (name=addr:weight, for weft-redis-proxy),
# NC_SERVERS (nutcracker's server lines) and SHARD1_PID. Needs BASE_PORT and NAME (for
# messages) set by the caller.
WORK=$(mktemp -d)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [[ "${KEEP_LOGS:-}" == 1 ]]; then echo "logs in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

wait_port() {
	for _ in $(seq 100); do
		redis-cli -p "$1" PING >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "$NAME: nothing answers PING on port $1" >&2
	exit 1
}

start_shards() {
	SERVERS=()
	NC_SERVERS=""
	local i port name
	for i in 1 2 3; do
		port=$((BASE_PORT + i))
		mkdir -p "$WORK/r$i"
		redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK/r$i" \
			--logfile "$WORK/r$i/log" --daemonize no &
		PIDS+=($!)
		[[ $i == 1 ]] && SHARD1_PID=$!
		name="shard-$(printf "\\x$(printf %x $((96 + i)))")"
		SERVERS+=("$name=127.0.0.1:$port:1")
		NC_SERVERS+="    - 127.0.0.1:$port:1 $name"$'\n'
	done
	for i in 1 2 3; do wait_port $((BASE_PORT + i)); done
}

# nutcracker_conf FILE PORT: a nutcracker pool "bench" over the shards (ketama, fnv1a_64, as
# the proxy's default), listening on 127.0.0.1:PORT.
nutcracker_conf() {
	cat >"$1" <<YAML
bench:
  listen: 127.0.0.1:$2
  redis: true
  distribution: ketama
  hash: fnv1a_64
  servers:
$NC_SERVERS
YAML
}
