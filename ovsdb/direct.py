"""DirectRouting on the node: which peers are direct, their kernel routes, the filter on
what arrives unencapsulated, and the kernel's route changes that make the agent decide again.

- The decision is flannel's (leases/direct.py `route_is_direct`): the kernel's route to
  each peer's PublicIP, asked through netlink (pyroute2), one socket for all peers.
- The data path is flannel's too: br-int sends a direct peer's subnet to the gateway
  port (flows/direct.py) and the host routes it `<subnet> via <PublicIP>`. Those routes
  carry protocol RTPROT_VXFLOW, so the agent finds its own again and removes only them.
  Unlike flannel (#1070), a route the kernel dropped (the underlay interface went down
  and up) comes back: the route watch wakes the agent, which installs what is missing.
- Dual stack: the same for IPv6, each family decided apart (flannel's rule on the
  PublicIPv6): routes `<IPv6 subnet> via <PublicIPv6>`, the filter in `ip6 vxflow_direct`.
- The filter (nftables, table `ip vxflow_direct`, hook forward): a packet that the host
  forwards to this node's pod subnet from anywhere but the gateway port must come from
  a direct peer's subnet or PublicIP (its host's own traffic), or it is dropped and
  counted (the named counter `dropped`, which the agent exports: `DroppedCount`); a
  packet the host DNATed itself (addressed to the node, e.g. a NodePort) passes. A host
  on the underlay that is not a node cannot reach pods by routing to this node; nor can
  a peer behind a router, which is VXLAN's, checked there by the tunnel-ingress flows.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Collection, Iterable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pyroute2 is imported when DirectRouting first asks (~80 ms of a start)
    from pyroute2 import IPRoute

from flows.ipv6 import dual_stack
from flows.validate import select_leases, select_v6
from leases.direct import direct_sources, route_is_direct
from leases.model import Lease, NetworkConfig
from ovsdb.iproute import ip_batch, ip_json

log = logging.getLogger(__name__)

RTPROT_VXFLOW = 118  # 0x76, vxflow's cookie byte: the protocol of the routes we install
FAMILY = "ip"
FAMILIES = {4: FAMILY, 6: "ip6"}  # nftables' family of each IP version's table
FAMILY_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
TABLE = "vxflow_direct"
CHAIN = "forward"
COUNTER = "dropped"  # a named counter: the chain's flush at each apply leaves it counting
COMMENT = "vxflow direct ingress"


class DirectError(RuntimeError):
    """The kernel refused a route or nftables a rule."""


Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


def direct_peers(ipr: IPRoute, peers: Iterable[Lease], six: bool = False) -> frozenset[Address]:
    """The PublicIPs of `peers` that flannel's rule finds on this node's link (`six`: a
    dual-stack node; their PublicIPv6s too, each decided apart)."""
    from pyroute2.netlink.exceptions import NetlinkError  # imported with ipr's IPRoute

    found: set[Address] = set()
    for peer in peers:
        for address in (peer.public_ip, peer.public_ipv6 if six else None):
            if address is None:
                continue
            try:
                routes = ipr.route("get", dst=str(address), family=FAMILY_AF[address.version])
            except NetlinkError:  # unreachable: no route at all
                continue
            answer = [{"gateway": r.get("RTA_GATEWAY")} for r in routes]
            if route_is_direct(answer):
                found.add(address)
    return frozenset(found)


def candidates(config: NetworkConfig, own: Lease, leases: Iterable[Lease]) -> list[Lease]:
    """The peers the rule is asked about, as the controller selects them (pure): only
    accepted leases (flows/validate.py), and their IPv6 half only where it is accepted too
    and this node is dual-stack, so no route ever serves a subnet two leases claim."""
    accepted = select_leases(config, leases).accepted
    six: set[IPv4Network] = set()  # the subnets of the leases whose IPv6 half is accepted
    if dual_stack(config, own):
        six = {le.subnet for le in select_v6(config, accepted).accepted}
    peers = [le for le in accepted if le.subnet != own.subnet and le.public_ip != own.public_ip]
    return [le if le.subnet in six else replace(le, ipv6_subnet=None, public_ipv6=None)
            for le in peers]  # fmt: skip


def route_commands(wanted: dict[Network, Address], held: dict[Network, Address]) -> list[str]:
    """`ip -batch` lines that turn our routes `held` into `wanted`, of one IP version
    (pure; `ip` takes the family from the addresses)."""
    lines = [f"route del {s} proto {RTPROT_VXFLOW}" for s in sorted(set(held) - set(wanted))]
    lines += [
        f"route replace {s} via {via} proto {RTPROT_VXFLOW}"
        for s, via in sorted(wanted.items())
        if held.get(s) != via
    ]
    return lines


def _prefix(network: Network) -> dict[str, Any]:
    return {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}


def _ip(field: str, version: int) -> dict[str, Any]:
    return {"payload": {"protocol": FAMILIES[version], "field": field}}


def filter_commands(own: Network, gateway: str, sources: list[Network]) -> dict[str, Any]:
    """One nftables JSON batch that leaves exactly the ingress filter in our chain (pure),
    in the table of `own`'s IP version: forwarded to `own` from anywhere but `gateway`, a
    source outside `sources` drops. What the host itself DNATed passes first: it was
    addressed to the node (a NodePort of kube-proxy's), not routed to a pod subnet."""
    family = FAMILIES[own.version]
    where = {"family": family, "table": TABLE}
    rule = [
        {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": gateway}},
        {"match": {"op": "==", "left": _ip("daddr", own.version), "right": _prefix(own)}},
    ]
    if sources:
        rule.append({"match": {"op": "!=", "left": _ip("saddr", own.version),
                               "right": {"set": [_prefix(s) for s in sources]}}})  # fmt: skip
    rule += [{"counter": COUNTER}, {"drop": None}]
    dnat = [{"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
            {"accept": None}]  # fmt: skip
    return {"nftables": [
        {"add": {"table": {"family": family, "name": TABLE}}},
        {"add": {"counter": {**where, "name": COUNTER}}},
        {"add": {"chain": {**where, "name": CHAIN, "type": "filter", "hook": "forward",
                           "prio": 0, "policy": "accept"}}},
        {"flush": {"chain": {**where, "name": CHAIN}}},
        {"add": {"rule": {**where, "chain": CHAIN, "comment": COMMENT, "expr": dnat}}},
        {"add": {"rule": {**where, "chain": CHAIN, "comment": COMMENT, "expr": rule}}},
    ]}  # fmt: skip


class DirectRouting:
    """The node's side of DirectRouting, in the agent's (this process's) namespace."""

    def __init__(self) -> None:
        self._nft: Any = None  # made when first used: clearing routes needs no nftables
        self._ipr: IPRoute | None = None  # made when first used: only DirectRouting asks
        self._v6_clean = False  # an IPv4-only node has no IPv6 route or table of ours left

    def _nftables(self) -> Any:
        if self._nft is None:
            import nftables  # Debian's python3-nftables, as ovsdb/ipmasq.py

            self._nft = nftables.Nftables()
            self._nft.set_json_output(True)
        return self._nft

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()

    def decide(self, peers: Iterable[Lease], six: bool = False) -> frozenset[Address]:
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
        return direct_peers(self._ipr, peers, six)

    def held_routes(self, version: int = 4) -> dict[Network, Address]:
        """Our routes of IP `version` in the kernel now (the `via` of each)."""
        routes = ip_json(f"-{version}", "route", "show", "table", "main", "proto",
                         str(RTPROT_VXFLOW))  # fmt: skip
        return {ip_network(r["dst"]): ip_address(r["gateway"]) for r in routes
                if r.get("gateway") and "/" in r.get("dst", "")}  # fmt: skip

    def apply(
        self, own: Lease, gateway: str, direct: list[Lease], reachable: Collection[Address]
    ) -> int:
        """For each family of the node: routes via the `reachable` PublicIPs (PublicIPv6s)
        of `direct`, the filter admitting their subnets and addresses (leases/direct.py
        `direct_sources`); the number of routes changed. The filter goes in first: a route
        never runs ahead of the check on the way back. A node without an IPv6 half keeps
        no IPv6 route or table of ours."""
        wanted: dict[Network, Address] = {
            p.subnet: p.public_ip for p in direct if p.public_ip in reachable}  # fmt: skip
        sources = direct_sources(direct, reachable, own.public_ip)
        changes = self._apply(own.subnet, gateway, sources, wanted)
        if own.ipv6_subnet is None:
            if not self._v6_clean:  # (one check: an earlier dual-stack run's are gone)
                changes += self._clear(6)
                self._v6_clean = True
            return changes
        self._v6_clean = False
        wanted6: dict[Network, Address] = {
            p.ipv6_subnet: p.public_ipv6 for p in direct
            if p.ipv6_subnet is not None and p.public_ipv6 is not None
            and p.public_ipv6 in reachable
        }  # fmt: skip
        sources6 = direct_sources(direct, reachable, own.public_ip, 6)
        return changes + self._apply(own.ipv6_subnet, gateway, sources6, wanted6)

    def _apply(
        self, own: Network, gateway: str, sources: list, wanted: dict[Network, Address]
    ) -> int:
        self._nft_batch(filter_commands(own, gateway, sources))
        lines = route_commands(wanted, self.held_routes(own.version))
        if lines:
            ip_batch(lines)
        return len(lines)

    def clear(self) -> int:
        """Remove our routes and our tables (DirectRouting off); the routes removed."""
        return self._clear(4) + self._clear(6)

    def _clear(self, version: int) -> int:
        lines = route_commands({}, self.held_routes(version))
        if lines:
            ip_batch(lines)
        try:
            nft = self._nftables()
        except ImportError:  # no python3-nftables: no table of ours either
            return len(lines)
        family = FAMILIES[version]
        rc, _out, _err = nft.cmd(f"list table {family} {TABLE}")
        if rc == 0:
            self._nft_batch({"nftables": [{"delete": {"table": {"family": family,
                                                                 "name": TABLE}}}]})  # fmt: skip
        return len(lines)

    def _nft_batch(self, commands: dict[str, Any]) -> None:
        rc, _out, err = self._nftables().json_cmd(commands)
        if rc != 0:
            raise DirectError(f"nftables refused the direct-routing filter: {err.strip()}")


class DroppedCount:
    """The filter's drops since the agent started, for its metrics page: the tables' named
    counters (both families) read when asked, through an nftables handle of its own (a
    scrape's thread); a counter that went back (its table made anew: the option off and
    on) counts on from zero."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nft: Any = None
        self._seen = dict.fromkeys(FAMILIES, 0)
        self._total = 0

    def read(self) -> int:
        with self._lock:
            for version, family in FAMILIES.items():
                now = self._packets(family)
                seen, self._seen[version] = self._seen[version], now
                self._total += now - seen if now >= seen else now
            return self._total

    def _packets(self, family: str) -> int:
        if self._nft is None:
            try:
                import nftables
            except ImportError:  # no python3-nftables: no filter either
                return 0
            self._nft = nftables.Nftables()
            self._nft.set_json_output(True)
        what = {"family": family, "table": TABLE, "name": COUNTER}
        rc, out, _err = self._nft.json_cmd({"nftables": [{"list": {"counter": what}}]})
        if rc != 0:  # no table (DirectRouting off, or not this family)
            return 0
        found = [o["counter"] for o in out["nftables"] if "counter" in o]
        return int(found[0]["packets"]) if found else 0


# rtnetlink's multicast groups (linux/rtnetlink.h), the ones a RouteWatch joins
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x10, 0x40
RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE = 0x100, 0x400


class RouteWatch:
    """Calls `changed()` (from a thread of its own) whenever the kernel reports a change
    of routes, addresses (either family) or links: the direct decision may be another now."""

    def __init__(self, changed: Callable[[], None]) -> None:
        self._changed = changed
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE
                         | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE))  # fmt: skip
        self._sock.settimeout(0.5)  # how long stop() may wait
        self._thread = threading.Thread(target=self._run, name="route-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:  # ENOBUFS: messages lost, so something changed
                log.debug("route watch: %s", exc)
            self._changed()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()
