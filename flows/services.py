"""From the accepted services to the flows and groups of one node's br-int (pure).

Every node balances the connections its own pods and its host open to a
VIP:port, in its own data plane: conntrack in a zone of vxflow's own and one
OpenFlow select group per service port, whose bucket per backend commits the
connection with destination NAT. Established packets follow their conntrack
entry, so a backend change (a group-mod) never moves a live connection.

A port with client-IP affinity has no group: its backend is a function of the
client's address (`affinity_links`), so a client's first connection and every
later one agree, also before the switch has learned the affinity entry (a
select group picks per connection: a connection that missed the entry, still
being installed or hidden by a datapath flow cached meanwhile, could land on
another backend). The learned entry then keeps the client on its backend
across backend changes, for the service's timeout.

What the services add to the pipeline (flows/compiler.py):

- ROUTE (20), reached by pods after the spoof guard and by the host:
  VIP:port -> ct(SERVICE_ZONE, nat) -> SVC_LB; a pod's reply to the hairpin
  source -> un-SNAT (HAIRPIN_ZONE) -> SVC_HAIRPIN_REPLY; the rest of the
  ServiceNetwork is dropped (counted), never routed to the host.
- SVC_LB (40): established/related -> resubmit(ROUTE) with the connection's
  NAT applied (routed to the backend as today: local /32 or its node's
  tunnel); new -> the port's group; no backend -> drop with the port's own
  cookie, so `ovs-ofctl dump-flows` counts them; client-IP affinity ->
  SVC_AFFINITY (learned entries load the backend into reg1), then SVC_DNAT.
- group (one per port without affinity): a bucket per backend, `weight` =
  its Weight: ct(commit, SERVICE_ZONE, nat(dst=backend:TargetPort), table=ROUTE).
- SVC_DNAT (42, affinity only): reg1 = a backend (the learned entry) -> learn
  the entry again (idle timeout = the service's), then the same commit; reg1
  not a backend (no entry, or one of a removed backend) -> multipath: hash of
  the client's IP -> one of the port's links, in reg0 -> SVC_LINK.
- SVC_LINK (46, affinity only): one flow per link: learn that link's backend,
  then the same commit.
- LOCAL (30): an untracked packet from a TargetPort of any service (into a
  local pod or the host) is looked up in SERVICE_ZONE -> SVC_REPLY. A pod's
  packet to itself (it was chosen as its own backend) -> SNAT to the hairpin
  source in HAIRPIN_ZONE (the pod's kernel would drop a packet from its own
  address) -> SVC_HAIRPIN_OUT.
- SVC_REPLY (45): the reply of an established (or related to a) service
  connection -> ct(nat) -> LOCAL again, un-DNATed: a client only ever sees the
  VIP; anything else -> LOCAL as it is. Two steps, because conntrack applies
  an entry's NAT even to a packet it finds invalid: a direct connection to a
  backend's pod that reuses the source port of an earlier (TIME_WAIT) VIP
  connection would otherwise get its SYN-ACK rewritten to the VIP.
- SVC_HAIRPIN_REPLY (43): established replies -> un-DNAT -> SVC_HAIRPIN_OUT.
- SVC_HAIRPIN_OUT (44): back out of the pod's port, MACs as from the gateway.
- ARP (10): ServiceNetwork addresses are answered with the gateway MAC (the
  agent routes the ServiceNetwork into the gateway port).

A port's group id is the VIP's offset in the ServiceNetwork (20 bits) and the
port's place among the service's ports (8 bits): stable, the same on every
replica, and the key of the port's flow cookie (also of a port with affinity,
which has no group).

IPv6 (an IPv6ServiceNetwork, on a dual-stack node: `dual_stack`): the same flows in the
IPv6 fields (`flows.family`), neighbour solicitations for the range answered as ARP
requests are, the range's last address the hairpin source. An IPv6 service's group ids
and reply-hook keys carry a bit of their own (V6_KEY), and its learned entries name a
backend by a 32-bit hash (`leases.services.affinity_key`). An IPv4-only cluster or node
holds none of it.

What a backend change touches: without affinity the port's group only (one
group-mod per port; its flows stay). With affinity the port's flows instead:
the links that changed hands (a removed backend's, about an added backend's
share, a few more: see `affinity_links`) and the added or removed backend's
SVC_DNAT flow; the multipath flow stays while the link count does. Each of
those flows is complete on its own (it commits to its backend itself), so
every state between two tables sends a new client to its old or its new
backend, whether the change goes out in one bundle or as a few bare flow-mods.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from hashlib import blake2b
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flows.family import V4, V6, Family, family, neighbour_answer
from flows.flow import (
    CT_EST,
    CT_NEW,
    CT_REL,
    CT_RPL,
    CT_TRK,
    OFPP_IN_PORT,
    Flow,
    Owner,
    Table,
    cookie_for,
    ct,
    ct_state,
    flow,
    goto_table,
    group,
    learn,
    move,
    multipath,
    output,
    resubmit,
    set_field,
)
from flows.groups import Bucket, Group
from flows.ipv6 import dual_stack
from flows.ports import gateway_mac
from leases.model import (
    Backend,
    Endpoint,
    Lease,
    NetworkConfig,
    Service,
    ServicePort,
    VxflowConfig,
)
from leases.services import affinity_key, link_count, overlay_of

SERVICE_ZONE = 7678  # conntrack zone of service connections ("vx")
HAIRPIN_ZONE = 7679  # conntrack zone of the hairpin SNAT
PRIO_SERVICE = 200  # VIP dispatch and reply hooks: above the per-owner /24 and /32 flows
PRIO_HAIRPIN = 220  # a pod's packet to itself: above its /32 delivery and the policy hook
PRIO_NEW = 100  # SVC_LB: new connections to one VIP:port; SVC_DNAT: one backend; SVC_LINK
PRIO_STATE = 10  # SVC_LB: established/related; SVC_DNAT: no affinity entry yet
PRIO_RANGE = 50  # ROUTE: the unserved rest of the ServiceNetwork, dropped
PRIO_ANY = 1  # SVC_REPLY: not a service reply: delivered as it is
IP_PROTO = {"TCP": 6, "UDP": 17}
BASE_KEY = 0  # SERVICE_NET key of the plumbing; reply hooks use proto << 16 | port
V6_KEY = 1 << 28  # in an IPv6 service's group ids and reply-hook keys (beside 28 bits)

NET_COOKIE = cookie_for(Owner.SERVICE_NET, BASE_KEY)


Network = IPv4Network | IPv6Network


def hairpin_source(network: Network) -> IPv4Address | IPv6Address:
    """The source a pod sees on a connection to its own service: the ServiceNetwork's last
    address (never a VIP: validation keeps it free)."""
    return network.broadcast_address


def _family_key(fam: Family) -> int:
    return V6_KEY if fam is V6 else 0


def group_id(network: Network, service: Service, slot: int) -> int:
    """The group (and cookie key) of the `slot`-th port of `service` (ports in their sorted
    order); below 2**29, far from OpenFlow's reserved group numbers."""
    offset = int(service.vip) - int(network.network_address)
    return _family_key(family(service.vip)) | offset << 8 | slot


