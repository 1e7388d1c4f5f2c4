#!/usr/bin/env bash
# make demo: until the cluster layer lands, serve a scratch volume with
# `hacs serve` and show how to connect to it.
set -euo pipefail
dir=${DEMO_DIR:-/tmp/hacs-demo}
mkdir -p "$dir"
port=${DEMO_PORT:-10809}
cat <<TXT
hacs demo: exporting $dir/demo.img (1 GiB, sparse) on nbd://127.0.0.1:$port/demo

In another terminal:
  nbdinfo nbd://127.0.0.1:$port/demo
  qemu-io -f raw nbd://127.0.0.1:$port/demo -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M'
  nbdinfo --map nbd://127.0.0.1:$port/demo

Ctrl-C stops the export.
TXT
exec bin/hacs serve "$dir/demo.img" --size 1G --listen "127.0.0.1:$port" --name demo
