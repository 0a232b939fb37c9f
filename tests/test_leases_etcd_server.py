"""The private etcd server: ports it picks, and a failed start that says why (real etcd)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from leases.etcd_server import PORTS_FROM, EtcdServer, free_loopback_port

pytestmark = pytest.mark.integration


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_loopback_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(PORTS_FROM <= p < ephemeral_low for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))


def test_a_start_on_a_taken_port_raises_with_etcds_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = EtcdServer(client_port=taken.getsockname()[1], data_dir=tmp_path / "etcd")
        with pytest.raises(RuntimeError, match="address already in use"):
            server.start()
