#!/usr/bin/env bash
# make bench: hacs against nbdkit (and against itself), side by side, in the
# same run. docs/BENCHMARKS.md describes the method and holds the results.
#
# The benchmark is made of suites, run in turn (SUITES):
#
#   nbd      hacs serve FILE against nbdkit file FILE: 4k random read and
#            write at depth 32, 1M sequential read and write at depth 8,
#            unix sockets and TCP.
#   pool     hacs serve --pool on a pool volume with 0 and with 20 snapshots
#            (hacs-pool0, hacs-pool20), against hacs serve on a plain file
#            (hacs) and nbdkit: 4k random read and write at depth 32.
#   replica  replicated volumes with 1, 2 and 3 replicas (hacs-rep1..3:
#            `hacs replica node` processes, replica links over TCP on
#            127.0.0.1), against nbdkit file: 4k random write at depth 32,
#            1M sequential write at depth 8, 4k random write at depth 1.
#   tls      NBD over TLS (x509, STARTTLS; TLS 1.3 as negotiated by libnbd's
#            GnuTLS): hacs serve --tls require (hacs-tls) against plaintext
#            hacs serve (hacs), and nbdkit --tls=require (nbdkit-tls) against
#            plaintext nbdkit: 4k random read and write at depth 32, 1M
#            sequential read and write at depth 8, TCP. fio's nbd engine
#            connects with an nbds:// URI. Pre-shared keys (TLS 1.3 PSK):
#            hacs serve --tls-psk (hacs-psk) and nbdkit --tls-psk
#            (nbdkit-psk), through a proxy (see define_servers: fio's nbd
#            engine cannot use a PSK), with x509 TLS (hacs-tls-px) and
#            plaintext (hacs-px) through the same proxy as their reference.
#   resync   go test ./internal/mirror -bench Resync (4 GiB volume, 256 MiB
#            dirty, RESYNC_COUNT runs): median resync throughput.
#
# Every server exports its own copy of the same fully written (preallocated,
# non-zero) data. For each transport and each fio job, the runs alternate
# between the servers in REPEAT rounds (hacs, nbdkit; nbdkit, hacs; ...: each
# round starts with the next server) so that the noise of a busy machine hits
# all of them alike. Each run syncs the filesystem, reloads the server's data
# into the page cache (see warm), starts a fresh server, runs one fio job
# through fio's nbd engine (libnbd, one connection), records the server's CPU
# time and stops the server. test/benchtool then prints the medians and the
# ratios against the baseline server (and the suite's comparison server: the
# plain file for pools, one replica for replicated volumes).
#
# Knobs (environment):
#   SUITES="nbd pool replica resync"   suites to run, in this order; when
#                     SERVERS or JOBS is set and SUITES is not, only "nbd"
#                     (the single-table use of earlier versions)
#   REPEAT=5          runs per (transport, job, server)
#   RUNTIME=5         seconds measured per run (fio --runtime, --time_based)
#   RAMP=1            seconds of warm-up per run, not measured (--ramp_time)
#   SIZE=1G           size of every exported volume (same for all servers)
#   JOBS=...          jobs (default: the suite's); known: randread4k
#                     randwrite4k seqread1m seqwrite1m randwrite4k-qd1
#   TRANSPORTS=...    unix and/or tcp (127.0.0.1) for the client's connection
#                     (default: nbd "unix tcp", pool "unix", replica and tls "tcp")
#   SERVERS=...       servers (default: the suite's); known: hacs nbdkit
#                     hacs-poolN hacs-poolN-warm hacs-repN (N replicas, 1..5)
#                     hacs-tls nbdkit-tls (x509 TLS)
#                     hacs-psk nbdkit-psk hacs-tls-px hacs-px (through a proxy)
#   BASELINE=nbdkit   server the ratios are computed against
#   COMPARE=...       second reference (default: pool and tls "hacs", replica "hacs-rep1")
#   SNAP_WRITE=16M    data written (4k random) into each layer of a pool volume
#                     between snapshots
#   RESYNC_COUNT=5    runs of the resync benchmark
#   SYNC=1            sync the filesystem before every run (no dirty pages
#                     left by the previous run); 0 to skip
#   OUT=<mktemp -d>   where the fio JSON, server logs and tables are kept
#   WORKDIR=<mktemp -d>  scratch space for the images (removed at exit)
#   HACS=bin/hacs     the hacs binary
#   BENCH_EXTRA=FILE  shell file sourced to add more servers (see define_servers)
#
# Adding a server: add a case in define_servers (a name, the command that
# starts it in the foreground and the NBD URI it answers on) and, when it
# needs more than a copy of the image, in prepare. A command may be a small
# shell snippet that resets the server's state and then execs the server
# (exec, so that the server is the process group leader); it runs in its own
# process group, which is what gets stopped at the end of each run and whose
# processes' CPU time is counted.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

