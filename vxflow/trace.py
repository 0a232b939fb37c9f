"""`vxflow trace SRC DST`: where a packet from a pod goes across the nodes, and where it stops.

Every hop is traced by the node's own ovs-vswitchd (`ovs-appctl ofproto/trace`
on its real flow table, ovsdb/oftrace.py); nothing is simulated. The walk:
the packet as the source pod sends it, on its node's bridge; if it leaves
through the tunnel, the same packet as it arrives (tunnel source and
destination, VNI, the headers the first hop wrote) on the bridge of the node
whose PublicIP (IPv6: PublicIPv6) it was sent to; if a direct route (DirectRouting)
sends it to the host, the same packet as that node's host hands it to its bridge (from its
gateway port, TTL less the two hosts' hops: the hosts' routes and filter are
the kernel's, not traced); until it is delivered to a pod or the host,
or dropped, with the reason read from the flow that dropped it
(flows/explain.py). etcd tells which node leases what and which pod sits on
which port. Each node's ovs-vswitchd is reached through its unixctl socket,
given per node with `--ovs PUBLIC_IP=PATH`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address

import click

from flows.explain import drop_reason, owner_text, policy_text
from flows.flow import Owner, owner_of
from flows.policy import PolicyTable, policy_table
from flows.ports import GATEWAY_OFPORT, TUNNEL6_OFPORT, TUNNEL_OFPORT, gateway_mac
from leases.cli_options import etcd_options, open_registry
from leases.errors import RegistryError
from leases.model import Endpoint, Lease
from leases.state import Snapshot
from ovsdb import oftrace
from ovsdb.oftrace import BridgeTrace, TraceError

MAX_HOPS = 4  # a packet crosses one tunnel; more would be a loop
EXIT_UNDELIVERED, EXIT_UNKNOWN = 1, 3
PROTOCOLS = ("icmp", "tcp", "udp")


class CannotTrace(click.ClickException):
    exit_code = EXIT_UNKNOWN


@dataclass
class Hop:
    node: str
    subnet: str
    in_port: str  # what it entered on
    packet: str  # as traced (ovs-ofctl syntax)
    flows: list[dict[str, object]] = field(default_factory=list)
    result: str = ""  # tunnel | direct | delivered | host | dropped | stopped
    detail: str = ""
    tun_dst: str | None = None
    vni: int | None = None
    next_hop: str | None = None  # direct: the peer's PublicIP its host routes it via


@dataclass
class Walk:
    source: str
    destination: str
    protocol: str
    hops: list[Hop] = field(default_factory=list)

    @property
    def delivered(self) -> bool:
        return bool(self.hops) and self.hops[-1].result in ("delivered", "host")


IPAddress = IPv4Address | IPv6Address


def _ends(t: BridgeTrace) -> tuple[IPv4Address | None, IPv4Address | None]:
    """The IPv4 source and destination of the packet as the trace left it."""
    src, dst = t.final.get("nw_src"), t.final.get("nw_dst")
    return (IPv4Address(src) if src else None), (IPv4Address(dst) if dst else None)


def _packet_fields(protocol: str, dport: int, src: IPAddress, dst: IPAddress) -> str:
    l4 = f",tp_dst={dport}" if protocol != "icmp" else ""
    if dst.version == 6:  # an echo request (type 128), not a neighbour solicitation
        l4 = l4 or ",icmpv6_type=128"
        return f"{protocol}6,ipv6_src={src},ipv6_dst={dst}{l4}"
    return f"{protocol},nw_src={src},nw_dst={dst}{l4}"


def _tunnel_fields(version: int, lease: Lease, nxt: Lease) -> str:
    """How a packet tunnelled from `lease`'s node arrives at `nxt`'s, per family."""
    if version == 6:
        return (f"in_port={TUNNEL6_OFPORT},tun_ipv6_src={lease.public_ipv6},"
                f"tun_ipv6_dst={nxt.public_ipv6}")  # fmt: skip
    return f"in_port={TUNNEL_OFPORT},tun_src={lease.public_ip},tun_dst={nxt.public_ip}"


class Tracer:
    """Walks one packet through the nodes' switches."""

    def __init__(self, snap: Snapshot, unixctl: dict[IPv4Address, str], bridge: str) -> None:
        self.snap = snap
        self.unixctl = unixctl
        self.bridge = bridge
        self.subnet_len = snap.config.subnet_len if snap.config else 32
        self._policies: dict[IPv4Address, PolicyTable] = {}

    def policies_of(self, lease: Lease) -> PolicyTable:
        """The node's policy stage as the controller compiles it: what names the rule or
        isolation behind a policy flow's cookie."""
        if lease.public_ip not in self._policies:
            snap = self.snap
            self._policies[lease.public_ip] = policy_table(
                snap.policies, snap.namespaces, snap.endpoints, snap.endpoints_of(lease.subnet),
                lease.subnet, lease.ipv6_subnet, host=(lease.public_ip, lease.public_ipv6),
            )
        return self._policies[lease.public_ip]

    def _endpoint_at(self, lease: Lease, ofport: int) -> Endpoint | None:
        return next((e for e in self.snap.endpoints_of(lease.subnet) if e.ofport == ofport), None)

    def walk(self, src: Endpoint, dst: IPAddress, protocol: str, dport: int,
             src_ip: IPAddress | None) -> Walk:  # fmt: skip
        own = src.ipv6 if dst.version == 6 else src.ip
        if own is None:
            raise CannotTrace(f"pod {src.ip} has no IPv6 address to send to {dst} from")
        if src_ip is not None and src_ip.version != dst.version:
            raise CannotTrace(f"--src-ip {src_ip} and {dst} are of different families")
        result = Walk(str(own), str(dst), protocol)
        lease = self.snap.lease_for_subnet(src.node_subnet)
        if lease is None:
            raise CannotTrace(f"pod {src.ip}'s node subnet {src.node_subnet} has no valid lease")
        local = next((e for e in self.snap.endpoints_of(lease.subnet) if dst in (e.ip, e.ipv6)),
                     None)  # fmt: skip
        mac = local.mac if local is not None else gateway_mac(lease.subnet)
        fields = _packet_fields(protocol, dport, src_ip or own, dst)
        packet = f"in_port={src.ofport},dl_src={src.mac},dl_dst={mac},{fields},nw_ttl=64"
        in_port, pod_port = f"{src.ofport} (pod {src.ip})", True
        for _ in range(MAX_HOPS):
            hop, traced = self._hop(lease, packet, in_port, pod_port)
            result.hops.append(hop)
            if hop.result not in ("tunnel", "direct"):
                return result
            to = ip_address(hop.tun_dst or hop.next_hop)
            nxt = next((x for x in self.snap.leases if to in (x.public_ip, x.public_ipv6)), None)
            if nxt is None:
                hop.detail += "; no valid lease holds that PublicIP: nothing to trace there"
                return result
            if nxt.public_ip not in self.unixctl:
                result.hops.append(Hop(str(nxt.public_ip), str(nxt.subnet), "tunnel", "",
                                       result="stopped", detail="no --ovs for this node: its "
                                       "switch cannot be traced from here"))  # fmt: skip
                return result
            final = traced.final
            if hop.result == "direct":  # each host's forwarding takes one off the TTL
                there = next((e for e in self.snap.endpoints_of(nxt.subnet) if dst in (e.ip, e.ipv6)),
                             None)  # fmt: skip
                packet = (f"in_port={GATEWAY_OFPORT},dl_src={gateway_mac(nxt.subnet)},"
                          f"dl_dst={there.mac if there else gateway_mac(nxt.subnet)},{fields},"
                          f"nw_ttl={int(final['nw_ttl']) - 2}")  # fmt: skip
                lease, in_port = nxt, f"{GATEWAY_OFPORT} (host, routed directly from {hop.node})"
                pod_port = False
                continue
            tunnel = _tunnel_fields(dst.version, lease, nxt)
            packet = (f"{tunnel},tun_id={hop.vni:#x},dl_src={final['dl_src']},"
                      f"dl_dst={final['dl_dst']},{fields},nw_ttl={final['nw_ttl']}")  # fmt: skip
            port = TUNNEL6_OFPORT if dst.version == 6 else TUNNEL_OFPORT
            lease, in_port, pod_port = nxt, f"{port} (tunnel from {hop.node})", False
        result.hops[-1].result, result.hops[-1].detail = "dropped", "too many hops: a loop"
        return result

    def _hop(
        self, lease: Lease, packet: str, in_port: str, pod_port: bool
    ) -> tuple[Hop, BridgeTrace]:
        hop = Hop(str(lease.public_ip), str(lease.subnet), in_port, packet)
        unixctl = self.unixctl.get(lease.public_ip)
        if unixctl is None:
            raise CannotTrace(f"no --ovs for node {lease.public_ip} (its ovs-vswitchd's unixctl "
                              "socket)")  # fmt: skip
        try:
            t = oftrace.trace(unixctl, self.bridge, packet)
        except TraceError as exc:
            raise CannotTrace(str(exc)) from exc
        hop.flows = [{"table": s.table, "priority": s.priority, "cookie": f"{s.cookie:#x}",
                      "owner": owner_text(s.cookie, self.subnet_len), "match": s.match,
                      "actions": list(s.actions)} for s in t.steps]  # fmt: skip
        self._outcome(hop, t, lease, pod_port)
        policies, ends = self.policies_of(lease), _ends(t)
        notes = [text for s in t.steps if (text := policy_text(s.table, s.cookie, policies, *ends))]
        if notes:  # the rules that allowed it (or the isolation that dropped it)
            for f, s in zip(hop.flows, t.steps, strict=True):
                f["policy"] = policy_text(s.table, s.cookie, policies, *ends)
            if hop.result != "dropped":
                hop.detail += "; " + "; ".join(notes)
        return hop, t

    def _outcome(self, hop: Hop, t: BridgeTrace, lease: Lease, pod_port: bool) -> None:
        if {TUNNEL_OFPORT, TUNNEL6_OFPORT} & set(t.outputs) and t.tun_dst is not None:
            hop.result, hop.tun_dst, hop.vni = "tunnel", str(t.tun_dst), t.tun_id
            hop.detail = f"into the tunnel to {t.tun_dst}, VNI {t.tun_id}"
        elif GATEWAY_OFPORT in t.outputs and (peer := self._direct_peer(t)) is not None:
            via = peer.public_ipv6 if ",ipv6_dst=" in hop.packet else peer.public_ip
            hop.result, hop.next_hop = "direct", str(via)
            hop.detail = (f"to node {lease.public_ip}'s host (port {GATEWAY_OFPORT}), routed "
                          f"directly via {via}: DirectRouting, no VXLAN")  # fmt: skip
        elif GATEWAY_OFPORT in t.outputs:
            hop.result, hop.detail = "host", f"to node {lease.public_ip}'s host (port {GATEWAY_OFPORT})"
        elif t.outputs:
            port = t.outputs[-1]
            ep = self._endpoint_at(lease, port)
            hop.result = "delivered"
            hop.detail = f"to pod {ep.ip} (port {port})" if ep else f"to port {port}"
        else:
            hop.result = "dropped"
            last = t.steps[-1] if t.steps else None
            policy = last and policy_text(last.table, last.cookie, self.policies_of(lease), *_ends(t))
            hop.detail = policy or (drop_reason(last.table, last.priority, last.cookie, pod_port)
                                    if last else "no flow matched")  # fmt: skip


    def _direct_peer(self, t: BridgeTrace) -> Lease | None:
        """The peer whose direct route (flows/direct.py) sent the packet to the host."""
        owners = [o for s in t.steps if (o := owner_of(s.cookie)) and o[0] is Owner.DIRECT]
        if not owners:
            return None
        return self.snap.lease_for_subnet(IPv4Network((owners[-1][1], self.subnet_len)))


