"""The agent's prober: kubelet's thresholds (pure), and TCP and HTTP checks of real servers
on loopback, all from one thread (each waited for by its verdict, not timed)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from ipaddress import IPv4Address

import pytest

from leases.model import HealthCheck
from ovsdb.prober import Prober, Target, Verdict, http_status

LOOPBACK = IPv4Address("127.0.0.1")


def test_verdicts_follow_kubelets_thresholds() -> None:
    v = Verdict(HealthCheck("TCP", 80, failure_threshold=3, success_threshold=2))
    assert v.ready is None
    assert [v.record(ok) for ok in (True, False, False)] == [False, False, False]
    assert v.ready is None  # neither threshold reached in a row: not judged yet
    assert v.record(False) is True and v.ready is False  # 3 failures in a row
    assert v.record(False) is False and v.ready is False
    assert [v.record(ok) for ok in (True, False, True)] == [False, False, False]
    assert v.record(True) is True and v.ready is True  # 2 successes in a row
    assert [v.record(ok) for ok in (False, False, True)] == [False, False, False]
    assert v.ready is True


def test_http_status_lines() -> None:
    assert http_status(b"HTTP/1.1 204 No Content\r\nX: y\r\n") == 204
    assert http_status(b"HTTP/1.0 503 Busy\n") == 503
    assert http_status(b"SSH-2.0-OpenSSH\r\n") is None
    assert http_status(b"HTTP/1.1 abc\r\n") is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ok" else 500)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), Handler)  # one thread: the count below holds
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def wait_for(prober: Prober, want: dict[Target, bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while prober.verdicts() != want:
        assert time.monotonic() < deadline, (prober.verdicts(), want)
        time.sleep(0.05)


def check(kind: str, port: int, path: str = "") -> HealthCheck:
    return HealthCheck(kind, port, path, period=1, timeout=1, failure_threshold=1)


def test_tcp_and_http_checks_of_real_servers_from_one_thread(http: int) -> None:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(8)
    silent = socket.socket()  # accepts (the kernel does) but an HTTP GET gets no answer
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    up = Target("tcp-up", LOOPBACK, check("TCP", listening.getsockname()[1]))
    down = Target("tcp-down", LOOPBACK, check("TCP", free_port()))
    ok = Target("http-ok", LOOPBACK, check("HTTP", http, "/ok"))
    bad = Target("http-500", LOOPBACK, check("HTTP", http, "/bad"))
    mute = Target("http-mute", LOOPBACK, check("HTTP", silent.getsockname()[1], "/"))
    changes = []
    prober = Prober(on_change=lambda: changes.append(1))
    prober.start()
    try:
        before = threading.active_count()
        prober.set_targets([up, down, ok, bad, mute])
        wait_for(prober, {up: True, down: False, ok: True, bad: False, mute: False})
        assert threading.active_count() == before  # no thread per probe
        assert changes
        # the listener goes: its backend turns unready; a target taken away loses its verdict
        listening.close()
        prober.set_targets([up, ok])
        wait_for(prober, {up: False, ok: True})
    finally:
        prober.stop()
        silent.close()
        listening.close()