ALL_SUITES="nbd pool replica tls resync"
if [ -z "${SUITES:-}" ]; then
  if [ -n "${SERVERS:-}${JOBS:-}" ]; then SUITES=nbd; else SUITES=$ALL_SUITES; fi
fi
REPEAT=${REPEAT:-5}
RUNTIME=${RUNTIME:-5}
RAMP=${RAMP:-1}
SIZE=${SIZE:-1G}
USER_JOBS=${JOBS:-}
USER_TRANSPORTS=${TRANSPORTS:-}
USER_SERVERS=${SERVERS:-}
USER_COMPARE=${COMPARE-unset}
BASELINE=${BASELINE:-nbdkit}
SNAP_WRITE=${SNAP_WRITE:-16M}
RESYNC_COUNT=${RESYNC_COUNT:-5}
SYNC=${SYNC:-1}
RESYNC_TIMEOUT=${RESYNC_TIMEOUT:-3600}
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
WORKDIR=$(cd "$WORKDIR" && pwd)

FIO_TIMEOUT=$((RUNTIME + RAMP + 60)) # hard bound on one fio run
START_TIMEOUT=${START_TIMEOUT:-30}   # seconds for a server to answer
STOP_TIMEOUT=10                      # seconds between SIGTERM and SIGKILL
PREP_TIMEOUT=600                     # bound on every preparation step

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- suites ----------------------------------------------------------------

suite_servers() {
  case $1 in
    nbd) echo "hacs nbdkit" ;;
    pool) echo "hacs hacs-pool0 hacs-pool20 nbdkit" ;;
    replica) echo "hacs-rep1 hacs-rep2 hacs-rep3 nbdkit" ;;
    tls) echo "hacs hacs-tls nbdkit nbdkit-tls hacs-px hacs-tls-px hacs-psk nbdkit-psk" ;;
  esac
}
suite_jobs() {
  case $1 in
    nbd) echo "randread4k randwrite4k seqread1m seqwrite1m" ;;
    pool) echo "randread4k randwrite4k" ;;
    replica) echo "randwrite4k seqwrite1m randwrite4k-qd1" ;;
    tls) echo "randread4k randwrite4k seqread1m seqwrite1m" ;;
  esac
}
suite_transports() {
  case $1 in
    nbd) echo "unix tcp" ;;
    pool) echo "unix" ;;
    replica) echo "tcp" ;;
    tls) echo "tcp" ;;
  esac
}
suite_compare() {
  case $1 in
    pool) echo "hacs" ;;
    replica) echo "hacs-rep1" ;;
    tls) echo "hacs" ;;
  esac
}

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
  # Processes of the group that outlive the leader (replica nodes).
  kill -KILL -- "-$pid" 2>/dev/null || true
}

