"""A minimal OpenFlow 1.3/1.4 switch stand-in, for cold starts beyond what real OVS holds here.

NOT Open vSwitch: it answers what a controller needs to program a table —
hello, features, port-desc/desc/flow-stats/group-desc/aggregate/flow-monitor
multiparts, echo, role, get-config, flow-mods (add, modify, strict and whole-table
deletes), group-mods, bundles (open/add/commit/discard/close) and barriers —
keeps each flow as the opaque flow_mod bytes that put it there and the
groups as their group-desc entries, and does no packet
processing. Results from it are labelled "stand-in" wherever they appear.

Many stand-ins share one asyncio loop in a child process, or are dealt over a
few such processes (`StandInFleet`, `procs`), as each switch of a real cluster
is a machine of its own; each records when it first answered a barrier while
holding its expected number of flows.

Cheap per flow, since at 1,000 stand-ins x 20,000 flows their process, not the
controller, was what a cold start measured: a flow is held as the flow_mod that
put it there (one bytes object: cookie, match and instructions stay where the
controller wrote them) under its match, in a dict per (table, priority, match
length); a run of bundle adds is framed on arrival in one tight loop and
applied at the commit in another. Nothing is decoded that the table does not need, yet every flow is held
as sent: a readback returns it, and a strict delete or a cookie-masked one
finds it.

A stand-in whose connection is lost (the controller dropped it: its handshake
deadline or its echo probe missed while this one process, serving a thousand,
lagged) connects again as a switch does (OVS's rconn): after BACKOFF_MIN seconds,
doubling up to BACKOFF_MAX while connecting fails, keeping its table and groups (an
uncommitted bundle dies with the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from bench import ofwire as of

log = logging.getLogger(__name__)

FLOW_MOD = struct.Struct("!QQBBHHHIIIHH")  # after the header; match follows
FLOW_MOD_KEY = struct.Struct("!QQBB4xH18xH")  # cookie, mask, table, command, priority, match len
FLOW_KEY = struct.Struct("!24xBx4xH18xH")  # a flow_mod's table, priority and match length
MATCH_AT = 48  # where a flow_mod's match starts (its instructions follow it, padded to 8)
FLOW_STATS = struct.Struct("!HBxIIHHHHH2xQQQ")
FEATURES = struct.Struct("!QIBB2xII")
BUNDLE_CTRL = struct.Struct("!IHH")
BUNDLE_ADD = struct.Struct("!I6xH")  # bundle id, the inner message's length
TYPE_LENGTH = struct.Struct("!xBH")
OFPET_BAD_REQUEST, OFPBRC_BAD_TYPE, OFPBRC_BAD_LEN, OFPBRC_BAD_MULTIPART = 1, 1, 6, 2
OFPET_FLOW_MOD_FAILED, OFPFMFC_UNKNOWN = 5, 0
OFPP_LOCAL = 0xFFFFFFFE
MAX_REPLY = 0xFF00
SILENT = {of.SET_CONFIG, of.SET_ASYNC, of.PACKET_OUT, of.TABLE_MOD, of.PORT_MOD,
          of.METER_MOD, of.ECHO_REPLY, of.EXPERIMENTER, of.HELLO}  # fmt: skip
GROUP_MOD = struct.Struct("!HBxI")  # command, type, pad, group_id
GROUP_DESC = struct.Struct("!HBxI")  # length, type, pad, group_id
MP_GROUP_DESC = 7
BACKOFF_MIN, BACKOFF_MAX = 1.0, 8.0  # seconds before connecting again (OVS's defaults)

Flows = dict[bytes, bytes]  # match (as sent, padded) -> the flow_mod that holds the flow
Refused = list[tuple[str, bytes]]  # why, and the message


def _pad8(n: int) -> int:
    return (n + 7) // 8 * 8


def _instructions_at(msg: bytes) -> int:
    """Where a flow_mod's instructions start: after its match, padded to 8."""
    return MATCH_AT + ((((msg[MATCH_AT + 2] << 8) | msg[MATCH_AT + 3]) + 7) & ~7)


def _cookie(msg: bytes) -> int:
    return int.from_bytes(msg[8:16], "big")


