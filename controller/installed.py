"""What one switch holds, kept compact: the remote leases' flows as the model's shared leases.

A switch's table is mostly remote-lease flows (FLOWS_PER_LEASE per node in the
cluster), and every switch holds the same ones but for its own source MAC. So
`Installed` keeps each remote lease whose flows the switch holds exactly as
`remote_lease_flows(config, lease, own)` renders them as one dict entry,
subnet address -> the model's own Lease object (shared by every switch), for
one rendering context (config, own lease) per switch. Everything else (base
pipeline, pods, services, and any lease flow that differs from the rendering:
drift, foreign entries, a lease held for an old context) is kept as plain
Flow values by key. Read as a Mapping (key -> Flow) the table is exactly the
straightforward dict of Flows (tests hold the two to each other).

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from ipaddress import IPv4Network

from flows.compiler import (
    FLOWS_PER_LEASE,
    PRIO_EXACT,
    NodeTable,
    RemoteRoutes,
    Row,
    lease_context,
    remote_lease_flows,
)
from flows.diff import STEP, chunked, no_pause
from flows.flow import Flow, FlowKey, Owner, Table, cookie_for
from leases.model import Lease, NetworkConfig

Context = tuple[NetworkConfig, Lease]  # what a held lease's flows are rendered with
_LEASE_COOKIE = cookie_for(Owner.LEASE)
_LEASE_TABLES = (int(Table.ROUTE), int(Table.CLASSIFY))


class Installed(Mapping[FlowKey, Flow]):
    """A switch's flow table by key; remote leases held compactly (see the module doc)."""

    def __init__(self) -> None:
        self._flows: dict[FlowKey, Flow] = {}
        self._by_cookie: dict[int, set[FlowKey]] = {}  # of `_flows` only
        # subnet address -> plain entries with a key a remote lease's flow could have
        self._lease_shaped: dict[int, int] = {}
        self._leases: dict[int, Lease] = {}  # subnet address (the row's int) -> lease
        self._context: Context | None = None

    # -- reading --------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._flows) + FLOWS_PER_LEASE * len(self._leases)

    def __iter__(self) -> Iterator[FlowKey]:
        yield from self._flows
        for flow in self._lease_flows(self._leases.values()):
            yield flow.key

    def __getitem__(self, key: FlowKey) -> Flow:
        flow = self.get(key)
        if flow is None:
            raise KeyError(key)
        return flow

    def get(self, key: FlowKey, default: Flow | None = None) -> Flow | None:  # type: ignore[override]
        """(Without Mapping's KeyError: the flow monitor asks for every flow it reports.)"""
        flow = self._flows.get(key)
        if flow is not None or not self._leases:
            return flow or default
        subnet = _subnet_of(key)
        lease = self._leases.get(subnet) if subnet is not None else None
        if lease is not None:
            for flow in self._render(lease):
                if flow.key == key:
                    return flow
        return default

    def values(self) -> list[Flow]:  # type: ignore[override]
        """Every flow held (the leases' rendered)."""
        return [*self._flows.values(), *self._lease_flows(self._leases.values())]

    @property
    def held_leases(self) -> int:
        """Remote leases held compactly (their FLOWS_PER_LEASE flows each)."""
        return len(self._leases)

    def cookies(self) -> Iterator[int]:
        yield from self._by_cookie
        for subnet in self._leases:
            yield _LEASE_COOKIE | subnet

    def has_cookie(self, cookie: int) -> bool:
        return cookie in self._by_cookie or (
            cookie & ~0xFFFFFFFF == _LEASE_COOKIE and cookie & 0xFFFFFFFF in self._leases
        )

    def all_but(self, cookies: frozenset[int], pause: Callable[[], None] = no_pause) -> list[Flow]:
        """Every flow held but those under these cookies (in one pass, no lookups by key:
        a readback's table can be large), `pause` called every STEP entries."""
        out: list[Flow] = []
        for chunk in chunked(list(self._flows.values()), pause):
            out += [f for f in chunk if f.cookie not in cookies] if cookies else chunk
        for chunk in chunked(list(self._leases.items()), pause):
            out += self._lease_flows(lease for subnet, lease in chunk
                                     if _LEASE_COOKIE | subnet not in cookies)  # fmt: skip
        return out

    def of_cookies(self, cookies: Iterable[int]) -> list[Flow]:
        """The flows held under these cookies."""
        out: list[Flow] = []
        flows, leases = self._flows, self._leases
        for cookie in cookies:
            keys = self._by_cookie.get(cookie)
            if keys:
                out += [flows[k] for k in keys]
            if cookie & ~0xFFFFFFFF == _LEASE_COOKIE:
                lease = leases.get(cookie & 0xFFFFFFFF)
                if lease is not None:
                    out += self._render(lease)
        return out

    # -- changing -------------------------------------------------------------

    def put(self, flow: Flow) -> None:
        """The switch holds `flow` now (an add replaces whatever had its key)."""
        key = flow.key
        if self._leases:
            self._release(key)
        self._add(flow, key)

    def discard(self, key: FlowKey) -> None:
        """The switch no longer holds the entry with `key` (if it did)."""
        if self._leases:
            self._release(key)
        self._drop(key)

    def replace(self, flows: Iterable[Flow], pause: Callable[[], None] = no_pause) -> None:
        """The switch holds exactly `flows` (a readback): all kept as Flows until `settle`
        finds them equal to the desired leases' renderings. `pause` is called every STEP
        flows (half of them taken in meanwhile: build a fresh copy, then swap)."""
        self._flows, self._by_cookie, self._lease_shaped = {}, {}, {}
        self._leases, self._context = {}, None
        for chunk in chunked(flows, pause):
            for flow in chunk:
                self._add(flow, flow.key)

    def put_routes(self, routes: RemoteRoutes) -> None:
        """The switch holds every flow of `routes` now (a change that added them landed)."""
        self._adopt((routes.config, routes.own))
        leases, clash = self._leases, self._lease_shaped
        for lease, row in zip(routes.leases, routes.rows, strict=True):
            # a plain entry may have one of its keys (normally none): an add replaces
            # the entries with its keys, whoever's they were
            if row[0] in clash:
                for flow in self._render(lease):
                    self.discard(flow.key)
            leases[row[0]] = lease

    def settle(
        self, desired: NodeTable, pause: Callable[[], None] = no_pause
    ) -> tuple[NodeTable, frozenset[int]]:
        """`desired` without the remote leases this switch already holds exactly so, and
        their cookies (to leave out of the comparison: nothing to send for them).

        A lease held as Flows (read back, or changed) that equal its rendering is taken
        into the compact form here, one lease at a time (`pause` is called every STEP
        leases: the table reads the same between two)."""
        routes = desired.routes
        if not routes or not self._holds_lease_flows():  # (a cold switch: nothing to settle)
            return desired, frozenset()
        context = (routes.config, routes.own)
        same = self._same_context(context)
        if same:
            self._context = context  # (renders the same; the newer objects)
        leases, flows, by_cookie = self._leases, self._flows, self._by_cookie
        keep: list[Lease] = []
        keep_rows: list[Row] = []
        settled: list[int] = []
        for n, (lease, row) in enumerate(zip(routes.leases, routes.rows, strict=True), 1):
            if not n % STEP:
                pause()
            subnet = row[0]
            cookie = _LEASE_COOKIE | subnet
            held = leases.get(subnet)
            keys = by_cookie.get(cookie)  # flows of its cookie held as Flows: none, normally
            if held is not None and same and not keys:
                if held is lease or held == lease:
                    settled.append(cookie)
                    continue
                if self._render(held) == self._render(lease, context):
                    leases[subnet] = lease  # the same flows (a rewrite that changed none of them)
                    settled.append(cookie)
                    continue
            if held is None and keys and len(keys) == FLOWS_PER_LEASE:
                want = remote_lease_flows(context[0], lease, context[1])
                if all(flows.get(f.key) == f for f in want):
                    self._adopt(context)
                    same = True
                    for f in want:
                        self._drop(f.key)
                    leases[subnet] = lease
                    settled.append(cookie)
                    continue
            keep.append(lease)
            keep_rows.append(row)
        if not settled:
            return desired, frozenset()
        rest = RemoteRoutes(routes.config, routes.own, keep, keep_rows)
        return NodeTable(desired.flows, rest, desired.groups), frozenset(settled)

    # -- internals ------------------------------------------------------------

    def _render(self, lease: Lease, context: Context | None = None) -> tuple[Flow, Flow]:
        config, own = context or self._context
        return remote_lease_flows(config, lease, own)

    def _lease_flows(self, leases: Iterable[Lease]) -> Iterator[Flow]:
        for lease in leases:
            yield from self._render(lease)

    def _holds_lease_flows(self) -> bool:
        return bool(self._leases) or any(
            cookie & ~0xFFFFFFFF == _LEASE_COOKIE for cookie in self._by_cookie
        )

    def _same_context(self, context: Context) -> bool:
        """Whether leases held for the current context render as they would for `context`
        (a rewrite of the switch's own lease that kept its PublicIP changes nothing)."""
        mine = self._context
        if mine is None:
            return False
        if mine[0] is context[0] and mine[1] is context[1]:
            return True
        return lease_context(*mine) == lease_context(*context)

    def _adopt(self, context: Context) -> None:
        """Hold leases for `context` from now on: those held for another become Flows."""
        if self._context is None or not self._leases or self._same_context(context):
            self._context = context
            return
        held = list(self._lease_flows(self._leases.values()))
        self._leases.clear()  # (in place: callers hold it)
        self._context = context
        for flow in held:
            self._add(flow, flow.key)

    def _add(self, flow: Flow, key: FlowKey) -> None:
        """`flow` (whose key is `key`) into the plain entries, replacing the one with its key."""
        old = self._flows.get(key)
        if old is not None:
            keys = self._by_cookie[old.cookie]
            keys.discard(key)
            if not keys:
                del self._by_cookie[old.cookie]
        else:
            subnet = _subnet_of(key)
            if subnet is not None:
                self._lease_shaped[subnet] = self._lease_shaped.get(subnet, 0) + 1
        self._flows[key] = flow
        self._by_cookie.setdefault(flow.cookie, set()).add(key)

    def _drop(self, key: FlowKey) -> None:
        """The plain entry with `key` out (if any)."""
        old = self._flows.pop(key, None)
        if old is None:
            return
        keys = self._by_cookie[old.cookie]
        keys.discard(key)
        if not keys:
            del self._by_cookie[old.cookie]
        subnet = _subnet_of(key)
        if subnet is not None:
            left = self._lease_shaped.pop(subnet) - 1
            if left:
                self._lease_shaped[subnet] = left

    def _release(self, key: FlowKey) -> None:
        """If `key` is one of a held lease's flows, hold that lease's flows as Flows (one of
        them is about to be replaced or removed)."""
        subnet = _subnet_of(key)
        if subnet is None:
            return
        lease = self._leases.get(subnet)
        if lease is None:
            return
        pair = self._render(lease)
        if all(f.key != key for f in pair):
            return
        del self._leases[subnet]
        for flow in pair:
            self._add(flow, flow.key)



def _subnet_of(key: FlowKey) -> int | None:
    """The subnet address of the remote lease whose flow could have `key` (its route's
    ip_dst or its ingress check's ip_src), or None."""
    table, priority, match = key
    if priority != PRIO_EXACT or table not in _LEASE_TABLES:
        return None
    field = "ip_dst" if table == _LEASE_TABLES[0] else "ip_src"
    for name, value in match:
        if name == field and isinstance(value, IPv4Network):
            return int(value.network_address)
    return None
