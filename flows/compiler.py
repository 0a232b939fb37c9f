"""From (network config, leases, endpoints, node) to the exact flows of that node's br-int.

Pipeline (every table ends in an explicit priority-0 drop; nothing is flooded,
nothing goes to the controller):

- CLASSIFY (0), by in_port:
  tunnel port: one flow per remote lease admits IPv4 with tun_id == VNI,
  tun_src == that lease's PublicIP and a source inside that lease's subnet
  (where flannel's and vxflow's hosts send from too: subnet.0 and .1) -> LOCAL
  (tunnel traffic is only ever delivered, never routed back into the tunnel).
  Anything else from the tunnel is dropped by one of two counting flows, each
  with its own cookie so `ovs-ofctl dump-flows` shows its n_packets: an overlay
  source its sender does not lease (DROP_TUNNEL_SPOOFED: a rogue underlay host,
  or a node claiming another's subnet), or anything else (DROP_TUNNEL_OTHER:
  another VNI, not IPv4, a source outside the overlay);
  gateway port with the gateway MAC: IPv4 -> ROUTE, ARP -> ARP;
  pod port: only its own MAC + IP (ARP: own sha + spa) -> ROUTE / ARP.
- ARP (10): requests are answered by the switch out of the asking port: a
  local pod's IP with the pod's MAC, the gateway and any other overlay address
  with the gateway MAC (the job flannel's L2MISS/L3MISS handler did).
- ROUTE (20): one flow per remote lease: dec_ttl, eth_src = own VtepMAC,
  eth_dst = remote VtepMAC, tun_dst = its PublicIP, tun_id = VNI -> tunnel
  (flannel's vxlan device encapsulates exactly so); own subnet -> LOCAL; the
  rest of the overlay is dropped; anything else leaves to the host (pods'
  default route is the gateway).
- LOCAL (30): exact /32 per pod (MACs rewritten, as a router would) and the
  gateway address -> gateway port.

- POL_EGRESS (50), POL_INGRESS (51): network policy, hooked into ROUTE and
  LOCAL, only on a switch with a pod some policy isolates (flows/policy.py).

TTL: decremented once per overlay crossing, on the way into the tunnel only.

Dual stack (config EnableIPv6 and a lease with an IPv6 half): the same tables
carry IPv6 the same way (flows/ipv6.py), over a tunnel port of its own
(TUNNEL6_OFPORT, local_ip = the node's PublicIPv6), with neighbour solicitations
answered in ARP; a remote lease's IPv6 route and ingress check follow its IPv4 two
under its cookie, in the same compact row (RemoteRoutes.rows6): four flows per
lease, two for one whose IPv6 half is not routed. Neighbour discovery adds no flow
per lease (one base flow answers for the whole IPv6 network). An IPv4-only config
or node gets none of it, at no cost.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address

from flows.arp import arp_reply as _arp_reply
from flows.direct import direct_flows, direct_leases
from flows.family import (  # the priorities and base cookies, kept importable from here
    BASE_COOKIE,
    PRIO_EXACT,
    PRIO_MISS,
    PRIO_OVERLAY,
    V4,
    endpoint_ip_flows,
    routing_flows,
)
from flows.family import DROP_TUNNEL_OTHER as DROP_TUNNEL_OTHER
from flows.family import DROP_TUNNEL_SPOOFED as DROP_TUNNEL_SPOOFED
from flows.family import PRIO_DEFAULT as PRIO_DEFAULT
from flows.flow import (
    ARP_REQUEST,
    ETH_TYPE_ARP,
    ETH_TYPE_IP,
    POLICY_TABLES,
    Action,
    Flow,
    Owner,
    Table,
    cookie_for,
    dec_ttl,
    flow,
    goto_table,
    output,
    owner_of,
    set_field,
)
from flows.groups import Group
from flows.ipv6 import (
    dual_stack,
    endpoint_v6_flows,
    ipv6_base_flows,
    lease_v6_flows,
    select_v6,
)
from flows.policy import policy_table
from flows.ports import GATEWAY_OFPORT, TUNNEL_OFPORT, gateway_mac, vtep_mac_for
from flows.services import ServicePlan, hairpin_flows, plan_flows, plan_groups
from flows.validate import select_endpoints, select_leases
from leases.model import Endpoint, Lease, NetworkConfig
from leases.policy import Namespace, NetworkPolicy


def subnet_cookie(subnet: IPv4Network) -> int:
    """The cookie of the flows a lease of `subnet` owns (the subnet outlives lease changes)."""
    return cookie_for(Owner.LEASE, int(subnet.network_address))


def cookie_subnet(cookie: int, subnet_len: int) -> IPv4Network | None:
    """Inverse of `subnet_cookie`; None for any other cookie, also one that only looks like
    a lease's (its key not a /`subnet_len` network address: a flow added by hand)."""
    owner = owner_of(cookie)
    if owner is None or owner[0] is not Owner.LEASE:
        return None
    subnet = IPv4Network((owner[1], subnet_len), strict=False)
    return subnet if int(subnet.network_address) == owner[1] else None


