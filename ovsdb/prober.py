"""Health checks of the backends on this node: one thread, one selector, every probe.

A service's `HealthCheck` (leases/services.py) names a TCP or HTTP check. The agent hands
the prober the (service, backend, check) targets whose backend is a pod on this node; the
prober opens each probe as a non-blocking socket from the node itself (node-to-pod traffic,
as kubelet's probes are) and waits on all of them in one `selectors` loop: a thousand
backends cost a thousand sockets, not a thousand processes or threads. An IPv6 backend (of
an IPv6 service, on a dual-stack node) is probed over IPv6 the same way: the node's route
to its IPv6 subnet goes into the gateway port, so the probe leaves from the node's IPv6
gateway address as an IPv4 one leaves from its IPv4 gateway address.

- TCP: the connection is accepted within TimeoutSeconds.
- HTTP: `GET Path HTTP/1.0` answered with a status line of 200..399 (kubelet's rule)
  within TimeoutSeconds.

Each target is probed every PeriodSeconds (from the start of one probe to the next; one
still running when the period ends delays the next). The verdict follows kubelet's
thresholds (`Verdict`); each change is one log line and counted, and the agent is told
(`on_change`) so it publishes the verdicts (leases/health.py) at once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from leases.model import HealthCheck
from ovsdb import metrics

log = logging.getLogger(__name__)
MAX_STATUS_LINE = 4096  # bytes read for an HTTP status line before calling it a failure
IDLE_WAIT = 1.0  # seconds the loop sleeps at most with nothing due (targets wake it)


@dataclass(frozen=True)
class Target:
    """One backend of one service, as that service's HealthCheck probes it."""

    service: str
    ip: IPv4Address | IPv6Address
    check: HealthCheck

    def __str__(self) -> str:
        return f"backend {self.ip} of service {self.service}"


@dataclass
class Verdict:
    """kubelet's readiness thresholds: `failure_threshold` failures in a row make a backend
    unready, `success_threshold` successes in a row ready. `ready` is None until the first
    verdict (the backend is not judged, and serves, until then)."""

    check: HealthCheck
    ready: bool | None = None
    last: bool | None = None
    run: int = 0  # results in a row equal to `last`

    def record(self, ok: bool) -> bool:
        """Take one probe result; whether the verdict changed."""
        self.run = self.run + 1 if ok == self.last else 1
        self.last = ok
        need = self.check.success_threshold if ok else self.check.failure_threshold
        if self.ready is not ok and self.run >= need:
            self.ready = ok
            return True
        return False


@dataclass
class _Probe:
    sock: socket.socket
    deadline: float
    request: bytes = b""  # HTTP: what is left to send
    sent: bool = False  # HTTP: the request is out, the status line is awaited
    reply: bytes = b""


@dataclass
class _State:
    verdict: Verdict
    due: float  # monotonic time of the next probe
    probe: _Probe | None = None
    why: str = ""  # the last failure's reason, for the transition's log line


def http_request(target: Target) -> bytes:
    host = f"[{target.ip}]" if target.ip.version == 6 else str(target.ip)  # (RFC 3986's)
    return (f"GET {target.check.path} HTTP/1.0\r\nHost: {host}:{target.check.port}\r\n"
            "User-Agent: vxflow-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n").encode()  # fmt: skip


def http_status(reply: bytes) -> int | None:
    """The status code of a reply's first line; None if it is not an HTTP status line."""
    words = reply.split(b"\r\n", 1)[0].split(b"\n", 1)[0].split()
    if len(words) >= 2 and words[0].startswith(b"HTTP/") and words[1].isdigit():
        return int(words[1])
    return None


