#!/usr/bin/env bash
# hack/demo.sh — Weft on one machine, start to finish: starts the local mesh (`weft dev`),
# applies config/samples and examples/demo, then shows what works in plain words and
# figures: sidecars injected, EndpointSlices from kube-controller-manager, an 80/20 canary
# split, retries hiding a failing pod, a fault rule, functions, Redis, and unmodified apps
# (no proxy settings, Service names by DNS, captured by iptables) speaking HTTP, gRPC,
# WebSocket and Redis's TCP. Ends with a summary table, tears
# everything down and exits non-zero if a step failed. Works offline once the Go module
# cache and the envtest binaries (go run ./hack/envtest) are in place; needs root for the
# pod network namespaces.
#
# The pass marks of the scenarios the e2e tests also check (canary window, retry counts, fault
# bounds, timeout and burst calls) come from test/e2e/testdata/thresholds.env, the one place
# they are stated.
#
# Environment: WEFT_DEMO_STATE (state dir, default /tmp/weft-demo), WEFT_DEMO_KEEP=1 (leave
# the mesh running at the end; stop it with Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
STATE="${WEFT_DEMO_STATE:-/tmp/weft-demo}"
LOG="$STATE.log"
# shellcheck source=test/e2e/testdata/thresholds.env
source test/e2e/testdata/thresholds.env

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

declare -a RESULTS=()
FAILED=0
record() { # record NAME PASS|FAIL DETAIL
  RESULTS+=("$(printf '%-34s %-5s %s' "$1" "$2" "$3")")
  if [[ "$2" == PASS ]]; then say "✔ $3"; else say "✘ $3"; FAILED=$((FAILED + 1)); fi
}

# ---- prerequisites --------------------------------------------------------------------
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null || die "the local mesh needs root (network namespaces); run as root"
  exec sudo -E env "PATH=$PATH" "$0" "$@"
fi
hack/deps.sh mesh || die "could not install the packages the local mesh needs"
command -v kubectl >/dev/null || die "kubectl is not on PATH; install it (any recent version) and rerun"

bold "Building the binaries (manager, sidecar, weft, examples)"
mkdir -p bin
for b in manager sidecar weft weft-init; do go build -o "bin/$b" "./cmd/$b"; done
for b in echo slow flaky caller grpcecho wsecho otlpsink; do go build -o "bin/$b" "./examples/$b"; done
say "bin/: $(cd bin && ls manager sidecar weft weft-init echo slow flaky caller grpcecho wsecho otlpsink | tr '\n' ' ')"
ASSETS="$(go run ./hack/envtest -mesh | tail -n1)" # -mesh: kube-proxy and CoreDNS too
say "control-plane binaries: $ASSETS"

# ---- the local mesh ---------------------------------------------------------------------
bold "Starting the local mesh (weft dev)"
rm -f "$STATE/ready"
bin/weft dev --state-dir "$STATE" --assets "$ASSETS" >"$LOG" 2>&1 &
WEFT_PID=$!
stop_mesh() {
  local rc=$?
  if [[ "${WEFT_DEMO_KEEP:-0}" == 1 && $rc == 0 ]]; then
    say "mesh left running (pid $WEFT_PID): export KUBECONFIG=$STATE/kubeconfig"; return
  fi
  if kill -0 "$WEFT_PID" 2>/dev/null; then
    bold "Tearing down"
    kill -INT "$WEFT_PID" 2>/dev/null || true
    for _ in $(seq 1 90); do kill -0 "$WEFT_PID" 2>/dev/null || break; sleep 1; done
    kill -KILL "$WEFT_PID" 2>/dev/null || true
    wait "$WEFT_PID" 2>/dev/null || true
    if ip netns list | grep -q '^weft-' || ip link show weft0 >/dev/null 2>&1; then
      say "✘ something was left behind (ip netns list / ip link show weft0)"; rc=1
    else
      say "✔ processes, network namespaces and the bridge are gone (log: $LOG)"
    fi
  fi
  exit $rc
}
trap stop_mesh EXIT
for i in $(seq 1 300); do
  [[ -f "$STATE/ready" ]] && break
  kill -0 "$WEFT_PID" 2>/dev/null || { cat "$LOG" >&2; die "weft dev stopped while starting (log above)"; }
  sleep 1
done
[[ -f "$STATE/ready" ]] || { tail -n 30 "$LOG" >&2; die "weft dev was not ready after 300 s"; }
sed 's/^/   | /' "$LOG" | grep -v '^   | $' | head -n 8
export KUBECONFIG="$STATE/kubeconfig"

bold "Applying config/samples and examples/demo"
kubectl label namespace default weft.dev/inject=enabled --overwrite | sed 's/^/   /'
kubectl apply -k config/samples | sed 's/^/   /'
kubectl apply -f examples/demo/ 2>&1 | grep -v '^Warning: resource namespaces/default' | sed 's/^/   /'