def lease_cookie(lease: Lease) -> int:
    return subnet_cookie(lease.subnet)


def endpoint_cookie(endpoint: Endpoint) -> int:
    return cookie_for(Owner.ENDPOINT, int(endpoint.ip))


def miss_flows() -> list[Flow]:
    """Table-miss drop in every table: all a switch without a valid lease gets."""
    return [flow(t, PRIO_MISS, {}, (), BASE_COOKIE) for t in Table if t not in POLICY_TABLES]


def base_flows(config: NetworkConfig, own: Lease | None) -> list[Flow]:
    """The node's fixed pipeline: everything not owned by a remote lease or a pod (the
    IPv6 half's too on a dual-stack node, flows/ipv6.py)."""
    flows = miss_flows()
    if own is None:
        return flows
    gw_mac = gateway_mac(own.subnet)
    arp, c = ETH_TYPE_ARP, BASE_COOKIE
    flows += routing_flows(V4, config.backend.vni, config.network, own.subnet, own.gateway, gw_mac)
    flows += [
        flow(
            Table.CLASSIFY,
            PRIO_EXACT,
            {"in_port": GATEWAY_OFPORT, "eth_src": gw_mac, "eth_type": arp},
            [goto_table(Table.ARP)],
            c,
        ),
        flow(
            Table.ARP,
            PRIO_EXACT,
            {"eth_type": arp, "arp_op": ARP_REQUEST, "arp_tpa": own.gateway},
            _arp_reply(gw_mac),
            c,
        ),
        flow(
            Table.ARP,
            PRIO_OVERLAY,
            {"eth_type": arp, "arp_op": ARP_REQUEST, "arp_tpa": config.network},
            _arp_reply(gw_mac),
            c,
        ),
    ]
    if dual_stack(config, own):
        flows += ipv6_base_flows(config, own)
    return flows


_ROUTE = int(Table.ROUTE)
_CLASSIFY = int(Table.CLASSIFY)
_MATCH_IP = ("eth_type", ETH_TYPE_IP)
_MATCH_TUNNEL = ("in_port", TUNNEL_OFPORT)
_TO_TUNNEL = output(TUNNEL_OFPORT)
_TO_LOCAL = goto_table(Table.LOCAL)
_LEASE_COOKIE = cookie_for(Owner.LEASE)
FLOWS_PER_LEASE = 2  # what a remote lease adds to a switch: its route and its ingress check


