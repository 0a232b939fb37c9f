"""The controller's view of the cluster, updated per registry event, and what each event touches.

Pure (no I/O). The registry already validated the entries; the compiler's own
guard (`flows.validate`) is applied again here, incrementally, so one lease
event costs work proportional to the leases it can affect, not to the cluster.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from flows.compiler import (
    NodeTable,
    Row,
    base_flows,
    endpoint_cookie,
    endpoint_flows,
    node_table,
    remote_lease_flows,
    route_row,
    subnet_cookie,
)
from flows.flow import Flow, Owner, owner_of
from flows.validate import Rejected, lease_problem, select_endpoints
from leases.events import (
    ConfigChanged,
    EndpointAdded,
    EndpointRemoved,
    Event,
    LeaseAdded,
    LeaseChanged,
    LeaseRemoved,
)
from leases.model import Endpoint, Lease, NetworkConfig
from leases.state import PAUSE_EVERY


@dataclass(frozen=True)
class Scope:
    """Which of a switch's flows a change concerns: all, or those of some owners."""

    full: bool = False
    cookies: frozenset[int] = frozenset()
    owners: frozenset[Owner] = frozenset()  # every flow of these owner kinds

    def covers(self, cookie: int) -> bool:
        if self.full or cookie in self.cookies:
            return True
        owner = owner_of(cookie)
        return owner is not None and owner[0] in self.owners

    def __or__(self, other: Scope) -> Scope:
        if self.full or other.full:
            return FULL
        return Scope(False, self.cookies | other.cookies, self.owners | other.owners)

    def __bool__(self) -> bool:
        return self.full or bool(self.cookies or self.owners)


FULL = Scope(full=True)
NOTHING = Scope()


@dataclass
class Impact:
    """What a batch of events changed: nodes (by PublicIP) to resync fully, and owners
    whose flows changed on every other switch."""

    all_nodes: bool = False
    full_nodes: set[IPv4Address] = field(default_factory=set)
    lease_subnets: set[IPv4Network] = field(default_factory=set)
    endpoint_nodes: set[IPv4Network] = field(default_factory=set)
    _cookies: frozenset[int] | None = field(default=None, repr=False, compare=False)

    def scope_for(self, node: IPv4Address, own_subnet: IPv4Network | None) -> Scope:
        """(Called once per switch, after the Impact is complete: the cookies of
        `lease_subnets` are computed on the first call and shared.)"""
        if self.all_nodes or node in self.full_nodes:
            return FULL
        if self._cookies is None:
            self._cookies = frozenset(subnet_cookie(s) for s in self.lease_subnets)
        owners = frozenset({Owner.ENDPOINT}) if own_subnet in self.endpoint_nodes else frozenset()
        return Scope(False, self._cookies, owners)


