# hacs — High-Availability Cluster Storage
GO      ?= go
BIN     := bin/hacs
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

.PHONY: all build test deps demo bench bench-cli bench-failover fuzz clean

all: build

build:
	$(GO) build -ldflags "-X github.com/hacs/hacs/internal/cli.Version=$(VERSION)" -o $(BIN) ./cmd/hacs

# Installs the Debian packages the tests need (real NBD peers), then vets and
# runs every test with the race detector.
test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...

deps:
	@bash scripts/install-deps.sh

demo: build
	$(BIN) demo

bench: build deps
	bash scripts/bench.sh
	bash scripts/bench-cli.sh
	bash scripts/bench-failover.sh

# hacs volume list / cluster status with 1000 volumes on a local 3-agent
# cluster (VOLUMES, SIZE, RUNS: see the script).
bench-cli: build
	bash scripts/bench-cli.sh

# Failover time as a client sees it: SIGKILL of the primary's agent under a
# probe writing every 10 ms (RUNS, INTERVAL, SETTLE: see the script).
bench-failover: build deps
	bash scripts/bench-failover.sh

# Short fuzzing session of every fuzz target (FUZZTIME per target).
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./internal/nbd -run '^$$' -fuzz FuzzHandshake -fuzztime $(FUZZTIME)
	$(GO) test ./internal/nbd -run '^$$' -fuzz FuzzTransmission -fuzztime $(FUZZTIME)
	$(GO) test ./internal/tlspsk -run '^$$' -fuzz FuzzSniff -fuzztime $(FUZZTIME)
	$(GO) test ./internal/tlspsk -run '^$$' -fuzz FuzzServerHandshake -fuzztime $(FUZZTIME)
	$(GO) test ./internal/tlspsk -run '^$$' -fuzz FuzzClientHandshake -fuzztime $(FUZZTIME)

# The fault-injection suite's long profile (issue 9; needs root): faults for
# CHAOS_DURATION; CHAOS_SEED=N replays a run's fault choices, CHAOS_FAULTS
# (e.g. kill,pause,isolate) limits the kinds drawn, CHAOS_OUT=DIR keeps the
# report. The short profile, TestChaosShort, runs with make test.
CHAOS_DURATION ?= 30m
.PHONY: chaos
chaos: deps
	CHAOS_LONG=1 CHAOS_DURATION=$(CHAOS_DURATION) $(GO) test ./test/ -run '^TestChaosLong$$' -count=1 -v -timeout 0

clean:
	rm -rf bin