def remote_lease_flows(
    config: NetworkConfig, lease: Lease, own: Lease, six: bool = False
) -> tuple[Flow, ...]:
    """The flows a remote lease contributes to `own`'s switch: its route (ROUTE) and
    its tunnel-ingress check (CLASSIFY), under the lease's cookie; `six`: its IPv6 route
    and check after them (`lease_v6_flows`: the switch routes that lease's IPv6 half).

    The caller guarantees both leases were accepted by `select_leases` and differ.
    Built directly rather than through `flow()`: a node holds these for every
    lease in the cluster, so this is the compiler's hot path.
    """
    cookie = _LEASE_COOKIE | int(lease.subnet.network_address)
    route = Flow(
        _ROUTE,
        PRIO_EXACT,
        (_MATCH_IP, ("ip_dst", lease.subnet)),
        (
            *_encap_head(own.public_ip),
            ("set_field", "eth_dst", lease.vtep_mac),
            ("set_field", "tun_dst", lease.public_ip),
            ("set_field", "tun_id", config.backend.vni),
            _TO_TUNNEL,
        ),
        cookie,
    )
    ingress = Flow(
        _CLASSIFY,
        PRIO_EXACT,
        (
            _MATCH_IP,
            _MATCH_TUNNEL,
            ("ip_src", lease.subnet),
            ("tun_id", config.backend.vni),
            ("tun_src", lease.public_ip),
        ),
        (_TO_LOCAL,),
        cookie,
    )
    if six:
        return route, ingress, *lease_v6_flows(config, lease, own)
    return route, ingress


def lease_context(config: NetworkConfig, own: Lease) -> tuple:
    """All `remote_lease_flows` takes from the config and the switch's own lease: a
    lease's flows rendered under equal contexts are equal (kept beside it so the two
    cannot drift apart)."""
    return config.backend.vni, own.public_ip, own.vtep_mac_v6


@lru_cache(maxsize=1024)
def _encap_head(own_ip: IPv4Address) -> tuple[Action, ...]:
    return (dec_ttl(), set_field("eth_src", vtep_mac_for(own_ip)))


def endpoint_flows(own: Lease, endpoint: Endpoint) -> list[Flow]:
    """The flows one local pod contributes: spoof guard, ARP answer, delivery."""
    c = endpoint_cookie(endpoint)
    guard = {"in_port": endpoint.ofport, "eth_src": endpoint.mac}
    return [
        *endpoint_ip_flows(V4, endpoint.ip, own, endpoint, c),
        flow(
            Table.CLASSIFY,
            PRIO_EXACT,
            {
                **guard,
                "eth_type": ETH_TYPE_ARP,
                "arp_spa": endpoint.ip,
                "arp_sha": endpoint.mac,
            },
            [goto_table(Table.ARP)],
            c,
        ),
        flow(
            Table.ARP,
            PRIO_EXACT,
            {"eth_type": ETH_TYPE_ARP, "arp_op": ARP_REQUEST, "arp_tpa": endpoint.ip},
            _arp_reply(endpoint.mac),
            c,
        ),
    ]


Row = tuple[int, int, bytes]  # a remote lease as (subnet address, PublicIP, VtepMAC octets)
# its IPv6 half as (IPv6 subnet address, PublicIPv6, IPv6 VtepMAC octets), all packed
Row6 = tuple[bytes, bytes, bytes]


def route_row(lease: Lease) -> Row:
    """What varies between two remote-lease flows of one switch, as plain ints and bytes."""
    return (
        int(lease.subnet.network_address),
        int(lease.public_ip),
        bytes.fromhex(lease.vtep_mac.replace(":", "")),
    )


def route_row6(lease: Lease) -> Row6:
    """`route_row` of a lease's IPv6 half (one `select_v6` accepted)."""
    assert lease.ipv6_subnet is not None and lease.public_ipv6 is not None
    assert lease.vtep_mac_v6 is not None
    return (
        lease.ipv6_subnet.network_address.packed,
        lease.public_ipv6.packed,
        bytes.fromhex(lease.vtep_mac_v6.replace(":", "")),
    )


