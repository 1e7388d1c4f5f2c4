#!/usr/bin/env bash
# make bench-cli (part of make bench): how fast `hacs volume list` and
# `hacs cluster status` answer with many volumes (issue 7: < 1 s with 1000).
#
# It starts three `hacs agent` processes on 127.0.0.1 (one machine: each
# with its own data directory and pool), creates VOLUMES real replicated
# volumes of SIZE bytes with REPLICAS replicas each (`hacs volume create
# bv1-N`: every one is placed by the DC, gets real thin pool volumes on its
# replica nodes, and is served by a primary: a mirror, NBD links to its
# remote replicas and an NBD export), waits until every one is healthy, and
# then times RUNS runs of each command with the real binary (wall clock of
# the whole process, JSON and table), printing the median and the range.
#
# Knobs (environment): VOLUMES=1000 SIZE=1M REPLICAS=2 RUNS=5
#   BASE_PORT=27700 (15 ports from it) HACS=bin/hacs WORKDIR=<mktemp -d>
#   KEEP=0 (1: leave the agents running and print how to reach them)
set -euo pipefail

VOLUMES=${VOLUMES:-1000}
SIZE=${SIZE:-1M}
REPLICAS=${REPLICAS:-2}
RUNS=${RUNS:-5}
BASE_PORT=${BASE_PORT:-27700}
HACS=${HACS:-bin/hacs}
KEEP=${KEEP:-0}
WORKDIR=${WORKDIR:-$(mktemp -d /tmp/hacs-bench-cli.XXXXXX)}

[ -x "$HACS" ] || { echo "bench-cli: $HACS not found: run make build first" >&2; exit 1; }
HACS=$(cd "$(dirname "$HACS")" && pwd)/$(basename "$HACS")

pids=()
cleanup() {
	if [ "$KEEP" = 1 ]; then
		echo "agents left running (pids ${pids[*]}), data in $WORKDIR; HACS_CLUSTER=$HACS_CLUSTER"
		return
	fi
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	rm -rf "$WORKDIR"
}
trap cleanup EXIT

port() { echo $((BASE_PORT + $1)); }
start() { # start N [join args...]
	local n=$1 i=$(( ($1 - 1) * 5 ))
	shift
	"$HACS" agent --data-dir "$WORKDIR/n$n" --name "n$n" \
		--api 127.0.0.1:"$(port $i)" --peer-listen 127.0.0.1:"$(port $((i + 1)))" \
		--client-listen 127.0.0.1:"$(port $((i + 2)))" --replica-listen 127.0.0.1:"$(port $((i + 3)))" \
		--export-listen 127.0.0.1:"$(port $((i + 4)))" "$@" >"$WORKDIR/n$n.log" 2>&1 &
	pids+=($!)
}
wait_until() { # wait_until SECONDS WHAT COMMAND...
	local limit=$1 what=$2
	shift 2
	local end=$((SECONDS + limit))
	until "$@" >/dev/null 2>&1; do
		if [ $SECONDS -ge $end ]; then
			echo "bench-cli: timed out after ${limit}s waiting for $what; last lines of the agents' logs:" >&2
			tail -n 5 "$WORKDIR"/n*.log >&2 || true
			KEEP=0
			exit 1
		fi
		sleep 0.5
	done
}

mkdir -p "$WORKDIR"
export HACS_CLUSTER=127.0.0.1:$(port 0),127.0.0.1:$(port 5),127.0.0.1:$(port 10)
start 1 --join-token-uses 2
wait_until 180 "n1's join token" test -s "$WORKDIR/n1/join-token"
token=$(cat "$WORKDIR/n1/join-token")
# the CLI's credentials: the cluster CA and the first admin token
export HACS_CA_FILE=$WORKDIR/n1/tls/ca.crt HACS_TOKEN_FILE=$WORKDIR/n1/admin-token
wait_until 60 "n1's credentials" test -s "$HACS_TOKEN_FILE"
start 2 --join 127.0.0.1:"$(port 0)" --token "$token"
wait_until 180 "n2 to join" "$HACS" node info n2 --cluster 127.0.0.1:"$(port 0)"
start 3 --join 127.0.0.1:"$(port 0)" --token "$token"
online() { [ "$("$HACS" node list --json | grep -c '"online": true')" -ge 3 ]; }
wait_until 180 "3 nodes online" online

echo "creating $VOLUMES volumes of $SIZE with $REPLICAS replicas..."
t0=$(date +%s.%N)
"$HACS" volume create "bv1-$VOLUMES" --size "$SIZE" --replicas "$REPLICAS" >/dev/null
t1=$(date +%s.%N)
healthy() { [ "$("$HACS" volume list --json | grep -c '"health": "ok"')" -ge "$VOLUMES" ]; }
wait_until 1800 "$VOLUMES volumes healthy" healthy
t2=$(date +%s.%N)
printf 'created in %.1f s, all healthy %.1f s later\n' "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)"
"$HACS" node list | awk '{print "  " $1 "\t" $(NF-2) " primaries\t" $(NF-1) " replicas"}' | sed 1d
for n in 1 2 3; do
	rss=$(awk '/VmRSS/ {print $2}' /proc/"${pids[$((n - 1))]}"/status)
	echo "n$n: RSS $((rss / 1024)) MiB, $(ls /proc/"${pids[$((n - 1))]}"/fd | wc -l) open files"
done

measure() { # measure LABEL COMMAND...: median and range of RUNS runs, in ms
	local label=$1
	shift
	local times=()
	for _ in $(seq "$RUNS"); do
		local s e
		s=$(date +%s%N)
		"$@" >/dev/null
		e=$(date +%s%N)
		times+=($(((e - s) / 1000000)))
	done
	local sorted
	sorted=($(printf '%s\n' "${times[@]}" | sort -n))
	printf '| `%s` | %d | %d | %d |\n' "$label" "${sorted[$((RUNS / 2))]}" "${sorted[0]}" "${sorted[$((RUNS - 1))]}"
}
echo
echo "| command ($VOLUMES volumes, $RUNS runs) | median ms | min ms | max ms |"
echo "|---|---:|---:|---:|"
measure "hacs volume list" "$HACS" volume list
measure "hacs volume list --json" "$HACS" volume list --json
measure "hacs cluster status" "$HACS" cluster status
measure "hacs cluster status --json" "$HACS" cluster status --json
measure "hacs volume info bv$((VOLUMES / 2))" "$HACS" volume info "bv$((VOLUMES / 2))"
