# hacs — High-Availability Cluster Storage
GO      ?= go
BIN     := bin/hacs
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

.PHONY: all build test deps demo bench fuzz clean

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

# Short fuzzing session of every fuzz target (FUZZTIME per target).
FUZZTIME ?= 30s
fuzz:
	$(GO) test ./internal/nbd -run '^$$' -fuzz FuzzHandshake -fuzztime $(FUZZTIME)
	$(GO) test ./internal/nbd -run '^$$' -fuzz FuzzTransmission -fuzztime $(FUZZTIME)

clean:
	rm -rf bin
