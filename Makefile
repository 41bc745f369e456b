# weft — build, demo, test. `make demo` and `make test` need root (they create network
# namespaces); CI runs them as root.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/weftnet/weft/internal/version.Version=$(VERSION)
GOBUILD  := CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)"
LAB      ?= ./bin/weft lab

.PHONY: build bpf demo demo-down test unit bench bench-quick lint clean image

build:
	$(GOBUILD) -o bin/weft ./cmd/weft
	$(GOBUILD) -o bin/weft-cni ./cmd/weft-cni

# The BPF fast path's object, committed so that building weft needs no clang; rebuild it
# after changing the C source (apt-get install clang libbpf-dev).
BPF_CFLAGS := -O2 -g -target bpf -Wall -I/usr/include/$(shell uname -m)-linux-gnu
bpf: internal/fastpath/bpf/fastpath.c
	clang $(BPF_CFLAGS) -c $< -o internal/fastpath/fastpath.o
	llvm-strip -g internal/fastpath/fastpath.o

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

# The robustness tests of internal/soak at full size (root): hitless restarts, thousands of
# pod ADD/DELs under agent restarts and partitions, node death, 1,000-cycle leak check.
# Bounded at about ten minutes. WEFT_SOAK_SEED=<n> replays a churn run.
.PHONY: soak fuzz
soak: build
	@echo "soak: about 10 minutes; the full log goes to bin/soak.log"
	@rc=0; WEFT_SOAK=1 WEFT_BIN_DIR=$(CURDIR)/bin $(GO) test -count=1 -timeout 15m -v -run . ./internal/soak/ > bin/soak.log 2>&1 || rc=$$?; \
	grep -E '^(--- |    --- |ok|FAIL|PASS)|_test\.go:[0-9]+: |^ +\| ' bin/soak.log | grep -v 'main_test\.go:'; exit $$rc

# Each fuzz target for a number of executions (about 20 s each on a 2-CPU machine; the
# executions are in the output), or for FUZZTIME (a duration such as 5m, or a count such
# as 1000000x) for all of them; crashers are kept under the package's testdata/fuzz. A
# count by default: when a duration runs out, Go 1.26's fuzz coordinator can fail the
# target with "context deadline exceeded" and no crasher (go.dev/issue/75804, fixed in
# Go 1.27); it did so once in CI.
FUZZTIME ?=
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseConfig$$' -fuzztime $(or $(FUZZTIME),300000x) ./internal/cni
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRecords$$' -fuzztime $(or $(FUZZTIME),100000x) ./internal/cluster
	$(GO) test -run '^$$' -fuzz '^FuzzHandler$$' -fuzztime $(or $(FUZZTIME),500000x) ./internal/api/apiserver

# Only the tests that need no root.
unit:
	$(GO) test -count=1 -short ./...

# Benchmarks (root): the Go benchmarks of the hot paths, then every lab benchmark with its
# reference in the same run; prints a table and writes bench-results.json (BENCHMARKS.md).
# bench takes about 25 minutes (the last three runs 25.5, 25.5, 25), bench-quick a few.
# BENCH_SHARED="why" notes in the results that the machine was busy with other work while
# measuring.
GOBENCH_PKGS := ./internal/ipam ./internal/dataplane ./internal/cluster
BENCH_FLAGS  ?=
BENCH_SHARED ?=

bench: build
	$(GO) build -o bin/weft-bench ./cmd/weft-bench
	$(GO) test -run '^$$' -bench . -benchmem -count 5 $(GOBENCH_PKGS) > bin/gobench.txt || { cat bin/gobench.txt; exit 1; }
	./bin/weft-bench -gobench bin/gobench.txt -o bench-results.json -shared "$(BENCH_SHARED)" $(BENCH_FLAGS)

bench-quick: build
	$(GO) build -o bin/weft-bench ./cmd/weft-bench
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 200ms -count 3 $(GOBENCH_PKGS) > bin/gobench.txt || { cat bin/gobench.txt; exit 1; }
	./bin/weft-bench -quick -gobench bin/gobench.txt -o bench-results.json -shared "$(BENCH_SHARED)" $(BENCH_FLAGS)

# The container image as a tarball (no Docker, no registry): empty base, the two static
# binaries, no shell. Load it with `ctr -n k8s.io images import --all-platforms bin/weft-image.tar`.
IMAGE    ?= docker.io/library/weft:dev
image: build
	$(GO) run ./tools/mkimage -o bin/weft-image.tar -tag $(IMAGE) \
		bin/weft:/usr/local/bin/weft bin/weft-cni:/usr/local/bin/weft-cni

clean:
	rm -rf bin

# A real Kubernetes cluster on this machine, as root (see e2e/doc.go): the control plane and
# WEFT_E2E_NODES (default 3) nodes as network namespaces, each node with its own containerd,
# kubelet and kube-proxy; weft installed with `kubectl apply -f deploy/weft.yaml`. Needs
# (Debian): etcd-server containerd runc containernetworking-plugins iptables conntrack.
# The Kubernetes binaries are built once from the Go module proxy (the separate module
# e2e/k8sbin) and cached in E2E_CACHE.
.PHONY: e2e e2e-k8s
E2E_CACHE ?= $(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME)/weft-e2e,/var/cache/weft-e2e)
K8S_VER   := $(shell sed -n 's|^require k8s.io/kubernetes ||p' e2e/k8sbin/go.mod)
K8S_BIN   := $(E2E_CACHE)/k8s-$(K8S_VER)
K8S_CMDS  := kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
K8S_VERX  := $(subst ., ,$(patsubst v%,%,$(K8S_VER)))
K8S_LDFLAGS := -s -w $(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
	-X $(p).gitVersion=$(K8S_VER) -X $(p).gitMajor=$(word 1,$(K8S_VERX)) -X $(p).gitMinor=$(word 2,$(K8S_VERX)))

e2e-k8s: $(K8S_BIN)/.built
$(K8S_BIN)/.built: e2e/k8sbin/go.mod e2e/k8sbin/go.sum
	mkdir -p $(K8S_BIN)
	cd e2e/k8sbin && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(K8S_LDFLAGS)" -o $(K8S_BIN)/ \
		$(addprefix k8s.io/kubernetes/cmd/,$(K8S_CMDS))
	touch $@

e2e: image e2e-k8s
	WEFT_E2E_K8S_BIN=$(K8S_BIN) $(GO) test -tags e2e -count=1 -timeout 80m -v -run '^TestCluster$$' ./e2e/