def held_flow(table_id: int, priority: int, match: bytes, cookie: int,
              instructions: bytes = b"") -> bytes:  # fmt: skip
    """A flow as a stand-in holds it (the add flow_mod that put it there), e.g. to fill a
    table by hand; `match` is an OXM match with its header, padded to 8."""
    return flow_mod(of.FC_ADD, table_id, priority, match, cookie, instructions)


def flow_mod(command: int, table_id: int, priority: int, match: bytes, cookie: int,
             instructions: bytes = b"", cookie_mask: int = 0) -> bytes:  # fmt: skip
    """An OFPT_FLOW_MOD (OpenFlow 1.4)."""
    body = FLOW_MOD.pack(cookie, cookie_mask, table_id, command, 0, 0, priority, 0xFFFFFFFF,
                         of.OFPP_ANY, of.OFPG_ANY, 0, 0)  # fmt: skip
    return of.message(of.OFP14, of.FLOW_MOD, 0, body + match + instructions)


@dataclass
class SwitchState:
    dpid: int
    expected: int
    # (table id, priority, match length) -> its flows (a finer split than the flows'
    # identity, which the match's length is part of); `flow_count` is what it holds
    table: dict[tuple[int, int, int], Flows] = field(default_factory=dict)
    groups: dict[int, bytes] = field(default_factory=dict)  # group id -> group-desc entry
    bundles: dict[int, list[bytes]] = field(default_factory=dict)  # id -> inner messages
    flow_mods: int = 0
    messages: Counter = field(default_factory=Counter)
    unsupported: Counter = field(default_factory=Counter)
    connected_at: float | None = None
    reconnects: int = 0  # connections made again after one was lost
    converged_at: float | None = None
    barriers: list[tuple[float, int]] = field(default_factory=list)  # (answered at, table size)
    target: int | None = None  # a watched table size (`watch`)...
    reached_at: float | None = None  # ...and the first barrier answered while holding it
    _below: int = 0  # how many of the first barriers held fewer flows than `target`
    reached: Callable[[SwitchState], None] | None = None  # told when `reached_at` is set

    def barrier(self, now: float) -> None:
        """A barrier answered `now`, holding the table as it is."""
        size = self.flow_count()
        if self.converged_at is None and size >= self.expected:
            self.converged_at = now
        self.barriers.append((now, size))
        if self.reached_at is None and self.target is not None and size >= self.target:
            self.reached_at = now
            if self.reached is not None:
                self.reached(self)

    def flow_count(self) -> int:
        return sum(map(len, self.table.values()))

    def hold(self, msg: bytes) -> None:
        """Hold the flow of add flow_mod `msg` (replacing one of the same table,
        priority and match)."""
        key = FLOW_KEY.unpack_from(msg)
        flows = self.table.get(key)
        if flows is None:
            flows = self.table[key] = {}
        flows[msg[MATCH_AT : MATCH_AT + _pad8(key[2])]] = msg

    def held(self) -> list[tuple[int, int, bytes, bytes]]:
        """(table id, priority, match, flow_mod) of every flow held."""
        return [(t, p, m, msg) for (t, p, _), flows in self.table.items()
                for m, msg in flows.items()]  # fmt: skip

    def flow_mod(self, msg: bytes) -> bool:
        """Apply one flow_mod as a switch does (counted); False (nothing done) for a
        non-strict command with a match, which would need a real classifier."""
        cookie, mask, table_id, command, priority, match_len = FLOW_MOD_KEY.unpack_from(msg, 8)
        self.flow_mods += 1
        match = msg[MATCH_AT : MATCH_AT + _pad8(match_len)]
        if command in (of.FC_ADD, of.FC_MODIFY_STRICT):
            self.hold(msg)
        elif command == of.FC_DELETE_STRICT:
            flows = self.table.get((table_id, priority, match_len), {})
            held = flows.get(match)
            if held is not None and (_cookie(held) ^ cookie) & mask == 0:
                del flows[match]
        elif command in (of.FC_DELETE, of.FC_MODIFY) and match == of.EMPTY_MATCH:
            instructions = msg[MATCH_AT + len(match) :]
            for (t, _, _), flows in self.table.items():
                if table_id not in (of.OFPTT_ALL, t):
                    continue
                for m in [m for m, held in flows.items() if (_cookie(held) ^ cookie) & mask == 0]:
                    if command == of.FC_DELETE:
                        del flows[m]
                    else:  # new instructions, the cookie kept
                        flows[m] = flows[m][: _instructions_at(flows[m])] + instructions
        else:
            return False
        return True

    def group_mod(self, msg: bytes) -> None:
        """Add, modify or delete one group (the entry the switch then reports back)."""
        command, gtype, group_id = GROUP_MOD.unpack_from(msg, 8)
        if command == 2:  # OFPGC_DELETE
            self.groups.pop(group_id, None)
        else:
            buckets = msg[16:]
            self.groups[group_id] = GROUP_DESC.pack(8 + len(buckets), gtype, group_id) + buckets

    def apply(self, msgs: list[bytes]) -> Refused:
        """Apply flow and group mods in order (a committed bundle's, or one as it came);
        those not applied, and why. Adds (a cold start's whole table) take a tight loop of
        their own: with `StandInSwitch.bundled`, this is where a stand-in spends its time."""
        table, refused, adds, key_of = self.table, [], 0, FLOW_KEY.unpack_from
        for msg in msgs:
            try:
                if msg[1] == of.FLOW_MOD and msg[25] == of.FC_ADD:  # `hold`, inlined
                    key = key_of(msg)
                    flows = table.get(key)
                    if flows is None:
                        flows = table[key] = {}
                    flows[msg[MATCH_AT : MATCH_AT + ((key[2] + 7) & ~7)]] = msg
                    adds += 1
                elif msg[1] == of.FLOW_MOD:
                    if not self.flow_mod(msg):
                        refused.append((f"flow_mod command {msg[25]} with a match", msg))
                elif msg[1] == of.GROUP_MOD:
                    self.group_mod(msg)
                else:
                    refused.append((f"bundled type {msg[1]}", msg))
            except (IndexError, struct.error):
                refused.append(("message shorter than its kind", msg))
        self.flow_mods += adds
        return refused

    def watch(self, size: int) -> None:
        """Note the first barrier answered while holding >= `size` flows (maybe one already
        answered); later barriers are checked as they are answered, not rescanned. A target
        at least the last one's skips the barriers already found below that one: a run of
        new leases scans each barrier about once, not the whole history per lease."""
        if self.target is None or size < self.target:
            self._below = 0
        self.target = size
        self.reached_at = None
        for i in range(self._below, len(self.barriers)):
            if self.barriers[i][1] >= size:
                self.reached_at = self.barriers[i][0]
                break
            self._below = i + 1


