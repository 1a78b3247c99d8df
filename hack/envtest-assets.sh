#!/usr/bin/env bash
# hack/envtest-assets.sh — find or build the control-plane binaries that
# envtest and the local mesh need: kube-apiserver, etcd, kube-controller-manager.
#
# The LAST line on stdout is an absolute directory holding all three
# (executable). Everything else goes to stderr. Usage:
#
#   KUBEBUILDER_ASSETS="$(hack/envtest-assets.sh | tail -n1)" go test ./...
#
# Resolution order (see hack/envtest/README.md):
#   1. $KUBEBUILDER_ASSETS, if it holds kube-apiserver and etcd
#   2. setup-envtest's store: $ENVTEST_ROOT/k8s/<K8S_VERSION>-<os>-<arch>
#   3. setup-envtest's download (hard timeout), unless WEFT_ENVTEST_NO_DOWNLOAD=1
#   4. build from Go modules at pinned versions into the store dir of step 2
# kube-controller-manager is never in setup-envtest's archive: when the chosen
# dir lacks it, it is built into the store dir and the script prints an overlay
# dir of symlinks (see README).
#
# Flags / environment:
#   --rebuild | WEFT_ENVTEST_REBUILD=1        skip 1-3, rebuild all three
#   --no-download | WEFT_ENVTEST_NO_DOWNLOAD=1  skip step 3
#   WEFT_ENVTEST_DOWNLOAD_TIMEOUT (seconds, default 60)
set -euo pipefail
shopt -s inherit_errexit

# ---- pinned versions (bump here; the stamp files make the next run rebuild) ----
K8S_VERSION="${WEFT_K8S_VERSION:-v1.36.3}"          # k8s.io/kubernetes module tag
ETCD_VERSION="${WEFT_ETCD_VERSION:-v3.6.16}"        # go.etcd.io/etcd/server/v3; newest v3.6: go list -m -versions go.etcd.io/etcd/server/v3
SETUP_ENVTEST_VERSION="${WEFT_SETUP_ENVTEST_VERSION:-v0.25.1}" # sigs.k8s.io/controller-runtime/tools/setup-envtest
RECIPE=1  # bump when the build recipe below changes in a way that needs a rebuild

log() { printf 'envtest-assets: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

REBUILD="${WEFT_ENVTEST_REBUILD:-0}"
NO_DOWNLOAD="${WEFT_ENVTEST_NO_DOWNLOAD:-0}"
DL_TIMEOUT="${WEFT_ENVTEST_DOWNLOAD_TIMEOUT:-60}"
for arg in "$@"; do
  case "$arg" in
    --rebuild) REBUILD=1 ;;
    --no-download) NO_DOWNLOAD=1 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) die "unknown argument: $arg" ;;
  esac
done

command -v go >/dev/null || die "go is not on PATH"
GOOS="$(go env GOOS)"; GOARCH="$(go env GOARCH)"
K8S_SEMVER="${K8S_VERSION#v}"                       # 1.36.3
K8S_MINOR="${K8S_SEMVER%.*}"                        # 1.36
K8S_STAGING_VERSION="v0.${K8S_SEMVER#*.}"           # v0.36.3

ENVTEST_ROOT="${XDG_DATA_HOME:-$HOME/.local/share}/kubebuilder-envtest"
STORE="$ENVTEST_ROOT/k8s/${K8S_SEMVER}-${GOOS}-${GOARCH}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/weft"
# kube-controller-manager for an overlay (steps 1 and 3) lives here, not in the
# store: a store dir holding only it would make setup-envtest treat 1.36.3 as
# installed and hand back a dir without kube-apiserver.
KCM_DIR="$CACHE/kcm/${K8S_SEMVER}-${GOOS}-${GOARCH}"
BINS=(kube-apiserver etcd kube-controller-manager)

mkdir -p "$CACHE"  # not $STORE: an existing (empty) store dir fools setup-envtest

# One run at a time per machine (builds are long; parallel make jobs may call us).
exec 9>"$CACHE/envtest-assets.lock"
if ! flock -n 9; then
  log "another envtest-assets run holds $CACHE/envtest-assets.lock; waiting"
  flock 9