def reply_key(port: ServicePort, fam: Family = V4) -> int:
    return _family_key(fam) | IP_PROTO[port.protocol] << 16 | port.target_port


def reply_cookie(port: ServicePort, fam: Family = V4) -> int:
    return cookie_for(Owner.SERVICE_NET, reply_key(port, fam))


def is_learned(f: Flow) -> bool:
    """A client-IP affinity entry the switch learned itself: never desired, never drift."""
    owner = f.cookie >> 48 & 0xFF
    return f.cookie >> 56 == 0x76 and owner == Owner.LEARNED


def _field(port: ServicePort, end: str) -> str:
    return f"{port.protocol.lower()}_{end}"


@dataclass(frozen=True)
class ServicePlan:
    """The accepted services and their range: what the services add to every switch."""

    network: IPv4Network | None  # the ServiceNetwork (None: IPv6 services only)
    services: tuple[Service, ...]
    network6: IPv6Network | None = None  # the IPv6ServiceNetwork

    def network_of(self, service: Service) -> Network:
        net = self.network if service.vip.version == 4 else self.network6
        assert net is not None  # (the registry accepts a VIP in its family's range only)
        return net

    def networks(self, six: bool) -> list[Network]:
        """The ranges a node serves: IPv6's on a dual-stack node (`six`) only."""
        return [n for n in (self.network, self.network6 if six else None) if n is not None]

    def served(self, six: bool) -> list[Service]:
        """The services a node serves: IPv6 ones on a dual-stack node (`six`) only."""
        return [s for s in self.services if six or s.vip.version == 4]

    def ports(self, six: bool = True) -> Iterator[tuple[Service, int, ServicePort]]:
        for service in self.served(six):
            for slot, port in enumerate(service.ports):
                yield service, slot, port