class StandInSwitch(asyncio.Protocol):
    """One switch connection: frames whole messages out of the stream and answers them."""

    def __init__(self, state: SwitchState, ports: list[tuple[int, str]],
                 lost: Callable[[], None] = lambda: None) -> None:  # fmt: skip
        self.s = state
        self.ports = ports
        self.version = of.OFP14
        self.rest = b""  # the start of a message not yet whole
        self.transport: asyncio.Transport | None = None
        self.lost = lost

    # -- stream ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        if self.s.connected_at is None:
            self.s.connected_at = time.monotonic()
        transport.write(of.message(of.OFP14, of.HELLO, 1))

    def connection_lost(self, exc: Exception | None) -> None:
        self.s.bundles.clear()
        self.lost()

    def data_received(self, data: bytes) -> None:
        """Whole messages framed out of the stream, in order: runs of bundle adds (a
        cold start's bulk) to `bundled`, every other message to `handle`."""
        if self.rest:
            data = self.rest + data
        pos, end = 0, len(data)
        while end - pos >= 8:
            msg_type, length = TYPE_LENGTH.unpack_from(data, pos)
            if length < 8:  # no way to find the next message: as a switch does, hang up
                self.s.unsupported["message shorter than its header"] += 1
                self.send(of.ERROR, 0, struct.pack("!HH", OFPET_BAD_REQUEST, OFPBRC_BAD_LEN)
                          + data[pos : pos + 64])  # fmt: skip
                self.transport.close()
                self.rest = b""
                return
            if end - pos < length:
                break
            if msg_type == of.BUNDLE_ADD_MESSAGE and length >= 20:
                pos = self.bundled(data, pos, end)
            else:
                self.handle(data[pos : pos + length])
                pos += length
        self.rest = data[pos:]

    def bundled(self, data: bytes, pos: int, end: int) -> int:
        """Keep the inner message of each whole bundle add from `pos` on, to the same
        bundle, for its commit (framed only: this loop and `SwitchState.apply` are what
        a stand-in spends its time on); where the run ends."""
        bundle_id, inner_len = BUNDLE_ADD.unpack_from(data, pos + 8)
        bundle = self.s.bundles.setdefault(bundle_id, [])
        append, before = bundle.append, len(bundle)
        length = (data[pos + 2] << 8) | data[pos + 3]
        while inner_len <= length - 16:
            append(data[pos + 16 : pos + 16 + inner_len])
            pos += length
            if end - pos < 20 or data[pos + 1] != of.BUNDLE_ADD_MESSAGE:
                break
            length = (data[pos + 2] << 8) | data[pos + 3]
            if end - pos < length or length < 20:
                break
            next_id, inner_len = BUNDLE_ADD.unpack_from(data, pos + 8)
            if next_id != bundle_id:
                break
        else:  # an inner message longer than the add that carries it
            self.refuse("bundle add shorter than its inner message", data[pos : pos + length])
            pos += length
        self.s.messages[of.BUNDLE_ADD_MESSAGE] += len(bundle) - before
        return pos

    def send(self, msg_type: int, xid: int, body: bytes = b"") -> None:
        self.transport.write(of.message(self.version, msg_type, xid, body))

    # -- messages -------------------------------------------------------------
    def handle(self, msg: bytes) -> None:
        version, msg_type, _, xid = of.HEADER.unpack_from(msg)
        self.s.messages[msg_type] += 1
        if msg_type in (of.FLOW_MOD, of.GROUP_MOD):
            for why, refused in self.s.apply([msg]):
                self.refuse(why, refused)
        elif msg_type == of.BARRIER_REQUEST:
            self.s.barrier(time.monotonic())
            self.send(of.BARRIER_REPLY, xid)
        elif msg_type == of.BUNDLE_CONTROL:
            self.bundle_control(xid, msg)
        elif msg_type == of.MULTIPART_REQUEST:
            self.multipart(xid, msg)
        elif msg_type == of.BUNDLE_ADD_MESSAGE:  # (`bundled` takes the whole ones)
            self.refuse("bundle add shorter than its kind", msg)
        elif msg_type == of.ECHO_REQUEST:
            self.send(of.ECHO_REPLY, xid, msg[8:])
        elif msg_type == of.FEATURES_REQUEST:
            self.send(of.FEATURES_REPLY, xid, FEATURES.pack(self.s.dpid, 0, 254, 0, 0x4F, 0))
        elif msg_type == of.HELLO:
            self.version = min(version, of.OFP14)
        elif msg_type == of.ROLE_REQUEST:
            self.send(of.ROLE_REPLY, xid, msg[8:])
        elif msg_type == of.GET_CONFIG_REQUEST:
            self.send(of.GET_CONFIG_REPLY, xid, struct.pack("!HH", 0, 0xFFFF))
        elif msg_type == of.GET_ASYNC_REQUEST and self.version == of.OFP13:
            self.send(of.GET_ASYNC_REPLY, xid, bytes(24))
        elif msg_type not in SILENT:
            self.s.unsupported[f"type {msg_type}"] += 1
            self.send(of.ERROR, xid, struct.pack("!HH", OFPET_BAD_REQUEST, OFPBRC_BAD_TYPE) + msg[:64])

    def refuse(self, why: str, msg: bytes) -> None:
        """Count, and answer with an error, a message (maybe bundled) not applied."""
        self.s.unsupported[why] += 1
        if msg[1:2] == bytes([of.FLOW_MOD]) and len(msg) >= MATCH_AT:
            error = (OFPET_FLOW_MOD_FAILED, OFPFMFC_UNKNOWN)
        else:
            error = (OFPET_BAD_REQUEST, OFPBRC_BAD_LEN if "shorter" in why else OFPBRC_BAD_TYPE)
        self.send(of.ERROR, 0, struct.pack("!HH", *error) + msg[:64])

    def bundle_control(self, xid: int, msg: bytes) -> None:
        bundle_id, ctrl, flags = BUNDLE_CTRL.unpack_from(msg, 8)
        if ctrl == 4:  # commit
            for why, refused in self.s.apply(self.s.bundles.pop(bundle_id, [])):
                self.refuse(why, refused)
        elif ctrl == 6:  # discard
            self.s.bundles.pop(bundle_id, None)
        elif ctrl == 0:  # open
            self.s.bundles[bundle_id] = []
        self.send(of.BUNDLE_CONTROL, xid, BUNDLE_CTRL.pack(bundle_id, ctrl + 1, flags))

    def multipart(self, xid: int, msg: bytes) -> None:
        mp_type = (msg[8] << 8) | msg[9]
        if mp_type == of.MP_PORT_DESC:
            self.replies(xid, mp_type, [self.port(no, name) for no, name in self.ports])
        elif mp_type == of.MP_DESC:
            desc = struct.pack("!256s256s256s32s256s", b"vxflow bench", b"stand-in",
                               b"bench/standin.py", b"0", b"OpenFlow switch stand-in")  # fmt: skip
            self.replies(xid, mp_type, [desc])
        elif mp_type == of.MP_FLOW:
            self.replies(xid, mp_type, [self.flow_stats(*flow) for flow in self.s.held()])
        elif mp_type == MP_GROUP_DESC:
            self.replies(xid, mp_type, list(self.s.groups.values()))
        elif mp_type == of.MP_AGGREGATE:
            self.replies(xid, mp_type, [struct.pack("!QQI4x", 0, 0, self.s.flow_count())])
        elif mp_type == of.MP_FLOW_MONITOR:
            # the monitor is set up (no initial listing asked for); nobody else ever changes
            # a stand-in's table, so it never reports anything after
            self.replies(xid, mp_type, [])
        else:
            self.s.unsupported[f"multipart {mp_type}"] += 1
            self.send(of.ERROR, xid, struct.pack("!HH", OFPET_BAD_REQUEST, OFPBRC_BAD_MULTIPART) + msg[:64])

    def replies(self, xid: int, mp_type: int, entries: list[bytes]) -> None:
        """Entries split over as many replies as needed, REPLY_MORE on all but the last."""
        chunks: list[list[bytes]] = [[]]
        size = 0
        for e in entries:
            if size + len(e) > MAX_REPLY and chunks[-1]:
                chunks.append([])
                size = 0
            chunks[-1].append(e)
            size += len(e)
        for i, chunk in enumerate(chunks):
            more = of.MPF_REPLY_MORE if i < len(chunks) - 1 else 0
            self.send(of.MULTIPART_REPLY, xid, of.MULTIPART.pack(mp_type, more) + b"".join(chunk))

    def port(self, no: int, name: str) -> bytes:
        mac = bytes([0x0E, 0x76, 0, 0, (no >> 8) & 0xFF, no & 0xFF])
        if self.version == of.OFP13:
            return struct.pack("!I4x6s2x16sIIIIIIII", no, mac, name.encode(), 0, 4, 0, 0, 0, 0, 0, 0)
        eth_prop = struct.pack("!HH4xIIIIII", 0, 32, 0, 0, 0, 0, 0, 0)
        return struct.pack("!IH2x6s2x16sII", no, 40 + len(eth_prop), mac, name.encode(), 0, 4) + eth_prop

    @staticmethod
    def flow_stats(table_id: int, priority: int, match: bytes, msg: bytes) -> bytes:
        instructions = msg[_instructions_at(msg) :]
        length = FLOW_STATS.size + len(match) + len(instructions)
        head = FLOW_STATS.pack(length, table_id, 0, 0, priority, 0, 0, 0, 0, _cookie(msg), 0, 0)
        return head + match + instructions


