# ks-mc Makefile. `make demo` runs the main job on local sandbox clusters; `make test` runs every test.
SHELL := /usr/bin/env bash
GO ?= go
BIN_DIR ?= bin
BINARY := kubectl-ks_mc
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo v0.0.0-dev)
GIT_COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
BUILD_DATE ?= $(shell git log -1 --format=%cI 2>/dev/null || echo unknown)
PKG := github.com/ks-mc/ks-mc/pkg/version
LDFLAGS := -s -w -X $(PKG).Version=$(VERSION) -X $(PKG).GitCommit=$(GIT_COMMIT) -X $(PKG).BuildDate=$(BUILD_DATE)
# Tests may run long: e2e starts real control planes.
TEST_TIMEOUT ?= 60m

.PHONY: host-deps all build test unit e2e demo demo-down sandbox-up sandbox-down sandbox-env fmt vet clean

all: build

build: ## Build bin/kubectl-ks_mc
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN_DIR)/$(BINARY) ./cmd/kubectl-ks-mc

test: ## Run every test: unit tests, then the e2e suite against real sandbox control planes
	$(MAKE) unit
	$(MAKE) e2e

unit: ## Unit tests (no clusters)
	$(GO) vet ./...
	$(GO) test -count=1 ./pkg/... ./test/sandbox/...

# Network-isolation tests need nftables (root); install it from Debian's packages when missing.
host-deps:
	@command -v nft >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null) || \
	  echo "warning: nftables missing: network-isolation tests will be skipped"; }

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
