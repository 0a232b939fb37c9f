"""What to send so a switch holding `current` ends up holding exactly `desired`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flows.flow import Flow


@dataclass(frozen=True)
class FlowDiff:
    """`add` entries are sent as OFPFC_ADD (which replaces an entry with the same
    key), `delete` entries as OFPFC_DELETE_STRICT of their key."""

    add: tuple[Flow, ...] = ()
    delete: tuple[Flow, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.add or self.delete)

    def __len__(self) -> int:
        return len(self.add) + len(self.delete)


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
