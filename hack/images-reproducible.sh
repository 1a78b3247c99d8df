#!/usr/bin/env bash
# hack/images-reproducible.sh — `make images` twice must give identical images: the same
# digests in images.txt and the same bytes in every file of the two OCI layouts.
#
#   hack/images-reproducible.sh          both builds share the Go build cache (quick once warm)
#   COLD=1 hack/images-reproducible.sh   the second build starts from an empty GOCACHE, so the
#                                        compiler's own output is compared too (slow: every
#                                        package for both platforms, many minutes on 2 cores)
#
# Extra arguments go to make (e.g. VERSION=v0.1.0). Exits non-zero on any difference.
set -euo pipefail
cd "$(dirname "$0")/.."

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

make --no-print-directory images DIST="$tmp/a" "$@"
if [[ "${COLD:-}" == 1 ]]; then
  GOCACHE="$tmp/gocache" make --no-print-directory images DIST="$tmp/b" "$@"
else
  make --no-print-directory images DIST="$tmp/b" "$@"
fi

if ! diff -r "$tmp/a" "$tmp/b"; then
  echo "images-reproducible: the two builds differ (above)" >&2
  exit 1
fi
echo "images-reproducible: identical ($(wc -l <"$tmp/a/images.txt") images, $(find "$tmp/a/oci/blobs" -type f | wc -l) blobs)"
cat "$tmp/a/images.txt"
