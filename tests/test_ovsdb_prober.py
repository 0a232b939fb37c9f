"""The agent's prober: kubelet's thresholds (pure), and TCP and HTTP checks of real servers
on loopback, all from one thread (each waited for by its verdict, not timed)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from ipaddress import IPv4Address, IPv6Address

import pytest

from leases.model import HealthCheck
from ovsdb.prober import Prober, Target, Verdict, http_request, http_status

LOOPBACK = IPv4Address("127.0.0.1")
LOOPBACK6 = IPv6Address("::1")


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


def test_an_http_request_names_an_ipv6_host_in_brackets() -> None:
    six = http_request(Target("web6", IPv6Address("fc00:0:0:4::2"), check("HTTP", 8080, "/h")))
    assert six.startswith(b"GET /h HTTP/1.0\r\nHost: [fc00:0:0:4::2]:8080\r\n"), six
    four = http_request(Target("web", IPv4Address("10.20.4.2"), check("HTTP", 8080, "/h")))
    assert b"\r\nHost: 10.20.4.2:8080\r\n" in four, four


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Handler(BaseHTTPRequestHandler):
    hosts: list[str] = []  # the Host headers the server was sent

    def do_GET(self) -> None:
        self.hosts.append(self.headers["Host"])
        self.send_response(200 if self.path == "/ok" else 500)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class HTTPServer6(HTTPServer):
    address_family = socket.AF_INET6


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


def test_tcp_and_http_checks_of_ipv6_backends() -> None:
    """An IPv6 backend is probed over IPv6 (a v4 socket could not reach it), by the same
    thread and thresholds: a listener and an HTTP server on ::1, and a port nobody holds."""
    server = HTTPServer6(("::1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    listening = socket.socket(socket.AF_INET6)
    listening.bind(("::1", 0))
    listening.listen(8)
    port = server.server_address[1]
    up = Target("tcp6-up", LOOPBACK6, check("TCP", listening.getsockname()[1]))
    down = Target("tcp6-down", LOOPBACK6, check("TCP", free_port("::1")))
    ok = Target("http6-ok", LOOPBACK6, check("HTTP", port, "/ok"))
    bad = Target("http6-500", LOOPBACK6, check("HTTP", port, "/bad"))
    prober = Prober()
    prober.start()
    try:
        prober.set_targets([up, down, ok, bad])
        wait_for(prober, {up: True, down: False, ok: True, bad: False})
        assert f"[::1]:{port}" in Handler.hosts, Handler.hosts
        listening.close()  # the listener goes: its backend turns unready
        wait_for(prober, {up: False, down: False, ok: True, bad: False})
    finally:
        prober.stop()
        listening.close()
        server.shutdown()
        server.server_close()
