#!/usr/bin/env bash
# Cluster benchmark (docs/BENCHMARKS.md, "Cluster"): three `hacs agent`
# processes on loopback with default settings (real fsync), then
#   - SIGKILL of a node (neither DC nor raft leader) -> the others see it offline
#   - SIGKILL of the raft leader -> the others see it offline
#   - SIGKILL of the DC -> a new DC agreed by the survivors
# each the median of HACS_BENCH_RUNS runs (default 20; the raft leader case a
# quarter of that), and the agents' RSS idle and with 1000 volumes' worth of
# keys (mirror state, a ~400-byte desired-state record and two events each).
set -euo pipefail
cd "$(dirname "$0")/.."
export HACS_BENCH_RUNS="${HACS_BENCH_RUNS:-20}"
echo "hacs cluster benchmark: $(nproc) CPUs, $(uname -r), $(go version | cut -d' ' -f3), runs=$HACS_BENCH_RUNS"
go test ./test/ -run '^$' -bench '^BenchmarkClusterFailover$' -benchtime 1x -count 1 -timeout 60m 2>&1 |
	grep -Ev '^\s+(time=|\{)' 
