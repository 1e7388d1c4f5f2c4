#!/usr/bin/env bash
# make bench: hacs against nbdkit, side by side, in the same run.
#
# Every server exports its own copy of the same fully written (preallocated,
# non-zero) file. For each transport and each fio job, the runs alternate
# between the servers (hacs, nbdkit, hacs, nbdkit, ...) REPEAT times so that
# the noise of a busy machine hits all of them alike. Each run starts a fresh
# server, runs one fio job through fio's nbd engine (libnbd, one connection),
# records the server's CPU time and stops the server. test/benchtool then
# prints the medians and the ratios against the baseline server.
#
# Knobs (environment):
#   REPEAT=5          runs per (transport, job, server)
#   RUNTIME=5         seconds measured per run (fio --runtime, --time_based)
#   RAMP=1            seconds of warm-up per run, not measured (--ramp_time)
#   SIZE=1G           size of every exported file (same for all servers)
#   JOBS="randread4k randwrite4k seqread1m seqwrite1m"   subset/order of jobs
#   TRANSPORTS="unix tcp"   unix sockets and/or 127.0.0.1 TCP (same for all servers)
#   SERVERS="hacs nbdkit"   subset of the servers defined in define_servers
#   BASELINE=nbdkit   server the ratios are computed against
#   OUT=<mktemp -d>   where the fio JSON, server logs and tables are kept
#   WORKDIR=<mktemp -d>  scratch space for the images (removed at exit)
#   HACS=bin/hacs     the hacs binary
#   BENCH_EXTRA=FILE  shell file sourced to add more servers (see define_servers)
#
# Adding a server: add one add_server line in define_servers (a name, the
# command that starts it in the foreground and the NBD URI it answers on).
# For servers that need setup (pools, replicated volumes), make the command
# a small shell snippet that sets up and then execs the server (exec, so that
# the measured CPU time is the server's); it runs in its own process group,
# which is what gets stopped at the end of each run.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

