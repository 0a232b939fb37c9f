"""This controller as one replica of a cluster: its membership in etcd and its switches' roles.

Two green threads, both fed from the registry watch the controller already runs:

- `Membership` registers `<prefix>/vxflow/controllers/<id>` under an etcd
  lease of `--member-ttl` seconds once the network config is known, and keeps
  it alive. Its clock deadline (the send time of the last renewal etcd
  acknowledged, plus the TTL) is the replica's licence to write: every change
  a switch sync sends checks it first, so a replica cut off from etcd, or
  paused past its lease, stops writing before etcd can expire the lease and
  hand its switches to another replica.
- `Coordinator` applies `controller.mastership` to every connected switch:
  takes over the switches this replica is designated for (a compare-and-swap
  claim in etcd whose revision becomes the generation_id), and asks every
  switch for MASTER or SLAVE accordingly (`controller.role`).

A second replica started with an id that a live replica holds waits one
lease TTL (it may be this replica's own previous run) and then exits with an
error instead of sharing the id.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping

from etcd3gw.exceptions import Etcd3Exception
from os_ken.lib import hub

from controller import metrics
from controller.mastership import Decision, Role, decide
from controller.role import SwitchRole
from leases.controllers import MAX_MEMBERS, capped
from leases.errors import RegistryError
from leases.events import ClaimAdded, ClaimRemoved, Event, MemberAdded, MemberRemoved
from leases.model import Claim, Member, public_ip_for_datapath_id
from leases.registry import Registry

log = logging.getLogger(__name__)

ORPHAN_TTLS = 2  # member TTLs a switch waits for its designated member's claim
DECIDE_EVERY = 100  # mastership decisions between two yields
MARGIN = 0.25  # seconds of each lease renewal this replica never counts on
MAX_BACKOFF = 5.0
EXIT_DUPLICATE_ID = 3


def default_member_id(port: int) -> str:
    """Unique per host and OpenFlow port, so replicas on one machine need no --id."""
    return f"{socket.gethostname()}:{port}"


class DuplicateId(Exception):
    """A live replica holds this replica's id."""


