"""The harness itself: two emulated nodes, static flows of the shape docs/architecture.md describes.

Proves the recipe the controller builds on: pod-to-pod ping across a userspace
VXLAN tunnel with ttl=63 and the configured VNI on the underlay.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from ovsdb.instance import OvsInstance
from tests.emulation import TAG_PREFIX, Node, Underlay
from tests.leftovers import processes_of_this_run

VNI = 42
PORT = 8472
TUNNEL_OFPORT = 1


def vtep_mac(node: Node) -> str:
    return "0e:76:" + ":".join(f"{int(b):02x}" for b in str(node.underlay_ip).split("."))


def add_br_int(node: Node) -> None:
    node.ovs.vsctl(
        "add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev",
        "fail_mode=secure", "protocols=OpenFlow13,OpenFlow14",
        "--", "add-port", "br-int", "vxlan0", "--", "set", "interface", "vxlan0",
        "type=vxlan", f"ofport_request={TUNNEL_OFPORT}", "options:remote_ip=flow",
        "options:key=flow", f"options:local_ip={node.underlay_ip}", f"options:dst_port={PORT}",
    )  # fmt: skip


def static_flows(node: Node, peer: Node, gw_mac: str) -> str:
    """The remote-subnet, tunnel-ingress and ARP-less delivery flows for one pod per node."""
    pod, remote_pod = node.pods[0], peer.pods[0]
    return "\n".join(
        [
            "table=0,priority=0,actions=drop",
            # one flow per remote lease: encapsulate like flannel's vxlan device
            f"table=0,priority=100,in_port={pod.ofport},ip,dl_src={pod.mac},nw_src={pod.ip.ip},"
            f"nw_dst={remote_pod.ip.network},actions=dec_ttl,"
            f"set_field:{vtep_mac(node)}->eth_src,set_field:{vtep_mac(peer)}->eth_dst,"
            f"set_field:{peer.underlay_ip}->tun_dst,set_field:{VNI}->tun_id,"
            f"output:{TUNNEL_OFPORT}",
            # tunnel ingress: only our VNI, exact /32 to the local pod
            f"table=0,priority=100,in_port={TUNNEL_OFPORT},tun_id={VNI},ip,"
            f"nw_dst={pod.ip.ip},actions=set_field:{gw_mac}->eth_src,"
            f"set_field:{pod.mac}->eth_dst,output:{pod.ofport}",
        ]
    )


@pytest.mark.integration
def test_two_nodes_static_flows_ping_ttl63_and_vxlan_on_wire(underlay: Underlay) -> None:
    n1, n2 = underlay.add_node(), underlay.add_node()
    gw_mac = "0a:58:c6:13:00:01"
    for node in (n1, n2):
        add_br_int(node)
    underlay.add_pod(n1, "198.19.1.2/24", "0a:58:c6:13:01:02")
    underlay.add_pod(n2, "198.19.2.2/24", "0a:58:c6:13:02:02")
    for node, peer in ((n1, n2), (n2, n1)):
        gw = str(node.pods[0].ip.network.network_address + 1)
        node.pods[0].run("ip", "neigh", "replace", gw, "lladdr", gw_mac, "dev", "eth0")
        node.ovs.ofctl(
            "--bundle", "add-flows", "br-int", "-", input=static_flows(node, peer, gw_mac)
        )
        # userspace tunnels resolve the remote VTEP from ARP snooped on br-phy: warm it
        node.run("ping", "-c", "1", "-W", "2", str(peer.underlay_ip))

    capture = subprocess.Popen(
        ["tcpdump", "-l", "-n", "-i", f"{underlay.tag}-n2", "-c", "2", "-T", "vxlan",
         f"udp port {PORT}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        time.sleep(1)  # tcpdump has no readiness signal; it must be listening before the ping
        out = n1.pods[0].run("ping", "-c", "3", "-W", "2", str(n2.pods[0].ip.ip))
        seen, _ = capture.communicate(timeout=10)
    finally:
        if capture.poll() is None:
            capture.kill()
            capture.wait()
    assert re.search(r"3 received", out), out
    ttls = set(re.findall(r"ttl=(\d+)", out))
    assert ttls == {"63"}, out
    assert f"vni {VNI}" in seen, seen
    assert "VXLAN, flags [I] (0x08)" in seen, seen
    # and it was the pods' ICMP inside
    assert f"{n1.pods[0].ip.ip} > {n2.pods[0].ip.ip}: ICMP echo request" in seen or (
        f"{n2.pods[0].ip.ip} > {n1.pods[0].ip.ip}: ICMP echo reply" in seen
    ), seen


@pytest.mark.integration
def test_an_ovs_start_that_fails_half_way_leaves_no_daemon(tmp_path) -> None:
    ovs = OvsInstance(name="half", workdir=tmp_path)
    with pytest.raises(RuntimeError, match="no-such-command"):
        ovs.start(before_vswitchd=[["no-such-command"]])  # after ovsdb-server, before vswitchd
    assert [p for p in processes_of_this_run() if str(tmp_path) in p] == []
    assert (tmp_path / "ovsdb-server.log").exists()  # kept, to read why


@pytest.mark.integration
def test_the_sandbox_keeps_the_machines_network_namespace_out_of_reach() -> None:
    """conftest moved this process into a network namespace of its own (tests/sandbox.py):
    it holds nothing but its loopback and what the tests make; the cgroup tree is kept."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}
    assert "lo" in names and all(n == "lo" or n.startswith(TAG_PREFIX) for n in names), names
    assert sorted(os.listdir("/sys/class/net")) == sorted(names)  # /sys shows this namespace
    assert os.listdir("/sys/fs/cgroup")  # runc finds its cgroups
