"""Just enough OpenFlow 1.3/1.4 wire format for the benchmark's own switch-side tools.

Used by the flow observer (bench/observer.py) and the switch stand-in
(bench/standin.py). Constants and layouts are from the OpenFlow 1.4.0 spec;
only the messages those two tools send or answer are here.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

OFP13 = 0x04
OFP14 = 0x05

HELLO = 0
ERROR = 1
ECHO_REQUEST = 2
ECHO_REPLY = 3
EXPERIMENTER = 4
FEATURES_REQUEST = 5
FEATURES_REPLY = 6
GET_CONFIG_REQUEST = 7
GET_CONFIG_REPLY = 8
SET_CONFIG = 9
PACKET_OUT = 13
FLOW_MOD = 14
GROUP_MOD = 15
PORT_MOD = 16
TABLE_MOD = 17
MULTIPART_REQUEST = 18
MULTIPART_REPLY = 19
BARRIER_REQUEST = 20
BARRIER_REPLY = 21
ROLE_REQUEST = 24
ROLE_REPLY = 25
GET_ASYNC_REQUEST = 26
GET_ASYNC_REPLY = 27
SET_ASYNC = 28
METER_MOD = 29
REQUESTFORWARD = 32
BUNDLE_CONTROL = 33
BUNDLE_ADD_MESSAGE = 34

# multipart types
MP_DESC = 0
MP_FLOW = 1
MP_AGGREGATE = 2
MP_TABLE = 3
MP_PORT_DESC = 13
MP_FLOW_MONITOR = 16
MPF_REPLY_MORE = 1

# flow_mod commands
FC_ADD, FC_MODIFY, FC_MODIFY_STRICT, FC_DELETE, FC_DELETE_STRICT = range(5)

OFPP_ANY = 0xFFFFFFFF
OFPG_ANY = 0xFFFFFFFF
OFPTT_ALL = 0xFF

HEADER = struct.Struct("!BBHI")
MULTIPART = struct.Struct("!HH4x")  # type, flags (after the header)
EMPTY_MATCH = b"\x00\x01\x00\x04\x00\x00\x00\x00"  # OXM match with no fields, padded to 8


def message(version: int, msg_type: int, xid: int, body: bytes = b"") -> bytes:
    return HEADER.pack(version, msg_type, HEADER.size + len(body), xid) + body


def multipart_request(version: int, xid: int, mp_type: int, body: bytes) -> bytes:
    return message(version, MULTIPART_REQUEST, xid, MULTIPART.pack(mp_type, 0) + body)


def aggregate_request(version: int, xid: int) -> bytes:
    """All flows of all tables: reply body is packet_count, byte_count, flow_count."""
    body = struct.pack("!B3xII4xQQ", OFPTT_ALL, OFPP_ANY, OFPG_ANY, 0, 0) + EMPTY_MATCH
    return multipart_request(version, xid, MP_AGGREGATE, body)


def flow_monitor_request(xid: int, monitor_id: int, flags: int) -> bytes:
    """OpenFlow 1.4 flow monitor on every table; `flags` are OFPFMF_* bits."""
    body = struct.pack("!IIIHBB", monitor_id, OFPP_ANY, OFPG_ANY, flags, OFPTT_ALL, 0)
    return multipart_request(OFP14, xid, MP_FLOW_MONITOR, body + EMPTY_MATCH)


def forward_group_mods(xid: int) -> bytes:
    """Ask the switch to forward every group-mod (another controller's) to this connection:
    a nonzero miss_send_len (a service connection gets no asynchronous message without
    one) and OFPACPT_REQUESTFORWARD_MASTER = OFPRFR_GROUP_MOD."""
    return message(OFP14, SET_CONFIG, xid, struct.pack("!HH", 0, 128)) + message(
        OFP14, SET_ASYNC, xid + 1, struct.pack("!HHI", 11, 8, 1)
    )


FMF_INITIAL, FMF_ADD, FMF_REMOVED, FMF_MODIFY = 1, 2, 4, 8
FME_INITIAL, FME_ADDED, FME_REMOVED, FME_MODIFIED, FME_ABBREV, FME_PAUSED, FME_RESUMED = range(7)


async def read_messages(reader: asyncio.StreamReader) -> AsyncIterator[tuple[int, int, int, bytes]]:
    """(version, type, xid, body) of each message until the peer closes. (What the socket
    holds is read at once and split here, not awaited twice per message: the observer
    shares the cores with the switches and the controller it times.)"""
    buf = b""
    while True:
        try:
            chunk = await reader.read(1 << 16)
        except ConnectionError:
            return
        if not chunk:
            return
        buf = buf + chunk if buf else chunk
        offset = 0
        while len(buf) - offset >= HEADER.size:
            version, msg_type, length, xid = HEADER.unpack_from(buf, offset)
            if length < HEADER.size:
                raise ValueError(f"OpenFlow message of length {length}")
            if len(buf) - offset < length:
                break
            yield version, msg_type, xid, buf[offset + HEADER.size : offset + length]
            offset += length
        buf = buf[offset:]
