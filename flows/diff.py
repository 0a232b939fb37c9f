"""What to send so a switch holding `current` ends up holding exactly `desired`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

from flows.compiler import NodeTable, RemoteRoutes
from flows.flow import Flow, FlowKey, Owner, owner_of

T = TypeVar("T")
# entries handled between two calls of a comparison's `pause`: the controller yields there
# (echo replies, other switches) while it compares a readback of up to 300,000 flows
STEP = 2048


def no_pause() -> None:
    pass


def chunked(items: Iterable[T], pause: Callable[[], None] = no_pause) -> Iterator[list[T]]:
    """`items` STEP at a time, `pause` called between two chunks (`items` must not change
    meanwhile)."""
    rest = iter(items)
    chunk = list(islice(rest, STEP))
    while chunk:
        yield chunk
        chunk = list(islice(rest, STEP))
        if chunk:
            pause()


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


def diff_flows(
    current: Iterable[Flow], desired: Iterable[Flow], pause: Callable[[], None] = no_pause
) -> FlowDiff:
    """Entries are matched by key (table, priority, match); an entry whose actions or
    cookie differ is re-added, one whose key is no longer desired is deleted. A
    flow already right produces nothing, so an unchanged table is never touched.
    `pause` is called every STEP entries."""
    have = _by_key(current, pause)
    if not have:  # an empty switch (cold start): everything is added, nothing to compare
        return FlowDiff(tuple(desired), ())
    want = _by_key(desired, pause)
    add: list[Flow] = []
    for chunk in chunked(want.items(), pause):
        add += [f for k, f in chunk if have.get(k) != f]
    delete: list[Flow] = []
    for chunk in chunked(have.items(), pause):
        delete += [f for k, f in chunk if k not in want]
    return FlowDiff(tuple(add), tuple(delete))


def diff_table(
    current: Iterable[Flow], desired: NodeTable, pause: Callable[[], None] = no_pause
) -> FlowDiff:
    """`diff_flows` against a NodeTable, keeping its remote routes compact when `current`
    holds no remote-lease flow (a cold switch): then every route is added, in O(n).

    A foreign entry with a route's key is deleted and the route added after it,
    in the same bundle, so the outcome is the same as diff_flows'.
    """
    current = list(current)
    if not current:  # (a lease event: nothing of its cookies held yet, on every switch)
        return FlowDiff(tuple(desired.flows), (), desired.routes or None)
    if desired.routes is None or any(
        any(map(_is_route, chunk)) for chunk in chunked(current, pause)
    ):
        return diff_flows(current, desired, pause)
    rest = diff_flows(current, desired.flows, pause)
    return FlowDiff(rest.add, rest.delete, desired.routes or None)


def _by_key(flows: Iterable[Flow], pause: Callable[[], None]) -> dict[FlowKey, Flow]:
    out: dict[FlowKey, Flow] = {}
    for chunk in chunked(flows, pause):
        out.update((f.key, f) for f in chunk)
    return out


def _is_route(flow: Flow) -> bool:
    owner = owner_of(flow.cookie)
    return owner is not None and owner[0] is Owner.LEASE