def service_plan(vxflow: VxflowConfig, services: Iterable[Service]) -> ServicePlan | None:
    """The plan of the accepted `services`; None without a ServiceNetwork (no services)."""
    net, net6 = vxflow.service_network, vxflow.service_network6
    if net is None and net6 is None:
        return None
    return ServicePlan(net, tuple(sorted(services, key=lambda s: s.name)), net6)


def plumbing_flows(config: NetworkConfig, own: Lease, network: Network) -> list[Flow]:
    """What a node with a ServiceNetwork holds whatever its services (cookie NET_COOKIE),
    for the range's family."""
    fam, gw_mac, c = family(network), gateway_mac(own.subnet), NET_COOKIE
    ip = {"eth_type": fam.eth_type}
    return [
        neighbour_answer(network, gw_mac, 10, c),
        flow(Table.ROUTE, PRIO_RANGE, {**ip, fam.dst: network}, (), c),
        flow(
            Table.ROUTE,
            PRIO_SERVICE,
            {**ip, fam.dst: hairpin_source(network)},
            [move("eth_src", "eth_dst"), ct(HAIRPIN_ZONE, Table.SVC_HAIRPIN_REPLY, nat=())],
            c,
        ),
        *_on_state(fam, Table.SVC_LB, (CT_EST, CT_REL), [resubmit(Table.ROUTE)]),
        *_on_state(
            fam,
            Table.SVC_HAIRPIN_REPLY,
            (CT_EST, CT_REL),
            [ct(SERVICE_ZONE, Table.SVC_HAIRPIN_OUT, nat=())],
        ),
        *_on_state(
            fam, Table.SVC_REPLY, (CT_EST | CT_RPL, CT_REL), [ct(SERVICE_ZONE, Table.LOCAL, nat=())]
        ),
        flow(Table.SVC_REPLY, PRIO_ANY, ip, [resubmit(Table.LOCAL)], c),
        flow(
            Table.SVC_HAIRPIN_OUT,
            PRIO_STATE,
            ip,
            [set_field("eth_src", gw_mac), output(OFPP_IN_PORT)],
            c,
        ),
    ]


def _on_state(fam: Family, table: Table, states: tuple[int, ...], actions: list) -> list[Flow]:
    """One plumbing flow of `table` per conntrack state (each with +trk) doing `actions`."""
    return [
        flow(
            table,
            PRIO_STATE,
            {"eth_type": fam.eth_type, "ct_state": ct_state(bits | CT_TRK)},
            actions,
            NET_COOKIE,
        )
        for bits in states
    ]


def reply_hook(config: NetworkConfig, port: ServicePort, fam: Family = V4) -> Flow:
    """LOCAL: an untracked packet from a TargetPort in the overlay (of `fam`) may be a
    backend's reply: look it up in the service zone (SVC_REPLY un-DNATs a reply), then
    deliver it as usual. Shared by every service with this protocol and TargetPort, so a
    backend change never touches it."""
    return flow(
        Table.LOCAL,
        PRIO_SERVICE,
        {
            "eth_type": fam.eth_type,
            "ct_state": ct_state(minus=CT_TRK),
            fam.src: overlay_of(config, fam.version),
            "ip_proto": IP_PROTO[port.protocol],
            _field(port, "src"): port.target_port,
        },
        [ct(SERVICE_ZONE, Table.SVC_REPLY)],
        reply_cookie(port, fam),
    )


def _vip_match(service: Service, port: ServicePort) -> dict:
    fam = family(service.vip)
    return {
        "eth_type": fam.eth_type,
        fam.dst: service.vip,
        "ip_proto": IP_PROTO[port.protocol],
        _field(port, "dst"): port.port,
    }


def _commit(backend_ip: IPv4Address | IPv6Address, port: ServicePort) -> tuple:
    return ct(SERVICE_ZONE, Table.ROUTE, commit=True, nat=("dst", backend_ip, port.target_port))


