"""A flannel-style node for mixed clusters: flannel's vxlan backend, emulated.

Runs inside a node's namespace (the cluster starts it with `mnexec -a PID`).
Like flanneld with `Backend.Type=vxlan` it holds the node's lease in etcd in
flannel's own format (through leases.Registry) and keeps the kernel in step
with the other nodes' leases:

- device `flannel.<VNI>`: kernel VXLAN, `nolearning`, local = PublicIP,
  address `<subnet>.0/32`, MTU = underlay MTU - 50;
- per remote lease: permanent neighbour `<subnet>.0 -> VtepMAC`, FDB entry
  `VtepMAC -> PublicIP`, route `<subnet>/len via <subnet>.0 onlink`;
- with the config's Backend.DirectRouting, a remote lease whose PublicIP the kernel
  routes with exactly one route and no gateway (flannel's pkg/ip `DirectRouting`,
  leases/direct.py) gets `<subnet>/len via <PublicIP>` instead, and no VXLAN entries
  (`--no-direct-routing`: a flanneld from before the option, VXLAN to every peer);
- subnet.env as flanneld writes it, for the CNI side (the cluster's cni0).

flanneld reacts to a watch; this reconciles from a snapshot once a second,
which ends in the same kernel state and is simpler to get right here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from flows.ports import vtep_mac_for
from leases.direct import route_is_direct
from leases.errors import RegistryError
from leases.etcd_client import EtcdAccess
from leases.model import LEASE_TTL_SECONDS, VXLAN_OVERHEAD, Lease, NetworkConfig
from leases.registry import Registry, renew_interval

log = logging.getLogger("flannel-node")


def ip(*args: str, check: bool = True) -> str:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and res.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {res.stderr.strip()}")
    return res.stdout


def bridge(*args: str) -> None:
    res = subprocess.run(["bridge", *args], capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        raise RuntimeError(f"`bridge {' '.join(args)}` failed: {res.stderr.strip()}")


def previous_subnet(path: Path) -> IPv4Network | None:
    """The subnet of an earlier run (flanneld reads its subnet.env the same way)."""
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("FLANNEL_SUBNET="):
            return IPv4Network(line.split("=", 1)[1].strip(), strict=False)
    return None


def write_subnet_env(path: Path, config: NetworkConfig, lease: Lease, mtu: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        f"FLANNEL_NETWORK={config.network}\n"
        f"FLANNEL_SUBNET={lease.gateway}/{lease.subnet.prefixlen}\n"
        f"FLANNEL_MTU={mtu}\n"
        "FLANNEL_IPMASQ=false\n"
    )
    tmp.replace(path)


class VxlanDevice:
    """flannel.<VNI> and the per-lease kernel entries behind it."""

    def __init__(self, config: NetworkConfig, lease: Lease, iface: str, direct: bool) -> None:
        self.name = f"flannel.{config.backend.vni}"
        self.lease = lease
        self.direct_routing = direct and config.backend.direct_routing
        self.programmed: dict[IPv4Network, tuple[Lease, bool]] = {}  # with: routed directly
        underlay_mtu = json.loads(ip("-j", "link", "show", iface))[0]["mtu"]
        self.mtu = config.backend.mtu or underlay_mtu - VXLAN_OVERHEAD
        ip("link", "del", self.name, check=False)  # a leftover of a previous run of ours
        ip("link", "add", self.name, "address", lease.vtep_mac, "mtu", str(self.mtu),
           "type", "vxlan", "id", str(config.backend.vni), "local", str(lease.public_ip),
           "dev", iface, "dstport", str(config.backend.port), "nolearning")  # fmt: skip
        subprocess.run(["ethtool", "-K", self.name, "tx", "off"], capture_output=True)
        ip("addr", "add", f"{lease.subnet.network_address}/32", "dev", self.name)
        ip("link", "set", self.name, "up")

    def is_direct(self, lease: Lease) -> bool:
        if not self.direct_routing:
            return False
        answer = ip("-j", "route", "get", str(lease.public_ip), check=False)
        return route_is_direct(json.loads(answer) if answer.strip() else [])

    def add(self, lease: Lease, direct: bool) -> None:
        if direct:  # flannel: RouteReplace{Dst: subnet, Gw: PublicIP}, no device
            self.remove(lease.subnet)
            ip("route", "replace", str(lease.subnet), "via", str(lease.public_ip))
            self.programmed[lease.subnet] = lease, True
            log.info("added %s directly via %s", lease.subnet, lease.public_ip)
            return
        gw = str(lease.subnet.network_address)
        ip("neigh", "replace", gw, "lladdr", lease.vtep_mac, "dev", self.name, "nud", "permanent")
        bridge("fdb", "replace", lease.vtep_mac, "dev", self.name, "dst", str(lease.public_ip),
               "self", "permanent")  # fmt: skip
        ip("route", "replace", str(lease.subnet), "via", gw, "dev", self.name, "onlink")
        self.programmed[lease.subnet] = lease, False
        log.info("added %s via %s (%s)", lease.subnet, lease.public_ip, lease.vtep_mac)

    def remove(self, subnet: IPv4Network) -> None:
        if subnet not in self.programmed:
            return
        lease, direct = self.programmed.pop(subnet)
        if direct:
            ip("route", "del", str(subnet), "via", str(lease.public_ip), check=False)
            log.info("removed %s", subnet)
            return
        gw = str(subnet.network_address)
        ip("route", "del", str(subnet), "via", gw, "dev", self.name, check=False)
        ip("neigh", "del", gw, "dev", self.name, check=False)
        subprocess.run(["bridge", "fdb", "del", lease.vtep_mac, "dev", self.name, "self"],
                       capture_output=True)  # fmt: skip
        log.info("removed %s", subnet)

    def reconcile(self, leases: list[Lease], vni: int) -> None:
        want = {
            lease.subnet: lease
            for lease in leases
            if lease.public_ip != self.lease.public_ip and lease.vni == vni
        }
        for subnet in [s for s in self.programmed if s not in want]:
            self.remove(subnet)
        for subnet, lease in want.items():
            have = self.programmed.get(subnet)
            direct = self.is_direct(lease)
            held = have and (have[0].public_ip, have[0].vtep_mac, have[1])
            if held != (lease.public_ip, lease.vtep_mac, direct):
                self.add(lease, direct)


def run(args: argparse.Namespace) -> None:
    access = EtcdAccess(args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile,
                        args.etcd_username, args.etcd_password)  # fmt: skip
    registry = Registry(args.etcd_endpoints, args.etcd_prefix, access=access)
    config = registry.get_config()
    subnet_file = Path(args.subnet_file)
    lease = registry.acquire(
        args.public_ip, vtep_mac_for(args.public_ip),
        previous_subnet=previous_subnet(subnet_file), ttl=args.subnet_lease_ttl,
    )  # fmt: skip
    log.info("lease %s for %s", lease.subnet, lease.public_ip)
    device = VxlanDevice(config, lease, args.iface, args.direct_routing)
    write_subnet_env(subnet_file, config, lease, device.mtu)
    renew_at = time.monotonic() + renew_interval(args.subnet_lease_ttl)
    while True:
        try:
            if time.monotonic() >= renew_at:
                lease = registry.renew(lease, ttl=args.subnet_lease_ttl)
                renew_at = time.monotonic() + renew_interval(args.subnet_lease_ttl)
            device.reconcile(registry.list_leases(), config.backend.vni)
        except RegistryError as e:  # etcd away for a moment: keep the kernel as it is
            log.warning("etcd: %s; retrying", e)
        time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--etcd-endpoints", required=True, help="e.g. http://198.18.0.254:2379")
    parser.add_argument("--etcd-prefix", default="/coreos.com/network")
    for name in ("cafile", "certfile", "keyfile", "username", "password"):  # flanneld's
        parser.add_argument(f"--etcd-{name}", default=os.environ.get(f"FLANNELD_ETCD_{name.upper()}"))
    parser.add_argument("--public-ip", required=True, type=IPv4Address)
    parser.add_argument("--iface", default="eth0", help="the underlay interface")
    parser.add_argument("--subnet-file", required=True)
    parser.add_argument("--subnet-lease-ttl", type=int, default=LEASE_TTL_SECONDS,
                        help="seconds (flannel's fixed 24h by default)")  # fmt: skip
    parser.add_argument("--no-direct-routing", dest="direct_routing", action="store_false",
                        help="ignore Backend.DirectRouting, as a flanneld before the option")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run(args)


if __name__ == "__main__":
    main()