@dataclass(frozen=True)
class RemoteRoutes:
    """The remote-lease flows of `own`'s switch (FLOWS_PER_LEASE per lease, twice that
    for a lease whose IPv6 half a dual-stack switch routes), kept compact.

    They are most of a table (two or four per node in the cluster) and share
    four shapes, so they stay rows until Flow values are really needed (a diff
    against a table that holds some, an error report): a cold sync encodes
    the rows straight to bytes (controller/ofwire.py). The flows are those of
    `remote_lease_flows` of each lease in turn (`lease_flows`).
    """

    config: NetworkConfig
    own: Lease
    leases: Sequence[Lease]  # accepted, all but `own`
    rows: Sequence[Row]  # route_row of each lease, in the same order
    # on a dual-stack switch: route_row6 of each lease whose IPv6 half it routes, None for
    # the others (in the same order); empty: no IPv6 half routed (an IPv4-only switch)
    rows6: Sequence[Row6 | None] = ()

    # the leases whose IPv6 flows are among these, and the number of flows (`len`): asked
    # several times per switch when a lease event fans out, so counted once
    halves: int = field(init=False, repr=False, compare=False)
    _size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        halves = sum(row is not None for row in self.rows6)
        object.__setattr__(self, "halves", halves)
        object.__setattr__(self, "_size", FLOWS_PER_LEASE * (len(self.leases) + halves))

    def __len__(self) -> int:
        """The number of flows (not of leases)."""
        return self._size

    @property
    def own_mac(self) -> str:
        """The switch's own VtepMAC: the routes' eth_src, all that differs between two
        switches' routes of one lease (with `own.vtep_mac_v6` for the IPv6 routes)."""
        return _encap_head(self.own.public_ip)[1][2]

    def six(self, i: int) -> bool:
        """Whether lease `i`'s IPv6 flows are among these."""
        return bool(self.rows6) and self.rows6[i] is not None

    def flows_of(self, i: int) -> int:
        """How many flows lease `i` has among these."""
        return FLOWS_PER_LEASE * (2 if self.six(i) else 1)

    def lease_flows(self, i: int) -> tuple[Flow, ...]:
        return remote_lease_flows(self.config, self.leases[i], self.own, self.six(i))

    def items(self) -> Sequence:
        """What the encoder takes (controller/ofwire.py's `route_encoder`): the rows, or
        with IPv6 halves each row with its row6."""
        return list(zip(self.rows, self.rows6, strict=True)) if self.rows6 else self.rows

    def count(self, items: Sequence) -> int:
        """The flows of some of `items()`."""
        if not self.rows6:
            return FLOWS_PER_LEASE * len(items)
        return sum(FLOWS_PER_LEASE * (1 if six is None else 2) for _, six in items)

    def flow(self, i: int) -> Flow:
        if not self.rows6:
            lease, kind = divmod(i, FLOWS_PER_LEASE)
            return self.lease_flows(lease)[kind]
        for lease in range(len(self.leases)):
            n = self.flows_of(lease)
            if i < n:
                return self.lease_flows(lease)[i]
            i -= n
        raise IndexError("flow index out of range")

    def flows(self) -> list[Flow]:
        if not self.rows6:
            config, own = self.config, self.own
            return [f for lease in self.leases for f in remote_lease_flows(config, lease, own)]
        return [f for i in range(len(self.leases)) for f in self.lease_flows(i)]


@dataclass(frozen=True)
class NodeTable:
    """One node's desired table: `flows` plus the compact `routes` (if any), and the
    `groups` its service flows point at (flows/services.py).

    Iterating yields every flow of the table as a Flow.
    """

    flows: list[Flow]
    routes: RemoteRoutes | None = None
    groups: list[Group] = field(default_factory=list)

    def __iter__(self) -> Iterator[Flow]:
        yield from self.flows
        if self.routes is not None:
            yield from self.routes.flows()

    def __len__(self) -> int:
        return len(self.flows) + (len(self.routes) if self.routes is not None else 0)