fi

# The stamp of a binary we built: what it was built from.
stamp_want() {
  case "$1" in
    etcd) echo "etcd=$ETCD_VERSION recipe=$RECIPE" ;;
    *)    echo "kubernetes=$K8S_VERSION staging=$K8S_STAGING_VERSION recipe=$RECIPE" ;;
  esac
}
stamp_file() { echo "$1/.weft-stamp-$2"; }  # stamp_file DIR BIN

# dir_has DIR BIN: usable if executable and either not built by us (e.g.
# setup-envtest put it there) or built from the current pins.
dir_has() {
  local f
  f="$(stamp_file "$1" "$2")"
  [[ -x "$1/$2" ]] || return 1
  [[ ! -e "$f" ]] || [[ "$(cat "$f")" == "$(stamp_want "$2")" ]]
}
store_has() { dir_has "$STORE" "$1"; }
has_core() { dir_has "$1" kube-apiserver && dir_has "$1" etcd; }
has_all()  { has_core "$1" && dir_has "$1" kube-controller-manager; }



# ---- step 4 machinery: build from Go modules ------------------------------

# go mod download -json MOD@VER, print field (Dir / GoMod).
mod_field() {
  local field="$1" modver="$2"
  (cd "$CACHE" && GOFLAGS='' go mod download -json "$modver") \
    | sed -n "s/^[[:space:]]*\"$field\": \"\\(.*\\)\",\{0,1\}\$/\\1/p"
}

# write_gomod DIR CONTENT NOTE: (re)write DIR/go.mod only when it changed;
# a changed go.mod also drops go.sum (-mod=mod refills it).
write_gomod() {
  local dir="$1" note="$3" tmp
  tmp="$(mktemp "$dir/.go.mod.XXXXXX")"
  printf '%s\n' "$2" >"$tmp"
  if [[ -f "$dir/go.mod" ]] && cmp -s "$tmp" "$dir/go.mod"; then
    rm -f "$tmp"; return 0
  fi
  log "writing $dir/go.mod ($note)"
  mv -f "$tmp" "$dir/go.mod"
  rm -f "$dir/go.sum"
}

