"""What one switch holds, kept compact: the remote leases' flows as the model's shared leases.

A switch's table is mostly remote-lease flows (FLOWS_PER_LEASE per node in the
cluster, twice that on a dual-stack switch), and every switch holds the same ones
but for its own source MAC. So `Installed` keeps each remote lease whose flows the
switch holds exactly as `remote_lease_flows(config, lease, own, six)` renders them
as one dict entry, subnet address -> the model's own Lease object (shared by every
switch), and the subnet address in a set when `six` (its IPv6 flows are held too,
found by their IPv6 subnet through a second index), for one rendering context
(config, own lease) per switch. Everything else (base
pipeline, pods, services, and any lease flow that differs from the rendering:
drift, foreign entries, a lease held for an old context) is kept as plain
Flow values by key. Read as a Mapping (key -> Flow) the table is exactly the
straightforward dict of Flows (tests hold the two to each other).

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from ipaddress import IPv4Network, IPv6Network

from flows.compiler import (
    FLOWS_PER_LEASE,
    PRIO_EXACT,
    NodeTable,
    RemoteRoutes,
    Row,
    Row6,
    lease_context,
    remote_lease_flows,
)
from flows.diff import STEP, chunked, no_pause
from flows.flow import Flow, FlowKey, Owner, Table, cookie_for
from leases.model import Lease, NetworkConfig

Context = tuple[NetworkConfig, Lease]  # what a held lease's flows are rendered with
_LEASE_COOKIE = cookie_for(Owner.LEASE)
_LEASE_TABLES = (int(Table.ROUTE), int(Table.CLASSIFY))
_FIELDS = {(_LEASE_TABLES[0], IPv4Network): "ip_dst", (_LEASE_TABLES[1], IPv4Network): "ip_src",
           (_LEASE_TABLES[0], IPv6Network): "ipv6_dst", (_LEASE_TABLES[1], IPv6Network): "ipv6_src"}  # fmt: skip


class Installed(Mapping[FlowKey, Flow]):
    """A switch's flow table by key; remote leases held compactly (see the module doc)."""

    def __init__(self) -> None:
        self._flows: dict[FlowKey, Flow] = {}
        self._by_cookie: dict[int, set[FlowKey]] = {}  # of `_flows` only
        # subnet address -> plain entries with a key a remote lease's flow could have
        self._lease_shaped: dict[int, int] = {}
        self._leases: dict[int, Lease] = {}  # subnet address (the row's int) -> lease
        # the held leases whose IPv6 flows are held too: subnet address -> their IPv6
        # subnet's address as _subnet_of gives it (_key6), and the reverse
        self._six: dict[int, int] = {}
        self._by6: dict[int, int] = {}
        self._context: Context | None = None

    # -- reading --------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._flows) + FLOWS_PER_LEASE * (len(self._leases) + len(self._six))

    def __iter__(self) -> Iterator[FlowKey]:
        yield from self._flows
        for flow in self._lease_flows(self._leases):
            yield flow.key

    def __getitem__(self, key: FlowKey) -> Flow:
        flow = self.get(key)
        if flow is None:
            raise KeyError(key)
        return flow

    def get(self, key: FlowKey, default: Flow | None = None) -> Flow | None:  # type: ignore[override]
        """(Without Mapping's KeyError: the flow monitor asks for every flow it reports.)"""
        flow = self._flows.get(key)
        if flow is not None or not self._leases or key[0] not in _LEASE_TABLES:  # (see `put`)
            return flow or default
        subnet = self._held_subnet(_subnet_of(key))
        if subnet is not None:
            for flow in self._render(subnet):
                if flow.key == key:
                    return flow
        return default

    def values(self) -> list[Flow]:  # type: ignore[override]
        """Every flow held (the leases' rendered)."""
        return [*self._flows.values(), *self._lease_flows(self._leases)]

    @property
    def held_leases(self) -> int:
        """Remote leases held compactly (their FLOWS_PER_LEASE flows each, twice that with
        their IPv6 flows)."""
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
        for chunk in chunked(list(self._leases), pause):
            out += self._lease_flows(subnet for subnet in chunk
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
            if cookie & ~0xFFFFFFFF == _LEASE_COOKIE and cookie & 0xFFFFFFFF in leases:
                out += self._render(cookie & 0xFFFFFFFF)
        return out

    # -- changing -------------------------------------------------------------

    def put(self, flow: Flow) -> None:
        """The switch holds `flow` now (an add replaces whatever had its key)."""
        key = flow.key
        # (_subnet_of's first test, inline: most keys are no lease flow's, every policy flow's)
        shape = _subnet_of(key) if key[0] in _LEASE_TABLES and key[1] == PRIO_EXACT else None
        if shape is not None and self._leases:
            self._release(key, shape)
        self._add(flow, key, shape)

    def discard(self, key: FlowKey) -> None:
        """The switch no longer holds the entry with `key` (if it did)."""
        shape = _subnet_of(key) if key[0] in _LEASE_TABLES and key[1] == PRIO_EXACT else None
        if shape is not None and self._leases:
            self._release(key, shape)
        self._drop(key, shape)

    def replace(self, flows: Iterable[Flow], pause: Callable[[], None] = no_pause) -> None:
        """The switch holds exactly `flows` (a readback): all kept as Flows until `settle`
        finds them equal to the desired leases' renderings. `pause` is called every STEP
        flows (half of them taken in meanwhile: build a fresh copy, then swap)."""
        self._flows, self._by_cookie, self._lease_shaped = {}, {}, {}
        self._leases, self._six, self._by6, self._context = {}, {}, {}, None
        for chunk in chunked(flows, pause):
            for flow in chunk:
                self._add(flow, flow.key, _subnet_of(flow.key))

    def put_routes(self, routes: RemoteRoutes) -> None:
        """The switch holds every flow of `routes` now (a change that added them landed)."""
        self._adopt((routes.config, routes.own))
        clash = self._lease_shaped
        rows6 = routes.rows6 or [None] * len(routes.rows)
        for lease, row, row6 in zip(routes.leases, routes.rows, rows6, strict=True):
            # a plain entry may have one of its keys (normally none): an add replaces
            # the entries with its keys, whoever's they were
            key6 = _key6(row6[0]) if row6 is not None else None
            if row[0] in clash or (key6 is not None and key6 in clash):
                for flow in remote_lease_flows(routes.config, lease, routes.own, key6 is not None):
                    self.discard(flow.key)
            self._hold(row[0], lease, key6)

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
        keep_rows6: list[Row6 | None] = []
        settled: list[int] = []
        rows6 = routes.rows6 or [None] * len(routes.rows)
        for n, (lease, row, row6) in enumerate(zip(routes.leases, routes.rows, rows6, strict=True), 1):
            if not n % STEP:
                pause()
            subnet = row[0]
            cookie = _LEASE_COOKIE | subnet
            six = row6 is not None
            held = leases.get(subnet)
            keys = by_cookie.get(cookie)  # flows of its cookie held as Flows: none, normally
            if held is not None and same and not keys and (subnet in self._six) == six:
                if held is lease or held == lease:
                    settled.append(cookie)
                    continue
                if self._render(subnet) == remote_lease_flows(context[0], lease, context[1], six):
                    leases[subnet] = lease  # the same flows (a rewrite that changed none of them)
                    settled.append(cookie)
                    continue
            if held is not None and same and keys:
                # part held, part Flows (an IPv6 half added since: its flows landed as
                # Flows): all of it as Flows, to be taken in whole below if right
                self._unpack(subnet)
                held = None
                keys = by_cookie.get(cookie)
            if held is None and keys and len(keys) == FLOWS_PER_LEASE * (2 if six else 1):
                want = remote_lease_flows(context[0], lease, context[1], six)
                if all(flows.get(f.key) == f for f in want):
                    self._adopt(context)
                    same = True
                    for f in want:
                        self._drop(f.key, _subnet_of(f.key))
                    self._hold(subnet, lease, _key6(row6[0]) if six else None)
                    settled.append(cookie)
                    continue
            keep.append(lease)
            keep_rows.append(row)
            keep_rows6.append(row6)
        if not settled:
            return desired, frozenset()
        rest = RemoteRoutes(routes.config, routes.own, keep, keep_rows,
                            keep_rows6 if routes.rows6 else ())  # fmt: skip
        return NodeTable(desired.flows, rest, desired.groups), frozenset(settled)

    # -- internals ------------------------------------------------------------

    def _render(self, subnet: int) -> tuple[Flow, ...]:
        """The flows of the lease held under `subnet`."""
        config, own = self._context
        return remote_lease_flows(config, self._leases[subnet], own, subnet in self._six)

    def _lease_flows(self, subnets: Iterable[int]) -> Iterator[Flow]:
        for subnet in subnets:
            yield from self._render(subnet)

    def _hold(self, subnet: int, lease: Lease, key6: int | None) -> None:
        """Hold `lease`'s flows compactly under `subnet` (its IPv6 ones too when it has
        `key6`, its IPv6 subnet's `_key6`)."""
        if self._six:
            self._unhold6(subnet)
        self._leases[subnet] = lease
        if key6 is not None:
            self._six[subnet] = key6
            self._by6[key6] = subnet

    def _unhold6(self, subnet: int) -> None:
        key6 = self._six.pop(subnet, None)
        if key6 is not None:
            del self._by6[key6]

    def _held_subnet(self, shape: int | None) -> int | None:
        """The subnet address of the held lease whose flow could have a key of this shape
        (`_subnet_of` of the key), or None."""
        if shape is None:
            return None
        subnet = self._by6.get(shape) if shape < 0 else shape
        return subnet if subnet in self._leases else None

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
        held = list(self._lease_flows(self._leases))
        self._leases.clear()  # (in place: callers hold it)
        self._six.clear()
        self._by6.clear()
        self._context = context
        for flow in held:
            self._add(flow, flow.key, _subnet_of(flow.key))

    def _add(self, flow: Flow, key: FlowKey, shape: int | None) -> None:
        """`flow` (whose key is `key`, of `_subnet_of` `shape`) into the plain entries,
        replacing the one with its key."""
        old = self._flows.get(key)
        if old is not None:
            keys = self._by_cookie[old.cookie]
            keys.discard(key)
            if not keys:
                del self._by_cookie[old.cookie]
        elif shape is not None:
            self._lease_shaped[shape] = self._lease_shaped.get(shape, 0) + 1
        self._flows[key] = flow
        self._by_cookie.setdefault(flow.cookie, set()).add(key)

    def _drop(self, key: FlowKey, shape: int | None) -> None:
        """The plain entry with `key` (of `_subnet_of` `shape`) out (if any)."""
        old = self._flows.pop(key, None)
        if old is None:
            return
        keys = self._by_cookie[old.cookie]
        keys.discard(key)
        if not keys:
            del self._by_cookie[old.cookie]
        if shape is not None:
            left = self._lease_shaped.pop(shape) - 1
            if left:
                self._lease_shaped[shape] = left

    def _release(self, key: FlowKey, shape: int) -> None:
        """If `key` (of `_subnet_of` `shape`) is one of a held lease's flows, hold that
        lease's flows as Flows (one of them is about to be replaced or removed)."""
        subnet = self._held_subnet(shape)
        if subnet is None:
            return
        if any(f.key == key for f in self._render(subnet)):
            self._unpack(subnet)

    def _unpack(self, subnet: int) -> None:
        """Hold the flows of the lease held under `subnet` as Flows."""
        flows = self._render(subnet)
        self._unhold6(subnet)
        del self._leases[subnet]
        for flow in flows:
            self._add(flow, flow.key, _subnet_of(flow.key))


def _key6(packed: bytes) -> int:
    """An IPv6 subnet address as `_subnet_of` names it: negative, never an IPv4 one."""
    return ~int.from_bytes(packed, "big")


def _subnet_of(key: FlowKey) -> int | None:
    """The subnet address of the remote lease whose flow could have `key` (its route's
    ip_dst or its ingress check's ip_src), or, `_key6` of it, its IPv6 subnet's address
    (its IPv6 route's ipv6_dst or check's ipv6_src), or None."""
    table, priority, match = key
    if priority != PRIO_EXACT or table not in _LEASE_TABLES:
        return None
    for name, value in match:
        if _FIELDS.get((table, type(value))) == name:
            if isinstance(value, IPv4Network):
                return int(value.network_address)
            return _key6(value.network_address.packed)
    return None