class ClusterModel:
    """Config, leases and endpoints as the controller believes them, with acceptance cached."""

    def __init__(self) -> None:
        self.config: NetworkConfig | None = None
        self._leases: dict[IPv4Network, Lease] = {}  # every lease the registry delivered
        self._problem: dict[IPv4Network, str | None] = {}
        self._by_ip: dict[IPv4Address, set[IPv4Network]] = defaultdict(set)  # valid ones only
        self._endpoints: dict[IPv4Network, dict[IPv4Address, Endpoint]] = defaultdict(dict)
        self._accepted_eps: dict[IPv4Network, tuple[Endpoint, ...]] = {}
        self._valid: dict[IPv4Network, tuple[Lease, Row]] = {}  # with its route_row
        self._accepted: tuple[list[Lease], list[Row]] | None = None  # cache of leases(), rows
        self._by_cookie: dict[int, Lease | None] = {}  # cache of accepted() by lease cookie
        self.rejected: dict[str, Rejected] = {}  # by lease subnet / endpoint ip, for logs

    # -- queries --------------------------------------------------------------

    def accepted(self, subnet: IPv4Network) -> Lease | None:
        lease = self._leases.get(subnet)
        if lease is None or self._problem.get(subnet):
            return None
        if len(self._by_ip.get(lease.public_ip, ())) != 1:
            return None
        return lease

    def leases(self) -> list[Lease]:
        return self._selection()[0]

    def _selection(self) -> tuple[list[Lease], list[Row]]:
        """The accepted leases and their route rows (cached until a lease changes)."""
        if self._accepted is None:
            by_ip = self._by_ip
            pairs = [p for p in self._valid.values() if len(by_ip[p[0].public_ip]) == 1]
            self._accepted = [lease for lease, _ in pairs], [row for _, row in pairs]
        return self._accepted

    def own_lease(self, node: IPv4Address) -> Lease | None:
        subnets = self._by_ip.get(node, ())
        return self.accepted(next(iter(subnets))) if len(subnets) == 1 else None

    def endpoints_of(self, own: Lease | None) -> tuple[Endpoint, ...]:
        if own is None:
            return ()
        if own.subnet not in self._accepted_eps:
            selection = select_endpoints(own, self._endpoints.get(own.subnet, {}).values())
            for r in selection.rejected:
                self.rejected[f"endpoint {r.item.ip}"] = r
            self._accepted_eps[own.subnet] = selection.accepted
        return self._accepted_eps[own.subnet]

    def desired(self, node: IPv4Address, scope: Scope) -> NodeTable | None:
        """The flows `node`'s switch must hold, restricted to `scope`; None while no
        valid config is known (then nothing may be touched)."""
        if self.config is None:
            return None
        own = self.own_lease(node)
        if scope.full:
            leases, rows = self._selection()
            return node_table(self.config, leases, self.endpoints_of(own), own, rows)
        flows: list[Flow] = []
        if Owner.BASE in scope.owners:
            flows += base_flows(self.config, own)
        if own is None:
            return flows
        for cookie in scope.cookies:
            lease = self._accepted_by_cookie(cookie)
            if lease is not None and lease.public_ip != own.public_ip:
                flows += remote_lease_flows(self.config, lease, own)
        for endpoint in self.endpoints_of(own):
            if Owner.ENDPOINT in scope.owners or endpoint_cookie(endpoint) in scope.cookies:
                flows += endpoint_flows(own, endpoint)
        return NodeTable(flows)

    def _accepted_by_cookie(self, cookie: int) -> Lease | None:
        """The accepted lease a lease cookie names (None for other cookies): asked once
        per switch for the same cookie when a lease event fans out, so cached."""
        try:
            return self._by_cookie[cookie]
        except KeyError:
            pass
        owner = owner_of(cookie)
        lease = None
        if owner is not None and owner[0] == Owner.LEASE:
            lease = self.accepted(IPv4Network((owner[1], self.config.subnet_len)))
        self._by_cookie[cookie] = lease
        return lease

    def _changed(self) -> None:
        """Drop what is cached from the leases (every lease update calls this)."""
        self._accepted = None
        self._by_cookie = {}

    # -- updates --------------------------------------------------------------

    def load(
        self,
        config: NetworkConfig | None,
        leases: Iterable[Lease],
        endpoints: Iterable[Endpoint],
        pause: Callable[[], None] = lambda: None,
    ) -> Impact:
        """Replace everything (first snapshot, config change); `pause` is called every
        PAUSE_EVERY leases, so a cooperative caller can yield during a large load."""
        self.config = config
        self._changed()
        self._leases, self._problem, self._valid, self.rejected = {}, {}, {}, {}
        self._by_ip.clear()
        self._endpoints.clear()
        self._accepted_eps.clear()
        for i, lease in enumerate(leases, 1):
            if not i % PAUSE_EVERY:
                pause()
            self._put_lease(lease)
        for endpoint in endpoints:
            self._endpoints[endpoint.node_subnet][endpoint.ip] = endpoint
        self._selection()  # ready before the first switch asks
        return Impact(all_nodes=True)

    def apply(self, events: Iterable[Event]) -> Impact:
        """Fold a batch of registry events in; returns what they changed."""
        impact = Impact()
        for ev in events:
            if isinstance(ev, ConfigChanged):
                self.load(ev.config, list(self._leases.values()), self._all_endpoints())
                impact.all_nodes = True
            elif isinstance(ev, LeaseAdded | LeaseChanged | LeaseRemoved):
                old = ev.old if isinstance(ev, LeaseChanged) else self._leases.get(ev.lease.subnet)
                ips = {ev.lease.public_ip} | ({old.public_ip} if old else set())
                # a PublicIP conflict appearing or going away flips the other holders too
                touched = {ev.lease.subnet} | self._subnets_of(ips)
                if old is not None:
                    self._drop_lease(old)
                if not isinstance(ev, LeaseRemoved):
                    self._put_lease(ev.lease)
                touched |= self._subnets_of(ips)
                impact.lease_subnets |= touched
                impact.full_nodes |= ips
                for subnet in touched:
                    self._accepted_eps.pop(subnet, None)
            elif isinstance(ev, EndpointAdded | EndpointRemoved):
                ep = ev.endpoint
                if isinstance(ev, EndpointAdded):
                    self._endpoints[ep.node_subnet][ep.ip] = ep
                else:
                    self._endpoints[ep.node_subnet].pop(ep.ip, None)
                self._accepted_eps.pop(ep.node_subnet, None)
                impact.endpoint_nodes.add(ep.node_subnet)
        return impact

    def _subnets_of(self, ips: Iterable[IPv4Address]) -> set[IPv4Network]:
        return {s for ip in ips for s in self._by_ip.get(ip, ())}

    def _all_endpoints(self) -> list[Endpoint]:
        return [ep for eps in self._endpoints.values() for ep in eps.values()]

    def _put_lease(self, lease: Lease) -> None:
        self._changed()
        self._leases[lease.subnet] = lease
        problem = lease_problem(self.config, lease) if self.config else "no network config"
        self._problem[lease.subnet] = problem
        if problem:
            self.rejected[f"lease {lease.subnet}"] = Rejected(lease, problem)
            self._valid.pop(lease.subnet, None)
        else:
            if self.rejected:  # (naming the entry costs more than the lookup)
                self.rejected.pop(f"lease {lease.subnet}", None)
            self._by_ip[lease.public_ip].add(lease.subnet)
            self._valid[lease.subnet] = lease, route_row(lease)

    def _drop_lease(self, lease: Lease) -> None:
        self._changed()
        self._leases.pop(lease.subnet, None)
        self._valid.pop(lease.subnet, None)
        self._problem.pop(lease.subnet, None)
        self.rejected.pop(f"lease {lease.subnet}", None)
        holders = self._by_ip.get(lease.public_ip)
        if holders is not None:
            holders.discard(lease.subnet)
            if not holders:
                del self._by_ip[lease.public_ip]