# Create/refresh the throwaway module for k8s.io/kubernetes.
k8s_module() {
  local dir="$CACHE/k8s-build" gomod k8smod staging goline
  mkdir -p "$dir"
  k8smod="$(mod_field GoMod "k8s.io/kubernetes@$K8S_VERSION")" || true
  [[ -s "$k8smod" ]] || die "could not fetch k8s.io/kubernetes@$K8S_VERSION go.mod via the module proxy"
  # The exact staging list: every `k8s.io/X => ./staging/src/k8s.io/X` replace.
  staging="$(awk '
    /^replace[[:space:]]*\(/ {r=1; next}
    r && /^\)/ {r=0; next}
    r && $2 == "=>" && $3 ~ /^\.\/staging\// {print $1}
    /^replace[[:space:]]+[^(]/ && $3 == "=>" && $4 ~ /^\.\/staging\// {print $2}
  ' "$k8smod" | sort -u)"
  [[ -n "$staging" ]] || die "no staging replaces found in $k8smod"
  goline="$(grep -m1 '^go ' "$k8smod")"
  gomod="module weft.local/k8s-build

$goline
$(grep '^godebug ' "$k8smod" || true)

require k8s.io/kubernetes $K8S_VERSION

replace (
$(for m in $staging; do printf '\t%s => %s %s\n' "$m" "$m" "$K8S_STAGING_VERSION"; done)
)
"
  write_gomod "$dir" "$gomod" "$(wc -w <<<"$staging") staging modules -> $K8S_STAGING_VERSION"
  echo "$dir"
}

etcd_module() {
  local dir="$CACHE/etcd-build" gomod m goline srvmod
  mkdir -p "$dir"
  srvmod="$(mod_field GoMod "go.etcd.io/etcd/server/v3@$ETCD_VERSION")" || true
  [[ -s "$srvmod" ]] || die "could not fetch go.etcd.io/etcd/server/v3@$ETCD_VERSION go.mod via the module proxy"
  goline="$(grep -m1 '^go ' "$srvmod")"
  gomod="module weft.local/etcd-build

$goline

require go.etcd.io/etcd/server/v3 $ETCD_VERSION

replace (
$(for m in go.etcd.io/etcd/api/v3 go.etcd.io/etcd/client/pkg/v3 go.etcd.io/etcd/client/v3 go.etcd.io/etcd/pkg/v3; do
    printf '\t%s => %s %s\n' "$m" "$m" "$ETCD_VERSION"; done)
)
"
  write_gomod "$dir" "$gomod" "etcd modules -> $ETCD_VERSION"
  echo "$dir"
}

# go_build OUTDIR MODDIR OUTNAME PKG LDFLAGS — atomic: build to a temp name, then mv.
go_build() {
  local outdir="$1" moddir="$2" out="$3" pkg="$4" ldflags="$5" t0 tmp
  mkdir -p "$outdir"
  tmp="$outdir/.$out.tmp.$$"
  t0=$SECONDS
  log "building $out from $pkg (tens of minutes with a cold Go build cache on 2 cores; log: $CACHE/build-$out.log)"
  if ! (cd "$moddir" && GOFLAGS=-mod=mod CGO_ENABLED=0 GOWORK=off \
        nice -n 10 go build -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg") \
        >"$CACHE/build-$out.log" 2>&1; then
    rm -f "$tmp"
    tail -n 30 "$CACHE/build-$out.log" >&2
    die "go build of $out failed (full log: $CACHE/build-$out.log)"
  fi
  mv -f "$tmp" "$outdir/$out"
  stamp_want "$out" >"$(stamp_file "$outdir" "$out")"
  log "built $outdir/$out in $((SECONDS - t0))s"
}

k8s_ldflags() {
  local date major minor l="-s -w" pkg
  date="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' \
          "$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.info" 2>/dev/null || true)"
  major="${K8S_SEMVER%%.*}"; minor="${K8S_MINOR#*.}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    l+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    l+=" -X $pkg.gitTreeState=archive"
    [[ -z "$date" ]] || l+=" -X $pkg.buildDate=$date"
  done
  echo "$l"
}

build_k8s() { # build_k8s OUTDIR kube-apiserver|kube-controller-manager
  local moddir
  moddir="$(k8s_module)"
  go_build "$1" "$moddir" "$2" "k8s.io/kubernetes/cmd/$2" "$(k8s_ldflags)"
}

build_etcd() { # build_etcd OUTDIR
  local moddir pkg
  moddir="$(etcd_module)"
  # In v3.6 the server module has `package main` at its root (a wrapper around
  # go.etcd.io/etcd/server/v3/etcdmain.Main); older layouts had the main only in
  # the root go.etcd.io/etcd/v3 module, in which case we write our own wrapper.
  pkg=go.etcd.io/etcd/server/v3
  local srvdir
  srvdir="$(mod_field Dir "go.etcd.io/etcd/server/v3@$ETCD_VERSION")" || true
  if ! grep -qs '^package main' "$srvdir/main.go"; then
    mkdir -p "$moddir/etcd"
    printf 'package main\n\nimport (\n\t"os"\n\n\t"go.etcd.io/etcd/server/v3/etcdmain"\n)\n\nfunc main() { etcdmain.Main(os.Args) }\n' \
      >"$moddir/etcd/main.go"
    pkg=weft.local/etcd-build/etcd
  fi
  go_build "$1" "$moddir" etcd "$pkg" "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-$ETCD_VERSION"
}

ensure_bin() { # ensure_bin DIR BIN: build BIN into DIR unless a usable one is there
  if [[ "$REBUILD" != 1 ]] && dir_has "$1" "$2"; then return 0; fi
  case "$2" in
    etcd) build_etcd "$1" ;;
    *) build_k8s "$1" "$2" ;;
  esac
}

