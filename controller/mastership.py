"""Which replica masters which switch, decided by each replica from what etcd shows (pure).

Every replica sees the same members and claims (one etcd watch, in revision
order) and applies the same rules, so they agree without talking to each
other:

- The designated master of a switch is the live member with the highest
  rendezvous score for its datapath-id: deterministic, and a member joining
  or leaving moves only the switches it wins or held.
- The holder of a switch's claim is its master: it sends ROLE_REQUEST MASTER
  with the claim's revision as generation_id, and only it writes.
- A designated member that does not hold the claim takes it over with a
  compare-and-swap on the claim key (expecting the revision it saw). The old
  holder keeps serving until then, so a switch is never left without a
  master while its new one is not yet connected; once the new claim lands,
  its higher generation_id makes the switch demote the old holder at once.
- Everyone else asks to be SLAVE with the claim's generation: read-only, so
  only the claim holder can ever change the switch.
- A switch whose designated member never claims it (a member that is no
  replica) is orphaned after a grace time: then every replica tries to take it
  over, and the compare-and-swap lets one win.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import IntEnum
from hashlib import blake2b

from leases.model import Claim


class Role(IntEnum):
    """OpenFlow controller roles (OFPCR_ROLE_*)."""

    EQUAL = 1
    MASTER = 2
    SLAVE = 3


def score(member_id: str, datapath_id: int) -> int:
    """The rendezvous (highest random weight) score of a member for a switch.

    A stable hash, the same in every process (Python's own `hash` is salted).
    """
    digest = blake2b(f"{member_id}/{datapath_id:016x}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def designated(datapath_id: int, members: Collection[str]) -> str | None:
    """The member that should master the switch (None without members)."""
    if not members:
        return None
    return max(members, key=lambda m: (score(m, datapath_id), m))


@dataclass(frozen=True)
class Decision:
    """What this replica does about one switch.

    `role`: what to ask the switch for (None: nothing to ask yet), with
    `generation`. `take_over`: claim the switch in etcd, expecting its claim
    key at this mod_revision (0: absent); None: no claim to make.
    """

    role: Role | None
    generation: int = 0
    take_over: int | None = None


def decide(
    me: str,
    datapath_id: int,
    members: Collection[str],
    claim: Claim | None,
    active: bool,
    orphaned: bool = False,
) -> Decision:
    """This replica's part for one connected switch.

    `active`: we are a registered member in good standing (lease valid, network
    config known); otherwise we never master or claim anything, and ask to be
    SLAVE wherever a claim tells us the generation to use. `orphaned`: the switch
    has had no claim of a member for a while (its designated member never claims
    it: a member registered by someone who is no replica): any replica takes it
    over, and its designated member can still take it from there.
    """
    if not active or me not in members:
        return Decision(Role.SLAVE, claim.generation) if claim else Decision(None)
    if claim is not None and claim.controller == me:
        return Decision(Role.MASTER, claim.generation)
    take_over = None
    if orphaned or designated(datapath_id, members) == me:
        take_over = claim.generation if claim else 0
    if claim is None:
        return Decision(None, 0, take_over)
    return Decision(Role.SLAVE, claim.generation, take_over)