# -- a fleet in a child process -----------------------------------------------
def _report(states: dict[int, SwitchState]) -> dict[int, dict[str, Any]]:
    return {
        d: {"converged_at": s.converged_at, "connected_at": s.connected_at, "flows": s.flow_count(),
            "flow_mods": s.flow_mods, "messages": dict(s.messages),
            "unsupported": dict(s.unsupported), "reconnects": s.reconnects}
        for d, s in states.items()
    }  # fmt: skip


class _Link:
    """One stand-in's connection to the controller, made again when lost (see the module
    doc) until `close`."""

    def __init__(self, state: SwitchState, ports: list[tuple[int, str]], host: str,
                 port: int) -> None:  # fmt: skip
        self.state, self.ports, self.host, self.port = state, ports, host, port
        self.transport: asyncio.BaseTransport | None = None
        self.closed = False

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_connection(
            lambda: StandInSwitch(self.state, self.ports, self._lost), self.host, self.port
        )

    def _lost(self) -> None:
        self.transport = None
        if not self.closed:
            asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = BACKOFF_MIN
        while not self.closed:
            await asyncio.sleep(delay)
            if self.closed:
                return
            try:
                await self.connect()
            except OSError:
                delay = min(2 * delay, BACKOFF_MAX)
                continue
            self.state.reconnects += 1
            return

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Watch:
    """The stand-ins of a child watched for a table size (`SwitchState.watch`): the parent
    is told when each reached it as soon as the last one did, not polled for it."""

    def __init__(self, conn: Connection, states: dict[int, SwitchState]) -> None:
        self.conn, self.states = conn, states
        self.watched: list[int] = []
        self.short: set[int] = set()
        for state in states.values():
            state.reached = self._reached

    def start(self, targets: dict[int, int]) -> None:
        for d, size in targets.items():
            self.states[d].watch(size)
        self.watched = list(targets)
        self.short = {d for d in targets if self.states[d].reached_at is None}
        if not self.short:
            self._tell()

    def _reached(self, state: SwitchState) -> None:
        if state.dpid in self.short:
            self.short.discard(state.dpid)
            if not self.short:
                self._tell()

    def _tell(self) -> None:
        self.conn.send(("reached", {d: self.states[d].reached_at for d in self.watched}))


