"""Structure checks on what a switch sends, before os-ken's parsers see it.

os-ken (like Ryu before it) walks the variable-length lists inside OpenFlow
messages with `offset += length` and trusts `length`: an element, entry,
instruction, action or property of length 0 makes that loop spin forever on
the hub, and one such message from any peer that reaches the controller port
stops every switch's session (found by tests/test_controller_fuzz.py: a hello
element of length 0). So each message is checked first, against the layout
vxflow's peers (Open vSwitch, OpenFlow 1.4) send: message types the controller
never asks for are refused, and every list in the ones it does is walked here
with bounds. A message that fails is logged, counted and its peer disconnected;
`install()` puts the check in front of os-ken's parser of every version.

A message that passes goes to the controller's `Receive` first (`install`'s
argument): what it takes never becomes an os-ken message object and event
(see `controller.app`).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator
from typing import Any

from controller import metrics
from controller.ofwire import pad8

log = logging.getLogger("controller")

OF14 = 5
HELLO, ERROR, ECHO_REQUEST, ECHO_REPLY, EXPERIMENTER = 0, 1, 2, 3, 4
FEATURES_REPLY, GET_CONFIG_REPLY, PACKET_IN, FLOW_REMOVED, PORT_STATUS = 6, 8, 10, 11, 12
MULTIPART_REPLY, BARRIER_REPLY, ROLE_REPLY, GET_ASYNC_REPLY = 19, 21, 25, 27
ROLE_STATUS, BUNDLE_CONTROL = 30, 33
MP_DESC, MP_FLOW, MP_GROUP_DESC, MP_PORT_DESC, MP_FLOW_MONITOR = 0, 1, 7, 13, 16
FLOW_UPDATE_FULL_SIZE = 24  # ofp_flow_update_full before its match (controller/monitor.py)
# what a switch sends a vxflow controller; fixed layouts need no walk
_EXPECTED = {HELLO, ERROR, ECHO_REQUEST, ECHO_REPLY, EXPERIMENTER, FEATURES_REPLY,
             GET_CONFIG_REPLY, PACKET_IN, FLOW_REMOVED, PORT_STATUS, MULTIPART_REPLY,
             BARRIER_REPLY, ROLE_REPLY, GET_ASYNC_REPLY, ROLE_STATUS, BUNDLE_CONTROL}  # fmt: skip
# the fixed part of each (OpenFlow 1.4's structs; ERROR's in every version): os-ken and the
# controller's own decoders read it without looking at the message's length
_MIN_SIZE = {ERROR: 12, FEATURES_REPLY: 32, GET_CONFIG_REPLY: 12, PACKET_IN: 34,
             FLOW_REMOVED: 56, PORT_STATUS: 56, MULTIPART_REPLY: 16, ROLE_REPLY: 24,
             ROLE_STATUS: 24, BUNDLE_CONTROL: 16, EXPERIMENTER: 16}  # fmt: skip
_U16 = struct.Struct("!H")
PORT_SIZE = 40  # ofp_port before its properties
FLOW_STATS_SIZE = 48  # ofp_flow_stats before its match
GROUP_DESC_SIZE = 8  # ofp_group_desc before its buckets
BUCKET_SIZE = 16  # ofp_bucket before its actions
NX_VENDOR, NXAST_CT, CT_SIZE = 0x2320, 35, 24  # ct nests actions after its 24 bytes


class Malformed(ValueError):
    pass


def records(buf: bytes, start: int, end: int, len_at: int, min_len: int, what: str) -> Iterator[
    tuple[int, int]
]:
    """(offset, length) of each record of a list whose u16 length sits `len_at` bytes in;
    every length at least `min_len` and the last ending exactly at `end`."""
    pos = start
    while pos < end:
        if pos + len_at + 2 > end:
            raise Malformed(f"{what} at {pos} truncated")
        (length,) = _U16.unpack_from(buf, pos + len_at)
        if length < min_len or pos + length > end:
            raise Malformed(f"{what} at {pos} has length {length}")
        yield pos, length
        pos += length


def _match_end(buf: bytes, pos: int, end: int) -> int:
    """Where the instructions begin after an ofp_match at `pos`."""
    if pos + 4 > end:
        raise Malformed("match truncated")
    (length,) = _U16.unpack_from(buf, pos + 2)
    if length < 4 or pos + pad8(length) > end:
        raise Malformed(f"match has length {length}")
    return pos + pad8(length)


def _flow_stats(buf: bytes, start: int, end: int) -> None:
    for pos, length in records(buf, start, end, 0, FLOW_STATS_SIZE + 8, "flow stats entry"):
        _instructions(buf, _match_end(buf, pos + FLOW_STATS_SIZE, pos + length), pos + length)


def _instructions(buf: bytes, start: int, end: int) -> None:
    for ipos, ilen in records(buf, start, end, 2, 8, "instruction"):
        (itype,) = _U16.unpack_from(buf, ipos)
        if itype in (3, 4, 5):  # write/apply/clear actions: a list of actions
            _actions(buf, ipos + 8, ipos + ilen)


def _actions(buf: bytes, start: int, end: int) -> None:
    """A list of actions, and the actions a ct action nests (os-ken walks those too)."""
    for pos, length in records(buf, start, end, 2, 8, "action"):
        (atype,) = _U16.unpack_from(buf, pos)
        if atype == 0xFFFF and length >= CT_SIZE:
            vendor, subtype = struct.unpack_from("!IH", buf, pos + 4)
            if (vendor, subtype) == (NX_VENDOR, NXAST_CT):
                _actions(buf, pos + CT_SIZE, pos + length)


def _group_desc(buf: bytes, start: int, end: int) -> None:
    for pos, length in records(buf, start, end, 0, GROUP_DESC_SIZE, "group desc entry"):
        for bpos, blen in records(buf, pos + GROUP_DESC_SIZE, pos + length, 0, BUCKET_SIZE, "bucket"):
            _actions(buf, bpos + BUCKET_SIZE, bpos + blen)


def _flow_updates(buf: bytes, start: int, end: int) -> None:
    """A flow monitor's updates: full ones (events 0-3) carry a match and instructions."""
    for pos, length in records(buf, start, end, 0, 8, "flow update"):
        (event,) = _U16.unpack_from(buf, pos + 2)
        if event <= 3:
            if length < FLOW_UPDATE_FULL_SIZE + 8:
                raise Malformed(f"flow update at {pos} has length {length}")
            inst_start = _match_end(buf, pos + FLOW_UPDATE_FULL_SIZE, pos + length)
            _instructions(buf, inst_start, pos + length)