class Membership:
    """This replica's registration in etcd, kept alive; `valid()` is its licence to write."""

    def __init__(
        self,
        registry: Registry,
        member_id: str,
        address: str,
        ttl: int,
        on_change: Callable[[], None],
        status: str = "",
    ) -> None:
        self.registry = registry
        self.id = member_id
        self.address = address
        self.ttl = ttl
        self.on_change = on_change
        self.status = status  # where this replica's status page is served ("": nowhere)
        self.member: Member | None = None
        self._valid_until = 0.0
        self._lapsed = False
        self._go = hub.Event()
        self._holder: tuple[int, float] | None = None  # (etcd lease, deadline) of a rival
        self._extended = hub.Event()  # set by each renewal: wakes the lapse timer's wait
        self._stopping = False

    def valid(self) -> bool:
        return self.member is not None and time.monotonic() < self._valid_until

    def begin(self) -> None:
        """The network config is known: a replica may join (without it, it never does)."""
        self._go.set()

    def run(self) -> None:
        self._go.wait()
        hub.spawn(self._watch)
        delay = 0.2
        while not self._stopping:
            try:
                if self.member is None:
                    self._register()
                else:
                    self._renew()
                delay = 0.2
            except DuplicateId as exc:
                log.critical("%s", exc)
                _exit(EXIT_DUPLICATE_ID)
            except (RegistryError, Etcd3Exception, OSError) as exc:
                log.warning("controller membership: etcd: %s; retrying in %.1fs", exc, delay)
                self._check()
                delay = min(delay * 2, MAX_BACKOFF)
            if self.member is not None and self.valid():
                hub.sleep(self.ttl / 3)
            else:
                hub.sleep(delay)

    def leave(self) -> None:
        """Give the membership (and every claim bound to it) back at once: a clean stop."""
        self._stopping = True
        member, self.member = self.member, None
        if member is None:
            return
        try:
            self.registry.etcd.revoke(member.etcd_lease_id)
            log.info("left the controller cluster (etcd lease %x revoked)", member.etcd_lease_id)
        except (RegistryError, Etcd3Exception, OSError) as exc:
            log.warning("could not leave the cluster cleanly (%s): it expires in %ds", exc, self.ttl)

    def _register(self) -> None:
        sent = time.monotonic()
        member = self.registry.register_member(self.id, self.address, self.ttl, self.status)
        if member is None:
            self._wait_for_holder()
            return
        self.member, self._holder = member, None
        log.info(
            "joined the controller cluster as %s (%s), etcd lease %x, TTL %ds",
            self.id, self.address or "address not advertised", member.etcd_lease_id, self.ttl,
        )  # fmt: skip
        self._extend(sent, self.ttl)

    def _wait_for_holder(self) -> None:
        """Our id is registered already: our previous run's lease (wait it out), or a rival's."""
        kv = self.registry.member_entry(self.id)
        if kv is None:
            return  # gone meanwhile: register on the next turn
        now = time.monotonic()
        if self._holder is None or self._holder[0] != kv.lease:
            remaining, _ = self.registry.etcd.time_to_live(kv.lease) if kv.lease else (0, 0)
            self._holder = (kv.lease, now + max(remaining, 0) + 1)
            log.warning(
                "controller id %s is registered already (etcd lease %x, %ds left): waiting for "
                "it to expire (this replica's previous run) or refusing to start (a live "
                "replica with the same --id)", self.id, kv.lease, remaining,
            )  # fmt: skip
        elif now > self._holder[1]:
            raise DuplicateId(
                f"controller id {self.id!r} is held by a live replica "
                f"({kv.value.decode(errors='replace')}, etcd lease {kv.lease:x}): give every "
                "replica its own --id; this one is not starting"
            )

    def _renew(self) -> None:
        assert self.member is not None
        sent = time.monotonic()
        ttl = self.registry.etcd.keepalive(self.member.etcd_lease_id)
        if ttl > 0:
            self._extend(sent, ttl)
            return
        log.error(
            "controller membership: etcd lease %x expired: stopped writing to switches; "
            "registering again", self.member.etcd_lease_id,
        )  # fmt: skip
        self.member = None
        self._lapse()

    def _extend(self, sent: float, ttl: int) -> None:
        regained = not self.valid()
        self._valid_until = sent + ttl - MARGIN
        self._lapsed = False
        metrics.MEMBER.set(1)
        self._extended.set()
        if regained:
            self._notify()

    def _watch(self) -> None:
        """The lapse timer: one green thread for the replica's life that sleeps to the
        deadline each renewal moves. (A timer cancelled and spawned anew per renewal left
        a killed green thread and its GreenletExit traceback behind each time: cyclic
        garbage that the controller's raised GC thresholds almost never collect.)"""
        while not self._stopping:
            left = self._valid_until - time.monotonic()
            if left > 0:
                hub.sleep(left + 0.01)
                continue
            self._extended.clear()
            self._check()
            self._extended.wait()

    def _check(self) -> None:
        """The deadline passed without a renewal: stop writing, say so once."""
        if self.member is not None and not self.valid() and not self._lapsed:
            log.error(
                "controller membership lapsed: no renewal acknowledged by etcd for %ds; "
                "stopped writing to switches", self.ttl,
            )  # fmt: skip
            self._lapse()

    def _lapse(self) -> None:
        self._lapsed = True
        metrics.MEMBER.set(0)
        metrics.MEMBERSHIP_LOST.inc()
        self._notify()

    def _notify(self) -> None:
        """Tell the app (it resumes or holds back every switch): whatever fails there is
        logged, and must never end the renewal loop or the lapse timer."""
        try:
            self.on_change()
        except Exception:
            log.exception("controller membership: acting on a lapse or renewal failed")


def _exit(status: int) -> None:
    """Leave the process from a green thread (os-ken's manager has no way to be told to)."""
    logging.shutdown()
    sys.stderr.flush()
    os._exit(status)