def render(walk: Walk) -> str:
    lines = [f"trace {walk.source} -> {walk.destination} ({walk.protocol})"]
    for hop in walk.hops:
        lines.append(f"node {hop.node} ({hop.subnet}), in_port {hop.in_port}:")
        for f in hop.flows:
            actions = ",".join(f["actions"]) or "drop"  # type: ignore[arg-type]
            lines.append(f"  table {f['table']:<3} priority {f['priority']:<4} {f['owner']}: "
                         f"{f['match'] or '*'} -> {actions}")  # fmt: skip
            if f.get("policy"):
                lines.append(f"    ({f['policy']})")
        lines.append(f"  {hop.result}: {hop.detail}")
    last = walk.hops[-1] if walk.hops else None
    if walk.delivered:
        lines.append(f"delivered on node {last.node}: {last.detail}")
    elif last is not None:
        lines.append(f"{last.result} on node {last.node}: {last.detail}")
    return "\n".join(lines)


def _ovs_map(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict:
    out = {}
    for value in values:
        node, sep, path = value.partition("=")
        try:
            out[IPv4Address(node)] = path
        except ValueError:
            sep = ""
        if not sep or not path:
            raise click.BadParameter(f"{value!r} is not PUBLIC_IP=PATH", ctx, param)
    return out


@click.command()
@click.argument("src", type=ip_address)
@click.argument("dst", type=ip_address)
@click.option("--ovs", "unixctl", multiple=True, callback=_ovs_map, metavar="PUBLIC_IP=PATH",
              help="A node's ovs-vswitchd unixctl socket (repeatable; e.g. "
                   "198.18.0.1=/var/run/openvswitch/ovs-vswitchd.1234.ctl).")  # fmt: skip
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="icmp", show_default=True)
@click.option("--dport", type=click.IntRange(1, 65535), default=80, show_default=True,
              help="Destination port (tcp, udp).")
