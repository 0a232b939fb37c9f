"""A flannel-style node for mixed clusters: flannel's vxlan backend, emulated.

Runs inside a node's namespace (the cluster starts it with `mnexec -a PID`).
Like flanneld with `Backend.Type=vxlan` it holds the node's lease in etcd in
flannel's own format (through leases.Registry) and keeps the kernel in step
with the other nodes' leases:

- device `flannel.<VNI>`: kernel VXLAN, `nolearning`, local = PublicIP,
  address `<subnet>.0/32`, MTU = underlay MTU - 50, a random MAC (flanneld's
  mac.NewHardwareAddr) that the lease names as its VtepMAC; a device found with
  the same VNI, local address and port is kept with its MAC (flanneld's ensureLink);
- per remote lease: permanent neighbour `<subnet>.0 -> VtepMAC`, FDB entry
  `VtepMAC -> PublicIP`, route `<subnet>/len via <subnet>.0 onlink`;
- with EnableIPv6 and `--public-ipv6`, a dual-stack lease and the same again
  for IPv6 on `flannel-v6.<VNI>` (local = PublicIPv6, its own random MAC as the
  BackendV6Data VtepMAC, address `<ipv6 subnet>::/128`, the kernel's MTU for an IPv6
  underlay, underlay MTU - 70), per remote dual-stack lease;
- with the config's Backend.DirectRouting, a remote lease whose PublicIP (PublicIPv6) the kernel
  routes with exactly one route and no gateway (flannel's pkg/ip `DirectRouting`,
  leases/direct.py) gets `<subnet>/len via <PublicIP>` instead, and no VXLAN entries
  (`--no-direct-routing`: a flanneld from before the option, VXLAN to every peer);
- with `--ip-masq`, flanneld's masquerade rules (pkg/trafficmngr/iptables `masqRules`) in
  iptables' nat table: `POSTROUTING -j FLANNEL-POSTRTG` appended, the chain holding its
  six rules, made again in one iptables-restore if any is missing (checked every 5 s,
  flanneld's --iptables-resync); left in place when it stops, as a killed flanneld leaves
  them;
- subnet.env as flanneld writes it (FLANNEL_IPMASQ too), for the CNI side (the cluster's cni0).

flanneld reacts to a watch; this reconciles from a fresh listing whenever its
watch reports a change (and once a second), which ends in the same kernel state
and is simpler to get right here (a peer's new VtepMAC reaches the kernel as soon
as the watch reports it, as with flanneld).
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
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from operator import attrgetter
from pathlib import Path

from leases.direct import route_is_direct
from leases.errors import RegistryError
from leases.etcd_client import EtcdAccess
from leases.model import LEASE_TTL_SECONDS, VXLAN6_OVERHEAD, VXLAN_OVERHEAD, Lease, NetworkConfig
from leases.registry import Registry, renew_interval
from leases.subnet_env import (
    previous_ipv6_subnet,
    previous_subnet,
    subnet_env_for,
    write_subnet_env,
)

log = logging.getLogger("flannel-node")


def ip(*args: str, check: bool = True) -> str:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if check and res.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {res.stderr.strip()}")
    return res.stdout


def random_mac() -> str:
    """A random locally administered unicast MAC: flannel's mac.NewHardwareAddr, the VtepMAC
    flanneld gives a device it creates (not vxflow's derivation from the PublicIP)."""
    octets = bytearray(os.urandom(6))
    octets[0] = octets[0] & 0xFC | 0x02
    return ":".join(f"{o:02x}" for o in octets)


def bridge(*args: str) -> None:
    res = subprocess.run(["bridge", *args], capture_output=True, text=True, timeout=10)
    if res.returncode != 0:
        raise RuntimeError(f"`bridge {' '.join(args)}` failed: {res.stderr.strip()}")


@dataclass(frozen=True)
class Family:
    """What flannel's two vxlan devices take from a lease (flannel.<VNI>, flannel-v6.<VNI>)."""

    device: str
    subnet: Callable[[Lease], object]
    public_ip: Callable[[Lease], object]
    vtep_mac: Callable[[Lease], str | None]
    overhead: int  # the outer headers over this family's underlay


V4 = Family("flannel", attrgetter("subnet"), attrgetter("public_ip"), attrgetter("vtep_mac"),
            VXLAN_OVERHEAD)  # fmt: skip
V6 = Family("flannel-v6", attrgetter("ipv6_subnet"), attrgetter("public_ipv6"),
            attrgetter("vtep_mac_v6"), VXLAN6_OVERHEAD)  # fmt: skip


class VxlanDevice:
    """One family's device and the per-lease kernel entries behind it."""

    def __init__(self, config: NetworkConfig, public_ip: IPv4Address | IPv6Address, iface: str,
                 direct: bool, fam: Family = V4) -> None:  # fmt: skip
        self.name = f"{fam.device}.{config.backend.vni}"
        self.fam, self.public_ip = fam, public_ip
        self.direct_routing = direct and config.backend.direct_routing
        self.programmed: dict[object, tuple[Lease, bool]] = {}  # with: routed directly
        underlay_mtu = json.loads(ip("-j", "link", "show", iface))[0]["mtu"]
        self.mtu = config.backend.mtu or underlay_mtu - fam.overhead
        self.mac = self._ensure_link(config, iface)

    def _ensure_link(self, config: NetworkConfig, iface: str) -> str:
        """flanneld's ensureLink: a device of this name with the same VNI, local address and
        port is kept, and with it its MAC (so a restart keeps the lease's VtepMAC); any other
        is replaced by one with a random MAC, as flanneld picks it. The device's MAC."""
        shown = ip("-d", "-j", "link", "show", self.name, check=False)
        found = json.loads(shown)[0] if shown.strip() else {}
        info = found.get("linkinfo", {})
        data = info.get("info_data", {})
        local = data.get("local6" if self.fam is V6 else "local")
        if (info.get("info_kind"), data.get("id"), local, data.get("port")) == \
                ("vxlan", config.backend.vni, str(self.public_ip), config.backend.port):  # fmt: skip
            ip("link", "set", self.name, "mtu", str(self.mtu))
            log.info("kept %s (%s)", self.name, found["address"])
            return found["address"]
        ip("link", "del", self.name, check=False)
        mac = random_mac()
        ip("link", "add", self.name, "address", mac, "mtu", str(self.mtu),
           "type", "vxlan", "id", str(config.backend.vni), "local", str(self.public_ip),
           "dev", iface, "dstport", str(config.backend.port), "nolearning")  # fmt: skip
        subprocess.run(["ethtool", "-K", self.name, "tx", "off"], capture_output=True)
        return mac

    def up(self, lease: Lease) -> None:
        """The lease's `<subnet>.0` (IPv6: `<subnet>::`) as the device's only address, and up."""
        self.lease = lease
        subnet = self.fam.subnet(lease)
        want = f"{subnet.network_address}/{subnet.max_prefixlen}"
        family = "-6" if self.fam is V6 else "-4"
        shown = ip(family, "-j", "addr", "show", "dev", self.name, "scope", "global")
        for entry in json.loads(shown):
            for a in entry.get("addr_info", []):
                if f"{a['local']}/{a['prefixlen']}" != want:  # a subnet of before
                    ip("addr", "del", f"{a['local']}/{a['prefixlen']}", "dev", self.name)
        ip("addr", "replace", want, "dev", self.name)
        ip("link", "set", self.name, "up")

    def is_direct(self, lease: Lease) -> bool:
        if not self.direct_routing:
            return False
        answer = ip("-j", "route", "get", str(self.fam.public_ip(lease)), check=False)
        return route_is_direct(json.loads(answer) if answer.strip() else [])

    def add(self, lease: Lease, direct: bool) -> None:
        fam, subnet = self.fam, self.fam.subnet(lease)
        if direct:  # flannel: RouteReplace{Dst: subnet, Gw: PublicIP}, no device
            self.remove(subnet)
            ip("route", "replace", str(subnet), "via", str(fam.public_ip(lease)))
            self.programmed[subnet] = lease, True
            log.info("added %s directly via %s", subnet, fam.public_ip(lease))
            return
        gw, mac = str(subnet.network_address), fam.vtep_mac(lease)
        if (had := self.programmed.get(subnet)) and not had[1] and fam.vtep_mac(had[0]) != mac:
            self._forget(had[0])  # the peer's new VtepMAC (a new device, or vxflow's)
        ip("neigh", "replace", gw, "lladdr", mac, "dev", self.name, "nud", "permanent")
        bridge("fdb", "replace", mac, "dev", self.name, "dst", str(fam.public_ip(lease)),
               "self", "permanent")  # fmt: skip
        ip("route", "replace", str(subnet), "via", gw, "dev", self.name, "onlink")
        self.programmed[subnet] = lease, False
        log.info("added %s via %s (%s)", subnet, fam.public_ip(lease), mac)

    def remove(self, subnet) -> None:
        if subnet not in self.programmed:
            return
        lease, direct = self.programmed.pop(subnet)
        if direct:
            ip("route", "del", str(subnet), "via", str(self.fam.public_ip(lease)), check=False)
            log.info("removed %s", subnet)
            return
        gw = str(subnet.network_address)
        ip("route", "del", str(subnet), "via", gw, "dev", self.name, check=False)
        ip("neigh", "del", gw, "dev", self.name, check=False)
        self._forget(lease)
        log.info("removed %s", subnet)

    def _forget(self, lease: Lease) -> None:
        """The FDB entry of `lease`'s VtepMAC."""
        subprocess.run(["bridge", "fdb", "del", self.fam.vtep_mac(lease), "dev", self.name,
                        "self"], capture_output=True)  # fmt: skip

    def reconcile(self, leases: list[Lease], vni: int) -> None:
        fam = self.fam
        want = {
            fam.subnet(lease): lease
            for lease in leases
            if lease.public_ip != self.lease.public_ip and lease.vni == vni
            and fam.subnet(lease) is not None and fam.public_ip(lease) is not None
        }
        for subnet in [s for s in self.programmed if s not in want]:
            self.remove(subnet)
        for subnet, lease in want.items():
            have = self.programmed.get(subnet)
            direct = self.is_direct(lease)
            held = have and (fam.public_ip(have[0]), fam.vtep_mac(have[0]), have[1])
            if held != (fam.public_ip(lease), fam.vtep_mac(lease), direct):
                self.add(lease, direct)


MASQ_CHAIN = "FLANNEL-POSTRTG"
MASQ_RESYNC = 5.0  # seconds: flanneld's --iptables-resync
KUBE_PROXY_MARK = "0x4000/0x4000"


def masq_rules(network, subnet) -> list[list[str]]:
    """flanneld's IPv4 masquerade rules for Network `network` and this node's `subnet`, as
    (chain, rulespec...) in order: the jump, kube-proxy's marked packets left alone, overlay
    to overlay and outside to this node's pods kept, the rest from the overlay masqueraded."""
    comment = ["-m", "comment", "--comment", "flanneld masq"]
    n, s = str(network), str(subnet)
    return [
        ["POSTROUTING", *comment, "-j", MASQ_CHAIN],
        [MASQ_CHAIN, "-m", "mark", "--mark", KUBE_PROXY_MARK, *comment, "-j", "RETURN"],
        [MASQ_CHAIN, "-s", s, "-d", n, *comment, "-j", "RETURN"],
        [MASQ_CHAIN, "-s", n, "-d", s, *comment, "-j", "RETURN"],
        [MASQ_CHAIN, "!", "-s", n, "-d", s, *comment, "-j", "RETURN"],
        [MASQ_CHAIN, "-s", n, "!", "-d", "224.0.0.0/4", *comment, "-j", "MASQUERADE", "--random-fully"],
        [MASQ_CHAIN, "!", "-s", n, "-d", n, *comment, "-j", "MASQUERADE", "--random-fully"],
    ]  # fmt: skip


def _iptables_has(rule: list[str]) -> bool:
    return subprocess.run(["iptables", "-w", "-t", "nat", "-C", *rule],
                          capture_output=True).returncode == 0  # fmt: skip


def _restore_line(action: str, rule: list[str]) -> str:
    """A rule as iptables-restore reads it (it knows double quotes only)."""
    return " ".join(f'"{word}"' if " " in word else word for word in [action, *rule])


def ensure_masq(rules: list[list[str]]) -> None:
    """flanneld's ensureIPTables: all there, or all made again in order in one
    iptables-restore (the chain declared: made, or emptied; the jump deleted first)."""
    if all(_iptables_has(rule) for rule in rules):
        return
    lines = ["*nat", f":{MASQ_CHAIN} - [0:0]"]
    if _iptables_has(rules[0]):
        lines.append(_restore_line("-D", rules[0]))
    lines += [_restore_line("-A", rule) for rule in rules] + ["COMMIT", ""]
    subprocess.run(["iptables-restore", "-w", "--noflush"], input="\n".join(lines), text=True,
                   check=True, capture_output=True)  # fmt: skip
    log.info("masquerade rules in place (%s)", MASQ_CHAIN)


def run(args: argparse.Namespace) -> None:
    access = EtcdAccess(args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile,
                        args.etcd_username, args.etcd_password)  # fmt: skip
    registry = Registry(args.etcd_endpoints, args.etcd_prefix, access=access)
    config = registry.get_config()
    subnet_file = Path(args.subnet_file)
    six = config.ipv6 is not None and args.public_ipv6 is not None
    # flanneld's order: the devices first, then the lease that names their MACs
    devices = [VxlanDevice(config, args.public_ip, args.iface, args.direct_routing)]
    if six:
        devices.append(VxlanDevice(config, args.public_ipv6, args.iface, args.direct_routing, V6))
    lease = registry.acquire(
        args.public_ip, devices[0].mac,
        previous_subnet=previous_subnet(subnet_file), ttl=args.subnet_lease_ttl,
        **({"public_ipv6": args.public_ipv6, "vtep_mac_v6": devices[1].mac,
            "previous_ipv6_subnet": previous_ipv6_subnet(subnet_file)} if six else {}),
    )  # fmt: skip
    log.info("lease %s for %s", lease.label, lease.public_ip)
    for device in devices:
        device.up(lease)
    masq = masq_rules(config.network, lease.subnet) if args.ip_masq else []
    masq_at = time.monotonic()
    write_subnet_env(subnet_file, subnet_env_for(config, lease, devices[0].mtu, args.ip_masq))
    renew_at = time.monotonic() + renew_interval(args.subnet_lease_ttl)
    with registry.watch() as watch:
        while True:
            try:
                if time.monotonic() >= renew_at:
                    lease = registry.renew(lease, ttl=args.subnet_lease_ttl)
                    renew_at = time.monotonic() + renew_interval(args.subnet_lease_ttl)
                leases = registry.list_leases()
                for device in devices:
                    device.reconcile(leases, config.backend.vni)
                if masq and time.monotonic() >= masq_at:
                    masq_at = time.monotonic() + MASQ_RESYNC
                    ensure_masq(masq)
            except RegistryError as e:  # etcd away for a moment: keep the kernel as it is
                log.warning("etcd: %s; retrying", e)
            except subprocess.CalledProcessError as e:  # as flanneld: logged, tried again
                log.error("masquerade rules: %s", e.stderr)
            # a change the watch reports (a peer's new lease or VtepMAC) wakes the
            # reconcile at once, as flanneld's own watch does; else once a second
            if watch.get(timeout=1) is not None:
                while watch.get(timeout=0.02) is not None:  # the rest of a burst
                    pass


def _exit_in(delay: float) -> None:
    """Exit now, or `delay` s from now (SIGALRM: the main loop runs on meanwhile)."""
    if not delay:
        sys.exit(0)
    signal.signal(signal.SIGALRM, lambda *_: sys.exit(0))
    signal.setitimer(signal.ITIMER_REAL, delay)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--etcd-endpoints", required=True, help="e.g. http://198.18.0.254:2379")
    parser.add_argument("--etcd-prefix", default="/coreos.com/network")
    for name in ("cafile", "certfile", "keyfile", "username", "password"):  # flanneld's
        parser.add_argument(f"--etcd-{name}", default=os.environ.get(f"FLANNELD_ETCD_{name.upper()}"))
    parser.add_argument("--public-ip", required=True, type=IPv4Address)
    parser.add_argument("--public-ipv6", type=IPv6Address,
                        help="with EnableIPv6: a dual-stack lease and flannel-v6.<VNI>")  # fmt: skip
    parser.add_argument("--iface", default="eth0", help="the underlay interface")
    parser.add_argument("--subnet-file", required=True)
    parser.add_argument("--subnet-lease-ttl", type=int, default=LEASE_TTL_SECONDS,
                        help="seconds (flannel's fixed 24h by default)")  # fmt: skip
    parser.add_argument("--ip-masq", action="store_true",
                        help="flanneld's masquerade rules (iptables nat, FLANNEL-POSTRTG)")  # fmt: skip
    parser.add_argument("--no-direct-routing", dest="direct_routing", action="store_false",
                        help="ignore Backend.DirectRouting, as a flanneld before the option")  # fmt: skip
    parser.add_argument("--exit-delay", type=float, default=0.0, metavar="SECONDS",
                        help="exit this long after SIGTERM: a flanneld slow to stop, for tests")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:  # else a hung flanneld, for tests
        signal.signal(signal.SIGTERM, lambda *_: _exit_in(args.exit_delay))
    run(args)


if __name__ == "__main__":
    main()