bg_pid= # a bounded foreground step (fio, nbdcopy, go test), run in the background
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$bg_pid" ]; then
    kill -TERM "$bg_pid" 2>/dev/null || true
    wait "$bg_pid" 2>/dev/null || true
  fi
  stop_server
  if [ "$own_workdir" = 1 ]; then
    rm -rf "$WORKDIR"
  else
    rm -rf "$WORKDIR"/*.img "$WORKDIR"/*.sock "$WORKDIR"/*.pool "$WORKDIR"/*.rep
  fi
  [ "$rc" = 0 ] || log "interrupted or failed (rc=$rc); partial results kept in $OUT"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# bounded SECONDS COMMAND...: runs COMMAND under timeout, in the background
# so that Ctrl-C is handled at once (the trap stops it).
bounded() {
  local secs=$1 rc=0
  shift
  timeout -k 5 "$secs" "$@" &
  bg_pid=$!
  wait "$bg_pid" || rc=$?
  bg_pid=
  return "$rc"
}

# ---- checks ----------------------------------------------------------------

ALL_SERVERS=
for s in $SUITES; do
  case $s in
    nbd | pool | replica | tls) ALL_SERVERS+=" ${USER_SERVERS:-$(suite_servers "$s")}" ;;
    resync) ;;
    *) die "unknown suite $s (known: $ALL_SUITES)" ;;
  esac
done
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found (run make deps)"; }
for c in timeout setsid go; do need "$c"; done
if [ -n "${ALL_SERVERS// /}" ]; then
  for c in fio nbdinfo; do need "$c"; done
  fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine"
fi
case " $ALL_SERVERS " in *" hacs"*) [ -x "$HACS" ] || die "$HACS not built (make build)" ;; esac
case " $ALL_SERVERS " in *" nbdkit "* | *" nbdkit-"* | *"-px "* | *"-psk "*) need nbdkit ;; esac
case " $ALL_SERVERS " in *" hacs-pool"* | *" hacs-rep"*) need nbdcopy ;; esac
case " $ALL_SERVERS " in *" hacs-rep"*) need jq ;; esac

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
SNAP_WRITE_BYTES=$(size_bytes "$SNAP_WRITE")
[[ "$SNAP_WRITE_BYTES" =~ ^[0-9]+$ ]] || die "SNAP_WRITE=$SNAP_WRITE: want a size like 16M"

# ---- jobs ------------------------------------------------------------------

# job_args NAME: the fio options of one job.
job_args() {
  case $1 in
    randread4k) echo "--rw=randread --bs=4k --iodepth=32" ;;
    randwrite4k) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
    seqread1m) echo "--rw=read --bs=1M --iodepth=8" ;;
    seqwrite1m) echo "--rw=write --bs=1M --iodepth=8" ;;
    randwrite4k-qd1) echo "--rw=randwrite --bs=4k --iodepth=1" ;;
    *) return 1 ;;
  esac
}

# ---- servers ---------------------------------------------------------------

# free_port: a TCP port on 127.0.0.1 nobody listens on right now.
# Below the kernel's ephemeral range (ip_local_port_range, 32768 and up
# by default), where the local ends of clients' connections could hold it.
free_port() {
  local p i
  for ((i = 0; i < 100; i++)); do
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
  die "no free TCP port found"
}

# addr TRANSPORT NAME [EXPORT]: prints "LISTEN URI" for one server. LISTEN
# is a socket path (unix) or a port (tcp); EXPORT is the export name in the
# URI (default: none, the default export).
addr() {
  local sock port
  case $1 in
    unix)
      sock=$WORKDIR/$2.sock
      rm -f "$sock" # nbdkit leaves its socket behind
      echo "$sock nbd+unix:///${3:-}?socket=$sock"
      ;;
    tcp)
      port=$(free_port)
      echo "$port nbd://127.0.0.1:$port/${3:-}"
      ;;
  esac
}

# listen_arg TRANSPORT LISTEN: the --listen value hacs takes for it.
listen_arg() { if [ "$1" = unix ]; then echo "unix:$2"; else echo "127.0.0.1:$2"; fi; }

# The server table of one run: parallel arrays filled by add_server.
S_NAME=() S_CMD=() S_URI=() S_CHECK=()
# add_server NAME START_COMMAND URI [CHECK_COMMAND]: CHECK_COMMAND, when
# given, runs after fio and before the server stops; when it fails the run
# is set aside as invalid (NAME.REP.json.invalid) and reported.
add_server() {
  case " $SERVERS_NOW " in *" $1 "*) ;; *) return 0 ;; esac
  S_NAME+=("$1")
  S_CMD+=("$2")
  S_URI+=("$3")
  S_CHECK+=("${4:-}")
}

# pool_snapshots NAME: N of hacs-poolN or hacs-poolN-warm.
pool_snapshots() {
  local n=${1#hacs-pool}
  n=${n%-warm}
  [[ "$n" =~ ^[0-9]+$ ]] || die "$1: want hacs-poolN or hacs-poolN-warm (N snapshots)"
  echo "$n"
}

# rep_cmd NAME EXPORT_ADDR: the shell snippet that starts a replicated volume
# of hacs-repN: N-1 replica nodes in the background (replica links on free
# TCP ports of 127.0.0.1), then execs the primary node, which exports the
# volume "vol" on EXPORT_ADDR. Each start is a new volume: fresh state file
# (epoch 1, every replica in sync) and epoch records, and the replicas'
# metadata areas (after SIZE bytes of data) punched back to zeros; the data
# written by prepare stays.
rep_cmd() {
  local name=$1 export=$2 n d i port peers=""
  n=${name#hacs-rep}
  [[ "$n" =~ ^[1-5]$ ]] || die "$name: want hacs-repN, N from 1 to 5"
  d=$WORKDIR/$name.rep
  local cmd="d='$d'; rm -f \"\$d\"/state.json \"\$d\"/state.json.lock \"\$d\"/n1.sock; rm -rf \"\$d\"/n*/state;"
  cmd+=" if [ -f \"\$d\"/replica-bytes ]; then for f in \"\$d\"/n*/data/vol.img; do"
  cmd+=" truncate -s $SIZE_BYTES \"\$f\" && truncate -s \$(cat \"\$d\"/replica-bytes) \"\$f\" || exit 1; done; fi;"
  for ((i = 2; i <= n; i++)); do
    port=$(free_port)
    cmd+=" '$HACS' replica node --dir \"\$d\"/n$i --id n$i --listen 127.0.0.1:$port &"
    cmd+=" for k in \$(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done;"
    peers+=" --peer n$i=127.0.0.1:$port"
  done
  cmd+=" exec '$HACS' replica node --dir \"\$d\"/n1 --id n1 --listen \"unix:\$d/n1.sock\" --primary vol"
  cmd+=" --size $SIZE_BYTES$peers --state \"\$d\"/state.json --export '$export'"
  echo "$cmd"
}

