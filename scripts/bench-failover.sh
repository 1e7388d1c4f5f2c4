#!/usr/bin/env bash
# Failover time as a client sees it (docs/BENCHMARKS.md, "Failover").
#
# Starts a 3-agent cluster on loopback with `hacs demo --detach` (default
# settings: lease TTL 2 s, etcd heartbeat 50 ms / election 500 ms, fsync),
# creates a 2-replica volume, attaches it with `hacs volume attach --listen
# unix:SOCK` (which follows the primary through failover) and runs
# test/benchtool/failprobe against that socket: one 4 KiB write, read back
# and verified, every 10 ms. Then, RUNS times:
#
#   1. wait until the volume is healthy (2 replicas in sync, served) and
#      every node is online, then SETTLE seconds more;
#   2. SIGKILL the agent of the volume's primary (`hacs volume info --json`
#      -> export.node -> DIR/<node>/agent.pid);
#   3. failover time = from the kill to the end of the first probe write
#      that started after the kill and read back correctly (so it went
#      through the new primary); also the longest pause between two good
#      writes, errors seen by the client (attach promises none) and acknowledged
#      writes found missing afterwards (must be 0), and from the cluster's
#      event log when the death was noticed and the new primary served;
#   4. restart the killed agent with the command line the demo used
#      (`hacs demo --dir DIR --start NODE`, which reads DIR/<node>/agent.args;
#      with a hacs without --start: hacs agent --data-dir DIR/<node> --name
#      ... --api ... --peer-listen ... --client-listen ... --replica-listen
#      ... --export-listen ..., as internal/cli/demo.go starts it; it rejoins
#      as the same node) and measure how long until the volume is healthy
#      again.
#
# Prints the median, min and max failover time (goal: median <= 2 s, worst
# <= 5 s). Everything is bounded in time; on exit, Ctrl-C or SIGTERM it stops
# the probe, the attach process and the cluster it started (by PID).
#
# Knobs (environment):
#   RUNS=20             failovers measured
#   INTERVAL=10ms       probe period
#   VOLSIZE=1G          size of the probed volume
#   SETTLE=3            seconds to wait after the volume is healthy and all
#                       nodes online, before the next kill
#   BASE_PORT=<free>    first of the 30 loopback ports of the cluster (drawn
#                       from 22000-31999 when not given)
#   FAILOVER_TIMEOUT=60 seconds a failover may take before the run fails
#   LEASE_TTL=          the agents' lease TTL (hacs demo --lease-ttl, whole
#                       seconds; empty: the default, 2s)
#   HEALTH_TIMEOUT=180  seconds for the volume to be healthy again
#   OUT=<mktemp -d>     results (results.tsv, summary.txt), probe log, events
#   WORKDIR=<mktemp -d> the cluster's data (removed at exit unless KEEP=1)
#   HACS=bin/hacs       the hacs binary (make build)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

