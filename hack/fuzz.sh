#!/usr/bin/env bash
# Runs every Go fuzz target in the module for a bounded time each (FUZZTIME, default 15s).
# Go runs one fuzz target per invocation, so each target gets its own `go test -fuzz`.
# Crashers are written to the package's testdata/fuzz/<Target>/ and then run as regression
# cases by plain `go test`.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime="${FUZZTIME:-15s}"
pkgs=$(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -r -n1 dirname | sort -u)
if [[ -z "$pkgs" ]]; then
  echo "no fuzz targets found" >&2
  exit 0
fi
for pkg in $pkgs; do
  for target in $(go test "$pkg" -list '^Fuzz' | grep '^Fuzz' || true); do
    echo "fuzz: $pkg $target for $fuzztime"
    go test "$pkg" -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime"
  done
done
