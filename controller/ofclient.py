"""A minimal blocking OpenFlow 1.4 client: read a switch's flows and groups (`vxflow flows diff`).

Talks to `unix:PATH` (ovs-vswitchd's per-bridge `.mgmt` socket) or `tcp:HOST:PORT`
(a switch's passive listener); the switch must allow OpenFlow 1.4.
"""

from __future__ import annotations

import socket
import struct

from controller import groups, ofwire
from flows.flow import Flow
from flows.groups import Group

OFPT_HELLO = 0


def _connect(target: str, timeout: float) -> socket.socket:
    kind, _, where = target.partition(":")
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: object = where
    elif kind == "tcp":
        host, _, port = where.rpartition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = (host, int(port))
    else:
        raise ValueError(f"switch target {target!r} is not unix:PATH or tcp:HOST:PORT")
    sock.settimeout(timeout)
    sock.connect(address)
    return sock


def _read_message(sock: socket.socket, buf: bytearray) -> tuple[int, int, int, bytes]:
    while True:
        if len(buf) >= 8:
            version, mtype, length, xid = struct.unpack_from("!BBHI", buf)
            if len(buf) >= length:
                msg = bytes(buf[:length])
                del buf[:length]
                return version, mtype, xid, msg
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("switch closed the connection")
        buf += chunk


def read_table(target: str, timeout: float = 10.0) -> tuple[list[Flow], list[Group]]:
    """Every flow in every table, and every group, of the switch at `target`."""
    with _connect(target, timeout) as sock:
        sock.sendall(struct.pack("!BBHI", ofwire.OFP_VERSION, OFPT_HELLO, 8, 1))
        sock.sendall(ofwire.encode_flow_stats_request(2) + groups.encode_group_desc_request(3))
        buf = bytearray()
        flows: list[Flow] = []
        found: list[Group] = []
        pending = {2, 3}
        while True:
            version, mtype, xid, msg = _read_message(sock, buf)
            if mtype == OFPT_HELLO and version < ofwire.OFP_VERSION:
                raise ConnectionError(
                    f"switch {target} does not speak OpenFlow 1.4 (offers version {version}); "
                    "add OpenFlow14 to the bridge's protocols"
                )
            if mtype == ofwire.OFPT_ECHO_REQUEST:
                sock.sendall(struct.pack("!BBHI", version, ofwire.OFPT_ECHO_REPLY, len(msg), xid) + msg[8:])
            elif mtype == ofwire.OFPT_ERROR:
                etype, code, _ = ofwire.decode_error(msg)
                raise ConnectionError(f"switch {target} answered with error type {etype} code {code}")
            elif mtype == ofwire.OFPT_MULTIPART_REPLY and xid in pending:
                _, more, body = ofwire.decode_multipart_reply(msg)
                if xid == 2:
                    flows.extend(ofwire.decode_flow_stats(body))
                else:
                    found.extend(groups.decode_group_desc(body))
                if not more:
                    pending.discard(xid)
                    if not pending:
                        return flows, found
