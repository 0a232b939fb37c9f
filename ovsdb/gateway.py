"""The kernel side of the gateway port: address, MTU, link state and the Network route.

OVSDB creates the internal port `vxgw0`; the kernel must then carry the
node's gateway address on it and route the whole overlay Network into it (the
seed's `10.20.0.0/16 dev flannel.1`), and the services' ServiceNetwork too (the
host reaches VIPs through the switch). This is done with `ip` (see
ovsdb/iproute.py). `netns` runs everything with `ip -n NETNS` (tests
bootstrap emulated nodes from the root namespace).

The service routes, and a dual-stack node's IPv6Network route, carry
routing protocol ROUTE_PROTO ("vxflow"), so the agent recognises its own: a
service range or IPv6Network that changed or went is removed, and no other
route is ever touched. The IPv6ServiceNetwork's route carries SERVICE6_PROTO, so
the IPv6Network's convergence (ROUTE_PROTO, IPv6) and the services' each find their own.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network, ip_network

from ovsdb.iproute import IprouteError, ip, ip_json_batch

ROUTE_PROTO = "118"  # the routing protocol number vxflow's service routes carry
SERVICE6_PROTO = "119"  # the IPv6ServiceNetwork's route's


@dataclass(frozen=True)
class GatewaySpec:
    """What the kernel must show for the gateway port."""

    ifname: str
    address: IPv4Interface  # the lease's first host with the lease's prefix length
    mtu: int
    route: IPv4Network  # the whole overlay Network, routed into `ifname`
    # the ServiceNetwork(s) routed into `ifname` (IPv6's too on a dual-stack node); None:
    # not known here, leave them alone
    service_routes: tuple[IPv4Network | IPv6Network, ...] | None = None
    # a dual-stack node's IPv6 gateway (the IPv6 subnet's first address with its length) and
    # IPv6Network; None: IPv4 only (a global IPv6 address on the port is removed)
    address6: IPv6Interface | None = None
    route6: IPv6Network | None = None


def _link(ifname: str, netns: str | None) -> dict | None:
    out = ip("-j", "addr", "show", "dev", ifname, netns=netns, check=False)
    links = json.loads(out) if out.strip() else []
    return links[0] if links else None


@dataclass(frozen=True)
class KernelState:
    """What the kernel holds that bootstrap and converge_gateway compare, read by two
    `ip -batch` processes, IPv4's and IPv6's (an agent converges at every change it sees:
    six `ip` processes each time were most of its processes). Each command lists whole
    tables (never a missing device's error, which would end the batch), filtered here."""

    links: list[dict]  # `ip -j addr`: every interface (the underlay's MTU is read there)
    link: dict | None  # the port's entry
    network_routes: list[dict]  # the IPv4 routes to exactly the overlay Network
    ours: dict[tuple[int, str], list[dict]]  # (IP version, protocol): those on the port

    @classmethod
    def read(cls, ifname: str, network: IPv4Network, netns: str | None) -> KernelState:
        links, routes, ours4 = ip_json_batch(
            ["addr show", f"route show exact {network}", f"route show proto {ROUTE_PROTO}"],
            netns)  # fmt: skip
        ours6, services6 = ip_json_batch(
            [f"route show proto {ROUTE_PROTO}", f"route show proto {SERVICE6_PROTO}"], netns, "-6"
        )
        ours = {(4, ROUTE_PROTO): ours4, (6, ROUTE_PROTO): ours6, (6, SERVICE6_PROTO): services6}
        return cls(links, next((link for link in links if link.get("ifname") == ifname), None),
                   routes, {key: [r for r in found if r.get("dev") == ifname]
                            for key, found in ours.items()})  # fmt: skip


def converge_gateway(
    spec: GatewaySpec, netns: str | None = None, dry_run: bool = False, wait: float = 10.0,
    held: KernelState | None = None,
) -> list[str]:  # fmt: skip
    """Bring the kernel to `spec`; return the changes made (or, dry-run, that would be).
    `held`: the kernel's state just read for spec's port and Network (read here if None).

    ovs-vswitchd creates the interface asynchronously after the OVSDB commit,
    so wait up to `wait` seconds for it to appear (not in a dry run: there it
    may legitimately not exist yet).
    """
    if held is None:
        held = KernelState.read(spec.ifname, spec.route, netns)
    deadline = time.monotonic() + wait
    while held.link is None and not dry_run and time.monotonic() < deadline:
        time.sleep(0.1)
        if _link(spec.ifname, netns) is not None:
            held = KernelState.read(spec.ifname, spec.route, netns)
    link = held.link
    if link is None:
        if dry_run:
            return [f"kernel: {spec.ifname} address {spec.address}, mtu {spec.mtu}, up, "
                    f"route {spec.route} dev {spec.ifname} (once the port exists)"]  # fmt: skip
        raise IprouteError(
            f"{spec.ifname} did not appear in the kernel within {wait:.0f}s: "
            "is ovs-vswitchd running for this OVSDB?"
        )
    changes: list[str] = []
    if int(link["mtu"]) != spec.mtu:
        changes.append(f"kernel: {spec.ifname} mtu {link['mtu']} -> {spec.mtu}")
        if not dry_run:
            ip("link", "set", "dev", spec.ifname, "mtu", str(spec.mtu), netns=netns)
    for family, want in (("inet", spec.address), ("inet6", spec.address6)):
        changes += _converge_address(spec.ifname, link, family, want, netns, dry_run)
    if "UP" not in link.get("flags", []):
        changes.append(f"kernel: {spec.ifname} set up")
        if not dry_run:
            ip("link", "set", "dev", spec.ifname, "up", netns=netns)
    changes += _converge_route(spec.ifname, spec.route, held.network_routes, netns, dry_run)
    changes += _converge_route6(spec.ifname, spec.route6, held.ours[6, ROUTE_PROTO], netns,
                                dry_run)  # fmt: skip
    if spec.service_routes is not None:
        changes += _converge_service_routes(spec, held, netns, dry_run)
    return changes


def _converge_address(
    ifname: str, link: dict, family: str, want: IPv4Interface | IPv6Interface | None,
    netns: str | None, dry_run: bool,
) -> list[str]:  # fmt: skip
    """Exactly `want` among the port's global addresses of `family` (IPv6's link-local
    address is the kernel's, left alone). An IPv6 one is added without duplicate address
    detection: the switch answers no probe, and the address is the lease's alone."""
    iface = IPv4Interface if family == "inet" else IPv6Interface
    have = {
        iface(f"{i['local']}/{i['prefixlen']}")
        for i in link.get("addr_info", [])
        if i.get("family") == family and i.get("scope", "global") == "global"
    }
    changes: list[str] = []
    for extra in sorted(have - {want}):
        changes.append(f"kernel: {ifname} remove address {extra}")
        if not dry_run:
            ip("addr", "del", str(extra), "dev", ifname, netns=netns)
    if want is not None and want not in have:
        changes.append(f"kernel: {ifname} add address {want}")
        if not dry_run:
            ip("addr", "add", str(want), "dev", ifname, *(("nodad",) if want.version == 6 else ()),
               netns=netns)  # fmt: skip
    return changes


def _converge_route(
    ifname: str, route: IPv4Network, routes: list[dict], netns: str | None, dry_run: bool
) -> list[str]:
    """The overlay Network routed into the port, as the only route to it (`routes`: the
    kernel's to exactly it)."""
    if any(r.get("dev") == ifname for r in routes) and len(routes) == 1:
        return []
    if not dry_run:
        ip("route", "replace", str(route), "dev", ifname, netns=netns)
    return [f"kernel: route {route} dev {ifname}"]


def _converge_route6(
    ifname: str, route: IPv6Network | None, ours: list[dict], netns: str | None, dry_run: bool
) -> list[str]:
    """Exactly `route` (a dual-stack node's IPv6Network) among the IPv6 routes of protocol
    ROUTE_PROTO on the port (`ours`): one of an earlier IPv6Network, or of a node whose
    lease lost its IPv6 half, goes; no other route is touched."""
    have = {IPv6Network(r["dst"]) for r in ours if r.get("dst", "default") != "default"}
    changes: list[str] = []
    for net in sorted(have - {route}):
        changes.append(f"kernel: remove route {net} dev {ifname} (a previous IPv6Network)")
        if not dry_run:
            ip("-6", "route", "del", str(net), "dev", ifname, "proto", ROUTE_PROTO, netns=netns)
    if route is not None and route not in have:
        changes.append(f"kernel: route {route} dev {ifname}")
        if not dry_run:
            ip("-6", "route", "replace", str(route), "dev", ifname, "proto", ROUTE_PROTO,
               netns=netns)  # fmt: skip
    return changes


def _converge_service_routes(
    spec: GatewaySpec, held: KernelState, netns: str | None, dry_run: bool
) -> list[str]:
    """Exactly `spec.service_routes` among the routes of protocol ROUTE_PROTO (IPv6:
    SERVICE6_PROTO) on the port."""
    assert spec.service_routes is not None
    changes: list[str] = []
    for family, proto, name in (("-4", ROUTE_PROTO, "ServiceNetwork"),
                                ("-6", SERVICE6_PROTO, "IPv6ServiceNetwork")):  # fmt: skip
        want = [n for n in spec.service_routes if n.version == int(family[1])]
        ours = held.ours[int(family[1]), proto]
        have = {ip_network(r["dst"]) for r in ours if r.get("dst", "default") != "default"}
        for net in sorted(have - set(want)):
            changes.append(f"kernel: remove route {net} dev {spec.ifname} (a previous {name})")
            if not dry_run:
                ip(family, "route", "del", str(net), "dev", spec.ifname, "proto", proto,
                   netns=netns)  # fmt: skip
        for net in want:
            if net not in have:
                changes.append(f"kernel: route {net} dev {spec.ifname} ({name})")
                if not dry_run:
                    ip(family, "route", "replace", str(net), "dev", spec.ifname, "proto", proto,
                       netns=netns)  # fmt: skip
    return changes
