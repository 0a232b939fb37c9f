#!/usr/bin/env bash
# One-time (and idempotent) setup for a Debian 12 machine, run as root:
# system packages, then a virtual environment at .venv with vxflow and its
# test/bench extras. A second run only checks and exits quickly.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  openvswitch-switch etcd-server mininet iproute2 iputils-ping ethtool
  tcpdump iperf3 procps python3-venv python3-pip etcd-client
  nftables python3-nftables
  iptables  # vxflow migrate hands flanneld's iptables masquerade over; the emulated flanneld's
  podman runc containernetworking-plugins busybox-static
  systemd libcap2-bin  # systemd-analyze and capsh: tests of packaging/systemd
  strace  # tests of vxflow migrate: a run held, then killed, right after a step's write
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: must run as root (installs Debian packages, creates namespaces)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's packaging starts the system-wide OVS and etcd services where an init
# system runs; vxflow's tests and demo start private instances instead and
# never touch those.

# Debian's python3 (3.11) with system site-packages: Debian's mininet module
# lives there, next to mnexec.
PY=/usr/bin/python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv --system-site-packages .venv
fi
stamp=.venv/.vxflow-setup-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing vxflow into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test,bench]'
  echo "$want" > "$stamp"
fi
echo "setup: ready (.venv/bin/vxflow)"
