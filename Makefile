# Weft — a Kubernetes-native service mesh for functions.
#
# `make help` lists the targets. `make test` and `make demo` do all set-up themselves.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

LOCALBIN ?= $(shell pwd)/bin
CONTROLLER_TOOLS_VERSION ?= v0.23.0
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
GO ?= go
# golangci-lint is built from its Go module (pinned) into a cache outside the clone.
GOLANGCI_LINT_VERSION ?= v2.15.0
TOOLBIN ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/weft/tools
GOLANGCI_LINT ?= $(TOOLBIN)/golangci-lint
# Envtest binaries (kube-apiserver, etcd, kube-controller-manager) are found or built by
# hack/envtest (package internal/k8sbin) into a cache outside the clone; it prints their
# directory as its last line.
ENVTEST ?= $(GO) run ./hack/envtest

.PHONY: all
all: build

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate CRDs and RBAC into config/.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd:allowDangerousTypes=true paths="./api/..." paths="./controllers/..." output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac
	go run ./hack/crd-template-schema

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate DeepCopy methods.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."

.PHONY: verify-generated
verify-generated: manifests generate ## Fail if generated files are stale.
	@hack/verify-generated.sh

.PHONY: fmt
fmt: ## go fmt.
	$(GO) fmt ./...

.PHONY: vet
vet: ## go vet.
	$(GO) vet ./...

.PHONY: lint
lint: golangci-lint ## golangci-lint (.golangci.yml): the standard set, depguard layering, errorlint, doc comments.
	$(GOLANGCI_LINT) run ./...

.PHONY: lint-report
lint-report: golangci-lint ## Long and complex functions (funlen, gocyclo): reported, never failing.
	$(GOLANGCI_LINT) run --enable-only funlen,gocyclo --issues-exit-code 0 \
	  --max-issues-per-linter 0 --max-same-issues 0 --uniq-by-line=false ./...

.PHONY: golangci-lint
golangci-lint: ## Install golangci-lint $(GOLANGCI_LINT_VERSION) into $(TOOLBIN) unless it is there.
	@if ! "$(GOLANGCI_LINT)" version 2>/dev/null | grep -q "version $(GOLANGCI_LINT_VERSION:v%=%) "; then \
	  echo "installing golangci-lint $(GOLANGCI_LINT_VERSION) into $(TOOLBIN) (a few minutes on 2 cores)"; \
	  GOBIN="$(TOOLBIN)" GOFLAGS= $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION); \
	fi

.PHONY: envtest
envtest: ## Find or build kube-apiserver, etcd and kube-controller-manager (offline).
	@$(ENVTEST)

.PHONY: test
test: manifests generate vet ## Run all tests (unit, golden, envtest) — does its own set-up.
	@hack/deps.sh test
	@hack/verify-generated.sh
	assets="$$($(ENVTEST) | tail -n1)" && \
	  KUBEBUILDER_ASSETS="$$assets" $(GO) test ./... -count=1 -timeout 30m

.PHONY: test-race
test-race: ## Data-plane tests under the race detector (sidecar and its main).
	@hack/deps.sh test
	$(GO) test -race -count=1 ./sidecar/... ./cmd/sidecar

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME each (default 15s).
	FUZZTIME=$(or $(FUZZTIME),15s) hack/fuzz.sh

##@ Benchmarks (figures go to BENCHMARKS.md)

.PHONY: bench
bench: ## Go benchmarks of the pure cores and the in-process data planes (BENCHTIME=1s).
	$(GO) test ./internal/... ./sidecar/... -run '^$$' -bench . -benchmem -benchtime $(or $(BENCHTIME),1s) -count 1

.PHONY: bench-http
bench-http: ## wrk: backend direct vs through the sidecar vs through haproxy.
	hack/bench-http.sh

.PHONY: bench-telemetry
bench-telemetry: ## wrk through three sidecars: telemetry off, Istio metrics (tracing off), metrics + access log (~2 min).
	hack/bench-telemetry.sh