def port_flows(network: Network, service: Service, slot: int) -> list[Flow]:
    """The flows one service port owns (cookie: its group id)."""
    port = service.ports[slot]
    gid = group_id(network, service, slot)
    c = cookie_for(Owner.SERVICE, gid)
    vip = _vip_match(service, port)
    new = {**vip, "ct_state": ct_state(CT_NEW | CT_TRK)}
    flows = [flow(Table.ROUTE, PRIO_SERVICE, vip, [ct(SERVICE_ZONE, Table.SVC_LB, nat=())], c)]
    if not service.backends:
        return [*flows, flow(Table.SVC_LB, PRIO_NEW, new, (), c)]  # counted drop
    if not service.affinity_timeout:
        return [*flows, flow(Table.SVC_LB, PRIO_NEW, new, [group(gid)], c)]
    flows.append(
        flow(
            Table.SVC_LB,
            PRIO_NEW,
            new,
            [resubmit(Table.SVC_AFFINITY), goto_table(Table.SVC_DNAT)],
            c,
        )
    )
    learned = cookie_for(Owner.LEARNED, gid)
    assign = {b.ip: _assign(service, port, learned, b.ip) for b in service.backends}
    flows += [
        flow(Table.SVC_DNAT, PRIO_NEW, {**vip, "reg1": affinity_key(ip)}, actions, c)
        for ip, actions in assign.items()
    ]
    links = affinity_links(service.backends)
    pick = multipath(LINK_HASH, link_basis(service), LINK_ALGORITHM, len(links), LINK_REGISTER)
    flows.append(flow(Table.SVC_DNAT, PRIO_STATE, vip, [pick, goto_table(Table.SVC_LINK)], c))
    flows += [
        flow(Table.SVC_LINK, PRIO_NEW, {**vip, LINK_REGISTER: link}, assign[ip], c)
        for link, ip in enumerate(links)
    ]
    return flows


def _assign(
    service: Service, port: ServicePort, learned: int, ip: IPv4Address | IPv6Address
) -> tuple:
    """Learn (or refresh) the client's affinity entry for backend `ip`, then connect there."""
    remember = learn(Table.SVC_AFFINITY, service.affinity_timeout, PRIO_NEW, learned,
                     IP_PROTO[port.protocol], _field(port, "dst"), affinity_key(ip),
                     family(ip).eth_type)  # fmt: skip
    return (remember, _commit(ip, port))


# Client-IP affinity without a learned entry: the switch hashes the client's address to one of
# the port's links (NXAST_MULTIPATH), and each link is a backend's. The link count is fixed
# per table size, so modulo_n suffices to spread clients over the links (hrw would hash once
# per link, and OVS runs iter_hash instead beyond 64 links); how few clients a backend change
# moves is the link table's doing (`affinity_links`).
# (The link table sizes, `leases.services.link_count`, bound a service's flows there.)
LINK_HASH, LINK_ALGORITHM, LINK_REGISTER = "nw_src", "modulo_n", "reg0"


def link_basis(service: Service) -> int:
    """multipath's hash basis: the VIP's low 16 bits. Two services put different clients
    together; the ports of one service (whose backends and links are the same) send a client
    without learned entries to one backend on every port."""
    return int(service.vip) & 0xFFFF


