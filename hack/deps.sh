#!/usr/bin/env bash
# hack/deps.sh — installs the Debian packages a target needs, and nothing else. One script for
# `make test`, `make demo`, `make test-e2e`, the benchmarks and .ci/run, so a fresh machine
# needs no set-up step of its own.
#
#   hack/deps.sh test    redis-server, redis-tools, nutcracker (the Redis proxy's tests run
#                        against real redis-server shards and compare placement with nutcracker),
#                        iproute2, iptables, curl (the capture tests install weft-init's rules
#                        in network namespaces they create and call through them)
#   hack/deps.sh mesh    iproute2, iptables, curl, redis-server, redis-tools (the local mesh: pod
#                        network namespaces, kube-proxy's Service rules, the demo's checks, the
#                        Redis shards it runs)
#   hack/deps.sh bench   wrk, haproxy, redis-tools, nutcracker, redis-server, iperf3 (the
#                        peers the benchmarks measure against), iproute2 and iptables (the
#                        captured path's network namespaces), tcpdump (bench-grpc's CAPTURE=1)
#
# Several profiles may be named at once. When everything is present it prints nothing. When
# something is missing it installs it with apt-get as root, saying in one line what and why;
# when not root it refuses with the exact command to run.
set -euo pipefail

declare -A why=(
  [redis-server]="real Redis shards for the Redis proxy's tests"
  [redis-tools]="redis-cli and redis-benchmark"
  [nutcracker]="twemproxy, the placement reference and benchmark peer"
  [iproute2]="network namespaces for the local mesh's pods"
  [iptables]="weft-init's capture rules, and the tables kube-proxy programs for the local mesh's Services"
  [curl]="the demo's HTTP checks"
  [wrk]="HTTP load generator for make bench-http"
  [haproxy]="the HTTP proxy the sidecar is measured against"
  [iperf3]="bulk TCP transfers for make bench-capture (the TCP proxy's throughput)"
  [tcpdump]="packet captures of make bench-grpc CAPTURE=1 (time spent inside each proxy)"
)

pkgs=()
for profile in "$@"; do
  case "$profile" in
    test) pkgs+=(redis-server redis-tools nutcracker iproute2 iptables curl) ;;
    mesh) pkgs+=(iproute2 iptables curl redis-server redis-tools) ;;
    bench) pkgs+=(wrk haproxy redis-tools nutcracker redis-server iperf3 iproute2 iptables tcpdump) ;;
    *) echo "deps: unknown profile '$profile' (want test, mesh or bench)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${pkgs[@]}"; do
  [[ " ${missing[*]} " == *" $p "* ]] && continue
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
((${#missing[@]})) || exit 0

reasons=()
for p in "${missing[@]}"; do reasons+=("$p (${why[$p]})"); done
if [[ $EUID -ne 0 ]]; then
  {
    echo "deps: missing Debian packages: ${reasons[*]}"
    echo "deps: install them with: sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}"
  } >&2
  exit 1
fi
echo "deps: installing ${reasons[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
