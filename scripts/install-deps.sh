#!/usr/bin/env bash
# Installs the Debian packages the tests and benchmarks use (real NBD peers,
# filesystems, namespaces, fence agents), when any is missing. fence-agents
# (fence_dummy and the real agents) is one package on bookworm: ~8.5 MB to
# download, ~97 MB installed without recommends (python3 boto3/googleapi). Needs root or sudo.
set -euo pipefail
pkgs=(nbdkit libnbd-bin qemu-utils fio fuse3 e2fsprogs iproute2 iptables util-linux fence-agents chromium gnutls-bin openssl)
# command each package provides, to check without dpkg queries
# (chromium: the dashboard's browser test, test/dashboard_test.go, headless; ~350 MB installed with
# chromium-common and its libraries; gnutls-bin (gnutls-cli, gnutls-serv, psktool) and openssl:
# the TLS-PSK interop tests of internal/tlspsk; psktool makes the key files of test/psk_test.go)
declare -A probe=([nbdkit]=nbdkit [libnbd-bin]=nbdinfo [qemu-utils]=qemu-img [fio]=fio [fuse3]=fusermount3
  [e2fsprogs]=mkfs.ext4 [iproute2]=ip [iptables]=iptables [util-linux]=losetup
  [fence-agents]=fence_dummy [chromium]=chromium [gnutls-bin]=gnutls-cli [openssl]=openssl)
missing=()
for p in "${pkgs[@]}"; do
  command -v "${probe[$p]}" >/dev/null 2>&1 || [ -x "/usr/sbin/${probe[$p]}" ] || missing+=("$p")
done
# OCF resource agents are files, not commands: resource-agents (heartbeat provider: Filesystem,
# IPaddr2, Dummy, ...; ~3 MB plus cluster-glue and gawk), pacemaker-resource-agents (pacemaker
# provider: Dummy, Stateful); iputils-arping for the ip type's gratuitous ARP.
[ -x /usr/lib/ocf/resource.d/heartbeat/Filesystem ] || missing+=(resource-agents)
[ -x /usr/lib/ocf/resource.d/pacemaker/Stateful ] || missing+=(pacemaker-resource-agents)
command -v arping >/dev/null 2>&1 || [ -x /usr/sbin/arping ] || missing+=(iputils-arping)
# Filesystem checks for modprobe (kmod) and fuser (psmisc) before doing anything
command -v modprobe >/dev/null 2>&1 || [ -x /usr/sbin/modprobe ] || missing+=(kmod)
command -v fuser >/dev/null 2>&1 || missing+=(psmisc)
# ping: the floating IP answers a client namespace (test/resgroup_test.go)
command -v ping >/dev/null 2>&1 || missing+=(iputils-ping)
# nbdfuse ships in its own package on newer Debian, in libnbd-bin on bookworm.
if ! command -v nbdfuse >/dev/null 2>&1; then
  missing+=(libnbd-bin)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if ! command -v nbdfuse >/dev/null 2>&1; then
  $SUDO apt-get install -y -qq --no-install-recommends nbdfuse >/dev/null || true
fi
