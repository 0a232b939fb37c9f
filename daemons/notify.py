"""systemd's readiness and watchdog notifications (sd_notify), without libsystemd.

Under a unit of Type=notify, systemd names a datagram socket in NOTIFY_SOCKET
(a path, or an abstract name when it starts with '@') and considers the
service started when "READY=1" arrives there: units ordered after it (a
container runtime, kubelet) start only then. With WatchdogSec= it also sets
WATCHDOG_USEC (and WATCHDOG_PID) and restarts the service unless
"WATCHDOG=1" arrives within every such interval; a daemon pings at half of
it, from the part of it whose progress shows it works, so a daemon that is
wedged stops pinging and is restarted.

Without NOTIFY_SOCKET (not under systemd) every call does nothing. The
variables are taken out of the environment when read, as sd_notify's
unset_environment does, so the daemon's children do not inherit them.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import MutableMapping
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Notifier:
    socket_path: str = ""  # NOTIFY_SOCKET; "": not run by systemd
    watchdog_interval: float = 0.0  # seconds between WATCHDOG=1 pings; 0: no watchdog
    ready_sent: bool = False
    _next_ping: float = 0.0

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] = os.environ) -> Notifier:
        path = environ.pop("NOTIFY_SOCKET", "")
        usec, pid = environ.pop("WATCHDOG_USEC", ""), environ.pop("WATCHDOG_PID", "")
        interval = 0.0
        if path and usec.isdigit() and int(usec) > 0 and pid in ("", str(os.getpid())):
            interval = int(usec) / 2e6  # half the timeout, as sd_watchdog_enabled(3) advises
        return cls(path, interval)

    def _send(self, message: str) -> None:
        if not self.socket_path:
            return
        address = self.socket_path
        if address.startswith("@"):
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), address)
        except OSError as exc:  # systemd gone or the socket unreachable: nothing to wait on us
            log.warning("cannot notify systemd at %s: %s", self.socket_path, exc)

    def ready(self, status: str) -> None:
        """Tell systemd the service is up (once); `status` shows in `systemctl status`."""
        if not self.ready_sent:
            self.ready_sent = True
            self._send(f"READY=1\nSTATUS={status}")
            log.debug("notified systemd: ready (%s)", status)

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def watchdog(self, now: float | None = None) -> None:
        """Call from the daemon's working loop while healthy: pings once per interval,
        and only once READY=1 was sent (systemd's watchdog runs from then on)."""
        if not (self.watchdog_interval and self.ready_sent):
            return
        now = time.monotonic() if now is None else now
        if now >= self._next_ping:
            self._next_ping = now + self.watchdog_interval
            self._send("WATCHDOG=1")
