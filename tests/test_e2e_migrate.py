"""End to end: `vxflow migrate` turns a flannel-style node with two pods, between two
vxflow nodes and another flannel-style node, into a vxflow node while a 100 pps ping and a
TCP stream run to each of its pods from a pod of a vxflow node and from a pod of the other
flannel node: no stream resets, the pods keep their IPs and MACs, the node shows as a
vxflow node in `vxflow status`, `vxflow trace` from its pod is delivered and a podman
container attached through the CNI config the migration switched (its ADD served by the
node's agent) gets an unused address and reaches the pods. Then `vxflow migrate --rollback` returns it to flannel with the same
streams running. With ip-masq, a datagram every 10 ms from a pod of the migrated node to the
underlay host arrives, through both, with the node's address as its source. The longest gap of each stream during each is measured and printed (the
goal is 1 s; not asserted: the machine is shared).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from bench.migration import VXFLOW, Migrator, Traffic, pod_link
from cni.attachments import host_ifname
from flows.ports import gateway_mac, vtep_mac_for
from tests.emulation import cluster_module, emulated_cluster


@pytest.mark.e2e
def test_migrate_and_rollback_keep_the_pods_addresses_and_their_streams(tmp_path: Path) -> None:
    with emulated_cluster("mg", nodes=2, pods=2, flannel_nodes=2, containers=True) as cluster:
        node, peer = cluster.flannel_nodes
        pods = cluster.pods_of(node)
        sources = [cluster.pods_of(cluster.vxflow_nodes[0])[0], cluster.pods_of(peer)[0]]
        migrator = Migrator(cluster, node, tmp_path)
        before = {pod.name: pod_link(pod) for pod in pods}
        # flanneld's VtepMAC is its device's random one, not vxflow's: migrating changes it
        flanneld_vtep = json.loads(node.cmd("ip -j link show flannel.1"))[0]["address"]
        assert flanneld_vtep != vtep_mac_for(node.underlay_ip)
        assert peer_vteps(peer, node) == [flanneld_vtep]
        conf_dir, store = migrator.prepare(pods)
        traffic = Traffic(sources, pods, tmp_path)
        try:
            time.sleep(2)
            migrate = migrator.migrate()
            print(migrate.stdout, migrate.stderr)
            time.sleep(3)
            migrated(cluster, node, pods, sources, conf_dir, store)
            assert peer_vteps(peer, node) == [vtep_mac_for(node.underlay_ip)]  # followed
            podman_container(cluster, node, pods, conf_dir, store, tmp_path)
            # a pod that refreshed its ARP entry for the gateway while migrated: the switch
            # answered with the gateway port's MAC; rolling back tells it cni0's again
            gateway = pods[1].ip_if.network.network_address + 1
            pods[1].cmd(f"ip neigh replace {gateway} lladdr {gateway_mac(pods[1].ip_if.network)} "
                        "dev eth0 nud stale")  # fmt: skip
            time.sleep(1.1)  # past the neighbour entry's locktime
            rollback = migrator.rollback()
            print(rollback.stdout, rollback.stderr)
            time.sleep(3)
        finally:
            results = traffic.stop()
            migrator.close()

        assert migrate.stdout.splitlines()[-1] == f"migrated: {node.underlay_ip} is a vxflow node"
        assert rollback.stdout.splitlines()[-1] == f"rolled back: {node.underlay_ip} is a flannel node"
        for r in results:
            assert r.reset is None, f"the stream {r.name} broke: {r.reset}"
            assert [int(n) for _, n in r.rows] == list(range(len(r.rows)))  # all, in order
            for window in migrator.windows:
                gaps = r.gaps(window)
                print(f"{r.name} during {window.what}: TCP longest gap {gaps['tcp_s']:.3f} s, "
                      f"ping longest gap {gaps['ping_s']:.3f} s")  # fmt: skip
            print(f"{r.name}: {len(r.rows)} lines; {r.ping_summary()}")
        assert {pod.name: pod_link(pod) for pod in pods} == before
        # flannel again: flannel.1, the pods on cni0, no br-int, the CNI config as it was
        links = node.cmd("ip -o link show")
        assert "flannel.1" in links and "cni0" in links
        # flanneld kept the flannel.1 rollback re-created with its MAC: the VtepMAC of before
        assert json.loads(node.cmd("ip -j link show flannel.1"))[0]["address"] == flanneld_vtep
        assert peer_vteps(peer, node) == [flanneld_vtep]
        cni0_mac = json.loads(node.cmd("ip -j link show cni0"))[0]["address"]
        entry = json.loads(pods[1].cmd(f"ip -j neigh show {gateway} dev eth0"))
        assert [e.get("lladdr") for e in entry] == [cni0_mac], entry
        on_cni0 = json.loads(node.cmd("ip -j link show master cni0 2>/dev/null"))
        assert sorted(link["ifname"] for link in on_cni0) == sorted(pod.name for pod in pods)
        assert node.ovs.vsctl("list-br").split() == ["br-phy"]
        assert json.loads((conf_dir / "10-flannel.conflist").read_text())["plugins"][0]["type"] \
            == "flannel"  # fmt: skip
        assert allocations(store) == [str(pods[0].addr)]
        assert not (tmp_path / "migrate.json").exists()
        for src in sources:
            assert cluster.reachable(src, pods[1].addr)


def peer_vteps(peer, node) -> list[str]:
    """The VtepMACs flannel node `peer` sends to `node` with (its FDB entries for it)."""
    fdb = json.loads(peer.cmd("bridge -j fdb show dev flannel.1"))
    return [entry["mac"] for entry in fdb if entry.get("dst") == str(node.underlay_ip)]


def podman_container(cluster, node, pods, conf_dir: Path, store: Path, workdir: Path) -> None:
    """A podman container (runc) on the migrated node, attached through the conflist the
    migration switched: podman reads the node's CNI config dir itself, so its `cbr0` network
    is that file as written, and vxflow-cni hands the ADD to the migrated node's agent (the
    conflist's agentSocket: the migration's --cni-socket, the agent's), which plugs it into
    br-int and records it in the conflist's dataDir (--cni-data-dir). host-local, in the
    store the migration carried over, gives it an address of the node's subnet that no moved
    pod has, nor the gateway, and it reaches both moved pods. Removed again (CNI DEL through
    the same conflist releases the address) so the rollback finds the node as migrated."""
    podman = cluster.podman
    assert podman.add_node_conf_dir(node, conf_dir) == "cbr0"
    cid = podman.run(node, "migrated")
    try:
        address = IPv4Address(podman.address(cid))
        subnet = cluster.wait_subnet(node, 5)
        assert address in subnet
        assert address not in {pod.addr for pod in pods} | {subnet.network_address + 1}
        assert (store / str(address)).read_text().splitlines()[0] == cid  # host-local's file
        assert host_ifname(cid, "eth0") in node.ovs.vsctl("list-ports", "br-int").split()
        assert f"CNI ADD {cid}/eth0: status 0" in (workdir / "agent.log").read_text()
        assert [p.name for p in (workdir / "cni" / "cbr0").iterdir()] == [f"{cid}-eth0.json"]
        podman.wait_reachable(cid, str(pods[0].addr))
        out = podman.exec(cid, "ping", "-c", "3", "-W", "2", str(pods[1].addr)).stdout
        assert " 0% packet loss" in out, out
    finally:
        podman.rm(cid)
    assert allocations(store) == sorted(str(p.addr) for p in pods)  # released


def allocations(store: Path) -> list[str]:
    """The addresses host-local's `store` holds: its files but its own lock and
    last_reserved_ip.0 (which the container's ADD left, as on any node host-local served)."""
    return sorted(p.name for p in store.iterdir()
                  if p.name != "lock" and not p.name.startswith("last_reserved_ip"))  # fmt: skip


def migrated(cluster, node, pods, sources, conf_dir: Path, store: Path) -> None:
    """The node is a vxflow node: its pods on br-int, flannel's devices gone, vxflow-cni's
    conflist keeping host-local's network, every source reaching its pods, `vxflow trace`
    from its pod delivered, its switch connected in `vxflow status`."""
    assert sorted(node.ovs.vsctl("list-ports", "br-int").split()) == sorted(
        [*(pod.name for pod in pods), "vxgw0", "vxlan0"])
    links = node.cmd("ip -o link show")
    assert "flannel.1" not in links and "cni0" not in links
    conflist = json.loads((conf_dir / "10-flannel.conflist").read_text())
    assert conflist["name"] == "cbr0"
    assert [p["type"] for p in conflist["plugins"]] == ["vxflow", "portmap"]
    assert sorted(p.name for p in store.iterdir()) == sorted(str(p.addr) for p in pods)
    for src in sources:
        assert cluster.reachable(src, pods[1].addr)
    vx = cluster.vxflow_nodes[0]
    trace = subprocess.run(
        [VXFLOW, "trace", str(pods[0].addr), str(sources[0].addr),
         "--ovs", f"{node.underlay_ip}={node.ovs.vswitchd_ctl}",
         "--ovs", f"{vx.underlay_ip}={vx.ovs.vswitchd_ctl}", *cluster.etcd_flags()],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert trace.returncode == 0, trace.stdout + trace.stderr  # delivered
    status = subprocess.run([VXFLOW, "status", "-o", "json", *cluster.etcd_flags()],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    nodes = {n["public_ip"]: n for n in json.loads(status.stdout)["nodes"]}
    assert nodes[str(node.underlay_ip)]["connected_to"], nodes[str(node.underlay_ip)]


# A datagram every 10 ms to ARGV[1]:ARGV[2], "<n> <time sent>", each from a source port of its
# own: a connection of its own, so NAT is decided for each by the rules of that moment (not
# by conntrack's entry for an earlier one)
SENDER = """
import socket, sys, time
n = 0
while True:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("", 10000 + n % 50000))
        s.sendto(f"{n} {time.time()}".encode(), (sys.argv[1], int(sys.argv[2])))
    n += 1
    time.sleep(0.01)
"""


class Receiver:
    """A UDP socket on the underlay host (the root namespace's underlay address, outside the
    overlay), keeping each datagram's source address and payload until closed."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.got: list[tuple[str, str]] = []
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while not self.closing.is_set():
            try:
                data, (source, _port) = self.sock.recvfrom(100)
            except TimeoutError:
                continue
            self.got.append((source, data.decode()))

    def sent_by(self, pod) -> str:
        """One datagram from `pod`: the source address it arrived with."""
        count = len(self.got)
        pod.cmd(f"{sys.executable} -c 'import socket; socket.socket(socket.AF_INET, "
                f"socket.SOCK_DGRAM).sendto(b\"0 0\", (\"{self.address}\", {self.port}))'")  # fmt: skip
        deadline = time.monotonic() + 10
        while len(self.got) == count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.got) > count, "the datagram did not arrive"
        return self.got[count][0]

    def close(self) -> None:
        self.closing.set()
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.mark.e2e
def test_ip_masq_hand_over_leaves_no_datagram_unmasqueraded(tmp_path: Path) -> None:
    """flanneld's --ip-masq (iptables) to the agent's (nftables) and back, under a datagram
    every 10 ms from the node's pod to the underlay host: every datagram that arrives has
    the node's address as its source, and datagrams sent during each run arrived. The
    control: one exempted from masquerade by a rule of the test's arrives with the pod's
    own address, so an unmasqueraded one would be seen."""
    with emulated_cluster("mq", nodes=1, pods=1, flannel_nodes=1, ip_masq=True) as cluster:
        node = cluster.flannel_nodes[0]
        pod = cluster.pods_of(node)[0]
        migrator = Migrator(cluster, node, tmp_path)
        migrator.prepare([pod])
        root = str(cluster_module().ROOT_IP)
        control, stream = Receiver(root), Receiver(root)
        sender = None
        try:
            exempt = f"POSTROUTING -p udp --dport {control.port} -j ACCEPT"
            node.cmd(f"iptables -w -t nat -I {exempt.replace('POSTROUTING', 'POSTROUTING 1')}")
            assert control.sent_by(pod) == str(pod.addr)  # unmasqueraded: seen as such
            node.cmd(f"iptables -w -t nat -D {exempt}")
            assert control.sent_by(pod) == str(node.underlay_ip)

            sender = pod.popen([sys.executable, "-c", SENDER, root, str(stream.port)])
            time.sleep(1)
            print(migrator.migrate().stdout)
            time.sleep(1)
            print(migrator.rollback().stdout)
            time.sleep(1)
        finally:
            if sender is not None:
                sender.kill()
                sender.wait()
            control.close()
            stream.close()
            migrator.close()
    sent = {int(payload.split()[0]): float(payload.split()[1]) for _, payload in stream.got}
    assert {source for source, _ in stream.got} == {str(node.underlay_ip)}
    for window in migrator.windows:
        assert any(window.wall[0] <= at <= window.wall[1] for at in sent.values()), window.what
    print(f"{len(sent)} of {max(sent) + 1} datagrams arrived, each from {node.underlay_ip}")