# rep_check NAME: every replica still in sync after the run (a replica
# dropped under load would make the run measure fewer copies).
rep_check() {
  local n=${1#hacs-rep}
  echo "[ \"\$(jq -r '.vol.in_sync | length' '$WORKDIR/$1.rep/state.json')\" = $n ]"
}

# define_servers TRANSPORT: one row per server of the suite. Each server gets
# its own copy of the data, prepared by prepare.
define_servers() {
  local t=$1 name listen uri a n d psk
  S_NAME=() S_CMD=() S_URI=() S_CHECK=()
  for name in $SERVERS_NOW; do
    case $name in
      hacs)
        read -r listen uri < <(addr "$t" "$name")
        add_server hacs "exec '$HACS' serve '$WORKDIR/hacs.img' --listen '$(listen_arg "$t" "$listen")'" "$uri"
        ;;
      nbdkit)
        read -r listen uri < <(addr "$t" "$name")
        if [ "$t" = unix ]; then a="-U '$listen'"; else a="-i 127.0.0.1 -p $listen"; fi
        add_server nbdkit "exec nbdkit -f $a file '$WORKDIR/nbdkit.img'" "$uri"
        ;;
      hacs-pool*)
        # Volume v of the pool $WORKDIR/NAME.pool. With snapshots, every run
        # starts with an empty head over the last snapshot (hacs pool
        # revert), so that every run writes into a fresh layer; -warm keeps
        # the head as prepare filled it (every block present in the head).
        n=$(pool_snapshots "$name")
        d=$WORKDIR/$name.pool
        read -r listen uri < <(addr "$t" "$name")
        a="exec '$HACS' serve --pool '$d' v --listen '$(listen_arg "$t" "$listen")'"
        case $name in
          *-warm) ;;
          *) [ "$n" = 0 ] || a="'$HACS' pool revert '$d' v s$n >/dev/null || exit 1; $a" ;;
        esac
        add_server "$name" "$a" "$uri"
        ;;
      hacs-tls | nbdkit-tls)
        # x509 TLS, certificates made by benchtool --tlscerts. The client
        # does not verify the server's certificate (tls-verify-peer=false):
        # fio's nbd engine does not let libnbd read files named in the URI
        # (tls-certificates=DIR). Encryption costs the same; verification is
        # what test/tls_test.go checks.
        read -r listen uri < <(addr "$t" "$name")
        if [ "$t" = unix ]; then
          uri="nbds+unix:///?socket=$listen&tls-verify-peer=false"
        else
          uri="nbds://127.0.0.1:$listen/?tls-verify-peer=false"
        fi
        if [ "$name" = hacs-tls ]; then
          a="exec '$HACS' serve '$WORKDIR/$name.img' --listen '$(listen_arg "$t" "$listen")' --tls require --tls-certificates '$WORKDIR/tls/server'"
        else
          if [ "$t" = unix ]; then a="-U '$listen'"; else a="-i 127.0.0.1 -p $listen"; fi
          a="exec nbdkit -f $a --tls=require --tls-certificates='$WORKDIR/tls/server' file '$WORKDIR/$name.img'"
        fi
        add_server "$name" "$a" "$uri"
        ;;
      hacs-psk | nbdkit-psk | hacs-tls-px | hacs-px)
        # fio's nbd engine cannot use a pre-shared key: libnbd reads the key
        # file only from a URI's tls-psk-file=, and only in programs that
        # allow local files in URIs (nbd_set_uri_allow_local_file), which
        # fio does not. So fio connects over a Unix socket to a proxy,
        # nbdkit's nbd plugin (libnbd, one connection to the server per fio
        # connection), which connects to the server over $t with TLS-PSK.
        # The x509 (hacs-tls-px, certificate not verified as for hacs-tls)
        # and plaintext (hacs-px) rows go through the same proxy: they are
        # the PSK rows' reference. The CPU time counted is the server's and
        # the proxy's (one process group).
        d=$WORKDIR/$name.px.sock
        rm -f "$d"
        uri="nbd+unix:///?socket=$d"
        if [ "$t" = unix ]; then
          listen=$WORKDIR/$name.srv.sock
          rm -f "$listen"
          n="socket='$listen'"
        else
          listen=$(free_port)
          n="hostname=127.0.0.1 port=$listen"
        fi
        psk="tls=require tls-psk='$WORKDIR/tls/keys.psk' tls-username=bench"
        case $name in
          hacs-psk) a="'$HACS' serve '$WORKDIR/$name.img' --listen '$(listen_arg "$t" "$listen")' --tls require --tls-psk '$WORKDIR/tls/keys.psk'" ;;
          hacs-tls-px)
            a="'$HACS' serve '$WORKDIR/$name.img' --listen '$(listen_arg "$t" "$listen")' --tls require --tls-certificates '$WORKDIR/tls/server'"
            psk="tls=require tls-verify=false"
            ;;
          hacs-px)
            a="'$HACS' serve '$WORKDIR/$name.img' --listen '$(listen_arg "$t" "$listen")'"
            psk=""
            ;;
          nbdkit-psk)
            if [ "$t" = unix ]; then a="-U '$listen'"; else a="-i 127.0.0.1 -p $listen"; fi
            a="nbdkit -f $a --tls=require --tls-psk='$WORKDIR/tls/keys.psk' file '$WORKDIR/$name.img'"
            ;;
        esac
        add_server "$name" "$a & exec nbdkit -f -U '$d' nbd $n $psk" "$uri"
        ;;
      hacs-rep*)
        read -r listen uri < <(addr "$t" "$name" vol)
        add_server "$name" "$(rep_cmd "$name" "$(listen_arg "$t" "$listen")")" "$uri" "$(rep_check "$name")"
        ;;
    esac
  done

  # Ad-hoc rows without editing this file: a shell file that calls add_server
  # (it sees $t, $WORKDIR, $HACS and the addr helper; its servers must be
  # listed in SERVERS too), e.g. to compare two builds or GOMAXPROCS values.
  # Their image is $WORKDIR/NAME.img.
  if [ -n "${BENCH_EXTRA:-}" ]; then
    # shellcheck source=/dev/null
    . "$BENCH_EXTRA"
  fi
}