class Coordinator:
    """Members and claims as etcd shows them, and this replica's part for every switch."""

    def __init__(
        self,
        membership: Membership,
        registry: Registry,
        roles: Mapping[int, SwitchRole],
        ready: Callable[[], bool],
    ) -> None:
        self.membership = membership
        self.registry = registry
        self.roles = roles  # connected vxflow switches by datapath-id (the app's)
        self.ready = ready  # the network config is known
        self.members: dict[str, Member] = {}
        self.claims: dict[int, Claim] = {}
        self._wake = hub.Event()
        self._unclaimed: dict[int, float] = {}  # switch -> since when no member claims it
        self._recheck = None  # the timer that decides again once the oldest is orphaned
        self._ignored = 0  # members beyond the cap, as last logged

    @property
    def me(self) -> str:
        return self.membership.id

    # -- what etcd shows --------------------------------------------------------

    def load(self, members: Iterable[Member], claims: Iterable[Claim]) -> None:
        self.members = {m.id: m for m in members}
        self.claims = {c.datapath_id: c for c in claims}
        self.request()

    def apply(self, events: Iterable[Event]) -> None:
        changed = False
        for ev in events:
            if isinstance(ev, MemberAdded):
                self.members[ev.member.id] = ev.member
            elif isinstance(ev, MemberRemoved):
                if self.members.get(ev.member.id) == ev.member:
                    del self.members[ev.member.id]
            elif isinstance(ev, ClaimAdded):
                self._note_claim(ev.claim)
            elif isinstance(ev, ClaimRemoved):
                if self.claims.get(ev.claim.datapath_id) == ev.claim:
                    del self.claims[ev.claim.datapath_id]
            else:
                continue
            changed = True
        if changed:
            self.request()

    def _note_claim(self, claim: Claim) -> None:
        """A claim we know of already (our own, noted when written) may arrive again later."""
        old = self.claims.get(claim.datapath_id)
        if old is None or claim.generation >= old.generation:
            self.claims[claim.datapath_id] = claim

    # -- deciding ---------------------------------------------------------------

    def request(self) -> None:
        """Decide again soon (membership, members, claims or connected switches changed)."""
        self._wake.set()

    def run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                self._reconcile()
            except (RegistryError, Etcd3Exception, OSError) as exc:
                log.warning("controller cluster: etcd: %s; deciding again in 1s", exc)
                hub.spawn_after(1.0, self.request)
            except Exception:
                log.exception("controller cluster: deciding mastership failed; again in 1s")
                hub.spawn_after(1.0, self.request)

    def _counted(self) -> set[str]:
        """The ids of the members that count (`leases.controllers.capped`); the rest are
        logged when their number changes."""
        kept, ignored = capped(self.members.values())
        ids = {m.id for m in kept}
        metrics.MEMBERS_IGNORED.set(ignored)
        if ignored != self._ignored:  # (logged when the number changes, not per decision)
            self._ignored = ignored
            if ignored:
                log.warning("%d controller members beyond the first %d (the oldest) are "
                            "ignored", ignored, MAX_MEMBERS)  # fmt: skip
            if self.me in self.members and self.me not in ids:
                log.error("this replica is not among the %d oldest controller members: it "
                          "masters no switch", MAX_MEMBERS)  # fmt: skip
        return ids

    def _orphans(self, switches: list[int], members: set[str]) -> set[int]:
        """The switches no member has claimed for ORPHAN_TTLS member TTLs; a decision
        is asked for again when the next one will be."""
        now = time.monotonic()
        grace = ORPHAN_TTLS * self.membership.ttl
        held = {d for d in switches if (c := self.claims.get(d)) is not None and c.controller in members}
        self._unclaimed = {d: self._unclaimed.get(d, now) for d in switches if d not in held}
        waiting = [since + grace - now for since in self._unclaimed.values() if since + grace > now]
        if waiting and self._recheck is None:
            self._recheck = hub.spawn_after(min(waiting) + 0.01, self._orphan_due)
        return {d for d, since in self._unclaimed.items() if since + grace <= now}

    def _orphan_due(self) -> None:
        self._recheck = None
        self.request()

    def _decide(
        self, switches: list[int], members: set[str], active: bool, orphans: set[int]
    ) -> dict[int, Decision]:
        """Every switch's decision; yields every DECIDE_EVERY switches (each decision
        hashes every member: the renewal and the switches' messages keep their turn)."""
        decisions = {}
        for i, dpid in enumerate(switches, 1):
            decisions[dpid] = decide(self.me, dpid, members, self.claims.get(dpid), active,
                                     dpid in orphans)  # fmt: skip
            if not i % DECIDE_EVERY:
                hub.sleep(0)
        return decisions

    def _reconcile(self) -> None:
        active = self.ready() and self.membership.valid()
        members = self._counted()
        switches = list(self.roles.items())
        dpids = [dpid for dpid, _ in switches]
        orphans = self._orphans(dpids, members)
        decisions = self._decide(dpids, members, active, orphans)
        takeovers = {d: x.take_over for d, x in decisions.items() if x.take_over is not None}
        member = self.membership.member
        if takeovers and member is not None:
            claimed = self.registry.claim_switches(takeovers, self.me, member.etcd_lease_id)
            metrics.TAKEOVERS.labels("claimed").inc(len(claimed))
            if len(claimed) < len(takeovers):
                metrics.TAKEOVERS.labels("lost_race").inc(len(takeovers) - len(claimed))
            for dpid, claim in claimed.items():
                self._note_claim(claim)
                node = public_ip_for_datapath_id(dpid)
                log.info("claimed the switch of %s (generation %d)", node, claim.generation,
                         extra={"event": "claimed", "node": str(node)})  # fmt: skip
            active = self.ready() and self.membership.valid()
            decisions = self._decide(dpids, members, active, self._orphans(dpids, members))
        for dpid, role in switches:
            decision = decisions[dpid]
            if decision.role is not None:
                role.ask(decision.role, decision.generation)
            elif role.master:  # no claim in sight, yet confirmed master: step down
                role.ask(Role.SLAVE, role.generation)
