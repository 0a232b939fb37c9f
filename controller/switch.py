"""One switch's synchronisation: readback, diff, one bundle at a time, retries.

No os-ken here: the app hands replies in and gives a `Channel` to send raw
bytes, so this logic runs the same under a real switch and in unit tests.

A sync sends only the difference between what the switch holds (read back
with flow stats on connect, then tracked as changes land) and what it should
hold, inside one atomic bundle followed by a barrier. A difference of at most
UNBUNDLED flow-mods (one lease added, changed or removed: the common event,
which touches its route and its tunnel-ingress check) goes out bare, deletes
first, with one barrier in one write: one round trip instead of a bundle's
two. Each flow-mod is atomic on its own; between them the table holds at most
the old flows minus the deleted ones plus some of the new, never a flow
outside either table, for the microseconds the switch takes to apply them. A table that is already right gets no flow-mod at
all. A change that fails is logged per offending flow and retried from a fresh
readback, so nothing is ever left half-applied or assumed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address
from typing import Protocol

from controller import metrics, ofwire
from controller.model import FULL, NOTHING, Scope
from flows.compiler import FLOWS_PER_LEASE, NodeTable
from flows.diff import FlowDiff, diff_table
from flows.flow import Flow, FlowKey, to_ofctl

log = logging.getLogger(__name__)

CHUNK = 2048  # flow-mods per write: the switch parses one chunk while the next is encoded
UNBUNDLED = 3  # largest change sent bare: a lease moving to a new PublicIP (1 delete, 2 adds)
MAX_RETRY_DELAY = 30.0


class Channel(Protocol):
    def send(self, data: bytes) -> None: ...

    def xids(self, count: int) -> int:
        """Reserve `count` consecutive transaction ids; returns the first."""
        ...


class State(Enum):
    READING = "reading"
    IDLE = "idle"
    APPLYING = "applying"


@dataclass
class _Change:
    """A change in flight, bundled or bare.

    A bundle's xids: open, one per message, add-barrier, commit/discard, barrier.
    OVS drops a bundled message it rejects but would still commit the rest, so
    the commit is only sent once the add-barrier confirmed every add was taken.
    A bare change (`bundle_id` None) is its few flow-mods then one barrier; the
    switch sends any OFPT_ERROR for a flow-mod before that barrier's reply.
    """

    bundle_id: int | None  # None: one bare flow-mod
    first_xid: int
    messages: list[tuple[int, Flow]]  # (command, flow) per xid from the first message's
    diff: FlowDiff  # in a bundle, its routes follow the messages, one xid each
    failed: bool = False
    committing: bool = False

    @property
    def form(self) -> str:
        return "flow_mod" if self.bundle_id is None else "bundle"

    @property
    def _message_xid(self) -> int:
        return self.first_xid if self.bundle_id is None else self.first_xid + 1

    @property
    def added_xid(self) -> int:
        """The barrier after the last message (a bare change's only barrier)."""
        routes = 0 if self.bundle_id is None else self.diff.added_routes
        return self._message_xid + len(self.messages) + routes

    @property
    def last_xid(self) -> int:
        return self.added_xid if self.bundle_id is None else self.added_xid + 2

    def message(self, xid: int) -> tuple[int, Flow] | None:
        i = xid - self._message_xid
        if 0 <= i < len(self.messages):
            return self.messages[i]
        i -= len(self.messages)
        routes = self.diff.routes
        if self.bundle_id is not None and routes is not None and 0 <= i < len(routes):
            return ofwire.OFPFC_ADD, routes.flow(i)
        return None


@dataclass
class SwitchSync:
    """Keeps one switch's flow table equal to `desired(scope)`."""

    node: IPv4Address
    channel: Channel
    desired: Callable[[Scope], NodeTable | None]  # None: not known yet, touch nothing
    later: Callable[[float, Callable[[], None]], None]  # run a callable after a delay
    on_synced: Callable[[SwitchSync], None] = lambda sync: None
    pause: Callable[[], None] = lambda: None  # called every CHUNK flows sent or recorded
    # Writes (and the readback they start from) happen only while the switch has
    # confirmed this replica as its master, and only while the replica's membership
    # is in good standing (`may_write`: checked before every change it sends).
    master: bool = False
    may_write: Callable[[], bool] = lambda: True
    state: State = State.IDLE
    installed: dict[FlowKey, Flow] = field(default_factory=dict)
    _by_cookie: dict[int, set[FlowKey]] = field(default_factory=dict)
    _pending: Scope = NOTHING
    _need_readback: bool = True
    _readback_reason: str = "connect"
    _read_xid: int = -1
    _read: list[Flow] = field(default_factory=list)
    _change: _Change | None = None
    _next_bundle_id: int = 1
    _failures: int = 0
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
        self._need_readback = True
        self._pending = FULL

    def request(self, scope: Scope) -> None:
        """Bring the flows in `scope` to the desired state (as soon as the switch is free).

        Not master: nothing to keep (a promotion reads back and syncs in full), so a
        replica's slave connections cost nothing per registry event."""
        if not self.master:
            return
        self._pending |= scope
        self._kick()

    def audit(self) -> None:
        """Read the whole table back and repair whatever drifted."""
        if not self._need_readback:
            self._need_readback, self._readback_reason = True, "audit"
        self._kick()

    def close(self) -> None:
        self.closed = True

    # -- replies (from the app) ----------------------------------------------

    def on_flow_stats(self, xid: int, body: bytes, more: bool) -> None:
        if self.state is not State.READING or xid != self._read_xid:
            return
        self._read.extend(ofwire.decode_flow_stats(body))
        if more:
            return
        self._set_installed(self._read)
        self._read = []
        self.state = State.IDLE
        self._need_readback = False
        self._pending = FULL
        audit = self._readback_reason == "audit"
        self._kick(audit=audit)

    def on_error(self, xid: int, err_type: int, code: int, data: bytes) -> bool:
        """Log and count an OFPT_ERROR with the message that caused it; False if not ours."""
        change = self._change
        if change is not None and change.first_xid <= xid <= change.last_xid:
            metrics.OF_ERRORS.labels(str(err_type), str(code)).inc()
            change.failed = True
            sent = change.message(xid)
            if sent is not None:
                command, flow = sent
                verb = "add" if command == ofwire.OFPFC_ADD else "delete"
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
        if xid == self._read_xid and self.state is State.READING:
            metrics.OF_ERRORS.labels(str(err_type), str(code)).inc()
            log.error("switch %s refused the flow readback (type %d code %d)", self.node, err_type, code)
            self.state = State.IDLE
            self._retry_later()
            return True
        return False

    def on_barrier(self, xid: int) -> None:
        change = self._change
        if change is None:
            return
        if xid == change.added_xid and change.bundle_id is not None and not change.committing:
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
            self._retry_later()
            return
        metrics.CHANGE_RESULT[change.form, "ok"].inc()
        self._failures = 0
        for flow in change.diff.delete:
            self._forget(flow.key)
        # still APPLYING while the table is recorded (it pauses): no diff may see half of it
        for i, flow in enumerate(change.diff.added(), 1):
            self._remember(flow)
            if not i % CHUNK:
                self.pause()
                if self.closed:
                    return
        self._change = None
        self.state = State.IDLE
        # one line per switch per lease event would flood the log of a large cluster
        if change.bundle_id is None:
            level, what = logging.DEBUG, "flow-mod"
        else:
            level, what = logging.INFO, f"bundle {change.bundle_id}"
        log.log(
            level, "switch %s: %s landed (%d added, %d deleted; %d flows)",
            self.node, what, len(change.diff) - len(change.diff.delete),
            len(change.diff.delete), len(self.installed),
        )
        self._kick()

    # -- internals ------------------------------------------------------------

    def _kick(self, audit: bool = False) -> None:
        if self.closed or self.state is not State.IDLE or not self.master:
            return
        if not self.may_write():
            metrics.WRITES_FENCED.inc()
            log.warning("switch %s: membership lapsed; holding back changes", self.node)
            return
        if self._need_readback:
            self._start_readback()
            return
        if not self._pending:
            return
        started = time.perf_counter()
        desired = self.desired(self._pending)
        if desired is None:
            return
        scope, self._pending = self._pending, NOTHING
        computed = time.perf_counter()
        diff = diff_table(self._installed_in(scope), desired)
        log.debug(
            "switch %s: %d desired flows in %.1f ms, diff of %d in %.1f ms",
            self.node, len(desired), (computed - started) * 1e3, len(diff),
            (time.perf_counter() - computed) * 1e3,
        )
        if audit and diff:
            metrics.DRIFT.inc()
            log.warning(
                "switch %s drifted: %d flows missing or wrong, %d unexpected; repairing",
                self.node, len(diff) - len(diff.delete), len(diff.delete),
            )
        if diff:
            self._send(diff)
        elif scope.full:
            self.on_synced(self)

    def _start_readback(self) -> None:
        metrics.SYNCS.labels(self._readback_reason).inc()
        self.state = State.READING
        self._read = []
        self._read_xid = self.channel.xids(1)
        self.channel.send(ofwire.encode_flow_stats_request(self._read_xid))

    def _send(self, diff: FlowDiff) -> None:
        self.state = State.APPLYING
        metrics.DELETES.inc(len(diff.delete))
        metrics.ADDS.inc(len(diff) - len(diff.delete))
        if len(diff) <= UNBUNDLED and diff.routes is None:
            self._send_bare(diff)
        else:
            self._send_bundle(diff)

    def _send_bare(self, diff: FlowDiff) -> None:
        """A few flow-mods, deletes first, and one barrier in one write (see the module doc)."""
        messages = [(ofwire.OFPFC_DELETE_STRICT, f) for f in diff.delete]
        messages += [(ofwire.OFPFC_ADD, f) for f in diff.add]
        first = self.channel.xids(len(messages) + 1)
        self._change = _Change(None, first, messages, diff)
        data = b"".join(
            ofwire.encode_flow_mod(flow, command, first + i)
            for i, (command, flow) in enumerate(messages)
        )
        self.channel.send(data + ofwire.encode_barrier(first + len(messages)))

    def _send_bundle(self, diff: FlowDiff) -> None:
        messages = [(ofwire.OFPFC_DELETE_STRICT, f) for f in diff.delete]
        messages += [(ofwire.OFPFC_ADD, f) for f in diff.add]
        started = time.perf_counter()
        first = self.channel.xids(len(diff) + 4)
        bundle_id = self._next_bundle_id
        self._next_bundle_id = self._next_bundle_id % 0xFFFFFFFF + 1
        bundle = self._change = _Change(bundle_id, first, messages, diff)
        send = self.channel.send
        send(ofwire.encode_bundle_control(bundle_id, ofwire.OFPBCT_OPEN_REQUEST, first))
        xid = first + 1
        routes = diff.routes
        encode_routes = ofwire.route_encoder(routes) if routes else None
        # (items, encoder, flow-mods per item): a route row carries a lease's flows
        parts: list[tuple[Sequence, Callable[[Sequence, int], bytes], int]] = [
            (diff.delete, lambda c, x: ofwire.encode_bundle_adds(bundle_id, c, ofwire.OFPFC_DELETE_STRICT, x), 1),
            (diff.add, lambda c, x: ofwire.encode_bundle_adds(bundle_id, c, ofwire.OFPFC_ADD, x), 1),
            (routes.rows if routes else (), lambda c, x: encode_routes(c, x, bundle_id), FLOWS_PER_LEASE),
        ]  # fmt: skip
        for items, encode, per_item in parts:
            step = CHUNK // per_item
            for i in range(0, len(items), step):
                chunk = items[i : i + step]
                send(encode(chunk, xid))
                xid += len(chunk) * per_item
                self.pause()  # the switch parses this chunk while we encode the next
                if self.closed:  # disconnected meanwhile: the new session resyncs
                    return
        send(ofwire.encode_barrier(bundle.added_xid))
        log.debug(
            "switch %s: bundle %d of %d flow-mods encoded and queued in %.1f ms",
            self.node, bundle_id, len(diff), (time.perf_counter() - started) * 1e3,
        )

    def _retry_later(self) -> None:
        self._failures += 1
        delay = min(0.5 * 2 ** (self._failures - 1), MAX_RETRY_DELAY)
        log.warning("switch %s: resyncing from a fresh readback in %.1fs", self.node, delay)
        self._need_readback, self._readback_reason = True, "retry"
        self._pending = FULL
        self.later(delay, self._kick)

    def _installed_in(self, scope: Scope) -> list[Flow]:
        if scope.full:
            return list(self.installed.values())
        if scope.owners:
            cookies = [c for c in self._by_cookie if scope.covers(c)]
        else:
            cookies = [c for c in scope.cookies if c in self._by_cookie]
        return [self.installed[k] for c in cookies for k in self._by_cookie[c]]

    def _set_installed(self, flows: list[Flow]) -> None:
        self.installed = {}
        self._by_cookie = {}
        for flow in flows:
            self._remember(flow)

    def _remember(self, flow: Flow) -> None:
        key = flow.key
        old = self.installed.get(key)
        if old is not None and old.cookie != flow.cookie:
            self._by_cookie[old.cookie].discard(key)
        self.installed[key] = flow
        self._by_cookie.setdefault(flow.cookie, set()).add(key)

    def _forget(self, key: FlowKey) -> None:
        old = self.installed.pop(key, None)
        if old is not None:
            self._by_cookie[old.cookie].discard(key)
