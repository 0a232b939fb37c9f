"""One green thread reads every plain-TCP switch, instead of one per switch.

os-ken reads each switch in the switch's own green thread: a blocking recv of
the 8-byte header, then of the rest. At 1,000 switches a lease event brings
1,000 barrier replies, and each costs that thread two recv calls, eventlet
registering and unregistering its socket with the hub's epoll, and two
greenlet switches — more CPU than handling the reply. Here the sockets sit in
one epoll set of our own, registered once for the connection's life; one
thread waits on that set's descriptor (through the hub, so it yields like any
green thread), and each time it wakes it reads every ready socket once and
passes on every whole message in what it read.

What happens to a message is os-ken's `_recv_loop`'s, unchanged: its parser
(with `controller.wirecheck` in front, which hands the controller its replies),
then the event to every observer and the `ofp_event` brick's own handlers.
The connection's green thread waits until the switch's stream ends, then
finishes as os-ken's does (its send and echo loops stopped, the datapath
closed). TLS sockets keep os-ken's loop: their data sits in the TLS layer,
not where epoll can see it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from eventlet import event, patcher
from eventlet.hubs import trampoline
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER
from os_ken.lib import hub
from os_ken.ofproto import ofproto_common, ofproto_parser

_select = patcher.original("select")
_socket = patcher.original("socket")  # the real socket class, under eventlet's green one
READ_SIZE = 65536  # per socket per round: one switch's flood waits for the others
CHECK_INTERVAL = 1.0  # seconds between looks for connections os-ken closed meanwhile
HEADER = ofproto_common.OFP_HEADER_SIZE


@dataclass(eq=False)
class _Connection:
    datapath: object
    sock: _socket.socket  # our own descriptor of the switch's socket (see SharedReader.serve)
    buf: bytearray = field(default_factory=bytearray)
    done: event.Event = field(default_factory=event.Event)

    def finish(self, exc: BaseException | None = None) -> None:
        if not self.done.ready():
            if exc is None:
                self.done.send()
            else:
                self.done.send_exception(exc)


class SharedReader:
    """The epoll set and the one thread that reads it; `serve` is each connection's part."""

    def __init__(self) -> None:
        self._epoll = _select.epoll()
        self._connections: dict[int, _Connection] = {}

    def takes(self, datapath) -> bool:
        """Plain TCP (an eventlet green socket over a real one); not TLS."""
        raw = getattr(datapath.socket, "fd", None)
        return type(raw) is _socket.socket

    def serve(self, datapath) -> None:
        """Read `datapath` from the shared thread until its stream ends (in its own
        green thread, in place of os-ken's `_recv_loop`).

        The epoll set holds a descriptor of our own (a dup): os-ken closes its socket
        while other threads still run, and a descriptor number closed under an epoll
        set and reused by the next switch would be read as the old one."""
        sock = datapath.socket.fd.dup()
        sock.setblocking(False)
        conn = _Connection(datapath, sock)
        self._connections[sock.fileno()] = conn
        self._epoll.register(sock.fileno(), _select.EPOLLIN)
        try:
            conn.done.wait()
        finally:
            self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        fd = conn.sock.fileno()
        if fd >= 0 and self._connections.get(fd) is conn:
            del self._connections[fd]
            self._epoll.unregister(fd)
        conn.sock.close()
        conn.finish()

    def run(self) -> None:
        """The reading thread: forever."""
        while True:
            trampoline(self._epoll.fileno(), read=True)
            for fd, _ in self._epoll.poll(0):
                conn = self._connections.get(fd)
                if conn is not None:
                    self._read(conn)

    def reap(self) -> None:
        """Forever, every CHECK_INTERVAL: end the connections os-ken closed (an echo timeout,
        a malformed message) whose peer has not hung up, as os-ken's own loop does at its
        next socket timeout."""
        while True:
            hub.sleep(CHECK_INTERVAL)
            for conn in list(self._connections.values()):
                if conn.datapath.state == DEAD_DISPATCHER:
                    conn.finish()

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            conn.finish()
            return
        if not data:
            conn.finish()
            return
        conn.buf += data
        try:
            _deliver(conn)
        except Exception as exc:  # os-ken's loop would have ended with it: so does this one
            conn.finish(exc)
            return
        if conn.datapath.state == DEAD_DISPATCHER:  # closed by what it sent: as os-ken's loop
            conn.finish()


def _deliver(conn: _Connection) -> None:
    """Every whole message in the connection's buffer, as os-ken's `_recv_loop` does."""
    buf, dp = conn.buf, conn.datapath
    pos, end = 0, len(buf)
    while end - pos >= HEADER:
        version, msg_type, msg_len, xid = ofproto_parser.header(buf[pos : pos + HEADER])
        msg_len = max(msg_len, HEADER)  # as os-ken: a length below the header's is read as it
        if end - pos < msg_len:
            break
        msg = ofproto_parser.msg(dp, version, msg_type, msg_len, xid, bytes(buf[pos : pos + msg_len]))
        pos += msg_len
        if msg and dp.ofp_brick is not None:
            ev = ofp_event.ofp_msg_to_ev(msg)
            dp.ofp_brick.send_event_to_observers(ev, dp.state)
            for handler in dp.ofp_brick.get_handlers(ev):
                if dp.state in handler.callers[ev.__class__].dispatchers:
                    handler(ev)
    del buf[:pos]


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
