"""What to send so a switch holding `current` ends up holding exactly `desired`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flows.compiler import NodeTable, RemoteRoutes
from flows.flow import Flow, Owner, owner_of


@dataclass(frozen=True)
class FlowDiff:
    """`add` entries and every flow of `routes` are sent as OFPFC_ADD (which replaces
    an entry with the same key), `delete` entries as OFPFC_DELETE_STRICT of their key
    (deletes first)."""

    add: tuple[Flow, ...] = ()
    delete: tuple[Flow, ...] = ()
    routes: RemoteRoutes | None = None

    def __bool__(self) -> bool:
        return bool(self.add or self.delete or self.routes)

    def __len__(self) -> int:
        return len(self.add) + len(self.delete) + self.added_routes

    @property
    def added_routes(self) -> int:
        return len(self.routes) if self.routes is not None else 0


def diff_flows(current: Iterable[Flow], desired: Iterable[Flow]) -> FlowDiff:
    """Entries are matched by key (table, priority, match); an entry whose actions or
    cookie differ is re-added, one whose key is no longer desired is deleted. A
    flow already right produces nothing, so an unchanged table is never touched."""
    have = {f.key: f for f in current}
    if not have:  # an empty switch (cold start): everything is added, nothing to compare
        return FlowDiff(tuple(desired), ())
    want = {f.key: f for f in desired}
    add = tuple(f for k, f in want.items() if have.get(k) != f)
    delete = tuple(f for k, f in have.items() if k not in want)
    return FlowDiff(add, delete)


def diff_table(current: Iterable[Flow], desired: NodeTable) -> FlowDiff:
    """`diff_flows` against a NodeTable, keeping its remote routes compact when `current`
    holds no remote-lease flow (a cold switch): then every route is added, in O(n).

    A foreign entry with a route's key is deleted and the route added after it,
    in the same bundle, so the outcome is the same as diff_flows'.
    """
    current = list(current)
    if desired.routes is None or any(_is_route(f) for f in current):
        return diff_flows(current, desired)
    rest = diff_flows(current, desired.flows)
    return FlowDiff(rest.add, rest.delete, desired.routes or None)


def _is_route(flow: Flow) -> bool:
    owner = owner_of(flow.cookie)
    return owner is not None and owner[0] is Owner.LEASE
