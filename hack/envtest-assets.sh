#!/usr/bin/env bash
# Kept for old callers: the logic is in hack/envtest (package internal/k8sbin); same flags and output.
[[ -z "${KUBEBUILDER_ASSETS:-}" ]] || export KUBEBUILDER_ASSETS="$(realpath -m -- "$KUBEBUILDER_ASSETS")"
cd "$(dirname "$0")/.." && exec go run ./hack/envtest "$@"