@click.option("--src-ip", type=ip_address,
              help="Source address the packet carries (default SRC's own): traces spoofing.")
@click.option("--bridge", default="br-int", show_default=True, help="Integration bridge name.")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text",
              show_default=True)
@etcd_options
def trace(src: IPAddress, dst: IPAddress, unixctl: dict, protocol: str, dport: int,
                  src_ip: IPAddress | None, bridge: str, output: str, **etcd: str) -> None:  # fmt: skip
    """Trace a packet from pod SRC to DST across the nodes, on their real switches.

    SRC names the pod by either of its addresses; an IPv6 DST (a dual-stack
    cluster) traces IPv6 from the pod's IPv6 address over the IPv6 tunnels.

    Each hop runs `ovs-appctl ofproto/trace` on that node's ovs-vswitchd (give
    every node the packet may reach with --ovs): the tables and flows hit, the
    tunnel hop with its tun_dst and VNI, and delivery (to a pod or the host) or
    the drop with its reason (spoof guard, no lease, no endpoint, or the network
    policy isolation that denies it; a new connection a policy rule allows names
    that rule). Exit status:
    0 delivered, 1 dropped or stopped, 3 could not trace.
    """
    try:
        with open_registry(**etcd) as registry:
            snap = registry.snapshot()
    except RegistryError as exc:
        raise CannotTrace(str(exc)) from exc
    source = next((e for e in snap.endpoints if src in (e.ip, e.ipv6)), None)
    if source is None:
        raise CannotTrace(f"{src} is no pod's address (no endpoint in etcd)")
    walk = Tracer(snap, unixctl, bridge).walk(source, dst, protocol, dport, src_ip)
    if output == "json":
        click.echo(json.dumps({**asdict(walk), "delivered": walk.delivered}, indent=2))
    else:
        click.echo(render(walk))
    sys.exit(0 if walk.delivered else EXIT_UNDELIVERED)