def _fleet_main(conn: Connection, host: str, port: int, expected: dict[int, int],
                ports: list[tuple[int, str]]) -> None:  # fmt: skip
    """Child: wait for "go", connect every switch, then answer "status", "watch" (when
    the watched ones all reached their table) and "short" until "stop"."""
    states = {d: SwitchState(d, n) for d, n in expected.items()}
    watch = _Watch(conn, states)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # "go"
        started = time.monotonic()
        links = [_Link(s, ports, host, port) for s in states.values()]
        conns = await asyncio.gather(*(link.connect() for link in links), return_exceptions=True)
        failed = [repr(c) for c in conns if isinstance(c, BaseException)]
        conn.send({"started": started, "connect_failures": failed})
        while (cmd := await loop.run_in_executor(None, conn.recv)) != "stop":
            if cmd == "status":
                done = [s.converged_at for s in states.values() if s.converged_at is not None]
                conn.send({"converged": len(done), "last": max(done, default=None),
                           "reconnects": sum(s.reconnects for s in states.values())})  # fmt: skip
            elif cmd[0] == "watch":  # {dpid: size}; answered by `watch` when all reached it
                watch.start(cmd[1])
            else:  # "short": how many watched ones have not reached their table yet
                conn.send(("short", len(watch.short)))
        for link in links:
            link.close()
        await asyncio.sleep(0)

    asyncio.run(run())
    conn.send(_report(states))