# ---- data ------------------------------------------------------------------

# prepare_base: one fully written file of SIZE with non-zero data, the
# source of every server's data, so that no server serves holes (hacs and
# nbdkit both report holes as zero chunks/extents, which would make reads of
# a sparse file meaningless).
prepare_base() {
  [ -f "$WORKDIR/base.img" ] && return 0
  log "writing a ${SIZE} image with non-zero data (fio)"
  bounded "$PREP_TIMEOUT" fio --name=fill --filename="$WORKDIR/base.img" --size="$SIZE_BYTES" \
    --rw=write --bs=1M --ioengine=psync --refill_buffers --end_fsync=1 \
    --output="$OUT/logs/fill.txt" >/dev/null || die "fio could not write the image"
}

# allocated FILE: bytes allocated to FILE.
allocated() { echo $(($(stat -c '%b*%B' "$1"))); }

# start_server NAME CMD URI: starts a server in its own process group and
# waits until it answers on URI.
start_server() {
  local name=$1 cmd=$2 uri=$3 logf=$OUT/logs/$1.log i
  echo "=== $(date -Is) $cmd" >>"$logf"
  setsid bash -c "$cmd" >>"$logf" 2>&1 </dev/null &
  server_pid=$!
  for ((i = 0; i < START_TIMEOUT * 10; i++)); do
    kill -0 "$server_pid" 2>/dev/null || break
    if timeout 2 nbdinfo --size "$uri" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  stop_server
  die "$name did not answer on $uri within ${START_TIMEOUT}s (see $logf)"
}

declare -A PREPARED=()
# prepare NAME: the data of one server, once per script run.
prepare() {
  local name=$1
  [ -z "${PREPARED[$name]:-}" ] || return 0
  prepare_base
  case $name in
    hacs-pool*) prepare_pool "$name" ;;
    hacs-rep*) prepare_rep "$name" ;;
    *)
      bounded "$PREP_TIMEOUT" cp --sparse=never "$WORKDIR/base.img" "$WORKDIR/$name.img" || die "cp failed"
      [ "$(allocated "$WORKDIR/$name.img")" -ge "$SIZE_BYTES" ] || die "$name.img is sparse"
      ;;
  esac
  PREPARED[$name]=1
}

