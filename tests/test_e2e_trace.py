"""End to end: `vxflow trace` on a running emulated cluster, each hop traced by the node's
own ovs-vswitchd (real etcd, controller, agents, OVS, Mininet)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from leases.registry import Registry
from tests.emulation import emulated_cluster
from tests.ofharness import VXFLOW
from tests.overlay import unleased_address

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster() -> Iterator:
    with emulated_cluster("t", nodes=2, pods=2) as running:
        yield running


def trace(cluster, src, dst, *args: str) -> subprocess.CompletedProcess:
    ovs = [f"--ovs={n.underlay_ip}={n.ovs.vswitchd_ctl}" for n in cluster.vxflow_nodes]
    return subprocess.run([VXFLOW, "trace", str(src), str(dst), *ovs, *cluster.etcd_flags(),
                           *args], capture_output=True, text=True, timeout=60)  # fmt: skip


def walk(cluster, src, dst, *args: str) -> tuple[int, dict]:
    res = trace(cluster, src, dst, "-o", "json", *args)
    assert res.stdout, res.stderr
    return res.returncode, json.loads(res.stdout)


def test_pod_to_remote_pod_is_delivered_through_the_tunnel(cluster) -> None:
    n1, n2 = cluster.vxflow_nodes
    a, b = cluster.pods_of(n1)[0], cluster.pods_of(n2)[1]
    rc, doc = walk(cluster, a.addr, b.addr)
    assert rc == 0 and doc["delivered"] is True
    first, second = doc["hops"]
    assert (first["node"], first["result"]) == (str(n1.underlay_ip), "tunnel")
    assert first["tun_dst"] == str(n2.underlay_ip) and first["vni"] == cluster.spec.vni
    assert [f["table"] for f in first["flows"]] == [0, 20]
    assert first["flows"][0]["owner"] == f"endpoint {a.addr}"
    assert first["flows"][1]["owner"] == f"lease {b.addr.exploded.rsplit('.', 1)[0]}.0/24"
    assert (second["node"], second["result"]) == (str(n2.underlay_ip), "delivered")
    assert second["detail"].startswith(f"to pod {b.addr} (port ")
    assert "nw_ttl=63" in second["packet"]  # decremented once, on the way into the tunnel
    assert second["flows"][-1]["actions"][-1].startswith("output:")  # nothing after it
    text = trace(cluster, a.addr, b.addr)
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert lines[0] == f"trace {a.addr} -> {b.addr} (icmp)"
    assert f"  tunnel: into the tunnel to {n2.underlay_ip}, VNI {cluster.spec.vni}" in lines
    assert lines[-1].startswith(f"delivered on node {n2.underlay_ip}: to pod {b.addr}")
    assert cluster.reachable(a, b.addr)  # and the real packet agrees


def test_pod_to_pod_on_the_same_node_never_leaves_it(cluster) -> None:
    n1 = cluster.vxflow_nodes[0]
    a, a2 = cluster.pods_of(n1)
    rc, doc = walk(cluster, a.addr, a2.addr, "--protocol", "tcp", "--dport", "8080")
    assert rc == 0 and len(doc["hops"]) == 1
    (hop,) = doc["hops"]
    assert hop["result"] == "delivered" and hop["detail"].startswith(f"to pod {a2.addr}")
    assert [f["table"] for f in hop["flows"]] == [0, 20, 30] and "tp_dst=8080" in hop["packet"]


def unleased(cluster) -> IPv4Address:
    """An overlay address no node's lease holds, read from the cluster's etcd."""
    with Registry(cluster.etcd_endpoint, cluster.spec.prefix) as registry:
        return unleased_address(registry)


@pytest.mark.random_leases
def test_unknown_overlay_address_and_unknown_local_address_are_dropped_with_reasons(cluster):
    n1 = cluster.vxflow_nodes[0]
    a = cluster.pods_of(n1)[0]
    unknown = unleased(cluster)
    rc, doc = walk(cluster, a.addr, unknown)
    assert rc == 1 and doc["delivered"] is False
    (hop,) = doc["hops"]
    assert hop["result"] == "dropped"
    assert hop["detail"] == "no lease: no node holds the destination's subnet"
    assert hop["flows"][-1]["table"] == 20
    rc, doc = walk(cluster, a.addr, a.addr - 100)  # in the node's own subnet, no pod there
    assert rc == 1 and doc["hops"][-1]["detail"] == (
        "no endpoint: no pod on this node holds the destination address")
    text = trace(cluster, a.addr, unknown)
    assert text.stdout.splitlines()[-1] == (
        f"dropped on node {n1.underlay_ip}: no lease: no node holds the destination's subnet")


def test_a_spoofed_source_is_dropped_by_the_guard(cluster) -> None:
    n1, n2 = cluster.vxflow_nodes
    a, b = cluster.pods_of(n1)[0], cluster.pods_of(n2)[0]
    rc, doc = walk(cluster, a.addr, b.addr, "--src-ip", str(b.addr))  # claims b's address
    assert rc == 1
    (hop,) = doc["hops"]
    assert hop["result"] == "dropped" and hop["flows"][-1]["table"] == 0
    assert hop["detail"] == (
        "spoof guard: the pod's port admits only the pod's own MAC and IP address")
    assert f"nw_src={b.addr}" in hop["packet"]


@pytest.mark.random_leases
def test_what_cannot_be_traced_says_why(cluster) -> None:
    nobody = unleased(cluster)
    res = trace(cluster, nobody, "198.19.0.1")
    assert res.returncode == 3
    assert res.stderr == f"Error: {nobody} is no pod's address (no endpoint in etcd)\n"
    n1, n2 = cluster.vxflow_nodes
    a, b = cluster.pods_of(n1)[0], cluster.pods_of(n2)[0]
    res = subprocess.run([VXFLOW, "trace", str(a.addr), str(b.addr), *cluster.etcd_flags(),
                          f"--ovs={n1.underlay_ip}={n1.ovs.vswitchd_ctl}"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 1  # traced to the tunnel, not beyond
    assert res.stdout.splitlines()[-1] == (
        f"stopped on node {n2.underlay_ip}: no --ovs for this node: its switch cannot be "
        "traced from here")