class _Share:
    """One child process serving some of a fleet's stand-ins, and the pipe to it."""

    def __init__(self, host: str, port: int, expected: dict[int, int],
                 ports: list[tuple[int, str]]) -> None:  # fmt: skip
        self.dpids = set(expected)
        self._args = (host, port, expected, ports)
        self.conn: Connection | None = None
        self.proc: mp.process.BaseProcess | None = None

    def start(self) -> None:
        """Fork the child. The pipe is made here, not before: a child forked earlier must
        not hold this one's end, or this one's exit would never read as an EOF."""
        self.conn, child = mp.Pipe()
        self.proc = mp.get_context("fork").Process(target=_fleet_main, args=(child, *self._args),
                                                   daemon=True)  # fmt: skip
        self.proc.start()
        child.close()  # the child's alone now: its exit is this end's EOF

    def ask(self, msg: Any) -> None:
        try:
            self.conn.send(msg)
        except OSError:
            raise self._died() from None

    def answer(self, timeout: float | None = None) -> Any:
        """The child's answer to the last `ask` (None if there is none after `timeout` s);
        RuntimeError naming the child if it died."""
        try:
            if timeout is not None and not self.conn.poll(timeout):
                return None
            return self.conn.recv()
        except (EOFError, OSError):
            raise self._died() from None

    def short(self) -> int:
        """How many of its watched stand-ins have not reached their table (after a watch
        that timed out, whose late answer this passes over)."""
        self.ask(("short",))
        while (answer := self.answer())[0] != "short":
            pass
        return answer[1]

    def _died(self) -> RuntimeError:
        self.proc.join(1)
        return RuntimeError(f"stand-in process {self.proc.pid} died (exit code {self.proc.exitcode})")

    def stop(self, timeout: float) -> dict[int, dict[str, Any]]:
        """Its report, once the child took "stop" (`ask`ed) and exited; a child that does
        not answer in `timeout` s, or does not exit, is killed (by its PID)."""
        report: Any = None
        if self.proc is None:
            return {}
        try:  # (the report is the dict: a watch that timed out may have answered late)
            while not isinstance(report, dict) and self.conn.poll(timeout):
                report = self.conn.recv()
        except (EOFError, OSError):
            pass
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()
        return report if isinstance(report, dict) else {}