# Given a dir with kube-apiserver and etcd but no kube-controller-manager:
# print a dir with all three. For the store itself (setup-envtest downloaded
# 1.36.3), build it into the store; otherwise build it into $KCM_DIR and print
# an overlay dir of symlinks.
with_kcm() {
  local src="$1" ov b
  if [[ "$src" == "$(cd "$STORE" 2>/dev/null && pwd -P || true)" ]]; then
    ensure_bin "$STORE" kube-controller-manager
    echo "$STORE"; return
  fi
  ensure_bin "$KCM_DIR" kube-controller-manager
  # Overlay: symlinks to everything in $src plus our kube-controller-manager.
  ov="$CACHE/envtest-overlay/$(printf '%s' "$src" | sha256sum | cut -c1-12)"
  rm -rf "$ov"; mkdir -p "$ov"
  for b in "$src"/*; do ln -s "$b" "$ov/$(basename "$b")"; done
  ln -sfn "$KCM_DIR/kube-controller-manager" "$ov/kube-controller-manager"
  log "$src has no kube-controller-manager; overlay $ov = $src + $KCM_DIR/kube-controller-manager"
  echo "$ov"
}

resolve() {
  local d
  if [[ "$REBUILD" == 1 ]]; then
    log "rebuild forced: building all three into $STORE"
    for b in "${BINS[@]}"; do ensure_bin "$STORE" "$b"; done
    echo "$STORE"; return
  fi

  # 1. $KUBEBUILDER_ASSETS
  if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
    d="$(cd "$KUBEBUILDER_ASSETS" 2>/dev/null && pwd -P)" || d=''
    if [[ -n "$d" ]] && has_core "$d"; then
      log "using \$KUBEBUILDER_ASSETS=$d"
      if has_all "$d"; then echo "$d"; else with_kcm "$d"; fi
      return
    fi
    log "\$KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks kube-apiserver/etcd; ignoring it"
  fi

  # 2. setup-envtest's store, all three present (and current, if we built them)
  if store_has kube-apiserver && store_has etcd && store_has kube-controller-manager; then
    log "using cached $STORE"
    echo "$STORE"; return
  fi

  # 3. setup-envtest download (needs the internet; fails fast and quietly here)
  if [[ "$NO_DOWNLOAD" != 1 ]] && ! { store_has kube-apiserver && store_has etcd; }; then
    log "trying setup-envtest@$SETUP_ENVTEST_VERSION use $K8S_MINOR.x (timeout ${DL_TIMEOUT}s)"
    local out rc=0 why
    out="$(cd "$CACHE" && GOFLAGS='' timeout -k 5 "$DL_TIMEOUT" \
          go run "sigs.k8s.io/controller-runtime/tools/setup-envtest@$SETUP_ENVTEST_VERSION" \
          use "$K8S_MINOR.x" -p path --bin-dir "$ENVTEST_ROOT" 2>"$CACHE/setup-envtest.log")" || rc=$?
    d="$(tail -n1 <<<"$out")"
    if [[ $rc == 0 && -n "$d" ]] && has_core "$d"; then
      d="$(cd "$d" && pwd -P)"
      log "setup-envtest provided $d"
      if has_all "$d"; then echo "$d"; else with_kcm "$d"; fi
      return
    fi
    if [[ $rc == 124 || $rc == 137 ]]; then why="timed out after ${DL_TIMEOUT}s"
    elif [[ $rc == 0 ]]; then why="it answered '$d', which lacks a current kube-apiserver/etcd"
    else why="$( (grep -v '^go: downloading' "$CACHE/setup-envtest.log" || true) | head -n1 | cut -c1-160)"
    fi
    log "setup-envtest unavailable: $why"
    log "falling back to building from Go modules (full output: $CACHE/setup-envtest.log)"
  fi

  # 4. build whatever is missing into the store
  for b in "${BINS[@]}"; do ensure_bin "$STORE" "$b"; done
  echo "$STORE"
}

T0=$SECONDS
DIR="$(resolve)"
DIR="${DIR##*$'\n'}"

# 5. verify
for b in "${BINS[@]}"; do
  [[ -x "$DIR/$b" ]] || die "$DIR/$b is missing or not executable"
  if ! v="$("$DIR/$b" --version 2>&1)"; then
    printf '%s\n' "$v" >&2
    die "$DIR/$b --version failed"
  fi
  log "$b: $(head -n1 <<<"$v")"
done
log "ready in $((SECONDS - T0))s"
echo "$DIR"
