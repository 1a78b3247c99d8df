#!/usr/bin/env bash
# hack/e2e.sh — run the end-to-end tests (test/e2e, build tag e2e) against a local mesh the
# tests start themselves (internal/sandbox, as `weft dev`). Needs root for the pod network
# namespaces; builds bin/ and finds the control-plane binaries offline. Extra arguments go
# to `go test` (e.g. -run TestCanarySplit).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "e2e: needs root (network namespaces)" >&2; exit 1; }
  exec sudo -E env "PATH=$PATH" "$0" "$@"
fi
hack/deps.sh mesh
command -v kubectl >/dev/null || { echo "e2e: kubectl is not on PATH" >&2; exit 1; }
mkdir -p bin
for b in manager sidecar weft weft-init; do go build -o "bin/$b" "./cmd/$b"; done
for b in echo slow flaky caller grpcecho wsecho otlpsink; do go build -o "bin/$b" "./examples/$b"; done
# -mesh: also kube-proxy and CoreDNS, built once into ~/.cache/weft/mesh (minutes the first time)
KUBEBUILDER_ASSETS="$(go run ./hack/envtest -mesh | tail -n1)"
export KUBEBUILDER_ASSETS
# The output is kept whole in $WEFT_E2E_LOG; on failure a summary is printed last, so the tail
# of a CI log says which test failed or hung and where its goroutines were blocked (a timeout's
# goroutine dump otherwise ends with the last-created goroutines, usually idle HTTP conns).
log="${WEFT_E2E_LOG:-/tmp/weft-e2e.log}"
rc=0
go test -tags e2e -count=1 -timeout "${E2E_TIMEOUT:-30m}" -v ./test/e2e "$@" 2>&1 | tee "$log" || rc=${PIPESTATUS[0]}
if (( rc != 0 )); then
  hack/e2e-summary.sh "$log"
fi
exit "$rc"
