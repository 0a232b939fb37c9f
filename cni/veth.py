"""The pod's veth pair: the CNI plugin's kernel edge (iproute2, see ovsdb/iproute.py).

ADD makes both ends in one `ip` call (`create`, while IPAM runs): the host
end in the plugin's own namespace (the node's, where ovs-vswitchd opens it)
and the container end created straight inside CNI_NETNS with its name and
MTU, so no half-named interface is ever visible in either namespace. A
second `ip -batch` inside the container (`configure`, once IPAM answered)
sets its MAC, address, link and routes.
Deleting the host end deletes the pair. cni/netlink.py does the same two
steps through netlink, for the agent's CNI server.
"""

from __future__ import annotations

import ctypes
import os
import random
import socket
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
    ip_interface,
    ip_network,
)
from pathlib import Path

from ovsdb.iproute import IprouteError, ip, ip_batch, ip_json, tx_checksum_off

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
NAMESPACE_FS = (0x6E736673, 0x9FA0)  # NSFS_MAGIC, PROC_SUPER_MAGIC: what pkg/ns accepts
_libc = ctypes.CDLL(None, use_errno=True)


def netns_problem(path: str) -> str | None:
    """Why `path` is no network namespace (None if it is one), as containernetworking's
    pkg/ns (IsNSorErr) decides: statfs(2) must find nsfs or procfs there."""
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type (a long) comes first
    if _libc.statfs(os.fsencode(path), buf) != 0:
        return f"failed to statfs {path!r}: {os.strerror(ctypes.get_errno())}"
    kind = ctypes.c_long.from_buffer(buf).value
    if kind not in NAMESPACE_FS:
        return f"unknown FS magic on {path!r}: {kind:x}"
    return None


class VethExists(IprouteError):
    """An interface of the attachment's name exists already (on the host or in the container)."""


@dataclass(frozen=True)
class Pair:
    """The pair as `create()` makes it: known before IPAM has answered."""

    host: str  # the node-side end, plugged into the bridge
    netns: str  # CNI_NETNS: a path
    ifname: str  # CNI_IFNAME
    mtu: int
    userspace_datapath: bool = False  # the bridge is netdev: see make_inert()


@dataclass(frozen=True)
class ContainerEnd:
    """What `configure()` gives the container end, from IPAM's answer."""

    mac: str  # 0a:58 + its IPv4
    address: IPv4Interface
    routes: tuple[tuple[IPNetwork, IPAddress], ...]  # (dst, next hop), of either family
    address6: IPv6Interface | None = None  # a dual-stack pod's (without DAD: see configure())


def host_link_exists(name: str) -> bool:
    """Whether `name` exists in this process's namespace (no process spawned)."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def random_mac() -> str:
    """A locally administered unicast MAC, as the kernel would pick for a veth end."""
    octets = [random.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def create(pair: Pair) -> str:
    """Make the pair, the host end up (and inert on a netdev bridge); the host end's MAC.

    The container end is down, with a MAC of the kernel's until `configure()`.
    Raises VethExists or IprouteError. On failure it may leave the pair
    half-made: the caller deletes the host end (`delete()`), which removes both.
    """
    if host_link_exists(pair.host):
        raise VethExists(f"host interface {pair.host} exists already")
    host_mac = random_mac()
    try:
        ip_batch([
            f"link add {pair.host} address {host_mac} mtu {pair.mtu} type veth peer name "
            f"{pair.ifname} mtu {pair.mtu} netns {pair.netns}",
            f"link set {pair.host} up",
        ])  # fmt: skip
    except IprouteError as exc:
        if "File exists" in str(exc) and not host_link_exists(pair.host):
            raise VethExists(
                f"interface {pair.ifname} exists already in the container ({pair.netns})"
            ) from exc
        raise
    if pair.userspace_datapath:
        make_inert(pair.host)
        tx_checksum_off(pair.host)
    return host_mac


def configure(pair: Pair, end: ContainerEnd) -> None:
    """The container end: its MAC, addresses, link up, routes (TX offload off on netdev).

    The IPv6 address skips duplicate address detection (as the node's gateway's): IPAM
    made it the pod's alone, and the switch answers no probe anyway."""
    commands = [f"link set {pair.ifname} address {end.mac}",
                f"addr add {end.address} dev {pair.ifname}"]  # fmt: skip
    if end.address6 is not None:
        commands.append(f"addr add {end.address6} dev {pair.ifname} nodad")
    commands.append(f"link set {pair.ifname} up")
    commands += [f"route add {dst} via {gw} dev {pair.ifname}" for dst, gw in end.routes]
    ip_batch(commands, netns=pair.netns)
    if pair.userspace_datapath:
        tx_checksum_off(pair.ifname, netns=pair.netns)


INERT = (("ipv4", "arp_ignore", "8"), ("ipv4", "forwarding", "0"), ("ipv6", "disable_ipv6", "1"))


def make_inert(host: str) -> None:
    """Keep the node's kernel off a pod port that the userspace datapath serves.

    ovs-vswitchd's netdev datapath reads the host end through a packet
    socket, so the node's kernel sees the pod's frames too: it would answer
    the pod's ARP for the gateway with the veth's own MAC (the reply goes
    straight to the pod, past the flows) and, on a node that forwards, route
    the frames sent to that MAC a second time, which the pod sees as
    duplicate replies. No ARP replies, no forwarding, no IPv6 on the host end.
    """
    for family, key, value in INERT:
        Path(f"/proc/sys/net/{family}/conf/{host}/{key}").write_text(value)


def delete(host: str) -> bool:
    """Remove the pair by its host end; False if it was not there."""
    if not host_link_exists(host):
        return False
    ip("link", "del", host, check=False)
    return not host_link_exists(host)


@dataclass(frozen=True)
class ContainerLink:
    """What CHECK compares: the container end as the kernel shows it."""

    mac: str
    up: bool
    addresses: frozenset[IPv4Interface | IPv6Interface]  # global ones (not link-local)
    routes: frozenset[tuple[IPNetwork, IPAddress | None]]  # the namespace's, any device


def container_link(netns: str, ifname: str) -> ContainerLink | None:
    """The container end's state and the namespace's routes, None if it (or the namespace)
    is gone."""
    try:
        links = ip_json("addr", "show", "dev", ifname, netns=netns)
    except IprouteError:
        return None
    if not links:
        return None
    link = links[0]
    addresses = frozenset(
        ip_interface(f"{a['local']}/{a['prefixlen']}")
        for a in link.get("addr_info", [])
        if a.get("family") in ("inet", "inet6") and a.get("scope") == "global"
    )
    routes = frozenset(
        (
            ip_network(("0.0.0.0/0", "::/0")[family == "-6"] if r["dst"] == "default" else r["dst"]),
            ip_address(r["gateway"]) if "gateway" in r else None,
        )
        for family in ("-4", "-6")
        for r in ip_json(family, "route", "show", netns=netns)
    )
    return ContainerLink(
        mac=link.get("address", ""),
        up="UP" in link.get("flags", []),
        addresses=addresses,
        routes=routes,
    )
