"""The OpenFlow listener's guard: every peer becomes a switch in time or is dropped.

os-ken serves each connection in its own green thread, so a peer that sends
garbage only ever breaks its own connection. What it does not bound is time
and noise, which this module adds:

- a TLS handshake (os-ken wraps an accepted socket before any OpenFlow) is
  bounded by HANDSHAKE_TIMEOUT, and a failed accept (out of file descriptors)
  pauses the listener instead of ending it: os-ken has no hook for either, so
  `install()` swaps its listener class for `BoundedStreamServer`;
- a peer that has not completed the OpenFlow handshake (hello, features)
  HANDSHAKE_TIMEOUT after connecting (sooner where the echo probe would drop it
  first: `handshake_deadline`) is disconnected;
- a switch that stops answering echo requests (one every `vxflow-echo-interval`
  seconds, 2 by default) is disconnected after MAX_UNREPLIED_ECHOES of them: a peer stalled in the middle of a
  message, or a node that died without its kernel closing the connection (a power
  loss), whose switch must not hold the node UP (leases.liveness.node_down) for long;
- a switch that takes nothing of a send for `vxflow-send-stall-timeout` seconds (os-ken's
  socket timeout, 5 by default), logged and counted: os-ken's send loop ends there and only
  shuts its own writes, which left the switch half-closed and counted as connected, never
  written to again, until the echo loop noticed (one echo interval later, unlogged). A
  send loop os-ken ends on purpose, after the error that answers a peer of an incompatible
  OpenFlow version (`close_socket`), is no stall, even with bytes not acknowledged yet;
- every message is checked before os-ken parses it (controller/wirecheck.py);
- the traceback os-ken logs when a peer's connection fails (a TLS handshake
  refused, a message its parser cannot read) becomes one line, counted as
  `vxflow_controller_switches_refused{reason}`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import socket
import struct
import termios
from collections.abc import Callable

from os_ken.controller.handler import DEAD_DISPATCHER
from os_ken.lib import hub

from controller import metrics, wirecheck

log = logging.getLogger("controller")

HANDSHAKE_TIMEOUT = 10.0
MAX_UNREPLIED_ECHOES = 3  # closed within 4 echo intervals of silence

# (traceback text that identifies the failure, metric reason, what the line says)
_FAILURES = (
    ("wrap_and_handle_ctx", "tls_handshake", "OpenFlow TLS handshake failed"),
    ("datapath_connection_factory", "malformed", "OpenFlow connection dropped"),
)
_PARSE_ERROR = "Encountered an error while parsing OpenFlow packet"


class _OneLineFailures(logging.Filter):
    """Rewrites os-ken's "hub: uncaught exception: <traceback>" for a failed peer
    connection into one line with the exception's last line, and counts it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(_PARSE_ERROR):  # os-ken's parser gave up on a message
            metrics.REFUSED.labels("malformed").inc()
            kind = record.exc_info[1] if record.exc_info else None
            record.msg, record.args = "OpenFlow message unreadable (%r); ignored", (kind,)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            return True
        if not str(record.msg).startswith("hub: uncaught exception") or not record.args:
            return True
        text = str(record.args[0] if isinstance(record.args, tuple) else record.args)
        for needle, reason, what in _FAILURES:
            if needle in text:
                last = text.strip().splitlines()[-1] if text.strip() else "?"
                metrics.REFUSED.labels(reason).inc()
                record.msg, record.args = "%s: %s", (what, last)
                record.levelno, record.levelname = logging.WARNING, "WARNING"
                return True
        return True


class BoundedStreamServer(hub.StreamServer):
    """os-ken's listener, with a deadline on each accepted socket until the handler
    (the TLS handshake, then os-ken's Datapath, which sets its own timeout) takes over."""

    def serve_forever(self) -> None:
        while True:
            try:
                sock, addr = self.server.accept()
            except OSError as exc:  # e.g. EMFILE: the listener must outlive it
                log.error("OpenFlow listener: accept failed (%s); retrying in 1s", exc)
                hub.sleep(1)
                continue
            sock.settimeout(HANDSHAKE_TIMEOUT)
            hub.spawn(self._serve, sock, addr)

    def _serve(self, sock, addr) -> None:
        # A TLS wrap takes the socket's descriptor over, and when its handshake fails
        # nothing closes it: end the connection through a handle of our own.
        peer = sock.dup()
        try:
            self.handle(sock, addr)
        finally:
            with contextlib.suppress(OSError):  # already gone
                peer.shutdown(socket.SHUT_RDWR)
            peer.close()