# prepare_pool hacs-poolN[-warm]: a pool with volume v of SIZE: the data of
# base.img written through `hacs serve --pool`, then N times: snapshot sI and
# SNAP_WRITE of 4k random writes into the new head, so that every layer holds
# data. -warm then writes the whole volume again, so that the head holds every
# block.
prepare_pool() {
  local name=$1 n d i listen uri
  n=$(pool_snapshots "$name")
  d=$WORKDIR/$name.pool
  rm -rf "$d"
  log "preparing $name: pool volume of $SIZE, $n snapshots"
  "$HACS" pool create "$d" >>"$OUT/logs/prepare.log" 2>&1 || die "hacs pool create failed (see $OUT/logs/prepare.log)"
  "$HACS" pool create-volume "$d" v --size "$SIZE_BYTES" >>"$OUT/logs/prepare.log" 2>&1 || die "hacs pool create-volume failed"
  read -r listen uri < <(addr unix "$name-prep")
  local serve="exec '$HACS' serve --pool '$d' v --listen 'unix:$listen'"
  start_server "$name-prep" "$serve" "$uri"
  bounded "$PREP_TIMEOUT" nbdcopy "$WORKDIR/base.img" "$uri" || die "nbdcopy into $name failed"
  stop_server
  for ((i = 1; i <= n; i++)); do
    "$HACS" pool snapshot "$d" v "s$i" >>"$OUT/logs/prepare.log" 2>&1 || die "hacs pool snapshot failed (see $OUT/logs/prepare.log)"
    start_server "$name-prep" "$serve" "$uri"
    bounded "$PREP_TIMEOUT" fio --name=layer --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=32 \
      --size="$SIZE_BYTES" --io_size="$SNAP_WRITE_BYTES" --randseed="$i" --refill_buffers \
      --output="$OUT/logs/prepare-fio.txt" >/dev/null 2>&1 || die "fio into $name failed"
    case $name in
      *-warm) [ "$i" -lt "$n" ] || bounded "$PREP_TIMEOUT" nbdcopy "$WORKDIR/base.img" "$uri" || die "nbdcopy into $name failed" ;;
    esac
    stop_server
  done
  "$HACS" pool snapshots "$d" v >>"$OUT/logs/prepare.log" 2>&1 || true
  "$HACS" pool info "$d" >>"$OUT/logs/prepare.log" 2>&1 || true
}

# prepare_rep hacs-repN: N replica files holding the data of base.img, written
# through the replicated volume itself (so that every replica has it and
# every file is fully allocated); the replica file size (data + metadata
# area) is kept for rep_cmd.
prepare_rep() {
  local name=$1 n d listen uri f
  n=${name#hacs-rep}
  d=$WORKDIR/$name.rep
  rm -rf "$d"
  mkdir -p "$d"
  log "preparing $name: replicated volume of $SIZE, $n replica(s)"
  read -r listen uri < <(addr unix "$name-prep" vol)
  start_server "$name-prep" "$(rep_cmd "$name" "unix:$listen")" "$uri"
  bounded "$PREP_TIMEOUT" nbdcopy "$WORKDIR/base.img" "$uri" || die "nbdcopy into $name failed"
  eval "$(rep_check "$name")" || die "$name: a replica left the in-sync set while it was written (see $OUT/logs/$name-prep.log)"
  stop_server
  stat -c %s "$d/n1/data/vol.img" >"$d/replica-bytes"
  for f in "$d"/n*/data/vol.img; do
    [ "$(allocated "$f")" -ge "$SIZE_BYTES" ] || die "$f is sparse after the fill"
  done
}

# unprepare NAME: drop the data of servers only one suite uses.
unprepare() {
  case $1 in
    hacs-pool*) rm -rf "$WORKDIR/$1.pool" ;;
    hacs-rep*) rm -rf "$WORKDIR/$1.rep" ;;
    *) return 0 ;;
  esac
  unset "PREPARED[$1]"
}

# ---- runs ------------------------------------------------------------------

# data_files NAME: the files holding a server's data.
data_files() {
  case $1 in
    hacs-pool*) echo "$WORKDIR/$1.pool"/volumes/v/*.img ;;
    hacs-rep*) echo "$WORKDIR/$1.rep"/n*/data/vol.img ;;
    *) [ ! -f "$WORKDIR/$1.img" ] || echo "$WORKDIR/$1.img" ;;
  esac
}

# warm NAME: drop a server's data from the page cache and read it again (not
# the holes of sparse files), as single pages (benchtool --warm --drop, after
# the sync). Every run then starts from the same page cache state:
#   - all of the server's data cached: the machine evicts page cache that
#     was not used for a while (this VM runs DAMON with a pageout scheme:
#     memory idle for ~30 s is reclaimed), so without this the server whose
#     data waited longest in a round would run partly from the disk;
#   - no large folios: on this kernel (6.18, ext4) a 4 KiB write into a
#     large folio (what readahead and large sequential writes create) costs
#     time in proportion to the folio (ext4_block_write_begin walks all its
#     buffer heads under the inode lock): 4k random writes ran 3-5 times
#     slower on such a file, for hacs and nbdkit alike.
warm() {
  # shellcheck disable=SC2046 # a list of paths without spaces
  bounded 300 "$BENCHTOOL" --warm --drop $(data_files "$1") || log "reading the data of $1 failed or took more than 300s"
}