class StandInFleet:
    """Stand-in switches (one per dpid of `expected`) connecting to host:port from `procs`
    child processes, dealt round-robin (each of a real cluster's switches is a machine of
    its own; one process serving a thousand is a bound of the benchmark's, not of the
    controller's); `expected[dpid]` is the table size at which that switch counts as
    converged."""

    def __init__(self, host: str, port: int, expected: dict[int, int],
                 ports: list[tuple[int, str]], procs: int = 1) -> None:  # fmt: skip
        if procs < 1:
            raise ValueError(f"{procs} stand-in processes: at least one")
        items = list(expected.items())
        self._shares = [_Share(host, port, dict(items[i::procs]), ports)
                        for i in range(min(procs, len(items)))]  # fmt: skip
        self._n = len(expected)
        self.started: float | None = None

    @property
    def pids(self) -> list[int]:
        """The processes that serve the stand-ins (started), one per share."""
        return [share.proc.pid for share in self._shares if share.proc is not None]

    def start(self) -> StandInFleet:
        try:
            for share in self._shares:
                share.start()
        except BaseException:
            self.stop()
            raise
        return self

    def _ask_all(self, msg: Any) -> list[Any]:
        """`msg` to every child first (they work on it at once), then their answers."""
        for share in self._shares:
            share.ask(msg)
        return [share.answer() for share in self._shares]

    def go(self) -> dict[str, Any]:
        """Connect all switches at once; returns when every connect() returned. The clock
        starts when the first child got the word."""
        infos = self._ask_all("go")
        self.started = min(info["started"] for info in infos)
        return {"started": self.started,
                "connect_failures": [f for info in infos for f in info["connect_failures"]]}  # fmt: skip

    def wait_converged(self, timeout: float, interval: float = 0.02) -> float:
        """When the last switch converged (monotonic); TimeoutError with the count so far."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = self._ask_all("status")
            converged = sum(status["converged"] for status in statuses)
            if converged == self._n:
                return max(status["last"] for status in statuses)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{converged}/{self._n} stand-ins converged in {timeout}s")
            time.sleep(interval)

    def table_reached(self, targets: dict[int, int], timeout: float) -> dict[int, float]:
        """Per dpid, when it first answered a barrier while holding >= targets[dpid] flows.

        Each child checks each barrier as it answers it and answers this when the last of
        its watched ones reached its table: nothing is polled, nor is every switch's
        barrier history scanned (which, at 1,000 stand-ins, took most of the process that
        answers them, and so delayed the answers measured)."""
        deadline = time.monotonic() + timeout
        for share in self._shares:
            share.ask(("watch", {d: n for d, n in targets.items() if d in share.dpids}))
        reached: dict[int, float] = {}
        for share in self._shares:
            answer = share.answer(timeout=max(0.0, deadline - time.monotonic()))
            if answer is None:
                short = sum(share.short() for share in self._shares)
                raise TimeoutError(f"{short} stand-ins short of their table after {timeout}s")
            reached.update(answer[1])
        return reached

    def stop(self, timeout: float = 30) -> dict[int, dict[str, Any]]:
        """Disconnect all and end every child (killed by its PID if it does not exit);
        per dpid: converged_at, flows, flow_mods, messages, unsupported, reconnects."""
        for share in self._shares:
            if share.proc is not None and share.proc.is_alive():
                with contextlib.suppress(RuntimeError):
                    share.ask("stop")
        result: dict[int, dict[str, Any]] = {}
        for share in self._shares:
            result.update(share.stop(timeout))
        return result
