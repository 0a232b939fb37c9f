"""The OpenFlow listener's guard: every peer becomes a switch in time or is dropped.

os-ken serves each connection in its own green thread, so a peer that sends
garbage only ever breaks its own connection. What it does not bound is time
and noise, which this module adds:

- a TLS handshake (os-ken wraps an accepted socket before any OpenFlow) is
  bounded by the process's default socket timeout, HANDSHAKE_TIMEOUT;
- a peer that has not completed the OpenFlow handshake (hello, features)
  HANDSHAKE_TIMEOUT after connecting is disconnected;
- a switch that stops answering echo requests is disconnected after
  MAX_UNREPLIED_ECHOES of them (a peer stalled in the middle of a message);
- the traceback os-ken's hub logs when a peer's connection fails (a TLS
  handshake refused, a message its parser cannot read) becomes one line,
  counted as `vxflow_controller_switches_refused{reason}`.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from controller import metrics

log = logging.getLogger("controller")

HANDSHAKE_TIMEOUT = 10.0
ECHO_INTERVAL = 15.0
MAX_UNREPLIED_ECHOES = 3

# (traceback text that identifies the failure, metric reason, what the line says)
_FAILURES = (
    ("wrap_and_handle_ctx", "tls_handshake", "OpenFlow TLS handshake failed"),
    ("datapath_connection_factory", "malformed", "OpenFlow connection dropped"),
)


class _OneLineFailures(logging.Filter):
    """Rewrites os-ken's "hub: uncaught exception: <traceback>" for a failed peer
    connection into one line with the exception's last line, and counts it."""

    def filter(self, record: logging.LogRecord) -> bool:
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


def install(conf) -> None:
    """Bound handshakes and echo stalls in this process (call before switches connect)."""
    socket.setdefaulttimeout(HANDSHAKE_TIMEOUT)
    conf.set_default("echo_request_interval", ECHO_INTERVAL)
    conf.set_default("maximum_unreplied_echo_requests", MAX_UNREPLIED_ECHOES)
    hub_log = logging.getLogger("os_ken.lib.hub")
    if not any(isinstance(f, _OneLineFailures) for f in hub_log.filters):
        hub_log.addFilter(_OneLineFailures())


def enforce_handshake_deadline(
    datapath, later: Callable[[float, Callable[[], None]], object], main_state: str,
    dead_state: str,
) -> None:
    """Disconnect `datapath` if it is not a switch in MAIN state HANDSHAKE_TIMEOUT from now."""

    def check() -> None:
        if datapath.state in (main_state, dead_state):
            return
        metrics.REFUSED.labels("handshake_timeout").inc()
        log.warning(
            "OpenFlow peer %s did not finish its handshake in %.0fs; disconnecting",
            datapath.address, HANDSHAKE_TIMEOUT,
        )  # fmt: skip
        datapath.close()

    later(HANDSHAKE_TIMEOUT, check)