def _ports(buf: bytes, start: int, end: int) -> None:
    for pos, length in records(buf, start, end, 4, PORT_SIZE, "port"):
        for _ in records(buf, pos + PORT_SIZE, pos + length, 2, 4, "port property"):
            pass


def problem(version: int, msg_type: int, buf: bytes) -> str | None:
    """Why this message must not reach os-ken's parser (None: it may)."""
    try:
        if msg_type == HELLO:
            for _ in records(buf, 8, len(buf), 2, 4, "hello element"):
                pass
            return None
        if version != OF14 and msg_type != ERROR:
            return f"OpenFlow version {version} after the hello"
        if msg_type not in _EXPECTED:
            return f"message type {msg_type}, which vxflow never asks a switch for"
        if len(buf) < _MIN_SIZE.get(msg_type, 8):
            raise Malformed(f"{len(buf)} bytes, shorter than its fixed part ({_MIN_SIZE[msg_type]})")
        if msg_type == MULTIPART_REPLY:
            (mp_type,) = _U16.unpack_from(buf, 8)
            if mp_type == MP_FLOW:
                _flow_stats(buf, 16, len(buf))
            elif mp_type == MP_PORT_DESC:
                _ports(buf, 16, len(buf))
            elif mp_type == MP_GROUP_DESC:
                _group_desc(buf, 16, len(buf))
            elif mp_type == MP_FLOW_MONITOR:
                _flow_updates(buf, 16, len(buf))
            elif mp_type != MP_DESC:
                return f"multipart reply of type {mp_type}, which vxflow never asks for"
        elif msg_type == PORT_STATUS:
            _ports(buf, 16, len(buf))
        elif msg_type in (ROLE_STATUS, GET_ASYNC_REPLY, BUNDLE_CONTROL):
            fixed = {ROLE_STATUS: 24, GET_ASYNC_REPLY: 8, BUNDLE_CONTROL: 16}[msg_type]
            for _ in records(buf, fixed, len(buf), 2, 4, "property"):
                pass
    except Malformed as exc:
        return str(exc)
    return None


# (datapath, message type, xid, whole message) -> taken; OpenFlow 1.4 messages only
Receive = Callable[[Any, int, int, bytes], bool]
_receive: Receive | None = None


def _guarded(original):
    def parse(datapath, version, msg_type, msg_len, xid, buf):
        data = bytes(buf[:msg_len])
        why = problem(version, msg_type, data)
        if why is None:
            if _receive is not None and version == OF14 and _receive(datapath, msg_type, xid, data):
                return None  # os-ken's receive loop makes no event of None
            return original(datapath, version, msg_type, msg_len, xid, buf)
        metrics.REFUSED.labels("malformed").inc()
        log.warning(
            "OpenFlow peer %s sent a malformed message (type %d, %d bytes: %s); disconnecting",
            datapath.address, msg_type, msg_len, why,
        )  # fmt: skip
        datapath.close()
        return None

    parse.vxflow_guarded = True
    return parse


def install(receive: Receive | None = None) -> None:
    """Put `problem` in front of os-ken's parser of every OpenFlow version (idempotent),
    then `receive` (one per process: the controller's)."""
    from os_ken.ofproto import ofproto_parser

    global _receive
    _receive = receive

    for version, original in list(ofproto_parser._MSG_PARSERS.items()):
        if not getattr(original, "vxflow_guarded", False):
            ofproto_parser.register_msg_parser(version)(_guarded(original))