def _unsent(sock) -> int:
    """Bytes sent to the peer that it has not taken yet (the kernel's SIOCOUTQ); 0 once the
    connection is reset or the socket closed (a failed connection, not a stalled one)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    except (OSError, ValueError):
        return 0


def _close_noted(send: Callable) -> Callable:
    """os-ken's Datapath.send, noting on the datapath a send asked to close the connection
    after it (`close_socket`: os-ken's answer to a peer of an incompatible version), so that
    the send loop ending there is not taken for a stall. (A stall of an earlier send with
    such a close queued behind it is not counted either: the connection was ending anyway.)"""

    def send_noted(dp, buf, close_socket: bool = False) -> bool:
        if close_socket:
            dp.vxflow_closing = True
        return send(dp, buf, close_socket)

    send_noted.vxflow_original = send  # type: ignore[attr-defined]
    return send_noted


def _stall_guarded(send_loop: Callable) -> Callable:
    """os-ken's send loop, and then, if it ended on a send the switch took nothing of for the
    socket's timeout while the connection is still up: the switch disconnected, logged and
    counted (it resyncs when it reconnects)."""

    def loop(dp) -> None:
        send_loop(dp)
        if dp.state == DEAD_DISPATCHER or getattr(dp, "vxflow_closing", False) or not _unsent(dp.socket):
            return  # closed on purpose (by us or os-ken), or failed: its reading side ends it
        metrics.SLOW_SWITCHES.inc()
        log.warning(
            "switch %016x at %s took nothing for %gs: disconnected (it resyncs when it "
            "reconnects)", dp.id or 0, dp.address, dp.socket.gettimeout(),
        )  # fmt: skip
        dp.close()

    loop.vxflow_original = send_loop  # type: ignore[attr-defined]
    return loop


def install(conf, receive: wirecheck.Receive | None = None) -> None:
    """Bound handshakes, echo and send stalls in this process (call before switches connect);
    messages that pass the structure checks go to `receive` first (`controller.wirecheck`)."""
    from os_ken.controller import controller as osken_controller

    osken_controller.StreamServer = BoundedStreamServer
    guard_sends(osken_controller.Datapath)
    conf.set_default("socket_timeout", conf.vxflow_send_stall_timeout)
    conf.set_default("echo_request_interval", conf.vxflow_echo_interval)
    conf.set_default("maximum_unreplied_echo_requests", MAX_UNREPLIED_ECHOES)
    wirecheck.install(receive)
    for name in ("os_ken.lib.hub", "os_ken.ofproto.ofproto_parser"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OneLineFailures) for f in logger.filters):
            logger.addFilter(_OneLineFailures())


def guard_sends(datapath: type) -> None:
    """Guard os-ken's `Datapath` class's send loop against stalls (`_stall_guarded`, once)."""
    for name, wrap in (("send", _close_noted), ("_send_loop", _stall_guarded)):
        method = getattr(datapath, name)
        setattr(datapath, name, wrap(getattr(method, "vxflow_original", method)))


def handshake_deadline(echo_interval: float) -> float:
    """Seconds a peer has to finish its handshake: HANDSHAKE_TIMEOUT, or less where the echo
    probe would drop a silent peer sooner (it probes peers from their first moment), so
    that a peer silent from the start is always counted as what it is."""
    return min(HANDSHAKE_TIMEOUT, echo_interval * MAX_UNREPLIED_ECHOES)


def enforce_handshake_deadline(
    datapath, later: Callable[[float, Callable[[], None]], object], main_state: str,
    dead_state: str, deadline: float = HANDSHAKE_TIMEOUT,
) -> None:
    """Disconnect `datapath` if it is not a switch in MAIN state `deadline` s from now."""

    def check() -> None:
        if datapath.state in (main_state, dead_state):
            return
        metrics.REFUSED.labels("handshake_timeout").inc()
        log.warning(
            "OpenFlow peer %s did not finish its handshake in %.0fs; disconnecting",
            datapath.address, deadline,
        )  # fmt: skip
        datapath.close()

    later(deadline, check)
