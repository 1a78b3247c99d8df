# Weft — a Kubernetes-native service mesh for functions.
#
# `make help` lists the targets. `make test` and `make demo` do all set-up themselves.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

LOCALBIN ?= $(shell pwd)/bin
CONTROLLER_TOOLS_VERSION ?= v0.23.0
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
GO ?= go
# Envtest binaries (kube-apiserver, etcd, kube-controller-manager) are found or built by
# hack/envtest-assets.sh into a cache outside the clone; it prints their directory.

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

.PHONY: envtest
envtest: ## Find or build kube-apiserver, etcd and kube-controller-manager (offline).
	@hack/envtest-assets.sh

.PHONY: test
test: manifests generate vet ## Run all tests (unit, golden, envtest) — does its own set-up.
	@hack/verify-generated.sh
	assets="$$(hack/envtest-assets.sh | tail -n1)" && \
	  KUBEBUILDER_ASSETS="$$assets" $(GO) test ./... -count=1 -timeout 30m

.PHONY: test-race
test-race: ## Data-plane tests under the race detector (sidecar and its main).
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

.PHONY: bench-redis
bench-redis: ## redis-benchmark: one shard direct vs the sidecar's proxy vs nutcracker, P=1 and P=16.
	hack/bench-redis.sh

##@ Build

.PHONY: build
build: manifests generate ## Build bin/manager and bin/sidecar.
	$(GO) build -o $(LOCALBIN)/manager ./cmd/manager
	$(GO) build -o $(LOCALBIN)/sidecar ./cmd/sidecar

.PHONY: build-all
build-all: build ## Build bin/ for the local mesh: manager, sidecar, weft and the examples.
	$(GO) build -o $(LOCALBIN)/weft ./cmd/weft
	for e in echo slow flaky caller; do $(GO) build -o $(LOCALBIN)/$$e ./examples/$$e; done

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
