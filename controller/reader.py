"""One green thread reads every plain-TCP switch, instead of one per switch.

os-ken reads each switch in the switch's own green thread: a blocking recv of
the 8-byte header, then of the rest. At 1,000 switches a lease event brings
1,000 barrier replies, and each costs that thread two recv calls, eventlet
registering and unregistering its socket with the hub's epoll, and two
greenlet switches — more CPU than handling the reply. Here the sockets sit in
one epoll set of our own, registered once for the connection's life; one
thread waits on that set's descriptor (through the hub, so it yields like any
green thread), and each time it wakes it reads every ready socket once and
parses every whole message in what it read, as os-ken's `_recv_loop` does (its
parser, with `controller.wirecheck` in front, which hands the controller the
replies it acts on).

What os-ken makes an event of (the handshake, echoes, port status) is passed
to the connection's own green thread, which sends it to the observers and runs
the `ofp_event` brick's handlers as os-ken's loop would. Those handlers may
wait on that one switch (its send queue is full while it does not read): the
wait stays that switch's, never the reader's. A switch whose messages pile up
unhandled is not read until they drain, so TCP holds it back. When the stream
ends the connection's thread finishes as os-ken's does: its send and echo
loops are stopped and the datapath is closed. TLS sockets keep os-ken's loop:
their data sits in the TLS layer, where epoll cannot see it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from eventlet import patcher
from eventlet.hubs import trampoline
from eventlet.queue import LightQueue
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER
from os_ken.lib import hub
from os_ken.ofproto import ofproto_common, ofproto_parser

log = logging.getLogger("controller")

_select = patcher.original("select")
_socket = patcher.original("socket")  # the real socket class, under eventlet's green one
READ_SIZE = 65536  # per socket per round: one switch's flood waits for the others
CHECK_INTERVAL = 1.0  # seconds between looks for connections os-ken closed meanwhile
HEADER = ofproto_common.OFP_HEADER_SIZE
PENDING = 64  # messages a switch's own thread may have waiting before its socket is left unread
YIELD_EVERY = 2048  # messages parsed between the reader's turns of the hub (as os-ken's loop)
_END = object()  # the stream ended (or an exception, which ended it)


@dataclass(eq=False)
class _Connection:
    datapath: object
    sock: _socket.socket  # our own descriptor of the switch's socket (see SharedReader.serve)
    buf: bytearray = field(default_factory=bytearray)
    # os-ken messages for the connection's thread, then _END or the exception that ended it
    pending: LightQueue = field(default_factory=LightQueue)
    paused: bool = False  # left out of the epoll set until `pending` drains
    ended: bool = False
    watched: bool = False  # in the epoll set

    @property
    def fd(self) -> int:
        return self.sock.fileno()


class SharedReader:
    """The epoll set and the one thread that reads it; `serve` is each connection's part."""

    def __init__(self) -> None:
        self._epoll = _select.epoll()
        self._connections: dict[int, _Connection] = {}
        self._parsed = 0

    def takes(self, datapath) -> bool:
        """Plain TCP (an eventlet green socket over a real one); not TLS."""
        raw = getattr(datapath.socket, "fd", None)
        return type(raw) is _socket.socket

    def serve(self, datapath) -> None:
        """Hand `datapath`'s socket to the reading thread, and handle what it passes back
        until the stream ends (in the connection's own green thread, in place of os-ken's
        `_recv_loop`; an exception that ended the stream is raised here, as there).

        The epoll set holds a descriptor of our own (a dup): os-ken closes its socket
        while other threads still run, and a descriptor number closed under an epoll
        set and reused by the next switch would be read as the old one."""
        conn = _Connection(datapath, datapath.socket.fd.dup())
        try:
            conn.sock.setblocking(False)
            self._connections[conn.fd] = conn
            self._watch(conn, True)
            log.debug("OpenFlow peer %s is read by the shared reader", datapath.address)
            while (item := conn.pending.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                if conn.paused and conn.pending.qsize() <= PENDING // 2:
                    conn.paused = False
                    self._watch(conn, not conn.ended)
                _dispatch(datapath, item)
        finally:
            self._watch(conn, False)
            if self._connections.get(conn.fd) is conn:
                del self._connections[conn.fd]
            conn.sock.close()

    def _watch(self, conn: _Connection, on: bool) -> None:
        """Put the connection's descriptor in the epoll set or take it out (out, it is not
        even reported hung up) — only while it is this connection's."""
        if on != conn.watched and self._connections.get(conn.fd) is conn:
            if on:
                self._epoll.register(conn.fd, _select.EPOLLIN)
            else:
                self._epoll.unregister(conn.fd)
            conn.watched = on

    def run(self) -> None:
        """The reading thread: forever. A failure reading one connection ends that
        connection (its thread raises it), never the reader."""
        while True:
            trampoline(self._epoll.fileno(), read=True)
            for fd, _ in self._epoll.poll(0):
                conn = self._connections.get(fd)
                if conn is None:
                    continue
                try:
                    self._read(conn)
                except Exception as exc:  # os-ken's loop would have ended with it: so does this
                    self._end(conn, exc)

    def reap(self) -> None:
        """Forever, every CHECK_INTERVAL: end the connections os-ken closed (an echo timeout,
        a handshake past its deadline) whose peer has not hung up, as os-ken's own loop
        does at its next socket timeout."""
        while True:
            hub.sleep(CHECK_INTERVAL)
            for conn in list(self._connections.values()):
                if not conn.ended and conn.datapath.state == DEAD_DISPATCHER:
                    self._end(conn)

    def _end(self, conn: _Connection, exc: BaseException | None = None) -> None:
        """No more reading: the connection's thread handles what is queued, then ends."""
        if not conn.ended:
            conn.ended = True
            self._watch(conn, False)
            conn.pending.put(_END if exc is None else exc)

    def _read(self, conn: _Connection) -> None:
        if conn.ended:  # (while the reader yielded)
            return
        if conn.datapath.state == DEAD_DISPATCHER:  # closed meanwhile: as os-ken's loop
            self._end(conn)
            return
        try:
            data = conn.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._end(conn)
            return
        conn.buf += data
        self._parse(conn)
        if conn.datapath.state == DEAD_DISPATCHER:  # closed by what it sent: as os-ken's loop
            self._end(conn)
        elif conn.pending.qsize() >= PENDING and not conn.paused:
            conn.paused = True
            self._watch(conn, False)

    def _parse(self, conn: _Connection) -> None:
        """Every whole message in the connection's buffer through os-ken's parser (and
        wirecheck's, and the controller's `Receive`); its messages to the connection."""
        buf, dp = conn.buf, conn.datapath
        pos, end = 0, len(buf)
        while end - pos >= HEADER:
            version, msg_type, msg_len, xid = ofproto_parser.header(buf[pos : pos + HEADER])
            msg_len = max(msg_len, HEADER)  # as os-ken: a length below the header's is read as it
            if end - pos < msg_len:
                break
            data = bytes(buf[pos : pos + msg_len])
            pos += msg_len
            msg = ofproto_parser.msg(dp, version, msg_type, msg_len, xid, data)
            if msg:
                conn.pending.put(msg)
            self._parsed += 1
            if self._parsed % YIELD_EVERY == 0:
                hub.sleep(0)
        del buf[:pos]


def _dispatch(dp, msg) -> None:
    """An os-ken message to the observers and the `ofp_event` brick's handlers, as
    os-ken's `_recv_loop` does."""
    if dp.ofp_brick is None:
        return
    ev = ofp_event.ofp_msg_to_ev(msg)
    dp.ofp_brick.send_event_to_observers(ev, dp.state)
    for handler in dp.ofp_brick.get_handlers(ev):
        if dp.state in handler.callers[ev.__class__].dispatchers:
            handler(ev)


def install() -> SharedReader:
    """Read every plain-TCP switch that connects from now on in one thread (idempotent);
    the caller spawns the returned reader's `run` and `reap`."""
    from os_ken.controller import controller as osken_controller

    datapath = osken_controller.Datapath
    original = getattr(datapath._recv_loop, "vxflow_original", datapath._recv_loop)
    reader = SharedReader()

    def recv_loop(dp) -> None:
        if not reader.takes(dp):
            return original(dp)
        try:
            reader.serve(dp)
        finally:  # as os-ken's loop does on its way out (its send loop only shuts writes)
            with contextlib.suppress(OSError):
                dp.socket.close()

    recv_loop.vxflow_original = original
    datapath._recv_loop = recv_loop
    return reader
