"""OpenFlow groups as plain values, and what to send so a switch holds exactly the desired ones.

vxflow's groups are select groups, one per service port without client-IP
affinity (`flows.services`): a bucket per backend, its weight the backend's
share of new connections. Like
`Flow`, a `Group` holds only what the switch reports back (group desc), so
read-back and desired groups compare as values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flows.flow import Action, Owner, _action_text, cookie_for, owner_of

OFPGT_SELECT = 1


@dataclass(frozen=True, slots=True)
class Bucket:
    weight: int
    actions: tuple[Action, ...]


@dataclass(frozen=True, slots=True)
class Group:
    group_id: int
    buckets: tuple[Bucket, ...]
    type: int = OFPGT_SELECT

    @property
    def cookie(self) -> int:
        """The cookie of the service port's flows: a scope covering them covers the group."""
        return cookie_for(Owner.SERVICE, self.group_id)


def group_cookie(group_id: int) -> int:
    return cookie_for(Owner.SERVICE, group_id)


def is_service_cookie(cookie: int) -> bool:
    owner = owner_of(cookie)
    return owner is not None and owner[0] is Owner.SERVICE


@dataclass(frozen=True)
class GroupDiff:
    """Groups to add (OFPGC_ADD: absent on the switch), to modify (OFPGC_MODIFY: present
    and different) and to delete (present, no longer desired)."""

    add: tuple[Group, ...] = ()
    modify: tuple[Group, ...] = ()
    delete: tuple[Group, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.add or self.modify or self.delete)

    def __len__(self) -> int:
        return len(self.add) + len(self.modify) + len(self.delete)


NO_GROUP_CHANGE = GroupDiff()


def diff_groups(current: Sequence[Group], desired: Sequence[Group]) -> GroupDiff:
    """Groups are matched by id; one already right produces nothing."""
    if not current and not desired:
        return NO_GROUP_CHANGE  # (a lease event, once per switch: no group on either side)
    have = {g.group_id: g for g in current}
    want = {g.group_id: g for g in desired}
    return GroupDiff(
        add=tuple(g for i, g in sorted(want.items()) if i not in have),
        modify=tuple(g for i, g in sorted(want.items()) if i in have and have[i] != g),
        delete=tuple(g for i, g in sorted(have.items()) if i not in want),
    )


def group_to_ofctl(g: Group) -> str:
    """The group in `ovs-ofctl add-group` syntax (also how `vxflow flows show` prints it)."""
    kind = "select" if g.type == OFPGT_SELECT else str(g.type)
    buckets = ",".join(
        f"bucket=weight:{b.weight},actions={','.join(_action_text(a) for a in b.actions) or 'drop'}"
        for b in g.buckets
    )
    return f"group_id={g.group_id},type={kind}" + (f",{buckets}" if buckets else "")
