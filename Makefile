# weft — build, demo, test. `make demo` and `make test` need root (they create network
# namespaces); CI runs them as root.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/weftnet/weft/internal/version.Version=$(VERSION)
GOBUILD  := CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)"
LAB      ?= ./bin/weft lab

.PHONY: build demo demo-down test unit bench lint clean

build:
	$(GOBUILD) -o bin/weft ./cmd/weft
	$(GOBUILD) -o bin/weft-cni ./cmd/weft-cni

# A 3-node lab with 2 pods per node, the full reachability matrix and a short status.
# It stays up for you to explore (`./bin/weft lab --help`); `make demo-down` removes it.
demo: build
	$(LAB) down
	$(LAB) up --nodes 3 --pods-per-node 2
	$(LAB) check
	$(LAB) status

demo-down: build
	$(LAB) down

# Everything: unit tests, real-kernel tests in throwaway namespaces and the lab tests.
test: build
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 30m ./...

# Only the tests that need no root.
unit:
	$(GO) test -count=1 -short ./...

bench: build
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf bin