# cpu_ticks PGID: user+system clock ticks of the processes of a process group
# (all their threads): the server, and for replicated volumes its replica
# nodes.
cpu_ticks() {
  local pgid=$1 f stat sum=0
  for f in /proc/[0-9]*/stat; do
    read -r stat 2>/dev/null <"$f" || continue
    stat=${stat##*) } # fields after the command name: state ppid pgrp ...; utime, stime are 12, 13
    # shellcheck disable=SC2086 # split into fields
    set -- $stat
    if [ "$3" = "$pgid" ]; then sum=$((sum + ${12} + ${13})); fi
  done
  echo "$sum"
}

# run_server NAME START_COMMAND URI JOB REP DIR [CHECK]: starts a server,
# waits until it answers on URI, runs one fio job against it, stops it.
# Results: DIR/NAME.REP.json (fio) and DIR/NAME.REP.cpu (server CPU seconds,
# wall seconds).
run_server() {
  local name=$1 cmd=$2 uri=$3 job=$4 rep=$5 dir=$6 check=${7:-}
  local pid rc=0
  # Every run starts without dirty pages in the page cache (the previous
  # run's writes would otherwise be written back during this one), with its
  # data in the page cache.
  if [ "$SYNC" = 1 ]; then bounded 120 sync -f "$WORKDIR" || log "sync took more than 120s"; fi
  warm "$name"
  # The machine is shared: keep the load next to every run, for the notes.
  echo "$(date -Is) $dir $name $rep loadavg $(cut -d' ' -f1-3 /proc/loadavg) dirty $(awk '/^Dirty:/ {print $2 $3}' /proc/meminfo)" >>"$OUT/logs/load.log"
  start_server "$name" "$cmd" "$uri"
  pid=$server_pid
  local hz t0 t1 c0 c1
  hz=$(getconf CLK_TCK)
  c0=$(cpu_ticks "$pid")
  t0=$(date +%s%N)
  # shellcheck disable=SC2046 # job_args is a list of options
  bounded "$FIO_TIMEOUT" fio --name="$job" --ioengine=nbd --uri="$uri" \
    $(job_args "$job") --size="$SIZE_BYTES" --runtime="$RUNTIME" --time_based \
    --ramp_time="$RAMP" --output-format=json --output="$dir/$name.$rep.json" \
    >>"$OUT/logs/fio.log" 2>&1 || rc=$?
  t1=$(date +%s%N)
  c1=$(cpu_ticks "$pid")
  echo "$c0 $c1 $hz $t0 $t1" | awk '{printf "%.3f %.3f\n", ($2-$1)/$3, ($5-$4)/1e9}' >"$dir/$name.$rep.cpu"
  if [ "$rc" = 0 ] && [ -n "$check" ] && ! bash -c "$check" >>"$OUT/logs/$name.log" 2>&1; then
    log "$name: check failed after the run ($check): run set aside as invalid"
    mv "$dir/$name.$rep.json" "$dir/$name.$rep.json.invalid"
    echo "$dir $name $rep: $check" >>"$OUT/invalid-runs.txt"
  fi
  stop_server
  [ "$rc" = 0 ] || die "fio failed against $name ($uri, $job, rep $rep): rc=$rc (see $OUT/logs/fio.log)"
}

# run_suite SUITE: the fio suites.
run_suite() {
  local suite=$1 sdir=$OUT/$1 t job dir rep i k n c
  SERVERS_NOW=${USER_SERVERS:-$(suite_servers "$suite")}
  local jobs=${USER_JOBS:-$(suite_jobs "$suite")}
  local transports=${USER_TRANSPORTS:-$(suite_transports "$suite")}
  local compare=""
  if [ "$USER_COMPARE" = unset ]; then c=$(suite_compare "$suite"); else c=$USER_COMPARE; fi
  for n in $c; do
    case " $SERVERS_NOW " in *" $n "*) compare+="${compare:+,}$n" ;; esac
  done
  for job in $jobs; do job_args "$job" >/dev/null || die "unknown job $job"; done
  for t in $transports; do
    case $t in unix | tcp) ;; *) die "unknown transport $t (unix or tcp)" ;; esac
  done
  log "suite $suite: servers $SERVERS_NOW; jobs $jobs; transports $transports"
  echo "suite $suite: SERVERS=\"$SERVERS_NOW\" JOBS=\"$jobs\" TRANSPORTS=\"$transports\" COMPARE=\"$compare\"" >>"$OUT/env.txt"
  for n in $SERVERS_NOW; do prepare "$n"; done
  define_servers unix
  [ ${#S_NAME[@]} -gt 0 ] || die "no server selected in suite $suite (SERVERS=$SERVERS_NOW)"
  sync

  for t in $transports; do
    for job in $jobs; do
      dir=$sdir/runs/$t/$job
      mkdir -p "$dir"
      for ((rep = 1; rep <= REPEAT; rep++)); do
        define_servers "$t" # fresh ports every round
        # Each round starts with the next server, so that every server
        # runs in every position of a round as often.
        for ((i = 0; i < ${#S_NAME[@]}; i++)); do
          k=$(((i + rep - 1) % ${#S_NAME[@]}))
          log "$suite $t $job rep $rep/$REPEAT: ${S_NAME[k]}"
          run_server "${S_NAME[k]}" "${S_CMD[k]}" "${S_URI[k]}" "$job" "$rep" "$dir" "${S_CHECK[k]}"
        done
      done
    done
  done
  echo "loadavg after suite $suite: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/env.txt"
  "$BENCHTOOL" --baseline "$BASELINE" --compare "$compare" "$sdir/runs" | tee "$sdir/results.txt"
  "$BENCHTOOL" --baseline "$BASELINE" --compare "$compare" --markdown "$sdir/runs" >"$sdir/results.md"
  log "suite $suite: tables in $sdir/results.txt $sdir/results.md"
  for n in $SERVERS_NOW; do unprepare "$n"; done
}

# run_resync: the mirror's resync benchmark (a Go benchmark: 2 file-backed
# replicas over NBD on Unix sockets, in one process).
run_resync() {
  local d=$OUT/resync
  mkdir -p "$d"
  log "suite resync: go test ./internal/mirror -run '^\$' -bench Resync -benchtime 1x -count $RESYNC_COUNT"
  echo "suite resync: go test ./internal/mirror -run '^\$' -bench Resync -benchtime 1x -count $RESYNC_COUNT" >>"$OUT/env.txt"
  echo "$(date -Is) resync loadavg $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/logs/load.log"
  bounded "$RESYNC_TIMEOUT" go test ./internal/mirror -run '^$' -bench Resync -benchtime 1x \
    -count "$RESYNC_COUNT" -timeout "$((RESYNC_TIMEOUT + 60))s" >"$d/bench.txt" 2>&1 ||
    die "the resync benchmark failed (see $d/bench.txt)"
  echo "$(date -Is) resync done loadavg $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/logs/load.log"
  "$BENCHTOOL" --gobench "$d/bench.txt" | tee "$d/results.txt"
  "$BENCHTOOL" --gobench --markdown "$d/bench.txt" >"$d/results.md"
}

# ---- main ------------------------------------------------------------------

mkdir -p "$OUT/logs"
{
  echo "date: $(date -Is)"
  echo "command: SUITES=\"$SUITES\" REPEAT=$REPEAT RUNTIME=$RUNTIME RAMP=$RAMP SIZE=$SIZE bash scripts/bench.sh"
  echo "git: $(git describe --always --dirty 2>/dev/null || echo unknown)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel: $(uname -srm)"
  echo "fio: $(fio --version 2>/dev/null || echo none)"
  echo "nbdkit: $(nbdkit --version 2>/dev/null || echo none)"
  echo "libnbd: $(nbdinfo --version 2>/dev/null | head -1)"
  echo "hacs: $("$HACS" --version 2>/dev/null || echo unknown)"
  echo "go: $(go version)"
  echo "filesystem: $(df -T "$WORKDIR" | awk 'NR==2 {print $2" on "$1}')"
  echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/env.txt"
cat "$OUT/env.txt" >&2
log "results in $OUT, images in $WORKDIR"
BENCHTOOL=$OUT/benchtool
go build -o "$BENCHTOOL" ./test/benchtool || die "cannot build test/benchtool"
case " $ALL_SERVERS " in *"-tls "* | *"-tls-px "* | *"-psk "*)
  "$BENCHTOOL" --tlscerts "$WORKDIR/tls" || die "cannot write TLS certificates"
  # the pre-shared key of the -psk rows, in psktool's format
  (umask 077 && printf 'bench:%s\n' "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" >"$WORKDIR/tls/keys.psk") ||
    die "cannot write the pre-shared key"
  ;;
esac

for suite in $SUITES; do
  case $suite in
    resync) run_resync ;;
    *) run_suite "$suite" ;;
  esac
done

echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/env.txt"
if [ -s "$OUT/invalid-runs.txt" ]; then
  log "$(wc -l <"$OUT/invalid-runs.txt") run(s) set aside as invalid: see $OUT/invalid-runs.txt"
fi
log "done; tables: $OUT/*/results.txt, $OUT/*/results.md"