def node_table(
    config: NetworkConfig,
    leases: Sequence[Lease],
    endpoints: Iterable[Endpoint],
    own: Lease | None,
    rows: Sequence[Row] | None = None,
    services: ServicePlan | None = None,
    v6: Sequence[Lease] | None = None,
    rows6: Sequence[Row6 | None] | None = None,
    direct: Sequence[Lease] = (),
    reachable: Collection[IPv4Address | IPv6Address] = frozenset(),
) -> NodeTable:
    """The table of the node holding `own`, from already selected leases and endpoints
    (each flow once; no set, because hashing a large table is not free). `rows`, if
    given, are `route_row` of each lease, precomputed by a caller that keeps them;
    `services`, if any, add their flows, groups and each pod's hairpin flow; `v6`, if
    given, is `select_v6` of the leases (accepted) (on a dual-stack node their IPv6 flows are
    among the routes, under each lease's cookie), and `rows6`, if given, `route_row6` of
    each of `leases` in `v6` (None for the others); `direct`, the peers routed
    directly (flows/direct.py), their direct routes in each family named `reachable`.

    The controller calls this with its incrementally maintained selection;
    anything else should call `compile_node`.
    """
    flows = base_flows(config, own)
    if own is None:
        return NodeTable(flows)
    six = dual_stack(config, own)
    groups: list[Group] = []
    for endpoint in endpoints:
        flows += endpoint_flows(own, endpoint)
        if six and endpoint.ipv6 is not None:
            flows += endpoint_v6_flows(own, endpoint)
        if services is not None:
            flows += hairpin_flows(endpoint, services, six, endpoint_cookie(endpoint))
    if services is not None:
        flows += plan_flows(config, own, services)
        groups = plan_groups(services, six)
    if six and v6 is None:
        v6 = select_v6(config, leases).accepted
    flows += direct_flows(own, direct, reachable, {le.subnet for le in v6} if six and direct else ())
    if rows is None:
        rows = [route_row(lease) for lease in leases]
    if six and rows6 is None:
        halves = {lease.subnet for lease in v6}
        rows6 = [route_row6(lease) if lease.subnet in halves else None for lease in leases]
    own_ip = int(own.public_ip)
    remote, remote_rows = list(leases), list(rows)
    remote_rows6 = list(rows6) if six else []
    for i in reversed([i for i, row in enumerate(rows) if row[1] == own_ip]):
        del remote[i], remote_rows[i]
        if remote_rows6:
            del remote_rows6[i]
    return NodeTable(flows, RemoteRoutes(config, own, remote, remote_rows, remote_rows6), groups)


def compile_node(
    config: NetworkConfig,
    leases: Iterable[Lease],
    endpoints: Iterable[Endpoint],
    node: IPv4Address,
    services: ServicePlan | None = None,
    policies: Sequence[NetworkPolicy] = (),
    namespaces: Iterable[Namespace] = (),
    reachable: Collection[IPv4Address | IPv6Address] | None = None,
) -> frozenset[Flow]:
    """The exact flow table of the node whose PublicIP is `node`.

    Invalid or conflicting leases and endpoints contribute nothing; a node with
    no accepted lease gets only the table-miss drops. `reachable`: the peers its
    agent reaches directly (DirectRouting, flows/direct.py).
    """
    return frozenset(compile_table(config, leases, endpoints, node, services, policies, namespaces,
                                   reachable))  # fmt: skip


def compile_table(
    config: NetworkConfig,
    leases: Iterable[Lease],
    endpoints: Iterable[Endpoint],
    node: IPv4Address,
    services: ServicePlan | None = None,
    policies: Sequence[NetworkPolicy] = (),
    namespaces: Iterable[Namespace] = (),
    reachable: Collection[IPv4Address | IPv6Address] | None = None,
    log_drops: bool = False,
) -> NodeTable:
    """`compile_node` with the groups: the node's whole desired state (with the policy
    stage of `policies`, flows/policy.py; `log_drops`: its default drops logged)."""
    accepted = select_leases(config, leases).accepted
    endpoints = list(endpoints)
    own = next((lease for lease in accepted if lease.public_ip == node), None)
    own_endpoints = select_endpoints(own, endpoints).accepted
    direct = direct_leases(config, own, accepted, reachable)
    table = node_table(config, accepted, own_endpoints, own, services=services, direct=direct,
                       reachable=reachable or frozenset())
    if policies and own is not None:
        everyone = [e for lease in accepted for e in select_endpoints(lease, endpoints).accepted]
        table.flows.extend(policy_table(policies, namespaces, everyone, own_endpoints, own.subnet,
                                        own.ipv6_subnet,
                                        host=(own.public_ip, own.public_ipv6),
                                        log_drops=log_drops).flows)  # fmt: skip
    return table
