#!/usr/bin/env bash
# Fails when the generated CRDs, RBAC or deepcopy code differ from what is committed, i.e. when
# someone changed api/ or a +kubebuilder marker and forgot `make manifests generate`.
# Run it after `make manifests generate` (make verify-generated and make test do).
set -euo pipefail
cd "$(dirname "$0")/.."
paths=(config/crd/bases config/rbac/role.yaml api/v1alpha1/zz_generated.deepcopy.go)
if ! git rev-parse --git-dir >/dev/null 2>&1; then
  echo "verify-generated: not a git checkout; skipping the staleness check" >&2
  exit 0
fi
stale=$(git status --porcelain -- "${paths[@]}")
if [[ -n "$stale" ]]; then
  echo "Generated files are stale or uncommitted:" >&2
  echo "$stale" >&2
  git --no-pager diff --stat -- "${paths[@]}" >&2 || true
  echo "Run 'make manifests generate' and commit the result." >&2
  exit 1
fi
echo "generated files are up to date"
