"""OpenFlow over TLS against real ovs-vswitchd: certificates made by the test, identity
bound to the datapath-id, switches without a (valid) certificate kept out."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from controller.guard import HANDSHAKE_TIMEOUT
from leases.etcd_server import EtcdServer
from leases.model import datapath_id_for
from ovsdb.instance import OvsInstance
from tests.ofharness import Cluster, Controller, node_ip, running, wait_for
from tests.security import Pki, make_pki

pytestmark = pytest.mark.integration


@pytest.fixture
def ca(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_cluster(etcd: EtcdServer, ovs: OvsInstance, ca: Pki) -> Iterator[Cluster]:
    server = ca.server("controller", "127.0.0.1")
    tls = ("--ctl-privkey", str(server.key), "--ctl-cert", str(server.cert),
           "--ca-certs", str(ca.ca))  # fmt: skip
    with running(etcd, ovs, Controller(etcd.endpoint, extra=tls)) as c:
        yield c


def set_ssl(ovs: OvsInstance, ca: Pki, ip: IPv4Address) -> None:
    """The switch's key, certificate and CA in its SSL table (bootstrap writes the same
    through the IDL: every `--tls` cluster, test_e2e_demo.py, runs that path)."""
    node = ca.node(ip)
    ovs.vsctl("set-ssl", str(node.key), str(node.cert), str(ca.ca))


def ssl_switch(cluster: Cluster, i: int, claims: int | None = None) -> str:
    """A bridge of node i over ssl:, whose datapath-id claims node `claims` (default: i)."""
    name = cluster.add_switch(i)
    cluster.ovs.vsctl(
        "set", "bridge", name,
        f"other_config:datapath-id={datapath_id_for(node_ip(claims or i)):016x}",
        "--", "set-controller", name, f"ssl:127.0.0.1:{cluster.controller.port}",
    )  # fmt: skip
    return name


def test_identity_is_bound_to_the_certificate(tls_cluster: Cluster, ca: Pki, tmp_path: Path):
    c = tls_cluster
    c.lease(1), c.lease(2)
    set_ssl(c.ovs, ca, node_ip(1))  # this OVS presents node 1's certificate
    c.controller.start(tmp_path)
    honest = ssl_switch(c, 1)
    c.wait_converged()
    assert len(c.dump(honest)) > 5
    # the same switch (node 1's certificate) claiming node 2's datapath-id
    impostor = ssl_switch(c, 3, claims=2)
    wait_for("the impostor refused",
             lambda: c.controller.metric("vxflow_controller_switches_refused_total",
                                         reason="identity") >= 1)  # fmt: skip
    log = c.controller.log()
    assert (f"its datapath-id claims node {node_ip(2)}, but its certificate names "
            f"{node_ip(1)}, not {node_ip(2)}") in log  # fmt: skip
    assert c.dump(impostor) == set()  # never given a flow
    c.ovs.vsctl("del-br", impostor)  # (it is not node 3's switch either: compare the rest)
    del c.bridges[node_ip(3)]
    c.wait_converged()  # the honest switch kept its table and its session
    assert f"switch of {node_ip(2)} connected" not in log
    assert "Traceback" not in log


def _openflow_hello() -> bytes:
    return struct.pack("!BBHI", 5, 0, 8, 1)


def _handshake(port: int, context: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(_openflow_hello())
        return tls.recv(8)


def test_switches_without_a_valid_certificate_cannot_connect(
    tls_cluster: Cluster, ca: Pki, tmp_path: Path
):
    c = tls_cluster
    c.controller.start(tmp_path)
    port = c.controller.port
    wait_for("the controller listening", lambda: _listening(port))
    # a peer that never starts its TLS handshake is dropped in time, and the listener,
    # idle meanwhile, still accepts (checked by the last handshake below)
    with socket.create_connection(("127.0.0.1", port), timeout=HANDSHAKE_TIMEOUT + 10) as idle:
        started = time.monotonic()
        assert idle.recv(1) == b""
        assert time.monotonic() - started < HANDSHAKE_TIMEOUT + 5
    no_cert = ssl.create_default_context(cafile=str(ca.ca))
    no_cert.check_hostname = False
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _handshake(port, no_cert)  # refused before any OpenFlow byte
    stranger = make_pki(tmp_path / "stranger")
    foreign = ssl.create_default_context(cafile=str(ca.ca))
    foreign.check_hostname = False
    node = stranger.node("198.18.0.1")
    foreign.load_cert_chain(str(node.cert), str(node.key))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _handshake(port, foreign)
    # plain TCP is not served when TLS options are given: no OpenFlow hello comes back
    with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
        plain.sendall(_openflow_hello())
        plain.settimeout(5)
        try:
            reply = plain.recv(8)
        except (ConnectionError, TimeoutError, OSError):
            reply = b""
        assert reply[:1] != b"\x05"
    # a valid certificate does get OpenFlow's hello
    good = ssl.create_default_context(cafile=str(ca.ca))
    good.check_hostname = False
    mine = ca.node("198.18.0.1")
    good.load_cert_chain(str(mine.cert), str(mine.key))
    assert _handshake(port, good)[:2] == b"\x05\x00"
    wait_for("refusals counted",
             lambda: c.controller.metric("vxflow_controller_switches_refused_total",
                                         reason="tls_handshake") >= 3)  # fmt: skip
    log = c.controller.log()
    assert "OpenFlow TLS handshake failed" in log and "Traceback" not in log


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    time.sleep(0.2)
    return True