def _links_per_backend(backends: tuple[Backend, ...], n: int) -> list[int]:
    """One link each (every backend is reachable), the other n - len(backends) in
    proportion to the weights, each within one link (largest remainder, ties to the earlier
    backend). With at least 4 links per backend, a share is close to its weight's: equal
    weights within one link; 2:1:1 on 67 links 33:17:17."""
    rest, total = n - len(backends), sum(b.weight for b in backends)
    shares = [rest * b.weight for b in backends]
    counts = [1 + share // total for share in shares]
    by_remainder = sorted(range(len(backends)), key=lambda i: (-(shares[i] % total), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _permutation(ip: IPv4Address | IPv6Address, n: int) -> Iterator[int]:
    """A backend's own order of the n links (offset + j * skip mod n: a permutation, as n is
    prime), from a stable hash of its address (Python's own `hash` is salted per process)."""
    digest = int.from_bytes(blake2b(ip.packed, digest_size=8).digest(), "big")
    offset, skip = (digest >> 32) % n, (digest & 0xFFFFFFFF) % (n - 1) + 1
    return ((offset + j * skip) % n for j in range(n))


@lru_cache(maxsize=256)
def affinity_links(backends: tuple[Backend, ...]) -> tuple[IPv4Address | IPv6Address, ...]:
    """Each link's backend (the index is the link): Maglev's lookup table (Eisenbud et al.,
    NSDI 2016) with weights. The backends take turns, in their order, each claiming the next
    free link of its own permutation until it holds its count (`_links_per_backend`).

    Why a table of links rather than a link per unit of weight: the link count stays while
    the backends change (it grows only past 16, 64 and 257 backends), so the multipath flow
    stays, and a backend change re-deals only the links of a removed backend, about an
    added backend's share and a few more (the unit tests measure it): few clients without
    an entry change backend, and the change is few flow-mods. The same on every replica."""
    n = link_count(len(backends))
    table: list[IPv4Address | IPv6Address | None] = [None] * n
    wants = _links_per_backend(backends, n)
    prefs = [_permutation(b.ip, n) for b in backends]
    left = n
    while left:
        for i, b in enumerate(backends):
            if wants[i]:
                link = next(k for k in prefs[i] if table[k] is None)
                table[link], wants[i], left = b.ip, wants[i] - 1, left - 1
    return tuple(table)  # type: ignore[arg-type]  # every link claimed


def port_group(network: Network, service: Service, slot: int) -> Group | None:
    """The select group of one service port; None without backends (its traffic is
    dropped by a flow instead, where it is counted) and with affinity (its flows pick)."""
    if not service.backends or service.affinity_timeout:
        return None
    port = service.ports[slot]
    buckets = tuple(Bucket(b.weight, (_commit(b.ip, port),)) for b in service.backends)
    return Group(group_id(network, service, slot), buckets)


def hairpin_flows(endpoint: Endpoint, plan: ServicePlan, six: bool, cookie: int) -> list[Flow]:
    """The endpoint's `hairpin_flow` per range its node serves (`six`: a dual-stack node)."""
    return [hairpin_flow(endpoint, net, cookie) for net in plan.networks(six)
            if net.version == 4 or endpoint.ipv6 is not None]  # fmt: skip


def hairpin_flow(endpoint: Endpoint, network: Network, cookie: int) -> Flow:
    """LOCAL: the pod's own packet coming back to it (the VIP chose it as backend) leaves
    SNATed to the hairpin source; owned by the endpoint (`cookie`), as its other flows.
    (`network`'s family: the pod's address of that family.)"""
    fam = family(network)
    ip = endpoint.ip if fam is V4 else endpoint.ipv6
    return flow(
        Table.LOCAL,
        PRIO_HAIRPIN,
        {"in_port": endpoint.ofport, "eth_type": fam.eth_type, fam.src: ip, fam.dst: ip},
        [
            set_field("eth_dst", endpoint.mac),
            ct(
                HAIRPIN_ZONE,
                Table.SVC_HAIRPIN_OUT,
                commit=True,
                nat=("src", hairpin_source(network), 0),
            ),
        ],
        cookie,
    )


@dataclass(frozen=True)
class Flush:
    """The conntrack entries (SERVICE_ZONE) of one UDP backend a service port no longer
    has: to VIP:port, answered from backend:target_port."""

    vip: IPv4Address | IPv6Address
    port: int
    backend: IPv4Address | IPv6Address
    target_port: int
    ip_proto: int = IP_PROTO["UDP"]


def removed_udp_backends(old: Service, new: Service | None) -> list[Flush]:
    """What to flush when `old` becomes `new` (None: removed). TCP needs nothing: a
    removed backend's connections end by themselves and no new one reaches it."""
    kept = set()
    if new is not None and new.vip == old.vip:
        kept = {
            (p.port, p.target_port, b.ip)
            for p in new.ports
            if p.protocol == "UDP"
            for b in new.backends
        }
    return [
        Flush(old.vip, p.port, b.ip, p.target_port)
        for p in old.ports
        if p.protocol == "UDP"
        for b in old.backends
        if (p.port, p.target_port, b.ip) not in kept
    ]


def reply_ports(services: Iterable[Service]) -> dict[int, tuple[ServicePort, Family]]:
    """One ServicePort per distinct (family, protocol, TargetPort), by reply-hook key."""
    return {reply_key(p, fam): (p, fam) for s in services for p in s.ports
            if (fam := family(s.vip))}  # fmt: skip


def plan_flows(config: NetworkConfig, own: Lease, plan: ServicePlan) -> list[Flow]:
    """Every service flow of `own`'s switch except the endpoints' hairpin flows."""
    six = dual_stack(config, own)
    flows = [f for net in plan.networks(six) for f in plumbing_flows(config, own, net)]
    flows += [reply_hook(config, p, fam) for p, fam in reply_ports(plan.served(six)).values()]
    for service, slot, _ in plan.ports(six):
        flows += port_flows(plan.network_of(service), service, slot)
    return flows


def plan_groups(plan: ServicePlan, six: bool = True) -> list[Group]:
    """The groups of the services a node serves (`six`: a dual-stack node)."""
    return [g for s, slot, _ in plan.ports(six) if (g := port_group(plan.network_of(s), s, slot))]
