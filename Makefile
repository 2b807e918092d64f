# ks-mc Makefile. `make demo` runs the main job on local sandbox clusters; `make test` runs every test.
SHELL := /usr/bin/env bash
GO ?= go
BIN_DIR ?= bin
BINARY := kubectl-ks_mc
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo v0.0.0-dev)
GIT_COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
BUILD_DATE ?= $(shell git log -1 --format=%cI 2>/dev/null || echo unknown)
PKG := github.com/ks-mc/ks-mc/pkg/version
# Repository of the agent/proxy image; the default image is $(IMAGE_REPOSITORY):$(VERSION) (version.Image()).
IMAGE_REPOSITORY ?= ghcr.io/ks-mc/ks-mc
LDFLAGS := -s -w -X $(PKG).Version=$(VERSION) -X $(PKG).GitCommit=$(GIT_COMMIT) -X $(PKG).BuildDate=$(BUILD_DATE) -X $(PKG).ImageRepository=$(IMAGE_REPOSITORY)
# Tests may run long: e2e starts real control planes.
TEST_TIMEOUT ?= 60m

.PHONY: host-deps all build test unit lint e2e bench bench-diagnose dist krew-manifest image krew-tools release-test demo demo-down sandbox-up sandbox-down sandbox-env fmt vet clean

all: build

build: ## Build bin/kubectl-ks_mc
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN_DIR)/$(BINARY) ./cmd/kubectl-ks-mc

test: ## Run every test: unit tests, release checks (dist, krew install, image), then the e2e suite against real sandbox control planes
	$(MAKE) unit
	$(MAKE) release-test
	$(MAKE) e2e

unit: ## Unit tests (no clusters), after vet and staticcheck; the fuzz targets' seed corpora are replayed
	$(GO) vet ./...
	$(MAKE) lint
	$(GO) test -count=1 ./pkg/... ./test/sandbox/... ./test/toweragent/... ./test/bench/... ./hack/...

# staticcheck, pinned (honnef.co/go/tools v0.8.2 understands Go 1.26), built through the Go module proxy.
STATICCHECK_VERSION ?= v0.8.2
lint: ## staticcheck ./... (pinned STATICCHECK_VERSION, fetched through the Go module proxy)
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# Network-isolation tests need nftables (root); install it from Debian's packages when missing.
host-deps:
	@command -v nft >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null) || \
	  echo "warning: nftables missing: network-isolation tests will be skipped"; }
	@command -v iptables >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables >/dev/null) || \
	  echo "warning: iptables missing: make bench emulates the WAN link with its relay (no NFQUEUE)"; }

bench: build host-deps ## Tunnel benchmarks, every component its own process (BENCH_FLAGS=-only=lan|wan|scale, -quick); writes docs/benchmarks.md (needs root: network namespaces)
	$(GO) build -o $(BIN_DIR)/ksmc-bench ./test/bench
	$(GO) build -o $(BIN_DIR)/tower-agent ./test/toweragent/cmd/tower-agent
	$(BIN_DIR)/ksmc-bench -binary $(BIN_DIR)/$(BINARY) -out docs/benchmarks.md $(BENCH_FLAGS)

bench-diagnose: build host-deps ## Time diagnose on 1 host + 10 sandbox members (heavy; not part of make test)
	KSMC_BINARY=$(abspath $(BIN_DIR)/$(BINARY)) KSMC_BENCH_DIAGNOSE=1 KSMC_BENCH_OUT=$(abspath $(BIN_DIR))/bench-diagnose.txt \
	  $(GO) test -count=1 -p 1 -timeout 60m -tags e2e -run '^TestBenchDiagnose$$' -v ./test/e2e/
	@cat $(BIN_DIR)/bench-diagnose.txt

e2e: build host-deps ## End-to-end tests on local sandbox clusters (real kube-apiservers)
	@mkdir -p $(BIN_DIR); set -o pipefail; KSMC_BINARY=$(abspath $(BIN_DIR)/$(BINARY)) $(GO) test -count=1 -p 1 -timeout $(TEST_TIMEOUT) -tags e2e -v ./test/e2e/... 2>&1 \
	  | tee $(BIN_DIR)/e2e.log | grep --line-buffered -E '^(=== RUN|--- |PASS|FAIL|ok|panic|sandbox|\s+\S+_test.go)' \
	  || { echo "e2e failed; last lines of $(BIN_DIR)/e2e.log:"; tail -150 $(BIN_DIR)/e2e.log; exit 1; }

demo: build host-deps ## The main job: sandbox host + member, then init-host and join through the tunnel
	$(GO) build -o $(BIN_DIR)/ks-sandbox ./test/sandbox/cmd
	KSMC_BINARY=$(abspath $(BIN_DIR)/$(BINARY)) $(BIN_DIR)/ks-sandbox demo

demo-down sandbox-down: ## Stop the sandbox started by make demo
	$(GO) run ./test/sandbox/cmd down

sandbox-up: build ## Start the sandbox (host, member1) and leave it running
	$(GO) build -o $(BIN_DIR)/ks-sandbox ./test/sandbox/cmd
	KSMC_BINARY=$(abspath $(BIN_DIR)/$(BINARY)) $(BIN_DIR)/ks-sandbox up

sandbox-env: ## Print the export line for the sandbox kubeconfig
	@$(GO) run ./test/sandbox/cmd env

fmt:
	gofmt -l -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...

clean:
	rm -rf $(BIN_DIR) dist

