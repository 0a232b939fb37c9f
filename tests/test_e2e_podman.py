"""End to end with a real container runtime: podman + runc run containers whose network is vxflow.

A 2-node cluster (mininet/vxcluster.py) with a private podman whose CNI
network on each node is vxflow (mininet/vxpodman.py: the client that
`vxflow-cni install` writes, served by the node's agent), agents with
--ip-masq. podman and runc need the real cgroup mount: run this file under
`unshare --net` rather than `ip netns exec` (which remounts /sys).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from cni.attachments import host_ifname
from leases.registry import Registry
from tests.cni_node import VXFLOW
from tests.emulation import emulated_cluster
from vxflow.demo import cluster_module

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster() -> Iterator:
    with emulated_cluster("c", nodes=2, pods=1, ip_masq=True, containers=True) as running:
        yield running


def subnet_of(cluster, node) -> IPv4Network:
    return cluster.wait_subnet(node, 5)


def node_state(cluster, node) -> dict:
    """What attachments leave on a node: pod ports, links, addresses, records, endpoints."""
    podman = cluster.podman
    records = podman.node_dir(node) / "cni" / "vxflow"
    with Registry(cluster.etcd_endpoint, cluster.spec.prefix) as registry:
        endpoints = sorted(str(e.ip) for e in registry.list_endpoints(subnet_of(cluster, node)))
    return {
        "ports": sorted(node.ovs.vsctl("list-ports", "br-int").split()),
        "links": sorted(re.findall(r"^\d+: (\S+?)[@:]", node.cmd("ip -o link"), re.M)),
        "addresses": sorted(p.name for p in podman.ipam_dir(node).glob("198.19.*")),
        "records": sorted(p.name for p in records.glob("*.json")) if records.exists() else [],
        "endpoints": endpoints,
    }


def wait_state(cluster, node, want: dict, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while (have := node_state(cluster, node)) != want:
        assert time.monotonic() < deadline, f"{node.name}: {have} != {want}"
        time.sleep(0.3)


def test_containers_on_two_nodes_ping_each_other_and_a_pod(cluster) -> None:
    podman = cluster.podman
    n1, n2 = cluster.vxflow_nodes
    a, b = podman.run(n1, "ping-a"), podman.run(n2, "ping-b")
    ip_a, ip_b = podman.address(a), podman.address(b)
    assert IPv4Address(ip_a) in subnet_of(cluster, n1)
    assert IPv4Address(ip_b) in subnet_of(cluster, n2)
    podman.wait_reachable(a, ip_b)
    out = podman.exec(a, "ping", "-c", "3", "-W", "2", ip_b).stdout
    assert " 0% packet loss" in out and set(re.findall(r"ttl=(\d+)", out)) == {"63"}, out
    pod = cluster.pods_of(n2)[0]  # a Mininet pod, plugged in by hand
    out = podman.exec(a, "ping", "-c", "3", "-W", "2", str(pod.addr)).stdout
    assert " 0% packet loss" in out and set(re.findall(r"ttl=(\d+)", out)) == {"63"}, out
    out = pod.cmd(f"ping -n -c 3 -W 2 {ip_a}")
    assert " 0% packet loss" in out and set(re.findall(r"ttl=(\d+)", out)) == {"63"}, out
    podman.rm(a)
    podman.rm(b)


def test_podman_rm_removes_port_endpoint_and_address(cluster) -> None:
    podman, n1 = cluster.podman, cluster.vxflow_nodes[0]
    before = node_state(cluster, n1)
    cid = podman.run(n1, "removed")
    address, port = podman.address(cid), host_ifname(cid, "eth0")
    added = {
        "ports": sorted([*before["ports"], port]),
        "links": sorted([*before["links"], port]),
        "addresses": sorted([*before["addresses"], address]),
        "records": sorted([*before["records"], f"{cid}-eth0.json"]),
        "endpoints": sorted([*before["endpoints"], address]),
    }
    wait_state(cluster, n1, added)  # the agent published the endpoint
    podman.rm(cid)
    wait_state(cluster, n1, before)
    # podman ran the installed client, whose calls n1's agent served (not the plugin in-process)
    log = (cluster.node_dir(n1) / "agent.log").read_text()
    assert f"CNI ADD {cid}/eth0: status 0" in log and f"CNI DEL {cid}/eth0: status 0" in log


def test_twenty_containers_started_and_removed_leak_nothing(cluster) -> None:
    podman, n1 = cluster.podman, cluster.vxflow_nodes[0]
    before = node_state(cluster, n1)
    started = [podman.run(n1, f"loop{i}") for i in range(20)]
    addresses = {podman.address(cid) for cid in started}
    assert len(addresses) == 20
    state = node_state(cluster, n1)
    assert len(state["ports"]) == len(before["ports"]) + 20
    assert set(state["addresses"]) == set(before["addresses"]) | addresses
    for cid in started:
        podman.rm(cid)
    wait_state(cluster, n1, before)


def vxflow_json(cluster, *args: str) -> object:
    res = subprocess.run([VXFLOW, *args, "-o", "json", "--etcd-endpoints",
                          cluster.etcd_endpoint, "--etcd-prefix", cluster.spec.prefix],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_a_container_gets_its_pod_identity_published_and_a_policy_selects_it(cluster) -> None:
    """podman names the pod (K8S_POD_NAME: the container's name; K8S_POD_NAMESPACE from the
    CNI_ARGS podman forwards), the node's conflist labels it (args.cni.labels), the agent
    publishes it, `policies explain` finds the policy that selects it."""
    podman, n1 = cluster.podman, cluster.vxflow_nodes[0]
    vxpodman = cluster_module().vxpodman
    conflist = podman.node_dir(n1) / "net.d" / f"10-{vxpodman.NETWORK}.conflist"
    original = conflist.read_text()
    labelled = json.loads(original)
    labelled["plugins"][0]["args"] = {"cni": {"labels": [{"key": "app", "value": "web"}]}}
    conflist.write_text(json.dumps(labelled))
    try:
        before = node_state(cluster, n1)
        argv, env = podman.command(n1, "run", "--rm", "--name", "not.-a-pod", "--network",
                                   vxpodman.NETWORK, vxpodman.IMAGE, "true")  # fmt: skip
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode != 0 and "is not a Kubernetes name" in res.stderr, res.stderr
        assert node_state(cluster, n1) == before  # refused whole: nothing left behind
        cid = podman.run(n1, "web-1", env={"CNI_ARGS": "K8S_POD_NAMESPACE=shop"})
    finally:
        conflist.write_text(original)
    address = podman.address(cid)
    want = {"Namespace": "shop", "Name": "web-1", "Labels": {"app": "web"}, "Ports": [],
            "IP": address, "Node": str(n1.underlay_ip), "Port": host_ifname(cid, "eth0")}  # fmt: skip
    deadline = time.monotonic() + 15
    while want not in (pods := vxflow_json(cluster, "pods", "list")):
        assert time.monotonic() < deadline, pods
        time.sleep(0.3)
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "web-from-front", "namespace": "shop"},
              "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels":
                                                                    {"team": "front"}}}]}]}}  # fmt: skip
    etcd = ["--etcd-endpoints", cluster.etcd_endpoint, "--etcd-prefix", cluster.spec.prefix]
    subprocess.run([VXFLOW, "policies", "set", "-", *etcd], input=json.dumps(policy),
                   check=True, capture_output=True, text=True, timeout=60)  # fmt: skip
    try:
        explained = vxflow_json(cluster, "policies", "explain", "shop/web-1")
        assert explained["Ingress"] == {"isolated": True, "policies": [{
            "policy": "shop/web-from-front",
            "rules": [{"peers": [{"peer": "every pod in namespaces team=front", "pods": []}],
                       "ports": []}]}]}  # fmt: skip
        assert explained["Egress"] == {"isolated": False, "policies": []}
    finally:
        subprocess.run([VXFLOW, "policies", "rm", "shop/web-from-front", *etcd], check=True,
                       capture_output=True, timeout=60)  # fmt: skip
    podman.rm(cid)
    assert not any(p["Name"] == "web-1" for p in vxflow_json(cluster, "pods", "list"))


@pytest.fixture
def outside(cluster) -> Iterator[tuple[str, str]]:
    """A namespace on the underlay, outside the overlay: (its name, its address)."""
    tag = cluster.spec.tag
    ns, root_end = f"{tag}x", f"{tag}-x"
    underlay = next(s for s in cluster.net.switches if s.name == tag)
    address = str(list(underlay.node_addresses())[-1])  # the block's last: no node's
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (
            ["ip", "link", "add", root_end, "type", "veth", "peer", "name", "eth0", "netns", ns],
            ["ip", "link", "set", root_end, "master", tag, "up"],
            ["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0"],
            ["ip", "-n", ns, "link", "set", "eth0", "up"],
        ):
            subprocess.run(cmd, check=True)
        yield ns, address
    finally:
        subprocess.run(["ip", "link", "del", root_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], check=True)


def capture(argv: list[str], action) -> str:
    """tcpdump (argv) while `action` runs: the first ICMP echo request it saw."""
    dump = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in dump.stderr:
            if line.startswith("listening on"):
                break
        action()
        seen, _ = dump.communicate(timeout=15)
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.communicate()
    return seen


def test_ip_masq_outside_gets_the_node_address_pods_keep_theirs(cluster, outside) -> None:
    ns, address = outside
    podman = cluster.podman
    n1, n2 = cluster.vxflow_nodes
    cid = podman.run(n1, "masq")
    try:
        own = podman.address(cid)
        pod = cluster.pods_of(n2)[0]
        podman.wait_reachable(cid, str(pod.addr))
        seen = capture(
            ["ip", "netns", "exec", ns, "tcpdump", "-l", "-n", "-c", "1", "-i", "eth0",
             "icmp[icmptype] == icmp-echo"],
            lambda: podman.exec(cid, "ping", "-c", "2", "-W", "2", address),
        )  # fmt: skip
        assert f"IP {n1.underlay_ip} > {address}: ICMP echo request" in seen, seen
        out = podman.exec(cid, "ping", "-c", "2", "-W", "2", address).stdout
        assert " 0% packet loss" in out, out
        seen = capture(
            ["mnexec", "-a", str(pod.pid), "tcpdump", "-l", "-n", "-c", "1", "-i", "eth0",
             "icmp[icmptype] == icmp-echo"],
            lambda: podman.exec(cid, "ping", "-c", "2", "-W", "2", str(pod.addr)),
        )  # fmt: skip
        assert f"IP {own} > {pod.addr}: ICMP echo request" in seen, seen
    finally:
        podman.rm(cid)
