"""Watching real OVS bridges from the switch side: when did each flow land?

For every bridge the observer opens its own OpenFlow 1.4 connection to the
bridge's management socket. Two ways to see flows land, both independent of
anything the controller reports about itself:

- a flow monitor (OFPMP_FLOW_MONITOR) on all tables: ovs-vswitchd sends an
  ADDED update in the main-loop pass that commits the flow-mod (and answers
  the barrier after it). Precise, for a few flows at a time (B2); for tens of
  thousands it loads the switch and ovs-vswitchd pauses the monitor.
- polling the flow count (aggregate stats) every few milliseconds: for whole
  tables (B1, B3). A bundle commits at once, so the count jumps to its final
  value in one step; the error is at most one polling interval.

Groups (B7): with `groups=True` the observer asks each bridge to forward it
every group-mod (OFPT_REQUESTFORWARD, OpenFlow 1.4), which ovs-vswitchd sends
in the pass that commits the group-mod, as it does a flow monitor's update.

The asyncio loop runs in a daemon thread; timestamps are `time.monotonic()`,
which is comparable with the benchmark's own clock.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench import ofwire as of

log = logging.getLogger(__name__)
UPDATE_HEAD = struct.Struct("!HH")
# a full update: length, event, table, reason, idle, hard, prio, 4 pad, then its cookie
COOKIE, COOKIE_AT = struct.Struct("!Q"), 16


@dataclass
class _Bridge:
    name: str
    socket: Path
    writer: asyncio.StreamWriter | None = None
    added: list[tuple[float, int]] = field(default_factory=list)  # (time, cookie)
    group_mods: list[tuple[float, int]] = field(default_factory=list)  # (time, group id)
    events: list[tuple[float, int, int]] = field(default_factory=list)  # (time, event, cookie)
    removed: int = 0
    paused: int = 0
    replies: dict[int, asyncio.Future] = field(default_factory=dict)


class FlowObserver:
    """Flow monitors on several bridges' management sockets."""

    def __init__(
        self, sockets: Mapping[str, Path], monitor: bool = False, groups: bool = False
    ) -> None:
        self._monitor = monitor
        self._groups = groups
        self._bridges = {name: _Bridge(name, Path(sock)) for name, sock in sockets.items()}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._changed = threading.Condition()
        # what `_wait` waits for: (attribute, target per bridge, the bridges short of it)
        self._goal: tuple[str, Mapping[str, int], set[str]] | None = None
        # what `wait_events` waits for: (where each bridge not there yet is looked at from,
        # what looks at a bridge's updates from there)
        self._match_goal: tuple[dict[str, int], Callable[[_Bridge], None]] | None = None
        self._xid = 0x1000

    # -- lifecycle ------------------------------------------------------------
    def start(self, timeout: float = 30) -> FlowObserver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._connect_all(), self._loop).result(timeout)
        return self

    def stop(self) -> None:
        async def close() -> None:
            for b in self._bridges.values():
                if b.writer is not None:
                    b.writer.close()
            await asyncio.sleep(0)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> FlowObserver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries (from the benchmark's thread) ---------------------------------
    def added_counts(self) -> dict[str, int]:
        with self._changed:
            return {name: len(b.added) for name, b in self._bridges.items()}

    def added(self, name: str, start: int = 0) -> list[tuple[float, int]]:
        """(arrival time, cookie) of every ADDED update seen on bridge `name` (from the
        `start`-th on: a whole history, the initial sync's thousands included, copied for
        each bridge per event took the bench's process more than the updates; negative:
        the last -`start`)."""
        with self._changed:
            return self._bridges[name].added[start:]

    def event_count(self, name: str) -> int:
        with self._changed:
            return len(self._bridges[name].events)

    def wait_event(
        self, name: str, start: int, match: Callable[[int, int], bool], timeout: float
    ) -> tuple[int, float]:
        """The first update on bridge `name` from index `start` on for which
        `match(event, cookie)` holds: (its index, its arrival time)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                events = self._bridges[name].events
                for i in range(start, len(events)):
                    if match(events[i][1], events[i][2]):
                        return i, events[i][0]
                start = len(events)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{name}: no matching flow update within {timeout}s")
                self._changed.wait(left)

    def wait_events(
        self, starts: Mapping[str, int], match: Callable[[int, int], bool], timeout: float
    ) -> dict[str, float]:
        """`wait_event` on several bridges at once: for each bridge `name` of `starts`, the
        arrival time of its first update from index `starts[name]` on for which
        `match(event, cookie)` holds. The loop matches the updates as they come and wakes
        this thread once, when the last bridge got there (see `_wait`)."""
        deadline = time.monotonic() + timeout
        found: dict[str, float] = {}
        pending = dict(starts)

        def look(b: _Bridge) -> None:  # (under `_changed`)
            events = b.events
            for i in range(pending[b.name], len(events)):
                if match(events[i][1], events[i][2]):
                    found[b.name] = events[i][0]
                    del pending[b.name]
                    return
            pending[b.name] = len(events)

        with self._changed:
            for name in list(pending):
                look(self._bridges[name])
            self._match_goal = pending, look
            try:
                while pending:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"{len(pending)} bridges saw no matching flow update "
                                           f"within {timeout}s, e.g. {sorted(pending)[:5]}")  # fmt: skip
                    self._changed.wait(left)
            finally:
                self._match_goal = None
        return found

    def paused(self) -> int:
        """How often ovs-vswitchd paused a monitor (updates were then summarised)."""
        return sum(b.paused for b in self._bridges.values())

    def group_mods(self, name: str) -> list[tuple[float, int]]:
        """(arrival time, group id) of every group-mod bridge `name` forwarded (groups=True)."""
        with self._changed:
            return list(self._bridges[name].group_mods)

    def group_mod_counts(self) -> dict[str, int]:
        with self._changed:
            return {name: len(b.group_mods) for name, b in self._bridges.items()}

    def wait_added(self, targets: Mapping[str, int], timeout: float) -> dict[str, float]:
        """Block until bridge `name` has seen `targets[name]` adds in total; return when.

        Returns the arrival time of the target-th add per bridge; raises
        TimeoutError naming the bridges still short, with their counts.
        """
        return self._wait("added", "flow adds", targets, timeout)

    def wait_group_mods(self, targets: Mapping[str, int], timeout: float) -> dict[str, float]:
        """`wait_added` for forwarded group-mods."""
        return self._wait("group_mods", "group-mods", targets, timeout)

    def _wait(
        self, attr: str, what: str, targets: Mapping[str, int], timeout: float
    ) -> dict[str, float]:
        """(The loop wakes this thread once, when the last bridge got there: woken at every
        update, with S bridges of several updates each, this thread's rescans took the GIL
        from the loop that timestamps the updates, and the more so the more flows a lease has.)"""
        deadline = time.monotonic() + timeout
        seen = {n: getattr(self._bridges[n], attr) for n in targets}
        with self._changed:
            short = {n for n, want in targets.items() if len(seen[n]) < want}
            self._goal = attr, targets, short
            try:
                while short:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        sample = {n: len(seen[n]) for n in list(short)[:5]}
                        raise TimeoutError(
                            f"{len(short)} bridges short of their {what} after {timeout}s, "
                            f"e.g. {sample} (wanted {dict(list(targets.items())[:1])})"
                        )
                    self._changed.wait(left)
            finally:
                self._goal = None
            return {n: seen[n][want - 1][0] for n, want in targets.items()}

    def _notify(self, b: _Bridge) -> None:
        """(Under `_changed`, after `b` got more.) Wake the waiting thread: `_wait`'s and
        `wait_events`' once every bridge they wait for got there, any other at every change."""
        if self._match_goal is not None:
            pending, look = self._match_goal
            if b.name in pending:
                look(b)
                if not pending:
                    self._changed.notify_all()
            return
        if self._goal is None:
            self._changed.notify_all()
            return
        attr, targets, short = self._goal
        if b.name in short and len(getattr(b, attr)) >= targets[b.name]:
            short.discard(b.name)
            if not short:
                self._changed.notify_all()

    def flow_counts(self, timeout: float = 30) -> dict[str, int]:
        """Flows each bridge holds now (aggregate stats over all tables)."""
        return self._run(self._flow_counts(list(self._bridges.values())), timeout)

    def wait_flow_count(
        self, targets: Mapping[str, int], timeout: float, interval: float = 0.005
    ) -> dict[str, float]:
        """Poll until bridge `name` holds `targets[name]` flows; return when each got there
        (arrival of the first reply showing the count). TimeoutError names the laggards."""
        return self._run(self._poll(targets, timeout, interval), timeout + 10)

    def _run(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- the loop's side -------------------------------------------------------
    def _next_xid(self) -> int:
        self._xid += 1
        return self._xid

    async def _connect_all(self) -> None:
        await asyncio.gather(*(self._connect(b) for b in self._bridges.values()))

    async def _connect(self, b: _Bridge) -> None:
        reader, writer = await asyncio.open_unix_connection(str(b.socket))
        b.writer = writer
        writer.write(of.message(of.OFP14, of.HELLO, self._next_xid()))
        messages = of.read_messages(reader)
        version, msg_type, _, _ = await anext(messages)
        if msg_type != of.HELLO or version < of.OFP14:
            raise RuntimeError(f"{b.name}: no OpenFlow 1.4 hello on {b.socket} ({version=})")
        self._loop.create_task(self._read(b, messages))
        if self._groups:
            writer.write(of.forward_group_mods(self._next_xid()))
            self._next_xid()
        if self._monitor:
            xid = self._next_xid()
            ack = self._loop.create_future()
            b.replies[xid] = ack
            writer.write(of.flow_monitor_request(xid, 1, of.FMF_ADD | of.FMF_REMOVED | of.FMF_MODIFY))
            await asyncio.wait_for(ack, 10)

    async def _read(self, b: _Bridge, messages) -> None:
        async for _version, msg_type, xid, body in messages:
            now = time.monotonic()
            if msg_type == of.ECHO_REQUEST:
                b.writer.write(of.message(of.OFP14, of.ECHO_REPLY, xid, body))
            elif msg_type == of.MULTIPART_REPLY:
                mp_type, flags = of.MULTIPART.unpack_from(body)
                if mp_type == of.MP_FLOW_MONITOR:
                    self._updates(b, now, memoryview(body)[of.MULTIPART.size :])
                if not flags & of.MPF_REPLY_MORE and xid in b.replies:
                    b.replies.pop(xid).set_result(body[of.MULTIPART.size :])
            elif msg_type == of.REQUESTFORWARD and body[1] == of.GROUP_MOD:
                (group_id,) = struct.unpack_from("!I", body, 12)  # after the inner header
                with self._changed:
                    b.group_mods.append((now, group_id))
                    self._notify(b)
            elif msg_type == of.ERROR:
                log.error("%s: OpenFlow error %r", b.name, body[:4].hex())
                if xid in b.replies:
                    b.replies.pop(xid).set_exception(RuntimeError(f"{b.name}: error {body[:4].hex()}"))

    def _updates(self, b: _Bridge, now: float, data: memoryview) -> None:
        added: list[tuple[float, int]] = []
        events: list[tuple[float, int, int]] = []
        offset = 0
        while offset + UPDATE_HEAD.size <= len(data):
            length, event = UPDATE_HEAD.unpack_from(data, offset)
            if length == 0:
                break
            if of.FME_ADDED <= event <= of.FME_MODIFIED:
                (cookie,) = COOKIE.unpack_from(data, offset + COOKIE_AT)
                events.append((now, event, cookie))
                if event == of.FME_ADDED:
                    added.append((now, cookie))
                elif event == of.FME_REMOVED:
                    b.removed += 1
            elif event == of.FME_PAUSED:
                b.paused += 1
                log.warning("%s: ovs-vswitchd paused the flow monitor", b.name)
            offset += length
        if events:
            with self._changed:
                b.added.extend(added)
                b.events.extend(events)
                self._notify(b)

    async def _count(self, b: _Bridge) -> int:
        xid = self._next_xid()
        fut = self._loop.create_future()
        b.replies[xid] = fut
        b.writer.write(of.aggregate_request(of.OFP14, xid))
        body = await fut
        return struct.unpack_from("!QQI", body)[2]

    async def _flow_counts(self, bridges: list[_Bridge]) -> dict[str, int]:
        counts = await asyncio.gather(*(self._count(b) for b in bridges))
        return {b.name: n for b, n in zip(bridges, counts, strict=True)}

    async def _poll(
        self, targets: Mapping[str, int], timeout: float, interval: float
    ) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        reached: dict[str, float] = {}
        counts: dict[str, int] = {}
        while True:
            pending = [self._bridges[n] for n in targets if n not in reached]
            counts = await self._flow_counts(pending)
            now = time.monotonic()
            for name, count in counts.items():
                if count >= targets[name]:
                    reached[name] = now
            if len(reached) == len(targets):
                return reached
            if now > deadline:
                short = {n: c for n, c in counts.items() if n not in reached}
                raise TimeoutError(
                    f"{len(short)} bridges short of their flow count after {timeout}s, "
                    f"e.g. {dict(list(short.items())[:5])}"
                )
            await asyncio.sleep(interval)
