"""systemd readiness and watchdog (daemons/notify.py), and both daemons' use of it.

No systemd runs as PID 1 here: each test listens on a NOTIFY_SOCKET of its own,
as systemd would, and reads what the daemon sends there. READY=1 must come
only once the daemon is of use: the agent's lease held, br-int bootstrapped
and subnet.env written; the controller's registry loaded and its membership
registered.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemons.notify import Notifier
from leases.etcd_server import EtcdServer
from leases.registry import Registry
from leases.subnet_env import read_subnet_env
from tests.emulation import ROOT_UNDERLAY_IP, Underlay
from tests.ofharness import Controller, wait_for
from tests.test_ovsdb_agent import CONFIG, PREFIX, AgentProc, gateway_address


class Listener:
    """A datagram socket standing in for systemd's notification socket."""

    def __init__(self, address: str) -> None:
        self.address = address  # as NOTIFY_SOCKET names it ('@' for an abstract name)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)

    def get(self, timeout: float = 30.0) -> str | None:
        """The next message, or None if none came within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode()
        except TimeoutError:
            return None

    def pending(self) -> list[str]:
        """Every message sent so far and not read yet."""
        messages = []
        while (message := self.get(timeout=0.001)) is not None:
            messages.append(message)
        return messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    sock = Listener(str(tmp_path / "notify.sock"))
    yield sock
    sock.close()


def test_environment_is_taken_and_the_watchdog_runs_at_half_its_timeout() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000", "OTHER": "1"}
    assert Notifier.from_environ(env) == Notifier("/run/x", 15.0)
    assert env == {"OTHER": "1"}  # the daemon's children inherit none of it
    pid = str(os.getpid())
    assert Notifier.from_environ({"NOTIFY_SOCKET": "@a", "WATCHDOG_USEC": "4000000",
                                  "WATCHDOG_PID": pid}).watchdog_interval == 2.0  # fmt: skip
    # another process's watchdog, a bad value, no socket: no pings
    for env in ({"NOTIFY_SOCKET": "@a", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"},
                {"NOTIFY_SOCKET": "@a", "WATCHDOG_USEC": "soon"}, {"WATCHDOG_USEC": "4000000"}):  # fmt: skip
        assert Notifier.from_environ(env).watchdog_interval == 0.0
    assert Notifier.from_environ({}) == Notifier()


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_once_then_watchdog_pings_once_per_interval(tmp_path: Path, abstract: bool) -> None:
    address = f"@vxflow-test-{uuid.uuid4().hex}" if abstract else str(tmp_path / "notify.sock")
    sock = Listener(address)
    try:
        notifier = Notifier(address, watchdog_interval=0.5)
        notifier.watchdog(100.0)  # not ready yet: systemd's watchdog is not running
        assert sock.pending() == []
        notifier.ready("holding lease x")
        notifier.ready("again")
        assert sock.pending() == ["READY=1\nSTATUS=holding lease x"]
        for now in (100.0, 100.2, 100.49, 100.5, 100.9, 101.1):
            notifier.watchdog(now)
        assert sock.pending() == ["WATCHDOG=1"] * 3  # at 100.0, 100.5, 101.1
        notifier.stopping()
        assert sock.pending() == ["STOPPING=1"]
    finally:
        sock.close()


def test_an_unreachable_socket_is_a_warning_not_an_error(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    Notifier(str(tmp_path / "nobody-listens")).ready("up")
    assert "cannot notify systemd" in caplog.text
    Notifier().ready("up")  # not under systemd: nothing to do


def test_the_controllers_sigterm_in_a_green_thread_stops_the_main_one() -> None:
    """SIGTERM's handler runs in whichever green thread is current (the watchdog's ping, often:
    seen as a controller that logged the KeyboardInterrupt and ran on): it must still reach
    the main green thread, where os-ken's manager stops the app."""
    from os_ken.lib import hub

    from controller.cli import _stop

    with pytest.raises(KeyboardInterrupt):
        _stop()  # in the main green thread: at once
    with pytest.raises(KeyboardInterrupt):
        hub.spawn(_stop)  # a green thread of the app's: as if the signal came while it ran
        hub.sleep(10)


@pytest.mark.integration
def test_agent_is_ready_only_with_its_lease_bridge_and_subnet_env(
    underlay: Underlay, tmp_path: Path, listener: Listener
) -> None:
    node = underlay.add_node()
    etcd = EtcdServer(host=str(ROOT_UNDERLAY_IP)).start()
    registry = Registry(f"http://127.0.0.1:{etcd.client_port}", PREFIX)
    agent = AgentProc(node, tmp_path, etcd, env={"NOTIFY_SOCKET": listener.address,
                                                 "WATCHDOG_USEC": "1000000"})  # fmt: skip
    try:
        agent.start()  # no network config yet: it can take no lease
        wait_for("the agent waiting for a config",
                 lambda: "reading the network config failed" in agent.log_text())  # fmt: skip
        assert listener.pending() == []
        registry.set_config(CONFIG)
        ready = listener.get()
        # at READY=1: the lease is in etcd, subnet.env names it, the gateway carries it
        (lease,) = registry.list_leases()
        assert lease.public_ip == node.underlay_ip
        assert ready == f"READY=1\nSTATUS=holding lease {lease.subnet} for {node.underlay_ip}"
        env = read_subnet_env(agent.subnet_file)
        assert env.subnet.network == lease.subnet
        assert gateway_address(node) == [str(env.subnet)]
        # then the watchdog, every half second while the loop turns
        assert [listener.get(), listener.get()] == ["WATCHDOG=1"] * 2
        agent.stop()
        assert listener.pending()[-1] == "STOPPING=1"
    finally:
        agent.stop()
        registry.close()
        etcd.stop()


@pytest.mark.integration
def test_controller_is_ready_only_once_it_joined_the_cluster(
    tmp_path: Path, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    etcd = EtcdServer().start()  # before NOTIFY_SOCKET is set: etcd notifies systemd too
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    url = f"http://127.0.0.1:{etcd.client_port}"
    registry = Registry(url, PREFIX)
    controller = Controller(url, member_id="ctl1")
    try:
        controller.start(tmp_path)  # no network config: it loads the registry, joins nothing
        wait_for("the controller waiting for a config",
                 lambda: "does not join the controller cluster" in controller.log())  # fmt: skip
        assert listener.pending() == []
        registry.set_config(CONFIG)
        assert listener.get() == "READY=1\nSTATUS=member ctl1 of the controller cluster"
        assert [m.id for m in registry.snapshot().members] == ["ctl1"]
        assert [listener.get(), listener.get()] == ["WATCHDOG=1"] * 2
        controller.stop()
        assert listener.pending()[-1] == "STOPPING=1"
    finally:
        controller.stop()
        registry.close()
        etcd.stop()