# ---- step: pods run, with sidecars --------------------------------------------------------
bold "Pods: created by kube-controller-manager, bound and run by the node agent, sidecars injected"
DEPLOYS=(reviews-v1 reviews-v2 ratings-good ratings-bad slow caller)
ok=1
for d in "${DEPLOYS[@]}"; do
  for _ in $(seq 1 180); do
    n="$(kubectl get pods -l "app=${d%%-*}" -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.metadata.name}{"\n"}{end}' 2>/dev/null | wc -l)"
    ((n > 0)) && break; sleep 1
  done
done
kubectl get pods -o wide | sed 's/^/   /'
SEL='app in (reviews,ratings,slow,caller)'
total="$(kubectl get pods -l "$SEL" -o name | wc -l)"
injected="$(kubectl get pods -l "$SEL" -o jsonpath='{range .items[*]}{.spec.containers[*].name}{"\n"}{end}' | grep -c weft-sidecar || true)"
running="$(kubectl get pods -l "$SEL" --field-selector=status.phase=Running -o name | wc -l)"
if ((total >= ${#DEPLOYS[@]} && injected == total && running == total)); then
  record "pods running with sidecar" PASS "$running of $total pods running, $injected with the weft-sidecar container"
else
  record "pods running with sidecar" FAIL "$running of $total pods running, $injected with the weft-sidecar container"
fi

# ---- step: EndpointSlices ----------------------------------------------------------------------
bold "EndpointSlices: kube-controller-manager lists the reviews pods once they are ready"
ready=0
for _ in $(seq 1 120); do
  ready="$(kubectl get endpointslices -l kubernetes.io/service-name=reviews \
    -o jsonpath='{range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{"\n"}{end}' | grep -c . || true)"
  ((ready >= 2)) && break; sleep 1
done
kubectl get endpointslices -l kubernetes.io/service-name=reviews | sed 's/^/   /'
if ((ready >= 2)); then record "endpointslices" PASS "reviews has $ready ready endpoints (pod IPs in 10.244.0.0/16)"
else record "endpointslices" FAIL "reviews has $ready ready endpoints, want 2 (pods become ready when their sidecar has its config)"; fi

CALLER_IP="$(kubectl get pods -l app=caller -o jsonpath='{.items[0].status.podIP}')"
call() { # call URL N [C] → kv lines from the caller pod (it calls through its own sidecar), C at a time (20)
  curl -s --noproxy '*' --max-time 120 "http://$CALLER_IP:8080/call?url=$1&n=$2&c=${3:-20}&format=kv"
}
kv() { awk -v k="$1" '$1==k{print $2; f=1} END{if(!f) print 0}' <<<"$2"; }
# wait_routed URL CODES... — until 20 calls all get one of CODES (the route is programmed).
wait_routed() {
  local url="$1" out n; shift
  for _ in $(seq 1 60); do
    out="$(call "$url" 20 || true)"; n=0
    for c in "$@"; do n=$((n + $(kv "status.$c" "$out"))); done
    ((n == 20)) && return 0
    sleep 1
  done
  say "(routes for $url not programmed after 60 s; last answer: $(tr '\n' ' ' <<<"$out" | cut -c1-120))"
}

# ---- step: routes reach the sidecar ----------------------------------------------------------
bold "Control plane: waiting until the caller's sidecar routes http://reviews:9080"
routed=0
for _ in $(seq 1 120); do
  out="$(call "http://reviews:9080/" 20 || true)"
  if [[ "$(kv status.200 "$out")" == 20 ]]; then routed=1; break; fi
  sleep 1
done
if ((routed)); then record "routes programmed over xDS" PASS "20 of 20 calls to http://reviews:9080 answered 200 through the sidecar"
else
  record "routes programmed over xDS" FAIL "calls to reviews do not route yet; last answer: $(tr '\n' ' ' <<<"${out:-none}" | cut -c1-160)"
  say "(the manager's xDS server must listen on the bridge address; see $STATE/logs/manager.log)"
fi

# ---- step: weft proxy-status -------------------------------------------------------------------
bold "weft proxy-status: every sidecar and whether it runs what the manager serves it"
# A sidecar ACKs a version a moment after the manager pushes it (the pods started just
# before, and each Service change is a new version): STALE for a moment is expected, as in
# istioctl proxy-status. Looked at again for up to 20 s; a sidecar stuck STALE still fails.
for waited in $(seq 0 20); do
  ps="$(bin/weft proxy-status 2>&1 || true)"
  total=$(($(wc -l <<<"$ps") - 1)); synced=$(tail -n +2 <<<"$ps" | grep -cvE 'STALE|REJECTED' || true)
  ((total > 0 && synced == total)) && break
  sleep 1
done
sed 's/^/   /' <<<"$ps"
((total > 0 && synced == total)) && say "(every sidecar SYNCED ${waited} s after the first look)"
if ((total > 0 && synced == total)); then record "weft proxy-status" PASS "$synced of $total sidecars SYNCED (none STALE or REJECTED)"
else record "weft proxy-status" FAIL "$synced of $total sidecars SYNCED (bin/weft proxy-status -o wide shows why)"; fi

if ((routed)); then
  # ---- step: canary split ------------------------------------------------------------------
  bold "Traffic split: MeshRoute reviews sends 80% to subset v1 and 20% to v2"
  out="$(call "http://reviews:9080/" "$CANARY_CALLS")"
  v1="$(kv version.v1 "$out")"; v2="$(kv version.v2 "$out")"
  detail="v1: $v1 / v2: $v2 of $CANARY_CALLS (target 80/20, v1 in $CANARY_V1_MIN..$CANARY_V1_MAX)"
  if ((v1 + v2 == CANARY_CALLS && v1 >= CANARY_V1_MIN && v1 <= CANARY_V1_MAX)); then record "canary split 80/20" PASS "$detail"
  else record "canary split 80/20" FAIL "$detail"; fi

  # ---- step: retries ----------------------------------------------------------------------------
  bold "Retries: ratings has a healthy pod and one that fails every call"
  # Both pods must be endpoints first: the failing one becomes ready a moment after the
  # healthy one, and calls before that would all find the healthy pod (up to 60 s).
  for _ in $(seq 1 60); do
    out="$(call "http://ratings-direct:9080/" 20 || true)"
    (($(kv status.500 "$out") > 0)) && break; sleep 1
  done
  out="$(call "http://ratings-direct:9080/" "$RETRY_CALLS")"
  bad="$(kv status.500 "$out")"
  say "without retries (MeshRoute ratings-direct): $bad of $RETRY_CALLS calls failed with 500"
  wait_routed "http://ratings:9080/" 200 500
  out="$(call "http://ratings:9080/" "$RETRY_CALLS")"
  good="$(kv status.200 "$out")"
  detail="with retries: $good of $RETRY_CALLS succeeded (without: $bad of $RETRY_CALLS failed)"
  if ((good >= RETRY_OK_MIN && bad >= RETRY_DIRECT_FAILED_MIN)); then record "retries hide a failing pod" PASS "$detail"
  else record "retries hide a failing pod" FAIL "$detail"; fi

  # ---- step: fault ----------------------------------------------------------------------------
  bold "Fault injection: MeshRoute details aborts 50% of calls with 503 in the caller's sidecar"
  wait_routed "http://details:9080/" 200 503
  out="$(call "http://details:9080/" "$FAULT_CALLS")"
  f="$(kv status.503 "$out")"; o="$(kv status.200 "$out")"
  detail="503: $f / 200: $o of $FAULT_CALLS (target 50% aborted, $FAULT_ABORT_MIN..$FAULT_ABORT_MAX)"
  if ((f >= FAULT_ABORT_MIN && f <= FAULT_ABORT_MAX && f + o == FAULT_CALLS)); then record "fault rule (abort 50%)" PASS "$detail"
  else record "fault rule (abort 50%)" FAIL "$detail"; fi

  # ---- step: timeout -------------------------------------------------------------------------
  bold "Timeouts: MeshRoute slow gives each call 1 s; the slow example sleeps as long as asked"
  wait_routed "http://slow:9080/%3Fms%3D$TIMEOUT_QUICK_MS" 200
  out="$(call "http://slow:9080/%3Fms%3D$TIMEOUT_QUICK_MS" "$TIMEOUT_CALLS")"; quick="$(kv status.200 "$out")"
  out="$(call "http://slow:9080/%3Fms%3D$TIMEOUT_SLOW_MS" "$TIMEOUT_CALLS")"; late="$(kv status.504 "$out")"
  detail="$TIMEOUT_QUICK_MS ms calls: $quick of $TIMEOUT_CALLS answered 200; $TIMEOUT_SLOW_MS ms calls: $late of $TIMEOUT_CALLS cut off with 504 after 1 s"
  if ((quick == TIMEOUT_CALLS && late == TIMEOUT_CALLS)); then record "route timeout (1 s)" PASS "$detail"
  else record "route timeout (1 s)" FAIL "$detail"; fi
fi

if ((routed)); then
  # ---- step: scale from zero -------------------------------------------------------------------
  bold "Scale from zero: MeshFunction hello starts with no pods; the caller's own sidecar holds the call"
  for _ in $(seq 1 60); do
    [[ "$(kubectl get mfn hello -o jsonpath='{.status.url}' 2>/dev/null)" != "" ]] && break; sleep 1
  done
  kubectl get mfn hello | sed 's/^/   /'
  pods0="$(kubectl get pods -l weft.dev/function=hello -o name | wc -l)"
  start=$(date +%s.%N)
  out="$(call "http://hello/" 1 || true)"
  took="$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.2f", e-s}')"
  cs="$(kv max_cold_start "$out")"
  detail="pods before: $pods0; first call: $(kv status.200 "$out") of 1 answered 200 in ${took}s, held ${cs}s in the caller's sidecar"
  if [[ "$pods0" == 0 && "$(kv status.200 "$out")" == 1 && "$(kv coldstarts "$out")" == 1 ]]; then
    record "cold start from zero" PASS "$detail"
  else record "cold start from zero" FAIL "$detail; last: $(tr '\n' ' ' <<<"$out" | cut -c1-160)"; fi
  # The caller's pod has weft.dev/access-log: "true": its sidecar wrote a JSON line for that call.
  sleep 0.5 # the access log is flushed every 100 ms
  alog="$(grep -h '"authority":"hello' "$STATE"/pods/default_caller-*/weft-sidecar.log 2>/dev/null | tail -n1 || true)"
  if [[ -n "$alog" ]]; then
    say "access log line of that call (caller's sidecar): $alog"
    record "access log line" PASS "$(grep -oE '"(response_code|duration|upstream_cluster)":("[^"]*"|[0-9]+)' <<<"$alog" | tr '\n' ' ')"
  else record "access log line" FAIL "no line for hello in the caller sidecar's log ($STATE/pods/default_caller-*/weft-sidecar.log)"; fi
  # The caller's sidecar also traced that call (weft.dev/trace-sample: "1") and exported the
  # spans to otlp-sink (examples/otlpsink) within a second: the hold is a span of its own.
  sink_ip="$(kubectl get pods -l app=otlp-sink -o jsonpath='{.items[0].status.podIP}' 2>/dev/null || true)"
  trace=""
  for _ in $(seq 1 20); do
    trace="$(curl -sf --max-time 3 "http://$sink_ip:4318/trace?span=weft.cold_start_hold" 2>/dev/null || true)"
    [[ -n "$trace" ]] && break; sleep 0.5
  done
  if [[ -n "$trace" ]]; then
    say "the cold-start call's trace (otlp-sink):"; sed 's/^/     /' <<<"$trace"
    record "cold start trace" PASS "$(grep -oE 'weft\.cold_start_hold \[[^]]*\] [0-9.]+m?s' <<<"$trace" | head -n1)"
  else record "cold start trace" FAIL "otlp-sink (${sink_ip:-no pod}) has no trace with a weft.cold_start_hold span"; fi

  # ---- step: scale to zero ---------------------------------------------------------------------
  bold "Scale to zero: after 6 s without calls (stable window) and 2 s grace, the last pod goes"
  start=$(date +%s)
  zero=0
  for _ in $(seq 1 120); do
    r="$(kubectl get deploy hello -o jsonpath='{.spec.replicas}' 2>/dev/null || echo x)"
    [[ "$r" == 0 ]] && { zero=1; break; }
    sleep 1
  done
  waited=$(( $(date +%s) - start ))
  kubectl get mfn hello | sed 's/^/   /'
  if ((zero)); then record "scale to zero" PASS "Deployment hello at 0 replicas ${waited}s after the last call"
  else record "scale to zero" FAIL "hello still has replicas after ${waited}s"; fi

  # ---- step: a burst from zero -----------------------------------------------------------------
  bold "A burst from zero: $BURST_CALLS concurrent calls while hello has no pods"
  for _ in $(seq 1 60); do
    [[ "$(kubectl get pods -l weft.dev/function=hello -o name | wc -l)" == 0 ]] && break; sleep 1
  done
  out="$(call "http://hello/" "$BURST_CALLS" "$BURST_CALLS" || true)"
  ok200="$(kv status.200 "$out")"
  detail="$ok200 of $BURST_CALLS answered 200, $(kv coldstarts "$out") held (longest $(kv max_cold_start "$out")s), slowest call $(kv max_latency "$out")s"
  if [[ "$ok200" == "$BURST_CALLS" ]]; then record "$BURST_CALLS calls from zero" PASS "$detail"
  else record "$BURST_CALLS calls from zero" FAIL "$detail; last: $(tr '\n' ' ' <<<"$out" | cut -c1-160)"; fi
fi

if ((routed)); then
  # ---- step: async call ------------------------------------------------------------------------
  bold "Async: the caller's sidecar queues calls in NATS JetStream (202 at once); hello's sidecars pull them and call back"
  q="url=http://hello/&n=10&c=10&format=kv&h=Prefer:respond-async&h=X-Callback-Url:http://$CALLER_IP:8080/callback"
  out=""
  for _ in $(seq 1 60); do
    out="$(curl -s --noproxy '*' --max-time 60 "http://$CALLER_IP:8080/call?$q" || true)"
    [[ "$(kv status.202 "$out")" == 10 ]] && break
    sleep 1
  done
  accepted="$(kv status.202 "$out")"
  cbs=0
  for _ in $(seq 1 60); do
    cbs="$(curl -s --noproxy '*' "http://$CALLER_IP:8080/callbacks" | sed -n 's/.*"200":\([0-9]*\).*/\1/p')"
    [[ "${cbs:-0}" -ge 10 ]] && break
    sleep 1
  done
  detail="$accepted of 10 answered 202; ${cbs:-0} callbacks with X-Function-Status 200"
  if [[ "$accepted" == 10 && "${cbs:-0}" -ge 10 ]]; then record "async calls with callbacks" PASS "$detail"
  else record "async calls with callbacks" FAIL "$detail"; fi

  # ---- step: redis ------------------------------------------------------------------------------
  bold "Redis: RedisProxy cache shards keys over redis-0..2 from the caller pod's own sidecar (127.0.0.1:6379)"
  CALLER_UID="$(kubectl get pods -l app=caller -o jsonpath='{.items[0].metadata.uid}')"
  CALLER_NS="weft-$(printf %s "$CALLER_UID" | sha256sum | cut -c1-9)"
  rcli() { ip netns exec "$CALLER_NS" redis-cli -p 6379 "$@"; }
  up=0
  for _ in $(seq 1 120); do
    [[ "$(rcli PING 2>/dev/null)" == PONG ]] && [[ "$(rcli SET weft:probe 1 2>/dev/null)" == OK ]] && { up=1; break; }
    sleep 1
  done
  if ((up)); then
    args=(); for i in $(seq 1 300); do args+=("key:$i" "value-$i"); done
    mset="$(rcli MSET "${args[@]}")"
    got="$(rcli MGET key:1 key:150 key:300 | tr '\n' ' ')"
    keys="$(rcli KEYS '*' 2>&1 | head -n1)"
    per=()
    total=0
    for ip in $(kubectl get pods -l app=redis -o jsonpath='{range .items[*]}{.status.podIP}{" "}{end}'); do
      n="$(redis-cli -h "$ip" -p 6379 DBSIZE)"; per+=("$n"); total=$((total + n))
    done
    say "MSET of 300 keys: $mset; MGET key:1 key:150 key:300 → $got"
    say "keys per shard: ${per[*]} (sum $total, incl. the probe key)"
    say "KEYS * → $keys"
    detail="300 keys spread ${per[*]} over 3 shards; MGET in order; KEYS refused"
    if [[ "$mset" == OK && "$got" == "value-1 value-150 value-300 " && $total == 301 && ${#per[@]} == 3 && "$keys" == ERR* ]] \
       && ! printf '%s\n' "${per[@]}" | grep -qx 0; then
      record "redis sharding (ketama)" PASS "$detail"
    else record "redis sharding (ketama)" FAIL "$detail (mset=$mset total=$total keys=$keys)"; fi
  else
    record "redis sharding (ketama)" FAIL "the caller's sidecar did not serve 127.0.0.1:6379 within 120 s"
  fi
fi

if ((routed)); then
  # ---- the caller is an unmodified app ---------------------------------------------------------
  bold "Unmodified apps: the caller has no proxy settings; weft-init's iptables rules send its connections to its sidecar"
  CALLER_POD="$(kubectl get pods -l app=caller -o jsonpath='{.items[0].metadata.name}')"
  CALLER_PID="$(kubectl get pod "$CALLER_POD" -o jsonpath='{.status.containerStatuses[?(@.name=="caller")].containerID}')"
  CALLER_PID="${CALLER_PID#weft-dev://}"
  # inpod CMD... — run CMD as the caller app would: in its network namespace (capture rules)
  # and mount namespace (its resolv.conf: Service names resolve through CoreDNS).
  inpod() { timeout 60 nsenter -t "$CALLER_PID" -n -m "$@"; }
  # sidecar_stat IP METRIC FILTER — the sum of a sidecar's /stats lines METRIC{...FILTER...}.
  sidecar_stat() {
    curl -s --noproxy '*' --max-time 5 "http://$1:15020/stats" \
      | awk -v m="$2{" -v f="$3" 'index($0, m) == 1 && index($0, f) {s += $NF} END {printf "%d", s}'
  }
  proxyenv="$(tr '\0' '\n' <"/proc/$CALLER_PID/environ" | grep -ic '^https\?_proxy=' || true)"
  inits="$(kubectl get pod "$CALLER_POD" -o jsonpath='{.spec.initContainers[*].name}')"
  rules="$(inpod iptables-save -t nat 2>/dev/null | grep -c 'REDIRECT --to-ports 1500[16]' || true)"
  c0="$(sidecar_stat "$CALLER_IP" weft_cluster_requests_total 'reviews.default.svc.cluster.local')"
  out="$(call "http://reviews:9080/" 20 || true)"
  c1="$(sidecar_stat "$CALLER_IP" weft_cluster_requests_total 'reviews.default.svc.cluster.local')"
  detail="proxy variables in the app: $proxyenv; init containers: ${inits:-none}; REDIRECT rules: $rules; 20 calls to http://reviews:9080 → $(kv status.200 "$out") × 200, sidecar counted $((c1 - c0))"
  if [[ "$proxyenv" == 0 && " $inits " == *" weft-init "* && "$rules" -ge 2 && "$(kv status.200 "$out")" == 20 && $((c1 - c0)) -ge 20 ]]; then
    record "unmodified caller, captured" PASS "$detail"
  else record "unmodified caller, captured" FAIL "$detail"; fi

  # ---- gRPC -------------------------------------------------------------------------------------
  bold "gRPC: grpc-go's health client calls grpc-echo:9090 by name, through the caller's and the server's sidecars"
  GRPC_IP=""
  for _ in $(seq 1 120); do
    GRPC_IP="$(kubectl get pods -l app=grpc-echo -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.status.podIP}{end}' 2>/dev/null)"
    [[ -n "$GRPC_IP" ]] && break; sleep 1
  done
  g0="$(sidecar_stat "$CALLER_IP" weft_cluster_requests_total 'outbound|9090||grpc-echo.default.svc.cluster.local')"
  i0="$(sidecar_stat "${GRPC_IP:-127.0.0.1}" weft_cluster_requests_total 'inbound|8080')"
  out=""
  for _ in $(seq 1 60); do
    out="$(inpod "$ROOT/bin/grpcecho" call -target grpc-echo:9090 -n 5 2>&1)" && break
    sleep 1
  done
  sed 's/^/   | /' <<<"$out" | head -n 6
  g1="$(sidecar_stat "$CALLER_IP" weft_cluster_requests_total 'outbound|9090||grpc-echo.default.svc.cluster.local')"
  i1="$(sidecar_stat "${GRPC_IP:-127.0.0.1}" weft_cluster_requests_total 'inbound|8080')"
  serving="$(grep -c ': SERVING served-by=' <<<"$out" || true)"
  detail="$serving of 5 health checks SERVING, watch: $(grep -o '[0-9]* updates' <<<"$out" || echo none) with the server's trailer; caller sidecar +$((g1 - g0)), server sidecar +$((i1 - i0)) requests"
  if [[ "$serving" == 5 && "$out" == *"watch: 3 updates served-by=["*"/grpc-v1]"* && $((g1 - g0)) -ge 6 && $((i1 - i0)) -ge 6 ]]; then
    record "gRPC through both sidecars" PASS "$detail"
  else record "gRPC through both sidecars" FAIL "$detail"; fi

  # ---- WebSocket ----------------------------------------------------------------------------------
  bold "WebSocket: a session with ws-echo:8081 by name (the Upgrade is tunneled through both sidecars)"
  w0="$(sidecar_stat "$CALLER_IP" weft_cluster_requests_total 'outbound|8081||ws-echo.default.svc.cluster.local')"
  out=""
  for _ in $(seq 1 60); do
    out="$(inpod "$ROOT/bin/wsecho" call -url ws://ws-echo:8081/chat -n 4 -size 262144 2>&1)" && break
    sleep 1
  done
  say "| $out"
  w1="$(sidecar_stat "$CALLER_IP" weft_cluster_requests_total 'outbound|8081||ws-echo.default.svc.cluster.local')"
  detail="$(grep -o '4 messages echoed ([0-9]* bytes)' <<<"$out" || echo 'no session'), $(grep -o 'closed normally' <<<"$out" || echo 'not closed normally'); caller sidecar +$((w1 - w0)) upgraded requests"
  if [[ "$out" == *"4 messages echoed (524302 bytes), upgrade 101 Switching Protocols, closed normally"* && $((w1 - w0)) -ge 1 ]]; then
    record "WebSocket session" PASS "$detail"
  else record "WebSocket session" FAIL "$detail"; fi

  # ---- a Service no MeshRoute names -------------------------------------------------------------
  bold "Every Service is in the mesh: http://plain/ has no MeshRoute and still goes through the caller's sidecar"
  mr="$(kubectl get meshroutes -o jsonpath='{range .items[*]}{.spec.hosts}{"\n"}{end}' | grep -c '"plain' || true)"
  p0="$(sidecar_stat "$CALLER_IP" weft_cluster_requests_total 'outbound|80||plain.default.svc.cluster.local')"
  wait_routed "http://plain/" 200
  out="$(call "http://plain/" 20)"
  p1="$(sidecar_stat "$CALLER_IP" weft_cluster_requests_total 'outbound|80||plain.default.svc.cluster.local')"
  detail="MeshRoutes naming plain: $mr; 20 calls → $(kv status.200 "$out") × 200 from $(kv version.plain-v1 "$out") × plain-v1; caller sidecar's default route counted +$((p1 - p0))"
  if [[ "$mr" == 0 && "$(kv status.200 "$out")" == 20 && "$(kv version.plain-v1 "$out")" == 20 && $((p1 - p0)) -ge 20 ]]; then
    record "Service with no MeshRoute" PASS "$detail"
  else record "Service with no MeshRoute" FAIL "$detail"; fi

  # ---- redis-cli by Service name -----------------------------------------------------------------
  bold "TCP: redis-cli in the caller pod talks to the Redis Service kv:6379 by name, proxied as TCP"
  t0="$(sidecar_stat "$CALLER_IP" weft_tcp_connections_total 'kv.default')"
  pong=""
  for _ in $(seq 1 60); do
    pong="$(inpod redis-cli -h kv -p 6379 PING 2>&1)"; [[ "$pong" == PONG ]] && break; sleep 1
  done
  set_="$(inpod redis-cli -h kv -p 6379 SET weft:demo captured 2>&1)"
  get_="$(inpod redis-cli -h kv.default.svc.cluster.local -p 6379 GET weft:demo 2>&1)"
  t1="$(sidecar_stat "$CALLER_IP" weft_tcp_connections_total 'kv.default')"
  b1="$(sidecar_stat "$CALLER_IP" weft_tcp_bytes_received_total 'kv.default')"
  detail="PING → $pong, SET → $set_, GET by FQDN → $get_; caller sidecar TCP connections to kv +$((t1 - t0)), $b1 bytes received"
  if [[ "$pong" == PONG && "$set_" == OK && "$get_" == captured && $((t1 - t0)) -ge 3 && "$b1" -gt 0 ]]; then
    record "redis-cli to a Service by name" PASS "$detail"
  else record "redis-cli to a Service by name" FAIL "$detail"; fi

  # ---- workload identity and mutual TLS (issue 16 point 4; docs/mtls.md) -------------------------
  bold "Identity and mutual TLS: every sidecar holds a SPIFFE certificate from the mesh CA; sidecar-to-sidecar calls are mutual TLS"
  # vault: an echo with its own ServiceAccount, in strict mode (pod label weft.dev/mtls=strict):
  # its sidecar refuses every plaintext connection. No readiness probe on the app port: strict
  # refuses the kubelet's plaintext probes there (docs/mtls.md).
  kubectl apply -f - <<'YAML' | sed 's/^/   /'
apiVersion: v1
kind: ServiceAccount
metadata: {name: vault, namespace: default}
---
apiVersion: v1
kind: Service
metadata: {name: vault, namespace: default}
spec: {selector: {app: vault}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: vault, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: vault}}
  template:
    metadata: {labels: {app: vault, weft.dev/mtls: strict}}
    spec:
      serviceAccountName: vault
      terminationGracePeriodSeconds: 2
      containers:
      - {name: vault, image: "weft.dev/examples/echo:latest", env: [{name: VERSION, value: vault}], ports: [{containerPort: 8080}]}
YAML
  VAULT_IP=""
  for _ in $(seq 1 120); do
    VAULT_IP="$(kubectl get pods -l app=vault -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.status.podIP}{end}' 2>/dev/null)"
    [[ -n "$VAULT_IP" ]] && break; sleep 1
  done
  PLAIN_IP="$(kubectl get pods -l app=plain -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.status.podIP}{end}' 2>/dev/null | head -c 15)"
  # sidecar_counter IP METRIC — a sidecar's unlabelled /stats counter METRIC.
  sidecar_counter() {
    curl -s --noproxy '*' --max-time 5 "http://$1:15020/stats" | awk -v m="$2" '$1 == m {s += $2} END {printf "%d", s}'
  }
  # svid APP — the SPIFFE ID APP's sidecar logged for its workload certificate.
  svid() {
    local d; d="$(ls -d "$STATE"/pods/default_"$1"-*/ 2>/dev/null | tail -n1)"
    grep -h 'workload certificate' "$d"weft-sidecar.log 2>/dev/null | grep -oE 'spiffe://[^ "]+' | tail -n1
  }
  id_caller="$(svid caller)"; id_plain="$(svid plain)"
  for _ in $(seq 1 60); do id_vault="$(svid vault)"; [[ -n "$id_vault" ]] && break; sleep 1; done
  say "caller: ${id_caller:-none}"; say "plain:  ${id_plain:-none}"; say "vault:  ${id_vault:-none}"
  if [[ "$id_caller" == spiffe://*/ns/default/sa/default && "$id_plain" == spiffe://*/ns/default/sa/default && "$id_vault" == spiffe://*/ns/default/sa/vault ]]; then
    record "workload identity (SPIFFE)" PASS "caller and plain: $id_caller; vault: $id_vault"
  else record "workload identity (SPIFFE)" FAIL "caller: ${id_caller:-none}, plain: ${id_plain:-none}, vault: ${id_vault:-none} (grep 'workload certificate' in $STATE/pods/*/weft-sidecar.log)"; fi

  wait_routed "http://vault/" 200
  out="$(call "http://vault/" 20)"
  vh="$(sidecar_counter "${VAULT_IP:-127.0.0.1}" weft_inbound_tls_handshakes_total)"
  vr="$(sidecar_counter "${VAULT_IP:-127.0.0.1}" weft_inbound_plaintext_refused_total)"
  ph="$(sidecar_counter "${PLAIN_IP:-127.0.0.1}" weft_inbound_tls_handshakes_total)"
  detail="20 calls caller → http://vault/ (strict) → $(kv status.200 "$out") × 200; verified client certificates: vault $vh handshakes, plain $ph"
  if [[ "$(kv status.200 "$out")" == 20 && "$vh" -ge 1 && "$ph" -ge 1 ]]; then
    record "mutual TLS between sidecars" PASS "$detail"
  else record "mutual TLS between sidecars" FAIL "$detail"; fi

  # The denied call: a caller without a sidecar (this host, over the bridge) speaks plaintext
  # to vault's app port; capture brings it to vault's sidecar, which closes it (strict).
  denied="$(curl -s --noproxy '*' --max-time 5 -o /dev/null -w '%{http_code}' "http://${VAULT_IP:-127.0.0.1}:8080/" 2>&1 || true)"
  vr1="$(sidecar_counter "${VAULT_IP:-127.0.0.1}" weft_inbound_plaintext_refused_total)"
  detail="plaintext GET http://$VAULT_IP:8080/ from a caller without a sidecar → HTTP ${denied:-000} (000: connection closed), vault's sidecar refused +$((vr1 - vr)) plaintext connection(s)"
  if [[ "${denied:-000}" == 000 && $((vr1 - vr)) -ge 1 ]]; then
    record "denied: plaintext to strict" PASS "$detail"
  else record "denied: plaintext to strict" FAIL "$detail"; fi

  # ---- authorization (issue 16 point 5; docs/authorization.md) ----------------------------------
  bold "Authorization: a MeshPolicy lets the default ServiceAccount GET vault's / and nothing else; the rest is 403 naming the policy"
  kubectl apply -f - >/dev/null <<'EOF'
apiVersion: mesh.weft.dev/v1alpha1
kind: MeshPolicy
metadata: {name: vault-readers, namespace: default}
spec:
  selector: {labels: {app: vault}}
  action: ALLOW
  rules:
  - from: [{principals: [default/default]}]
    to: [{paths: ["/"], methods: [GET]}]
EOF
  a0="$(sidecar_stat "${VAULT_IP:-127.0.0.1}" weft_authz_requests_total 'decision="deny"')"
  code=""; body=""
  for _ in $(seq 1 60); do
    resp="$(inpod curl -s --max-time 5 -w '\n%{http_code}' http://vault/admin 2>&1 || true)"
    code="$(tail -n1 <<<"$resp")"; body="$(sed '$d' <<<"$resp" | head -n1)"
    [[ "$code" == 403 ]] && break; sleep 1
  done
  out="$(call "http://vault/" 10)"
  a1="$(sidecar_stat "${VAULT_IP:-127.0.0.1}" weft_authz_requests_total 'decision="deny"')"
  detail="GET http://vault/admin from the caller → $code \"$(cut -c1-90 <<<"$body")\"; GET / → $(kv status.200 "$out") × 200 of 10; vault's sidecar denied +$((a1 - a0))"
  if [[ "$code" == 403 && "$body" == *"MeshPolicy default/vault-readers"* && "$(kv status.200 "$out")" == 10 && $((a1 - a0)) -ge 1 ]]; then
    record "denied by MeshPolicy" PASS "$detail"
  else record "denied by MeshPolicy" FAIL "$detail"; fi
  kubectl delete meshpolicy vault-readers --ignore-not-found >/dev/null
fi

bold "Custom resources"
kubectl get mr,mfn,rp,mp 2>&1 | sed 's/^/   /'

bold "Summary"
printf '   %-34s %-5s %s\n' STEP RESULT DETAIL
for r in "${RESULTS[@]}"; do printf '   %s\n' "$r"; done
if ((FAILED)); then say "$FAILED step(s) failed"; exit 1; fi
say "all steps passed"