RUNS=${RUNS:-20}
INTERVAL=${INTERVAL:-10ms}
VOLSIZE=${VOLSIZE:-1G}
SETTLE=${SETTLE:-3}
FAILOVER_TIMEOUT=${FAILOVER_TIMEOUT:-60}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-180}
START_TIMEOUT=${START_TIMEOUT:-180}
HACS=${HACS:-$ROOT/bin/hacs}
LEASE_TTL=${LEASE_TTL:-}
KEEP=${KEEP:-0}
VOLUME=failprobe
OUT=${OUT:-$(mktemp -d /tmp/hacs-failover.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
own_workdir=0
if [ -z "${WORKDIR:-}" ]; then
  WORKDIR=$(mktemp -d /var/tmp/hacs-failover-work.XXXXXX)
  own_workdir=1
fi
mkdir -p "$WORKDIR"
WORKDIR=$(cd "$WORKDIR" && pwd)
CDIR=$WORKDIR/cluster
SOCK=$WORKDIR/attach.sock

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
now_ns() { local t=$EPOCHREALTIME; echo "${t/./}000"; }

for c in go jq timeout setsid nbdinfo; do
  command -v "$c" >/dev/null 2>&1 || die "$c not found"
done
[ -x "$HACS" ] || die "$HACS not built (make build)"
[[ "$RUNS" =~ ^[0-9]+$ ]] && [ "$RUNS" -ge 1 ] || die "RUNS=$RUNS: want a positive number"

# ---- cleanup -----------------------------------------------------------------

probe_pid= attach_pid= cluster_started=0
stop_pid() { # PID: SIGTERM its process group (or it), wait up to 10 s, then SIGKILL
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pid "$probe_pid"
  stop_pid "$attach_pid"
  if [ "$cluster_started" = 1 ]; then
    # Stops every agent whose pid is in CDIR/node*/agent.pid, including
    # the ones this script restarted (it rewrites those files).
    timeout 60 "$HACS" demo --dir "$CDIR" --stop >>"$OUT/demo.log" 2>&1 || log "hacs demo --stop failed (see $OUT/demo.log)"
    local f pid
    for f in "$CDIR"/node*/agent.pid; do
      [ -f "$f" ] || continue
      pid=$(cat "$f")
      if [ -n "$pid" ] && grep -qa agent "/proc/$pid/cmdline" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done
  fi
  if [ "$KEEP" != 1 ] && [ "$own_workdir" = 1 ]; then
    rm -rf "$WORKDIR"
  fi
  [ "$rc" = 0 ] || log "interrupted or failed (rc=$rc); partial results in $OUT"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- helpers -----------------------------------------------------------------

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -z "${BASE_PORT:-}" ]; then
  for ((try = 0; try < 50; try++)); do
    # 22000-31999: below the kernel's ephemeral range (32768-), so that no
    # outgoing connection takes a port of an agent restarted on it, and
    # clear of the tests' (10000-20999) and bench-cli's (27700-) ports
    BASE_PORT=$((22000 + 100 * (RANDOM % 100)))
    [ "$BASE_PORT" = 27700 ] && continue
    ok=1
    for ((k = 10; k < 40; k++)); do port_free $((BASE_PORT + k)) || { ok=0; break; }; done
    [ "$ok" = 1 ] && break
  done
  [ "$ok" = 1 ] || die "no free range of 30 ports found"
fi
port() { echo "127.0.0.1:$((BASE_PORT + 10 * $1 + $2))"; } # node index, k

# The agent command line of node I, as internal/cli/demo.go starts it (a
# restart with the same --data-dir rejoins; --join/--token are not needed).
agent_args() {
  local i=$1
  echo agent --data-dir "$CDIR/node$i" --name "node$i" --api "$(port "$i" 0)" \
    --peer-listen "$(port "$i" 1)" --client-listen "$(port "$i" 2)" \
    --replica-listen "$(port "$i" 3)" --export-listen "$(port "$i" 4)"
}

vinfo() { timeout 10 "$HACS" volume info "$VOLUME" --json 2>/dev/null; }

nodes() { timeout 10 "$HACS" node list --json 2>/dev/null; }

# wait_healthy [SINCE_NS]: the volume is healthy (both replicas in sync,
# served), every node online. Prints the seconds since SINCE_NS (default:
# the call).
wait_healthy() {
  local t0=${1:-} deadline v n
  [ -n "$t0" ] || t0=$(now_ns)
  deadline=$((SECONDS + HEALTH_TIMEOUT))
  while :; do
    if v=$(vinfo) &&
      [ "$(jq -r '.health' <<<"$v")" = ok ] &&
      [ "$(jq -r '.state.in_sync | length' <<<"$v")" = 2 ] &&
      [ "$(jq -r '.export.node // empty' <<<"$v")" != "" ] &&
      n=$(nodes) &&
      [ "$(jq '[.[] | select(.online != true)] | length' <<<"$n")" = 0 ]; then
      echo "$(now_ns) $t0" | awk '{printf "%.2f\n", ($1-$2)/1e9}'
      return 0
    fi
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# ---- setup -------------------------------------------------------------------

{
  echo "date: $(date -Is)"
  echo "command: ${LEASE_TTL:+LEASE_TTL=$LEASE_TTL }RUNS=$RUNS INTERVAL=$INTERVAL VOLSIZE=$VOLSIZE SETTLE=$SETTLE bash scripts/bench-failover.sh"
  echo "git: $(git describe --always --dirty 2>/dev/null || echo unknown)"
  echo "nproc: $(nproc)"
  echo "kernel: $(uname -srm)"
  echo "hacs: $("$HACS" --version 2>/dev/null || echo unknown)"
  echo "go: $(go version)"
  echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/env.txt"
cat "$OUT/env.txt" >&2
log "results in $OUT, cluster in $CDIR, ports $BASE_PORT+10..39"

PROBE=$OUT/failprobe
go build -o "$PROBE" ./test/benchtool/failprobe

log "starting a 3-agent cluster (hacs demo --detach)"
cluster_started=1
timeout "$START_TIMEOUT" "$HACS" demo --nodes 3 --dir "$CDIR" --detach --base-port "$BASE_PORT" ${LEASE_TTL:+--lease-ttl "$LEASE_TTL"} >"$OUT/demo.log" 2>&1 ||
  die "hacs demo failed (see $OUT/demo.log)"
HACS_CLUSTER=$(sed -n 's/^ *export HACS_CLUSTER=//p' "$OUT/demo.log" | head -1)
[ -n "$HACS_CLUSTER" ] || die "no HACS_CLUSTER in the demo's output (see $OUT/demo.log)"
export HACS_CLUSTER
log "HACS_CLUSTER=$HACS_CLUSTER"

# Only the probed volume: the demo's own volume would fail over too and
# share the CPUs.
timeout 60 "$HACS" volume destroy demo >>"$OUT/demo.log" 2>&1 || log "could not destroy the demo volume; going on"
timeout 60 "$HACS" volume create "$VOLUME" --size "$VOLSIZE" --replicas 2 >>"$OUT/demo.log" 2>&1 ||
  die "volume create failed (see $OUT/demo.log)"
wait_healthy >/dev/null || die "volume $VOLUME not healthy after ${HEALTH_TIMEOUT}s"

log "attaching $VOLUME on $SOCK"
setsid "$HACS" volume attach "$VOLUME" --listen "unix:$SOCK" >"$OUT/attach.log" 2>&1 </dev/null &
attach_pid=$!
for ((i = 0; i < 300; i++)); do
  kill -0 "$attach_pid" 2>/dev/null || die "attach exited (see $OUT/attach.log)"
  timeout 2 nbdinfo --size "nbd+unix:///$VOLUME?socket=$SOCK" >/dev/null 2>&1 && break
  sleep 0.1
done
[ "$i" -lt 300 ] || die "attach did not answer within 30s"

setsid "$PROBE" probe --socket "$SOCK" --export "$VOLUME" --interval "$INTERVAL" --log "$OUT/probe.log" \
  >"$OUT/probe.out" 2>&1 </dev/null &
probe_pid=$!
sleep 1
grep -q '^ok ' "$OUT/probe.log" 2>/dev/null || die "the probe wrote nothing in 1s (see $OUT/probe.out, $OUT/probe.log)"

# ---- runs --------------------------------------------------------------------

printf 'run\tnode\twas_dc\twas_raft_leader\tfailover_ms\tpause_ms\terrors\tlost\tdetect_ms\tpromote_ms\tserving_ms\thealthy_after_restart_s\tloadavg\n' >"$OUT/results.tsv"
: >"$OUT/failover_ms.txt"
for ((run = 1; run <= RUNS; run++)); do
  wait_healthy >/dev/null || die "run $run: volume not healthy after ${HEALTH_TIMEOUT}s"
  sleep "$SETTLE"
  v=$(vinfo) || die "run $run: volume info failed"
  node=$(jq -r '.export.node' <<<"$v")
  idx=${node#node}
  [[ "$idx" =~ ^[1-3]$ ]] || die "run $run: unexpected primary node '$node'"
  pid=$(cat "$CDIR/$node/agent.pid")
  grep -qa agent "/proc/$pid/cmdline" 2>/dev/null || die "run $run: pid $pid of $node is not an agent"
  was_dc=$(nodes | jq -r --arg n "$node" '.[] | select(.name == $n) | .dc // false' || echo '?')
  # The raft leader is only in the agent's own view (hacs agent status).
  st=$(timeout 10 "$HACS" agent status --api "$(port "$idx" 0)" --json 2>/dev/null || echo '{}')
  was_leader=$(jq -r 'if .raft_leader == null then "?" elif .raft_leader == .member_id then true else false end' <<<"$st")
  load=$(cut -d' ' -f1 /proc/loadavg)

  t_kill=$(now_ns)
  kill -KILL "$pid"
  m=$(timeout $((FAILOVER_TIMEOUT + 10)) "$PROBE" measure --log "$OUT/probe.log" --kill-ns "$t_kill" \
    --timeout "${FAILOVER_TIMEOUT}s") || die "run $run: no failover within ${FAILOVER_TIMEOUT}s ($m)"
  eval "$m" # failover_ms pause_ms errors lost
  timeout 10 "$HACS" events --json --limit 200 >"$OUT/events.$run.json" 2>/dev/null || echo '[]' >"$OUT/events.$run.json"
  eval "$("$PROBE" timeline --events "$OUT/events.$run.json" --kill-ns "$t_kill" --node "$node" --volume "$VOLUME")"

  # Restart the killed agent as the demo started it.
  wait "$pid" 2>/dev/null || true
  t_restart=$(now_ns)
  if [ -f "$CDIR/$node/agent.args" ]; then
    timeout 90 "$HACS" demo --dir "$CDIR" --start "$node" >>"$OUT/demo.log" 2>&1 || die "run $run: hacs demo --start $node failed (see $OUT/demo.log)"
  else
    # shellcheck disable=SC2046 # agent_args is a list of words without spaces
    setsid "$HACS" $(agent_args "$idx") >>"$CDIR/$node/agent.log" 2>&1 </dev/null &
    echo $! >"$CDIR/$node/agent.pid"
  fi
  healthy=$(wait_healthy "$t_restart") || die "run $run: volume not healthy ${HEALTH_TIMEOUT}s after restarting $node"

  printf '%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$run" "$node" "$was_dc" "$was_leader" \
    "$failover_ms" "$pause_ms" "$errors" "$lost" "$detect_ms" "$promote_ms" "$serving_ms" "$healthy" "$load" >>"$OUT/results.tsv"
  echo "$failover_ms" >>"$OUT/failover_ms.txt"
  log "run $run/$RUNS: killed $node (DC $was_dc, raft leader $was_leader): failover ${failover_ms} ms" \
    "(detected ${detect_ms}, served ${serving_ms}), pause ${pause_ms} ms, errors $errors, lost $lost; healthy ${healthy}s after restart"
done

# ---- summary -----------------------------------------------------------------

echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/env.txt"
col_stats() { # NAME COLUMN [FILTER-COLUMN VALUE]: stats of a results.tsv column
  awk -F'\t' -v c="$2" -v fc="${3:-0}" -v fv="${4:-}" 'NR > 1 && (fc == 0 || $fc == fv) && $c != "NaN" {print $c}' \
    "$OUT/results.tsv" >"$OUT/.col"
  if [ -s "$OUT/.col" ]; then
    printf '%-44s %s\n' "$1" "$("$PROBE" stats "$OUT/.col")"
  fi
  rm -f "$OUT/.col"
}
{
  col_stats "failover ms (kill -> first verified write)" 5
  col_stats "  killed node was the DC" 5 3 true
  col_stats "  killed node was not the DC" 5 3 false
  col_stats "  killed node was the raft leader" 5 4 true
  col_stats "longest client pause ms" 6
  col_stats "death noticed ms (node-offline / new DC)" 9
  col_stats "new primary serving ms (volume-serving)" 11
  col_stats "healthy again after restart s" 12
  echo "errors seen by the client: $(awk -F'\t' 'NR > 1 {s += $7} END {print s + 0}' "$OUT/results.tsv") in the failovers," \
    "$(grep -c '^err ' "$OUT/probe.log" || true) in the whole probe log;" \
    "acknowledged writes lost: $(awk '$1 == "check" && $5 == "LOST" {s += $6} END {print s + 0}' "$OUT/probe.log")" \
    "($(grep -c '^check ' "$OUT/probe.log" || true) checks)"
  echo "goal: median <= 2000 ms, worst <= 5000 ms"
} | tee "$OUT/summary.txt"
log "per run: $OUT/results.tsv"
