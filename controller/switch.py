"""One switch's synchronisation: readback, diff, one bundle at a time, retries.

No os-ken here: the app hands replies in and gives a `Channel` to send raw
bytes, so this logic runs the same under a real switch and in unit tests.

A sync sends only the difference between what the switch holds (read back
with flow stats on connect, then tracked as changes land, in the compact form
of `controller.installed`: a remote lease's flows are one entry naming the
model's shared lease) and what it should hold, inside one atomic bundle
followed by a barrier. A difference of at most UNBUNDLED flow-mods or
group-mods (one lease added, changed or removed: the common event, which
touches its route and its tunnel-ingress check, per family; a service's backend change:
one group-mod) goes out bare, deletes first, with one barrier in one write:
one round trip instead of a bundle's two. Each flow-mod is atomic on its own;
between them the table holds at most the old flows minus the deleted ones plus
some of the new, never a flow outside either table, for the microseconds the
switch takes to apply them. A new lease's flows are packed from its row by one
packer that every switch shares (only the source MAC differs between
switches). A table that is already right gets no flow-mod at all. A change
that fails is logged per offending flow and retried from a fresh readback, so
nothing is ever left half-applied or assumed.

The services' select groups are kept the same way (read back with group desc,
diffed by id, their group-mods in the same bundle: added before the flows that
point at them, deleted after), and after a change lands the conntrack entries
of removed UDP backends are flushed.

What anyone else changes on the switch is reported by its flow monitor
(`controller.monitor`) and handed to `observe`: the copy of the table is
updated and the flows of the owners it touched are repaired at once.

With policy drops logged (`meter_rate`), every readback starts by installing their
meter (`controller.droplog.meter_mods`), so the meter is there before any flow that
uses it is sent, and one deleted since (which deletes the flows using it: their
repair is refused until the meter is back, and retried from a readback) is added again.
A switch that refuses the meter itself (no meter support) would refuse every flow using
it, so every change of a node with an isolated pod: it gets plain drops instead
(`flows.policy.unlogged`) until it reconnects, when the meter is tried again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from ipaddress import IPv4Address
from typing import Protocol

from controller import droplog, groups, metrics, ofwire
from controller.installed import Installed
from controller.model import FULL, NOTHING, Scope
from controller.monitor import FlowChange
from flows.compiler import FLOWS_PER_LEASE, NodeTable, subnet_cookie
from flows.diff import FlowDiff, diff_table
from flows.flow import Flow, Owner, owner_of, to_ofctl
from flows.groups import Group, GroupDiff, diff_groups, group_cookie, group_to_ofctl
from flows.policy import unlogged
from flows.services import SERVICE_ZONE, Flush, is_learned

log = logging.getLogger(__name__)

CHUNK = 2048  # flow-mods per write: the switch parses one chunk while the next is encoded
UNBUNDLED = 6  # largest change sent bare: a dual-stack lease moving to new PublicIPs
# (per family 1 delete, 2 adds; an IPv4 one is 3)
MAX_RETRY_DELAY = 30.0
# What a switch sends is bounded: a readback of more flows or groups than any vxflow table
# holds (remote leases, endpoints and services within their budgets) or that takes longer
# is given up and retried later; changes reported for more cookies than this while one is
# in flight are repaired by a full comparison instead of one scope growing without end.
MAX_READBACK_FLOWS = 300_000
MAX_READBACK_GROUPS = 70_000
READBACK_TIMEOUT = 60.0  # seconds
MAX_PENDING_COOKIES = 4096
AUDIT_SHARE = 0.25  # at most this share of the time goes to periodic audits


class Channel(Protocol):
    def send(self, data: bytes) -> None: ...

    def xids(self, count: int) -> int:
        """Reserve `count` consecutive transaction ids; returns the first."""
        ...


class State(Enum):
    READING = "reading"
    COMPARING = "comparing"  # yields every STEP entries: nothing else starts meanwhile
    IDLE = "idle"
    APPLYING = "applying"


@dataclass
class _Change:
    """A change in flight, bundled or bare.

    A bundle's xids: open, one per message, add-barrier, commit/discard, barrier.
    OVS drops a bundled message it rejects but would still commit the rest, so
    the commit is only sent once the add-barrier confirmed every add was taken.
    A bare change (`bundle_id` None) is its few flow-mods and group-mods then one
    barrier; the switch sends any OFPT_ERROR for one before that barrier's reply.
    """

    bundle_id: int | None  # None: a few bare flow-mods and group-mods
    first_xid: int
    messages: list[tuple[int, Flow | Group]]  # (command, item) per xid from the first message's
    diff: FlowDiff  # its routes follow the messages, one xid each
    group_diff: GroupDiff = field(default_factory=GroupDiff)
    tail: list[tuple[int, Flow | Group]] = field(default_factory=list)  # group deletes, last
    flushes: list[Flush] = field(default_factory=list)  # sent once the change landed
    failed: bool = False
    committing: bool = False
    # from a comparison of the whole table (a readback, a full resync): its landing is
    # logged at INFO; a registry change's, at every switch, at DEBUG
    whole: bool = False
    # asked for at every reply (the change is not altered once sent): the barrier after
    # the last message (a bare change's only barrier), and the last xid of the change
    added_xid: int = field(init=False)
    last_xid: int = field(init=False)

    def __post_init__(self) -> None:
        self.added_xid = self._message_xid + len(self.messages) + self.diff.added_routes + len(self.tail)
        self.last_xid = self.added_xid if self.bundle_id is None else self.added_xid + 2

    @property
    def form(self) -> str:
        return "flow_mod" if self.bundle_id is None else "bundle"

    @property
    def _message_xid(self) -> int:
        return self.first_xid if self.bundle_id is None else self.first_xid + 1

    def message(self, xid: int) -> tuple[int, Flow | Group] | None:
        i = xid - self._message_xid
        if 0 <= i < len(self.messages):
            return self.messages[i]
        i -= len(self.messages)
        if 0 <= i < self.diff.added_routes:
            return ofwire.OFPFC_ADD, self.diff.routes.flow(i)
        i -= self.diff.added_routes
        return self.tail[i] if 0 <= i < len(self.tail) else None


def audit_spacing(interval: float, switches: int, took: float) -> float:
    """Seconds to wait after one switch's audit that took `took` (request to comparison
    done) before the next: the rest of the interval's even share, or longer where audits
    would otherwise take more than AUDIT_SHARE of the time."""
    return max(interval / switches - took, took * (1 - AUDIT_SHARE) / AUDIT_SHARE)


@dataclass
class SwitchSync:
    """Keeps one switch's flow table equal to `desired(scope)`."""

    node: IPv4Address
    channel: Channel
    desired: Callable[[Scope], NodeTable | None]  # None: not known yet, touch nothing
    later: Callable[[float, Callable[[], None]], None]  # run a callable after a delay
    # run a callable in a green thread of its own (a large bundle's encoding): by default
    # at once, in the caller's
    spawn: Callable[[Callable[[], None]], object] = lambda fn: fn()
    on_synced: Callable[[SwitchSync], None] = lambda sync: None
    pause: Callable[[], None] = lambda: None  # called every CHUNK flows sent or recorded
    # Writes (and the readback they start from) happen only while the switch has
    # confirmed this replica as its master, and only while the replica's membership
    # is in good standing (`may_write`: checked before every change it sends).
    master: bool = False
    may_write: Callable[[], bool] = lambda: True
    state: State = State.IDLE
    installed: Installed = field(default_factory=Installed)  # key -> Flow, leases compact
    installed_groups: dict[int, Group] = field(default_factory=dict)  # by id
    # `installed` is this mastership's readback and what landed since, not an empty or a
    # previous master's copy (kept while a later readback is under way: `vxflow status`
    # counts the flows that differ from it then too)
    table_known: bool = False
    _pending: Scope = NOTHING
    _need_readback: bool = True
    _readback_reason: str = "connect"
    _read_xid: int = -1
    _read: list[Flow] = field(default_factory=list)
    # packets each policy default drop counted (table, cookie), as the last readback found
    policy_drops: dict[tuple[int, int], int] = field(default_factory=dict)
    _drops_read: dict[tuple[int, int], int] = field(default_factory=dict)
    _group_read_xid: int = -1
    _group_read: list[Group] | None = None  # None once the group desc reply is complete
    readback_limits: tuple[int, int] = (MAX_READBACK_FLOWS, MAX_READBACK_GROUPS)
    _flushes: list[Flush] = field(default_factory=list)
    _change: _Change | None = None
    _next_bundle_id: int = 1
    _failures: int = 0
    # what `vxflow status` shows of this switch (controller/status.py)
    connected_at: float = field(default_factory=time.time)
    synced_at: float | None = None  # a change landed, or a full comparison found nothing
    drift_repairs: int = 0
    last_error: str = ""  # the last change the switch refused, until one lands
    # packets/s of the logged policy drops' meter (0: drops are not logged, no meter)
    meter_rate: int = 0
    _meter_xid: int = -1  # of the last meter add sent (its modify: the next xid)
    meter_refused: bool = False  # by this connection: its logged drops sent as plain drops
    _monitor_paused: bool = False
    _late: list[FlowChange] = field(default_factory=list)  # reported during a comparison
    _run: int = 0  # a new one at each demotion: a comparison paused meanwhile is dropped
    _repair_since: float | None = None  # when a reported foreign change awaits its repair
    _repair_flows: int = 0  # flows reported changed since then
    closed: bool = False

    # -- requests -------------------------------------------------------------

    def start(self, reason: str = "connect") -> None:
        self._need_readback, self._readback_reason = True, reason
        self._kick()

    def promote(self) -> None:
        """The switch confirmed us as master: read its table back and bring it in line."""
        self.master = True
        self.start("mastership")

    def suspend(self) -> None:
        """No longer master (or membership lapsed): stop at once and forget the change in
        flight (the switch refuses or has taken it; the next master reads the table back)."""
        self.master = False
        self._change = None
        self.state = State.IDLE
        self._run += 1
        self._late = []
        self.table_known = False
        self._need_readback = True
        self._pending = FULL
        self._flushes = []  # the switch's next master flushes what it must
        self._repair_since, self._repair_flows = None, 0

    def request(self, scope: Scope, flushes: list[Flush] = ()) -> None:
        """Bring the flows and groups in `scope` to the desired state (as soon as the switch
        is free); then flush the conntrack entries of `flushes` (removed UDP backends).

        Not master: nothing to keep (a promotion reads back and syncs in full), so a
        replica's slave connections cost nothing per registry event."""
        if self.note(scope, flushes):
            self._kick()

    def note(self, scope: Scope, flushes: list[Flush] = ()) -> bool:
        """`request` without sending yet (`kick` sends); False if not master."""
        if not self.master:
            return False
        self._pending |= scope
        if len(self._pending.cookies) + len(self._pending.keys) > MAX_PENDING_COOKIES:
            self._pending = FULL
        self._flushes += flushes
        return True

    def kick(self) -> None:
        """Send what is pending, if the switch is free (see `request`)."""
        self._kick()

    def audit(self, reason: str = "audit") -> None:
        """Read the whole table back and repair whatever drifted."""
        if not self._need_readback:
            self._need_readback, self._readback_reason = True, reason
        self._kick()

    def resume(self) -> None:
        """The replica's membership is in good standing again: send what it held back (a
        renewal that lands before the lapse is noticed changes no role, so nothing else
        would)."""
        self._kick()

    def close(self) -> None:
        self.closed = True

    # -- what others change (the switch's flow monitor) -------------------------

    def observe(self, changes: Sequence[FlowChange]) -> None:
        """Flows another OpenFlow client added, modified or removed: take them into
        `installed` and repair the flows of every owner they touched."""
        # affinity entries the switch learns itself are its own, never drift
        changes = [c for c in changes if not is_learned(c.flow)]
        if not changes or not self._tracking():
            return  # a readback is due or under way, and it sees these changes itself
        if self.state is State.COMPARING:  # taken in once the comparison is done
            if len(self._late) + len(changes) > MAX_PENDING_COOKIES:
                self._late = []
                self.audit("monitor")
            else:
                self._late += changes
            return
        cookies: set[int] = set()
        group_gone = False
        for change in changes:
            key = change.flow.key
            old = self.installed.get(key)
            if old is not None:
                cookies.add(old.cookie)
                # deleting a group deletes the flows pointing at it, and only they are
                # reported: the group may be gone too
                group_gone |= change.removed and any(a[0] == "group" for a in old.actions)
            cookies.add(change.flow.cookie)
            if change.removed:
                self.installed.discard(key)
            else:
                self.installed.put(change.flow)
            metrics.FOREIGN[change.kind].inc()
        kinds = {k: sum(c.kind == k for c in changes) for k in ("added", "modified", "removed")}
        # one line per repair: a burst reported in many replies before it lands adds none
        level = logging.WARNING if self._repair_since is None else logging.DEBUG
        log.log(
            level, "switch %s: another OpenFlow client changed %d flows (%s), e.g. %s %s; "
            "repairing", self.node, len(changes),
            ", ".join(f"{n} {k}" for k, n in kinds.items() if n), changes[0].kind,
            to_ofctl(changes[0].flow),
            extra={"event": "drift", "node": str(self.node), "flows": len(changes)},
        )  # fmt: skip
        if self._repair_since is None:
            self._repair_since = time.perf_counter()
        self._repair_flows += len(changes)
        if group_gone:
            self.audit("monitor")  # flows and groups read back, then repaired together
        else:
            self.request(Scope.of_cookies(frozenset(cookies)))

    def monitor_paused(self) -> None:
        """The switch stopped reporting changes: trust nothing until it resumes."""
        self._monitor_paused = True
        metrics.MONITOR_PAUSES.inc()
        log.warning("switch %s paused its flow monitor; a readback follows its resumption", self.node)

    def monitor_resumed(self) -> None:
        """Reporting again, but deletions made meanwhile were not reported: read back."""
        self._monitor_paused = False
        self.audit("monitor")

    def _tracking(self) -> bool:
        """Whether `installed` follows the switch now (so reported changes apply to it)."""
        return (
            self.master
            and not self.closed
            and not self._monitor_paused
            and not self._need_readback
            and self.state is not State.READING
        )

    # -- replies (from the app) ----------------------------------------------

    def on_flow_stats(self, xid: int, body: bytes, more: bool) -> None:
        if self.state is not State.READING or xid != self._read_xid:
            return
        # affinity entries the switch learned itself are its own: never compared
        self._read.extend(f for f in ofwire.decode_flow_stats(body, self._drops_read)
                          if not is_learned(f))  # fmt: skip
        if len(self._read) > self.readback_limits[0]:
            self._abandon_readback("too_large", f"more than {self.readback_limits[0]:,} flows")
            return
        if more:
            return
        self._read_xid = -1
        self._read_done()

    def on_group_desc(self, xid: int, body: bytes, more: bool) -> None:
        if self.state is not State.READING or xid != self._group_read_xid:
            return
        self._group_read.extend(groups.decode_group_desc(body))
        if len(self._group_read) > self.readback_limits[1]:
            self._abandon_readback("too_large", f"more than {self.readback_limits[1]:,} groups")
            return
        if more:
            return
        self.installed_groups = {g.group_id: g for g in self._group_read}
        self._group_read, self._group_read_xid = None, -1
        self._read_done()

    def _abandon_readback(self, why: str, what: str) -> None:
        """Stop taking in this readback (its later replies are ignored by their xid) and
        retry later: a switch that keeps sending too much costs a readback per retry delay."""
        metrics.READBACKS_ABANDONED.labels(why).inc()
        log.error("switch %s: readback given up: %s", self.node, what)
        self.last_error = f"readback given up: {what}"
        self._read, self._group_read, self._drops_read = [], None, {}
        self._read_xid = self._group_read_xid = -1
        self.state = State.IDLE
        self._retry_later()

    def _readback_overdue(self, xid: int) -> None:
        if self.state is State.READING and xid in (self._read_xid, self._group_read_xid):
            self._abandon_readback("timeout", f"not complete in {READBACK_TIMEOUT:.0f}s")

    def _read_done(self) -> None:
        """Flows and groups both read back: take them in and diff them against the desired
        state, yielding every STEP flows (`pause`): other switches and echo replies are
        served meanwhile, and what this one's monitor reports then is taken in after."""
        if self._read_xid != -1 or self._group_read is not None:
            return
        read, self._read = self._read, []
        self.state, self._need_readback = State.COMPARING, False
        run = self._run
        fresh = Installed()  # (`vxflow status` reads the previous copy until it is whole)
        fresh.replace(read, self.pause)
        if self.closed or self._run != run:
            return  # demoted meanwhile: the next mastership reads back anew
        self.installed = fresh
        self.table_known = True
        self.policy_drops, self._drops_read = self._drops_read, {}
        self.state = State.IDLE
        # what a readback for an audit (or after a paused monitor) finds wrong is drift,
        # but for the changes asked for meanwhile (still pending): those were never sent
        excused, self._pending = self._pending, FULL
        found = self._readback_reason if self._readback_reason in ("audit", "monitor") else None
        self._kick(found_by=found, excused=excused)

    def on_error(self, xid: int, err_type: int, code: int, data: bytes) -> bool:
        """Log and count an OFPT_ERROR with the message that caused it; False if not ours."""
        if self._meter_xid != -1 and xid in (self._meter_xid, self._meter_xid + 1):
            # (the add refused because the switch holds the meter: expected, nothing wrong)
            if not self.meter_refused and (xid, err_type, code) != (
                    self._meter_xid, ofwire.OFPET_METER_MOD_FAILED, ofwire.OFPMMFC_METER_EXISTS):
                metrics.of_error(err_type, code).inc()
                metrics.DROP_METERS_REFUSED.inc()
                self.meter_refused = True  # (before the readback's reply: its comparison too)
                log.warning("switch %s refused the meter of logged policy drops (error type %d "
                            "code %d): its policy drops are plain drops, not logged, until "
                            "it reconnects", self.node, err_type, code)  # fmt: skip
            return True
        change = self._change
        if change is not None and change.first_xid <= xid <= change.last_xid:
            metrics.of_error(err_type, code).inc()
            change.failed = True
            sent = change.message(xid)
            if isinstance(sent, tuple) and isinstance(sent[1], Group):
                verb = {groups.OFPGC_ADD: "add", groups.OFPGC_MODIFY: "modify"}.get(sent[0], "delete")
                log.error(
                    "switch %s rejected %s of group (error type %d code %d): %s",
                    self.node, verb, err_type, code, group_to_ofctl(sent[1]),
                )
            elif sent is not None:
                command, flow = sent
                verb = "add" if command == ofwire.OFPFC_ADD else "delete"
                self.last_error = f"error type {err_type} code {code} on {verb} of {to_ofctl(flow)}"
                log.error(
                    "switch %s rejected %s of flow (error type %d code %d): %s",
                    self.node, verb, err_type, code, to_ofctl(flow),
                )
            else:
                what = "barrier" if change.bundle_id is None else f"bundle {change.bundle_id} control"
                log.error(
                    "switch %s: %s failed (error type %d code %d)", self.node, what, err_type, code
                )
            return True
        if xid in (self._read_xid, self._group_read_xid) and self.state is State.READING:
            metrics.of_error(err_type, code).inc()
            log.error("switch %s refused the flow readback (type %d code %d)", self.node, err_type, code)
            self.last_error = f"error type {err_type} code {code} on the flow readback"
            self.state = State.IDLE
            self._retry_later()
            return True
        return False

    def on_barrier(self, xid: int) -> None:
        change = self._change
        if change is None:
            return
        if xid == change.added_xid and change.bundle_id is not None and not change.committing:
            if not self.may_write():
                self._abandon(change)
                return
            change.committing = True
            ctrl = ofwire.OFPBCT_DISCARD_REQUEST if change.failed else ofwire.OFPBCT_COMMIT_REQUEST
            self.channel.send(
                ofwire.encode_bundle_control(change.bundle_id, ctrl, change.added_xid + 1)
                + ofwire.encode_barrier(change.last_xid)
            )
            return
        if xid != change.last_xid:
            return
        if change.failed:
            self._change = None
            self.state = State.IDLE
            metrics.CHANGE_RESULT[change.form, "failed"].inc()
            self._flushes = change.flushes + self._flushes
            self._retry_later()
            return
        metrics.CHANGE_RESULT[change.form, "ok"].inc()
        self._failures = 0
        self.last_error = ""
        self.synced_at = time.time()
        for flow in change.diff.delete:
            self.installed.discard(flow.key)
        for g in (*change.group_diff.add, *change.group_diff.modify):
            self.installed_groups[g.group_id] = g
        for g in change.group_diff.delete:
            self.installed_groups.pop(g.group_id, None)
        # still APPLYING while the table is recorded (it pauses): no diff may see half of it
        for i, flow in enumerate(change.diff.add, 1):
            self.installed.put(flow)
            if not i % CHUNK:
                self.pause()
                if self.closed:
                    return
        if change.diff.routes:
            self.installed.put_routes(change.diff.routes)
        self._change = None
        self.state = State.IDLE
        self._send_flushes(change.flushes)
        if self._repair_since is not None:
            took = time.perf_counter() - self._repair_since
            metrics.REPAIR_SECONDS.observe(took)
            log.info(
                "switch %s: repair of %d flows changed by another client landed %.1f ms after "
                "the first report (%d added, %d deleted)", self.node, self._repair_flows,
                took * 1e3, len(change.diff) - len(change.diff.delete), len(change.diff.delete),
                extra={"event": "drift_repaired", "node": str(self.node)},
            )  # fmt: skip
            self._repair_since, self._repair_flows = None, 0
        # one line per switch per registry event would flood the log of a large cluster (and
        # cost 3% of the controller's time in a policy change to 50 switches)
        level = logging.INFO if change.whole else logging.DEBUG
        if log.isEnabledFor(level):
            what = "flow-mod" if change.bundle_id is None else f"bundle {change.bundle_id}"
            log.log(
                level, "switch %s: %s landed (%d added, %d deleted; %d flows)",
                self.node, what, len(change.diff) - len(change.diff.delete),
                len(change.diff.delete), len(self.installed),
            )
        self._kick()

    # -- internals ------------------------------------------------------------

    def _kick(self, found_by: str | None = None, excused: Scope = NOTHING) -> None:
        if self.closed or self.state is not State.IDLE or not self.master:
            return
        if not self.may_write():
            metrics.WRITES_FENCED.inc()
            log.warning("switch %s: membership lapsed; holding back changes until it is renewed",
                        self.node)  # fmt: skip
            return
        if self._need_readback:
            self._start_readback()
            return
        if not self._pending:
            return
        started = time.perf_counter()
        try:
            desired = self.desired(self._pending)
            if desired is not None and self.meter_refused:
                desired = replace(desired, flows=unlogged(desired.flows))
        except Exception:  # never seen; were it, this switch retries and the others go on
            log.exception("switch %s: computing its desired flows failed", self.node)
            self._retry_later()
            return
        if desired is None:
            return
        scope, self._pending = self._pending, NOTHING
        computed = time.perf_counter()
        self.state, run = State.COMPARING, self._run
        try:
            # remote leases the switch already holds as desired are not compared at all
            desired, settled = self.installed.settle(desired, self.pause)
            diff = diff_table(self._installed_in(scope, settled), desired, self.pause)
            group_diff = diff_groups(self._groups_in(scope), desired.groups)
        except Exception:  # as computing the desired flows above
            if self.closed or self._run != run:
                return
            log.exception("switch %s: comparing its flows failed", self.node)
            self.state = State.IDLE
            self._retry_later()
            return
        if self.closed or self._run != run:
            return  # demoted meanwhile: the next mastership reads back anew
        self.state = State.IDLE
        if not self.may_write():  # lapsed meanwhile: nothing is sent; read back once renewed
            metrics.WRITES_FENCED.inc()
            log.warning("switch %s: membership lapsed while its flows were compared; read "
                        "back once it is renewed", self.node)  # fmt: skip
            self._late = []
            self._need_readback, self._readback_reason = True, "retry"
            self._pending = FULL
            return
        if log.isEnabledFor(logging.DEBUG):  # (a lease event runs this once per switch)
            log.debug(
                "switch %s: %d desired flows in %.1f ms, diff of %d in %.1f ms",
                self.node, len(desired), (computed - started) * 1e3, len(diff),
                (time.perf_counter() - computed) * 1e3,
            )
        drifted = _drifted(diff, group_diff, excused) if found_by else (0, 0, 0)
        if any(drifted):
            metrics.DRIFT_FOUND[found_by].inc()
            self.drift_repairs += 1
            log.warning(
                "switch %s drifted: %d flows missing or wrong, %d unexpected, %d groups "
                "differ (found by a readback: %s); repairing", self.node, *drifted, found_by,
                extra={"event": "drift", "node": str(self.node), "found_by": found_by},
            )  # fmt: skip
        elif self._repair_since is not None and diff:
            metrics.DRIFT_FOUND["monitor"].inc()
            self.drift_repairs += 1
        late, self._late = self._late, []
        if diff or group_diff:
            self._send(diff, group_diff, scope.full)
            if late:
                self.observe(late)  # (their repair is sent once this change landed)
            return
        self._repair_since, self._repair_flows = None, 0  # nothing to repair (or undone)
        self._send_flushes(self._flushes)
        self._flushes = []
        if scope.full:
            self.synced_at = time.time()
            self.on_synced(self)
        self.observe(late)
        if self._pending or self._need_readback:
            self._kick()  # what was asked for while comparing

    @property
    def reading_back(self) -> bool:
        """A readback is asked for or under way (its comparison not done yet)."""
        return self._need_readback or self.state in (State.READING, State.COMPARING)

    @property
    def in_sync(self) -> bool:
        """Master, idle, nothing pending or failing: the table is what was last asked for."""
        return (
            self.master
            and self.state is State.IDLE
            and not self._pending
            and not self._need_readback
            and not self._failures
        )

    def _start_readback(self) -> None:
        metered = self.meter_rate and not self.meter_refused
        xid = self.channel.xids(4 if metered else 2)
        meter = b""
        if metered:  # (the switch takes messages in order: before any flow using it)
            # (built before the state changes: were it to fail, the switch is not left
            # READING with no deadline armed)
            meter = droplog.meter_mods(self.meter_rate, xid)
            self._meter_xid, xid = xid, xid + 2
        metrics.SYNCS.labels(self._readback_reason).inc()
        self.state = State.READING
        self._read, self._group_read, self._drops_read = [], [], {}
        self._read_xid, self._group_read_xid = xid, xid + 1
        self.later(READBACK_TIMEOUT, lambda: self._readback_overdue(xid))
        self.channel.send(
            meter + ofwire.encode_flow_stats_request(xid) + groups.encode_group_desc_request(xid + 1)
        )

    def _send(self, diff: FlowDiff, group_diff: GroupDiff, whole: bool) -> None:
        self.state = State.APPLYING
        # (a lease event runs this once per switch: counters that do not move are not touched)
        size = len(diff)
        for counter, n in ((metrics.DELETES, len(diff.delete)),
                           (metrics.ADDS, size - len(diff.delete)),
                           (metrics.GROUP_MODS, len(group_diff))):  # fmt: skip
            if n:
                counter.inc(n)
        flushes, self._flushes = self._flushes, []
        if size + len(group_diff) <= UNBUNDLED:
            self._send_bare(diff, group_diff, flushes, whole)
        else:
            self._send_bundle(diff, group_diff, flushes, whole)

    def _send_bare(self, diff: FlowDiff, group_diff: GroupDiff, flushes: list[Flush],
                   whole: bool) -> None:  # fmt: skip
        """A few flow-mods and group-mods in a bundle's order (see `_send_bundle`) and one
        barrier in one write (see the module doc). A new lease's flows (routes) are packed
        from its row by the packer every switch shares, with this switch's source MAC."""
        head, tail = _messages(diff, group_diff)
        routes = diff.added_routes
        first = self.channel.xids(len(head) + routes + len(tail) + 1)
        change = self._change = _Change(None, first, head, diff, group_diff, tail, flushes,
                                        whole=whole)  # fmt: skip
        data = [_encode(command, item, first + i) for i, (command, item) in enumerate(head)]
        if routes:
            data.append(ofwire.route_encoder(diff.routes, bundled=False)(diff.routes.items(), first + len(head)))
        xid = first + len(head) + routes
        data += [_encode(command, item, xid + i) for i, (command, item) in enumerate(tail)]
        data.append(ofwire.encode_barrier(change.added_xid))
        self.channel.send(b"".join(data))

    def _send_bundle(self, diff: FlowDiff, group_diff: GroupDiff, flushes: list[Flush],
                     whole: bool) -> None:  # fmt: skip
        """Flow deletes, group adds and modifies, flow adds (and routes), group deletes:
        a flow never points at a group the switch does not hold yet or any more."""
        messages, tail = _messages(diff, group_diff)
        started = time.perf_counter()
        first = self.channel.xids(len(diff) + len(group_diff) + 4)
        bundle_id = self._next_bundle_id
        self._next_bundle_id = self._next_bundle_id % 0xFFFFFFFF + 1
        bundle = self._change = _Change(
            bundle_id, first, messages, diff, group_diff, tail, flushes, whole=whole
        )
        if len(diff) + len(group_diff) <= CHUNK:
            self._stream_bundle(bundle, started)
        else:  # encoding it takes a while: the caller (shared by every switch) goes on
            self.spawn(lambda: self._stream_bundle(bundle, started))

    def _stream_bundle(self, bundle: _Change, started: float) -> None:
        """Encode and send `bundle` chunk by chunk (see `_send_bundle`), yielding between
        chunks; stopped at once by a disconnection, demotion or lapse."""
        if self.closed or self._change is not bundle:
            return
        if not self.may_write():
            self._abandon(bundle)
            return
        diff, group_diff, bundle_id = bundle.diff, bundle.group_diff, bundle.bundle_id
        send = self.channel.send
        xid = bundle.first_xid + 1
        routes = diff.routes
        encode_routes = ofwire.route_encoder(routes) if routes else None
        add, modify, delete = groups.OFPGC_ADD, groups.OFPGC_MODIFY, groups.OFPGC_DELETE
        shared = not bundle.whole  # (a change, fanned out: likely the same flows elsewhere)
        # (items, encoder, their flow-mods, at most so many per item): a route item
        # carries a lease's flows
        plain = len
        parts: list[tuple[Sequence, Callable[[Sequence, int], bytes], Callable[[Sequence], int], int]] = [
            (diff.delete, lambda c, x: ofwire.encode_bundle_adds(bundle_id, c, ofwire.OFPFC_DELETE_STRICT, x, shared), plain, 1),
            (group_diff.add, lambda c, x: groups.encode_group_mods(c, add, x, bundle_id), plain, 1),
            (group_diff.modify, lambda c, x: groups.encode_group_mods(c, modify, x, bundle_id), plain, 1),
            (diff.add, lambda c, x: ofwire.encode_bundle_adds(bundle_id, c, ofwire.OFPFC_ADD, x, shared), plain, 1),
            (routes.items() if routes else (), lambda c, x: encode_routes(c, x, bundle_id),
             routes.count if routes else plain, FLOWS_PER_LEASE * (2 if routes and routes.rows6 else 1)),
            (group_diff.delete, lambda c, x: groups.encode_group_mods(c, delete, x, bundle_id), plain, 1),
        ]  # fmt: skip
        chunks = [(encode, count, items[i : i + CHUNK // per_item])
                  for items, encode, count, per_item in parts
                  for i in range(0, len(items), CHUNK // per_item)]  # fmt: skip
        # one write per chunk (a bundle holds more than UNBUNDLED messages: one at least),
        # the open with the first, the barrier with the last: a policy change to 50
        # switches is 50 writes, not 150
        head = ofwire.encode_bundle_control(bundle_id, ofwire.OFPBCT_OPEN_REQUEST, bundle.first_xid)
        for n, (encode, count, chunk) in enumerate(chunks, 1):
            last = n == len(chunks)
            data = head + encode(chunk, xid)
            head = b""
            xid += count(chunk)
            send(data + ofwire.encode_barrier(bundle.added_xid) if last else data)
            self.pause()  # the switch parses this chunk while we encode the next
            if last:  # (its barrier's reply commits it, if the licence still holds then)
                break
            if self.closed or self._change is not bundle:  # disconnected or demoted
                return  # meanwhile: the next session or master reads back
            if not self.may_write():
                self._abandon(bundle)
                return
        log.debug(
            "switch %s: bundle %d of %d flow-mods encoded and queued in %.1f ms",
            self.node, bundle_id, len(diff), (time.perf_counter() - started) * 1e3,
        )

    def _abandon(self, change: _Change) -> None:
        """The membership lapsed while a bundle was under way: nothing more is sent, not
        even its discard (the switch drops an uncommitted bundle when its idle timeout
        passes or the connection closes). Once renewed, the switch is read back first."""
        metrics.WRITES_FENCED.inc()
        log.warning("switch %s: membership lapsed during bundle %d; left uncommitted, the "
                    "switch is read back once it is renewed", self.node, change.bundle_id)  # fmt: skip
        self._change = None
        self.state = State.IDLE
        self._flushes = change.flushes + self._flushes
        self._need_readback, self._readback_reason = True, "retry"
        self._pending = FULL

    def _retry_later(self) -> None:
        self._failures += 1
        delay = min(0.5 * 2 ** (self._failures - 1), MAX_RETRY_DELAY)
        log.warning("switch %s: resyncing from a fresh readback in %.1fs", self.node, delay,
                    extra={"event": "resync", "node": str(self.node)})  # fmt: skip
        self._need_readback, self._readback_reason = True, "retry"
        self._pending = FULL
        self.later(delay, self._kick)

    def _send_flushes(self, flushes: list[Flush]) -> None:
        """NXT_CT_FLUSH per removed UDP backend, once its group no longer picks it (a
        switch without NXT_CT_FLUSH answers with an error: logged, the entries expire)."""
        if not flushes or not self.master or self.closed:
            return
        if not self.may_write():  # held back with the next change's
            self._flushes = flushes + self._flushes
            return
        xid = self.channel.xids(len(flushes))
        self.channel.send(
            b"".join(groups.encode_ct_flush(SERVICE_ZONE, f, xid + i) for i, f in enumerate(flushes))
        )
        metrics.CT_FLUSHES.inc(len(flushes))
        log.info("switch %s: flushed the conntrack entries of %d removed UDP backend(s)",
                 self.node, len(flushes))  # fmt: skip

    def _groups_in(self, scope: Scope) -> list[Group]:
        """The installed groups `scope` covers: looked up by its service cookies, so a lease
        event (no service cookie) costs nothing however many groups the switch holds."""
        if not self.installed_groups:
            return []
        if scope.full:
            return list(self.installed_groups.values())
        if Owner.SERVICE in scope.owners:
            return [g for gid, g in self.installed_groups.items() if scope.covers(group_cookie(gid))]
        groups = self.installed_groups
        return [groups[o[1]] for c in scope.cookies
                if (o := owner_of(c)) and o[0] is Owner.SERVICE and o[1] in groups]  # fmt: skip

    def _installed_in(self, scope: Scope, skip: frozenset[int] = frozenset()) -> list[Flow]:
        """The installed flows `scope` covers, but those of the cookies in `skip`."""
        installed = self.installed
        if scope.full:
            return installed.all_but(skip, self.pause)
        if scope.owners:
            cookies = [c for c in installed.cookies() if c not in skip and scope.covers(c)]
        else:
            cookies = [c for c in scope.cookies if c not in skip and installed.has_cookie(c)]
        # (a flow also held by a cookie above comes twice: the diff takes it once)
        return installed.of_cookies(cookies) + [
            f for k in scope.keys if (f := installed.get(k)) is not None]  # fmt: skip


def _drifted(diff: FlowDiff, group_diff: GroupDiff, excused: Scope) -> tuple[int, int, int]:
    """Flows missing or wrong, flows unexpected and groups differing in a comparison,
    less what changes asked for but not yet sent (`excused`) account for."""
    if excused.full:
        return 0, 0, 0
    missing = sum(not excused.covers_flow(f) for f in diff.add)
    routes = diff.routes
    if routes is not None:
        missing += sum(routes.flows_of(i) for i, lease in enumerate(routes.leases)
                       if not excused.covers(subnet_cookie(lease.subnet)))  # fmt: skip
    unexpected = sum(not excused.covers_flow(f) for f in diff.delete)
    groups_differ = sum(not excused.covers(group_cookie(g.group_id))
                        for g in (*group_diff.add, *group_diff.modify, *group_diff.delete))  # fmt: skip
    return missing, unexpected, groups_differ


def _messages(
    diff: FlowDiff, group_diff: GroupDiff
) -> tuple[list[tuple[int, Flow | Group]], list[tuple[int, Flow | Group]]]:
    """(command, item) in the order they are sent: flow deletes, group adds and modifies,
    flow adds (the routes follow in a bundle), then group deletes (the tail)."""
    head: list[tuple[int, Flow | Group]] = [(ofwire.OFPFC_DELETE_STRICT, f) for f in diff.delete]
    head += [(groups.OFPGC_ADD, g) for g in group_diff.add]
    head += [(groups.OFPGC_MODIFY, g) for g in group_diff.modify]
    head += [(ofwire.OFPFC_ADD, f) for f in diff.add]
    return head, [(groups.OFPGC_DELETE, g) for g in group_diff.delete]


def _encode(command: int, item: Flow | Group, xid: int) -> bytes:
    if isinstance(item, Group):
        return groups.encode_group_mod(item, command, xid)
    return ofwire.encode_flow_mod(item, command, xid)