REPEAT=${REPEAT:-5}
RUNTIME=${RUNTIME:-5}
RAMP=${RAMP:-1}
SIZE=${SIZE:-1G}
JOBS=${JOBS:-"randread4k randwrite4k seqread1m seqwrite1m"}
TRANSPORTS=${TRANSPORTS:-"unix tcp"}
SERVERS=${SERVERS:-"hacs nbdkit"}
BASELINE=${BASELINE:-nbdkit}
HACS=${HACS:-$ROOT/bin/hacs}
OUT=${OUT:-$(mktemp -d /tmp/hacs-bench.XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORKDIR=${WORKDIR:-}
own_workdir=0
if [ -z "$WORKDIR" ]; then
  WORKDIR=$(mktemp -d /var/tmp/hacs-bench-work.XXXXXX)
  own_workdir=1
fi
mkdir -p "$WORKDIR"

FIO_TIMEOUT=$((RUNTIME + RAMP + 60)) # hard bound on one fio run
START_TIMEOUT=10                     # seconds for a server to answer
STOP_TIMEOUT=10                      # seconds between SIGTERM and SIGKILL

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- cleanup ---------------------------------------------------------------

server_pid= # process group of the server being measured, if any

stop_server() {
  local pid=$server_pid
  [ -n "$pid" ] || return 0
  server_pid=
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  local i
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "server $pid did not stop in ${STOP_TIMEOUT}s: SIGKILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

fio_pid=
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$fio_pid" ]; then
    kill -TERM "$fio_pid" 2>/dev/null || true
    wait "$fio_pid" 2>/dev/null || true
  fi
  stop_server
  if [ "$own_workdir" = 1 ]; then
    rm -rf "$WORKDIR"
  else
    rm -f "$WORKDIR"/*.img "$WORKDIR"/*.sock
  fi
  [ "$rc" = 0 ] || log "interrupted or failed (rc=$rc); partial results kept in $OUT"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- checks ----------------------------------------------------------------

for c in fio nbdinfo timeout setsid go; do
  command -v "$c" >/dev/null 2>&1 || die "$c not found (run make deps)"
done
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine"
case " $SERVERS " in *" hacs "*) [ -x "$HACS" ] || die "$HACS not built (make build)" ;; esac
case " $SERVERS " in *" nbdkit "*) command -v nbdkit >/dev/null || die "nbdkit not found (make deps)" ;; esac

size_bytes() {
  local s=$1 n u
  n=${s%[kKmMgGtT]*}
  u=${s#"$n"}
  case $u in
    "") echo "$n" ;;
    k | K) echo $((n << 10)) ;;
    m | M) echo $((n << 20)) ;;
    g | G) echo $((n << 30)) ;;
    t | T) echo $((n << 40)) ;;
  esac
}
SIZE_BYTES=$(size_bytes "$SIZE")
[[ "$SIZE_BYTES" =~ ^[0-9]+$ ]] && [ "$SIZE_BYTES" -ge $((64 << 20)) ] ||
  die "SIZE=$SIZE: want a size of at least 64M, like 1G"

# ---- jobs ------------------------------------------------------------------

# job_args NAME: the fio options of one job.
job_args() {
  case $1 in
    randread4k) echo "--rw=randread --bs=4k --iodepth=32" ;;
    randwrite4k) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
    seqread1m) echo "--rw=read --bs=1M --iodepth=8" ;;
    seqwrite1m) echo "--rw=write --bs=1M --iodepth=8" ;;
    *) return 1 ;;
  esac
}
for j in $JOBS; do job_args "$j" >/dev/null || die "unknown job $j (known: randread4k randwrite4k seqread1m seqwrite1m)"; done

# ---- servers ---------------------------------------------------------------

# free_port: a TCP port on 127.0.0.1 nobody listens on right now.
free_port() {
  local p i
  for ((i = 0; i < 100; i++)); do
    p=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  die "no free TCP port found"
}

# addr TRANSPORT NAME: prints "LISTEN URI" for one server. LISTEN is a socket
# path (unix) or a port (tcp).
addr() {
  local sock port
  case $1 in
    unix)
      sock=$WORKDIR/$2.sock
      rm -f "$sock" # nbdkit leaves its socket behind
      echo "$sock nbd+unix:///?socket=$sock"
      ;;
    tcp)
      port=$(free_port)
      echo "$port nbd://127.0.0.1:$port/"
      ;;
  esac
}

# The server table of one run: parallel arrays filled by add_server.
S_NAME=() S_CMD=() S_URI=()
add_server() {
  case " $SERVERS " in *" $1 "*) ;; *) return 0 ;; esac
  S_NAME+=("$1")
  S_CMD+=("$2")
  S_URI+=("$3")
}

# define_servers TRANSPORT: one add_server line per server. Each server gets
# its own copy of the image ($WORKDIR/NAME.img), prepared by prepare_images.
define_servers() {
  local t=$1 a listen uri
  S_NAME=() S_CMD=() S_URI=()

  read -r listen uri < <(addr "$t" hacs)
  if [ "$t" = unix ]; then a="unix:$listen"; else a="127.0.0.1:$listen"; fi
  add_server hacs "exec '$HACS' serve '$WORKDIR/hacs.img' --listen '$a'" "$uri"

  read -r listen uri < <(addr "$t" nbdkit)
  if [ "$t" = unix ]; then a="-U '$listen'"; else a="-i 127.0.0.1 -p $listen"; fi
  add_server nbdkit "exec nbdkit -f $a file '$WORKDIR/nbdkit.img'" "$uri"

  # More rows go here, e.g. (once they exist):
  # add_server hacs-pool "...set up a pool volume...; exec '$HACS' ..." "$uri"

  # Ad-hoc rows without editing this file: a shell file that calls add_server
  # (it sees $t, $WORKDIR, $HACS and the addr helper; its servers must be
  # listed in SERVERS too), e.g. to compare two builds or GOMAXPROCS values.
  if [ -n "${BENCH_EXTRA:-}" ]; then
    # shellcheck source=/dev/null
    . "$BENCH_EXTRA"
  fi
}

# prepare_images: one fully written file of SIZE, copied for every server, so
# that no server serves holes (hacs and nbdkit both report holes as zero
# chunks/extents, which would make reads of a sparse file meaningless).
prepare_images() {
  local names=$1 n
  log "writing a ${SIZE} image with non-zero data (fio)"
  timeout 600 fio --name=fill --filename="$WORKDIR/base.img" --size="$SIZE_BYTES" \
    --rw=write --bs=1M --ioengine=psync --refill_buffers --end_fsync=1 \
    --output="$OUT/logs/fill.txt" >/dev/null
  for n in $names; do
    timeout 600 cp --sparse=never "$WORKDIR/base.img" "$WORKDIR/$n.img"
  done
  rm -f "$WORKDIR/base.img"
  sync
  # Same starting point for everybody: all images in the page cache.
  for n in $names; do cat "$WORKDIR/$n.img" >/dev/null; done
  for n in $names; do
    local used
    used=$(($(stat -c '%b*%B' "$WORKDIR/$n.img")))
    [ "$used" -ge "$SIZE_BYTES" ] || die "$n.img is sparse ($used of $SIZE_BYTES bytes allocated)"
  done
}

# cpu_ticks PID: user+system clock ticks of a process (all its threads).
cpu_ticks() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  stat=${stat##*) } # fields after the command name; utime, stime are 12, 13
  set -- $stat
  echo $((${12} + ${13}))
}

# run_server NAME START_COMMAND URI JOB REP DIR: starts a server, waits until
# it answers on URI, runs one fio job against it, stops it. Results:
# DIR/NAME.REP.json (fio) and DIR/NAME.REP.cpu (server CPU seconds, wall seconds).
run_server() {
  local name=$1 cmd=$2 uri=$3 job=$4 rep=$5 dir=$6
  local logf=$OUT/logs/$name.log i ok=0 pid
  # The machine is shared: keep the load next to every run, for the notes.
  echo "$(date -Is) $dir $name $rep loadavg $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/logs/load.log"
  echo "=== $(date -Is) $job rep $rep: $cmd" >>"$logf"
  setsid bash -c "$cmd" >>"$logf" 2>&1 </dev/null &
  server_pid=$!
  pid=$server_pid
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    if timeout 2 nbdinfo --size "$uri" >/dev/null 2>&1; then
      ok=1
      break
    fi
    sleep 0.1
  done
  if [ "$ok" != 1 ]; then
    stop_server
    die "$name did not answer on $uri within ${START_TIMEOUT}s (see $logf)"
  fi
  local hz t0 t1 c0 c1 rc=0
  hz=$(getconf CLK_TCK)
  c0=$(cpu_ticks "$pid")
  t0=$(date +%s%N)
  # shellcheck disable=SC2046 # job_args is a list of options
  timeout -k 5 "$FIO_TIMEOUT" fio --name="$job" --ioengine=nbd --uri="$uri" \
    $(job_args "$job") --size="$SIZE_BYTES" --runtime="$RUNTIME" --time_based \
    --ramp_time="$RAMP" --output-format=json --output="$dir/$name.$rep.json" \
    >>"$OUT/logs/fio.log" 2>&1 &
  fio_pid=$!
  wait "$fio_pid" || rc=$?
  fio_pid=
  t1=$(date +%s%N)
  c1=$(cpu_ticks "$pid")
  echo "$c0 $c1 $hz $t0 $t1" | awk '{printf "%.3f %.3f\n", ($2-$1)/$3, ($5-$4)/1e9}' >"$dir/$name.$rep.cpu"
  stop_server
  [ "$rc" = 0 ] || die "fio failed against $name ($uri, $job, rep $rep): rc=$rc (see $OUT/logs/fio.log)"
}

# ---- main ------------------------------------------------------------------

mkdir -p "$OUT/logs"
{
  echo "date: $(date -Is)"
  echo "command: REPEAT=$REPEAT RUNTIME=$RUNTIME RAMP=$RAMP SIZE=$SIZE JOBS=\"$JOBS\" TRANSPORTS=\"$TRANSPORTS\" SERVERS=\"$SERVERS\" bash scripts/bench.sh"
  echo "git: $(git describe --always --dirty 2>/dev/null || echo unknown)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel: $(uname -srm)"
  echo "fio: $(fio --version)"
  echo "nbdkit: $(nbdkit --version 2>/dev/null || echo none)"
  echo "libnbd: $(nbdinfo --version 2>/dev/null | head -1)"
  echo "hacs: $("$HACS" --version 2>/dev/null || echo unknown)"
  echo "go: $(go version)"
  echo "filesystem: $(df -T "$WORKDIR" | awk 'NR==2 {print $2" on "$1}')"
  echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/env.txt"
cat "$OUT/env.txt" >&2
log "results in $OUT, images in $WORKDIR"

define_servers unix
[ ${#S_NAME[@]} -gt 0 ] || die "no server selected (SERVERS=$SERVERS)"
prepare_images "${S_NAME[*]}"

for t in $TRANSPORTS; do
  case $t in unix | tcp) ;; *) die "unknown transport $t (unix or tcp)" ;; esac
  for job in $JOBS; do
    dir=$OUT/runs/$t/$job
    mkdir -p "$dir"
    for ((rep = 1; rep <= REPEAT; rep++)); do
      define_servers "$t" # fresh ports every round
      for ((k = 0; k < ${#S_NAME[@]}; k++)); do
        log "$t $job rep $rep/$REPEAT: ${S_NAME[k]}"
        run_server "${S_NAME[k]}" "${S_CMD[k]}" "${S_URI[k]}" "$job" "$rep" "$dir"
      done
    done
  done
done

echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/env.txt"
log "done; fio JSON in $OUT/runs"
go run ./test/benchtool --baseline "$BASELINE" "$OUT/runs" | tee "$OUT/results.txt"
go run ./test/benchtool --baseline "$BASELINE" --markdown "$OUT/runs" >"$OUT/results.md"
log "tables: $OUT/results.txt $OUT/results.md"