class Prober:
    """`start()`, then `set_targets()` whenever the backends or checks change (any thread);
    `verdicts()` are the judged targets' readiness; `stop()` closes every probe."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self.on_change = on_change
        self._lock = threading.Lock()
        self._pending: frozenset[Target] | None = None  # set_targets' latest, not yet taken
        self._verdicts: dict[Target, bool] = {}
        self._states: dict[Target, _State] = {}  # the prober thread's own
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        self._thread.join()
        for state in self._states.values():
            if state.probe is not None:
                state.probe.sock.close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def set_targets(self, targets: Iterable[Target]) -> None:
        targets = frozenset(targets)
        with self._lock:
            self._pending = targets
        self._wake()

    def verdicts(self) -> dict[Target, bool]:
        with self._lock:
            return dict(self._verdicts)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: it is awake; closed: it stopped
            self._wake_w.send(b"\0")

    # -- the prober's thread -----------------------------------------------------
    def _run(self) -> None:
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        while not self._stop.is_set():
            changed = self._take_targets()
            now = time.monotonic()
            for target, state in self._states.items():
                if state.probe is None and state.due <= now:
                    changed |= self._start(target, state, now)
            due = [s.probe.deadline if s.probe else s.due for s in self._states.values()]
            wait = min(max(min(due, default=now + IDLE_WAIT) - now, 0.0), IDLE_WAIT)
            for key, _ in self._selector.select(wait):
                if key.data is None:
                    self._drain()
                elif (state := self._states.get(key.data)) is not None and state.probe:
                    changed |= self._advance(key.data, state)
            now = time.monotonic()
            for target, state in self._states.items():
                if state.probe is not None and now >= state.probe.deadline:
                    changed |= self._finish(target, state, False, "timed out after "
                                            f"{target.check.timeout}s")  # fmt: skip
            if changed:
                self.on_change()

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass

    def _take_targets(self) -> bool:
        with self._lock:
            targets, self._pending = self._pending, None
            if targets is None:
                return False
            gone = [t for t in self._states if t not in targets]
            for target in gone:
                self._verdicts.pop(target, None)
        now = time.monotonic()
        for target in gone:
            probe = self._states.pop(target).probe
            if probe is not None:
                self._close(probe)
        for target in targets - self._states.keys():
            self._states[target] = _State(Verdict(target.check), due=now)
        return bool(gone)

    def _start(self, target: Target, state: _State, now: float) -> bool:
        state.due = now + target.check.period
        family = socket.AF_INET6 if target.ip.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex((str(target.ip), target.check.port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            state.probe = None
            return self._result(target, state, False, os.strerror(err))
        request = http_request(target) if target.check.type == "HTTP" else b""
        state.probe = _Probe(sock, now + target.check.timeout, request)
        self._selector.register(sock, selectors.EVENT_WRITE, target)
        return False

    def _advance(self, target: Target, state: _State) -> bool:
        """One step of a probe whose socket is ready: connected, request sent, reply read."""
        probe = state.probe
        assert probe is not None
        try:
            if not probe.sent:
                if err := probe.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    return self._finish(target, state, False, os.strerror(err))
                if not probe.request:  # TCP: connected is all
                    return self._finish(target, state, True)
                probe.request = probe.request[probe.sock.send(probe.request) :]
                if not probe.request:
                    probe.sent = True
                    self._selector.modify(probe.sock, selectors.EVENT_READ, target)
                return False
            data = probe.sock.recv(MAX_STATUS_LINE)
        except BlockingIOError:
            return False
        except OSError as exc:
            return self._finish(target, state, False, exc.strerror or str(exc))
        probe.reply += data
        if b"\n" not in probe.reply and data and len(probe.reply) < MAX_STATUS_LINE:
            return False
        code = http_status(probe.reply)
        if code is None:
            return self._finish(target, state, False, "no HTTP status line in the reply")
        return self._finish(target, state, 200 <= code < 400, f"HTTP status {code}")

    def _close(self, probe: _Probe) -> None:
        self._selector.unregister(probe.sock)
        probe.sock.close()

    def _finish(self, target: Target, state: _State, ok: bool, why: str = "") -> bool:
        assert state.probe is not None
        self._close(state.probe)
        state.probe = None
        return self._result(target, state, ok, why)

    def _result(self, target: Target, state: _State, ok: bool, why: str) -> bool:
        metrics.PROBES.labels("success" if ok else "failure").inc()
        if not ok:
            state.why = why
        if not state.verdict.record(ok):
            return False
        check = target.check
        with self._lock:
            if target in self._states:  # (not taken away meanwhile)
                self._verdicts[target] = ok
        metrics.PROBE_TRANSITIONS.labels("ready" if ok else "unready").inc()
        where = f"{check.type} check of port {check.port}{check.path}"
        if ok:
            log.info("%s is ready: %d %s in a row passed", target, check.success_threshold, where)
        else:
            log.warning("%s is unready: %d %s in a row failed (%s); it leaves the service",
                        target, check.failure_threshold, where, state.why)  # fmt: skip
        return True