.PHONY: bench-grpc
bench-grpc: ## grpc-go unary at 1,000/s: direct vs two sidecars vs two haproxies (sequential, paired, three-way, in turns); TRACE=1 traces, CAPTURE=1 times each proxy from a packet capture, MIXED=1 crosses the chains, L4=1 adds a Go TCP forwarder pair vs haproxy mode tcp and a minimal Go HTTP/2 relay pair, TURNS_ONLY=1 TURN_RUNS=n runs only the in-turns probe (the bar's condition), SIDECAR_ENV sets the sidecars' env.
	hack/bench-grpc.sh

.PHONY: bench-capture
bench-capture: ## iperf3, wrk and grpc-go unary (1,000/s in turns) through an iptables-captured sidecar in network namespaces vs direct, HTTP_PROXY and haproxy (root, ~6 min; ONLY=tcp|http|grpc).
	hack/bench-capture.sh

.PHONY: bench-redis
bench-redis: ## redis-benchmark: one shard direct vs the sidecar's proxy vs nutcracker, P=1 and P=16.
	hack/bench-redis.sh

.PHONY: bench-redis-limits
bench-redis-limits: ## 100,000-command pipeline time and RSS under 64 MB values: redis vs the sidecar's proxy vs nutcracker.
	hack/redis/bench-limits.sh

##@ Build

.PHONY: build
build: manifests generate ## Build bin/manager, bin/sidecar and bin/weft-init (the sidecar image holds both).
	$(GO) build -o $(LOCALBIN)/manager ./cmd/manager
	$(GO) build -o $(LOCALBIN)/sidecar ./cmd/sidecar
	$(GO) build -o $(LOCALBIN)/weft-init ./cmd/weft-init

.PHONY: build-all
build-all: build ## Build bin/ for the local mesh: manager, sidecar, weft and the examples.
	$(GO) build -o $(LOCALBIN)/weft ./cmd/weft
	for e in echo slow flaky caller grpcecho wsecho otlpsink; do $(GO) build -o $(LOCALBIN)/$$e ./examples/$$e; done

.PHONY: weft
weft: ## Build bin/weft (the CLI) and bin/kubectl-weft (the same binary as a kubectl plugin: put it on PATH).
	$(GO) build -o $(LOCALBIN)/weft ./cmd/weft
	ln -sf weft $(LOCALBIN)/kubectl-weft

# Image tag and version label; DIST is where images and install.yaml go.
VERSION ?= $(shell git describe --tags --always --dirty)
DIST ?= dist

.PHONY: images
images: ## OCI images (manager, sidecar, weft, examples; linux/amd64+arm64) into dist/oci, no Docker; REGISTRY=host/path also pushes.
	$(GO) run ./hack/images -version $(VERSION) -out $(DIST) -registry "$(REGISTRY)"

.PHONY: release
release: ## The images, then dist/install.yaml: config/default with every image pinned by digest (VERSION=v0.x.y).
	$(GO) run ./hack/images -version $(VERSION) -out $(DIST) -registry "$(REGISTRY)" -release

##@ Local mesh (needs root: each pod gets a network namespace)

.PHONY: demo
demo: build-all ## The whole mesh on this machine, walked through step by step; exits non-zero if a step fails.
	hack/demo.sh

.PHONY: test-e2e
test-e2e: build-all ## End-to-end tests against the local mesh.
	hack/e2e.sh

##@ Deployment

.PHONY: kustomize-check
kustomize-check: manifests ## Render config/default with kubectl kustomize.
	kubectl kustomize config/default >/dev/null && echo "config/default renders"

$(LOCALBIN):
	mkdir -p $(LOCALBIN)

$(CONTROLLER_GEN): | $(LOCALBIN)
	GOBIN=$(LOCALBIN) $(GO) install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)
	mv $(LOCALBIN)/controller-gen $(CONTROLLER_GEN)