# ---- Release: reproducible archives, krew manifest, OCI image (docs/install.md) ----
# `make dist VERSION=vX.Y.Z` cross-builds PLATFORMS into $(DIST_DIR)/ (archives + checksums.txt),
# `make krew-manifest VERSION=vX.Y.Z` renders plugins.yaml from .krew.yaml for those archives,
# `make image VERSION=vX.Y.Z` writes the agent/proxy image ($(DIST_DIR)/image/ OCI layout,
# $(DIST_DIR)/image.tar for linux/amd64). Same commit + VERSION => byte-identical files: the
# commit time stands in for every timestamp.
DIST_DIR ?= dist
PLATFORMS ?= linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64
IMAGE_PLATFORMS ?= linux/amd64 linux/arm64
KREW_MANIFEST ?= plugins.yaml
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
# Ask git once per make run, so all artifacts of a run agree even if HEAD moves meanwhile.
SOURCE_DATE_EPOCH := $(SOURCE_DATE_EPOCH)
VERSION := $(VERSION)
GIT_COMMIT := $(GIT_COMMIT)
# krew (and its validate-krew-manifest) built from the Go module proxy, cached outside the repo.
KREW_VERSION ?= v0.4.3
TOOLS_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/ks-mc/tools
KREW_TOOLS := $(TOOLS_CACHE)/krew-$(KREW_VERSION)
RELEASE_TEST_VERSION ?= v0.0.0-test
RELEASE_TEST_DIR ?= $(BIN_DIR)/release-test

# $(call go-cross,GOOS/GOARCH ...): build the plugin into $(DIST_DIR)/build/GOOS_GOARCH/.
go-cross = set -e; for p in $(1); do os=$${p%/*}; arch=$${p\#*/}; ext=; [ "$$os" = windows ] && ext=.exe; \
	echo "go build $$p"; GOOS=$$os GOARCH=$$arch CGO_ENABLED=0 $(GO) build -trimpath -buildvcs=false \
	-ldflags '$(LDFLAGS)' -o $(DIST_DIR)/build/$${os}_$${arch}/$(BINARY)$$ext ./cmd/kubectl-ks-mc; done

dist: ## Release archives and checksums.txt for PLATFORMS in $(DIST_DIR)/ (VERSION=vX.Y.Z)
	rm -rf $(DIST_DIR)/build $(DIST_DIR)/*.tar.gz $(DIST_DIR)/*.zip $(DIST_DIR)/checksums.txt
	@$(call go-cross,$(PLATFORMS))
	$(GO) run ./hack/dist archive -dir $(DIST_DIR) -version $(VERSION) -mtime $(SOURCE_DATE_EPOCH) \
	  -license LICENSE -completion hack/kubectl_complete-ks_mc $(PLATFORMS)

krew-manifest: ## Render $(KREW_MANIFEST) from .krew.yaml with the sha256 of the $(DIST_DIR)/ archives (after make dist, same VERSION)
	$(GO) run ./hack/dist krew-manifest -template .krew.yaml -dir $(DIST_DIR) -version $(VERSION) -out $(KREW_MANIFEST)

image: ## Agent/proxy OCI image, no Docker needed: $(DIST_DIR)/image/ (IMAGE_PLATFORMS) and $(DIST_DIR)/image.tar (linux/amd64)
	@$(call go-cross,$(IMAGE_PLATFORMS))
	$(GO) run ./hack/image -dir $(DIST_DIR) -repository $(IMAGE_REPOSITORY) -tag $(VERSION) \
	  -mtime $(SOURCE_DATE_EPOCH) -revision $(GIT_COMMIT) $(IMAGE_PLATFORMS)

krew-tools: ## Build krew $(KREW_VERSION) and validate-krew-manifest once into $(KREW_TOOLS)
	@[ -x $(KREW_TOOLS)/krew ] && [ -x $(KREW_TOOLS)/validate-krew-manifest ] || { mkdir -p $(KREW_TOOLS) && \
	  echo "building krew $(KREW_VERSION) into $(KREW_TOOLS)" && \
	  GOBIN=$(KREW_TOOLS) CGO_ENABLED=0 GOFLAGS=-buildvcs=false $(GO) install -trimpath \
	    sigs.k8s.io/krew/cmd/krew@$(KREW_VERSION) sigs.k8s.io/krew/cmd/validate-krew-manifest@$(KREW_VERSION); }

release-test: krew-tools ## dist + krew manifest + image at RELEASE_TEST_VERSION, then: krew install/validate, manifest consistency, image contents, reproducibility
	$(MAKE) dist krew-manifest image VERSION=$(RELEASE_TEST_VERSION) DIST_DIR=$(RELEASE_TEST_DIR) KREW_MANIFEST=$(RELEASE_TEST_DIR)/plugins.yaml
	@# Reproducibility: a second build of one platform must give the same archive bytes.
	$(MAKE) dist VERSION=$(RELEASE_TEST_VERSION) DIST_DIR=$(RELEASE_TEST_DIR)/again PLATFORMS=linux/amd64
	grep -F "$$(cat $(RELEASE_TEST_DIR)/again/checksums.txt)" $(RELEASE_TEST_DIR)/checksums.txt
	KSMC_DIST_DIR=$(abspath $(RELEASE_TEST_DIR)) KSMC_VERSION=$(RELEASE_TEST_VERSION) KSMC_IMAGE_REPOSITORY=$(IMAGE_REPOSITORY) \
	  KREW_BIN=$(KREW_TOOLS)/krew VALIDATE_KREW_MANIFEST_BIN=$(KREW_TOOLS)/validate-krew-manifest \
	  $(GO) test -count=1 -tags release -v ./test/release/...
