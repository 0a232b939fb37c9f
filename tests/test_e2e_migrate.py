"""End to end: `vxflow migrate` turns a flannel-style node with two pods, between two
vxflow nodes and another flannel-style node, into a vxflow node while a 100 pps ping and a
TCP stream run to each of its pods from a pod of a vxflow node and from a pod of the other
flannel node: no stream resets, the pods keep their IPs and MACs, the node shows as a
vxflow node in `vxflow status` and `vxflow trace` from its pod is delivered. Then
`vxflow migrate --rollback` returns it to flannel with the same streams running. The longest
gap of each stream during each is measured and printed (the goal is 1 s; not asserted: the
machine is shared).
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.ports import gateway_mac
from tests.emulation import background, emulated_cluster, stop_by_pidfile, stop_command

VXFLOW = str(Path(sys.executable).parent / "vxflow")
STREAM = str(Path(__file__).with_name("tcp_stream.py"))
PORT = 5001


def pod_link(pod) -> tuple[list[str], str]:
    """A pod's IPv4 addresses and MAC, as its kernel has them."""
    link = json.loads(pod.cmd("ip -j addr show dev eth0"))[0]
    return sorted(f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                  if a["family"] == "inet"), link["address"]  # fmt: skip


def longest_gap(times: list[float], since: float, until: float) -> float:
    """The longest pause between two samples in `times` that spans part of [since, until]."""
    return max((b - a for a, b in itertools.pairwise(times) if b >= since and a <= until),
               default=float("inf"))  # fmt: skip


def summary(ping: str) -> str:
    """ping's own count: `N packets transmitted, M received, L% packet loss`."""
    return next((line.split(", time")[0] for line in ping.splitlines()
                 if "packets transmitted" in line), "no summary")  # fmt: skip


@pytest.mark.e2e
def test_migrate_and_rollback_keep_the_pods_addresses_and_their_streams(tmp_path: Path) -> None:
    with emulated_cluster("mg", nodes=2, pods=2, flannel_nodes=2) as cluster:
        node, peer = cluster.flannel_nodes
        pods = cluster.pods_of(node)
        sources = [cluster.pods_of(cluster.vxflow_nodes[0])[0], cluster.pods_of(peer)[0]]
        node.start_ovs(cluster.node_dir(node) / "ovs")  # OVS installed beside flanneld
        cluster.wait_connected()
        before = {pod.name: pod_link(pod) for pod in pods}
        for pod in pods:  # the bridge learns each pod's MAC, the node its neighbour entry
            pod.cmd(f"ping -c 1 -W 1 {pod.ip_if.network.network_address + 1}")
        # flannel's CNI side as kube-flannel leaves it: its conflist, host-local's store
        conf_dir, store = tmp_path / "net.d", tmp_path / "networks" / "cbr0"
        conf_dir.mkdir()
        store.mkdir(parents=True)
        (conf_dir / "10-flannel.conflist").write_text(json.dumps({
            "name": "cbr0", "cniVersion": "0.3.1",
            "plugins": [{"type": "flannel", "delegate": {"isDefaultGateway": True}},
                        {"type": "portmap", "capabilities": {"portMappings": True}}]}))  # fmt: skip
        (store / str(pods[0].addr)).write_text("container-1\r\neth0")

        stop = tmp_path / "stop"
        streams = [(src, pod, PORT + i) for i, src in enumerate(sources) for pod in pods]
        servers = [(f"{src.name}->{pod.name}", tmp_path / f"{src.name}-{pod.name}",
                    pod.popen([sys.executable, STREAM, "server", str(port),
                               str(tmp_path / f"{src.name}-{pod.name}")]))
                   for src, pod, port in streams]  # fmt: skip
        time.sleep(0.5)
        clients = [src.popen([sys.executable, STREAM, "client", str(pod.addr), str(port),
                              str(stop)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                   for src, pod, port in streams]  # fmt: skip
        ping_logs = [tmp_path / f"{src.name}-{pod.name}.ping" for src, pod, _ in streams]
        pings = [src.popen(["ping", "-n", "-D", "-i", "0.01", str(pod.addr)],
                           stdout=log.open("wb"), stderr=subprocess.STDOUT)
                 for (src, pod, _), log in zip(streams, ping_logs, strict=True)]  # fmt: skip
        agent_pid = tmp_path / "agent.pid"
        flags = [*cluster.etcd_flags(str(node.underlay_ip)), "--public-ip", str(node.underlay_ip),
                 "--subnet-file", str(cluster.subnet_env_path(node)), "--ovsdb",
                 node.ovs.db_target, "--stop-agent", stop_command(agent_pid),
                 "--start-flanneld", background(cluster.flannel_cmd(node), tmp_path / "flanneld"),
                 "--cni-conf-dir", str(conf_dir), "--cni-networks-dir", str(tmp_path / "networks"),
                 "--state-file", str(tmp_path / "migrate.json")]  # fmt: skip
        windows: dict[str, tuple[float, float, float, float]] = {}  # monotonic and wall clock

        def timed(what: str, *args: str) -> subprocess.CompletedProcess:
            start = (time.monotonic(), time.time())
            res = subprocess.run(["mnexec", "-a", str(node.pid), VXFLOW, "migrate", *args, *flags],
                                 capture_output=True, text=True, timeout=180)  # fmt: skip
            windows[what] = (*start, time.monotonic(), time.time())
            print(res.stdout, res.stderr)
            assert res.returncode == 0, res.stdout + res.stderr
            return res

        try:
            time.sleep(2)
            migrate = timed("migrate", "--flanneld-pid", str(node.procs["flannel"].pid),
                            "--start-agent", background(cluster.agent_cmd(node), tmp_path / "agent"))  # fmt: skip
            time.sleep(3)
            migrated(cluster, node, pods, sources, conf_dir, store)
            # a pod that refreshed its ARP entry for the gateway while migrated: the switch
            # answered with the gateway port's MAC; rolling back tells it cni0's again
            gateway = pods[1].ip_if.network.network_address + 1
            pods[1].cmd(f"ip neigh replace {gateway} lladdr {gateway_mac(pods[1].ip_if.network)} "
                        "dev eth0 nud stale")  # fmt: skip
            time.sleep(1.1)  # past the neighbour entry's locktime
            rollback = timed("rollback", "--rollback")
            time.sleep(3)
        finally:
            stop.touch()
            outputs = [c.communicate(timeout=60)[0].decode() for c in clients]
            for ping in pings:
                ping.send_signal(signal.SIGINT)
            for ping in pings:
                ping.wait(timeout=30)
            replies = [log.read_text() for log in ping_logs]
            for _pod, _out, server in servers:
                server.wait(timeout=30)
            stop_by_pidfile(agent_pid)
            stop_by_pidfile(tmp_path / "flanneld.pid")

        assert migrate.stdout.splitlines()[-1] == f"migrated: {node.underlay_ip} is a vxflow node"
        assert rollback.stdout.splitlines()[-1] == f"rolled back: {node.underlay_ip} is a flannel node"
        for (name, _out, _server), c, out in zip(servers, clients, outputs, strict=True):
            assert c.returncode == 0, f"the stream {name} broke: {out}"
        for (name, out, _server), ping in zip(servers, replies, strict=True):
            lines = out.read_text().split("\n")
            assert lines[-2:] == ["end", ""], lines[-3:]  # closed cleanly, never broken
            rows = [line.split() for line in lines[:-2]]
            assert [int(n) for _, n in rows] == list(range(len(rows)))  # all of it, in order
            received = [float(t) for t, _ in rows]
            stamps = [float(line[1:line.index("]")]) for line in ping.splitlines()
                      if "bytes from" in line]  # fmt: skip
            for what, (mono0, wall0, mono1, wall1) in windows.items():
                print(f"{name} during {what}: TCP longest gap "
                      f"{longest_gap(received, mono0, mono1):.3f} s, ping longest gap "
                      f"{longest_gap(stamps, wall0, wall1):.3f} s")  # fmt: skip
            print(f"{name}: {len(rows)} lines; {summary(ping)}")
        assert {pod.name: pod_link(pod) for pod in pods} == before
        # flannel again: flannel.1, the pods on cni0, no br-int, the CNI config as it was
        links = node.cmd("ip -o link show")
        assert "flannel.1" in links and "cni0" in links
        cni0_mac = json.loads(node.cmd("ip -j link show cni0"))[0]["address"]
        entry = json.loads(pods[1].cmd(f"ip -j neigh show {gateway} dev eth0"))
        assert [e.get("lladdr") for e in entry] == [cni0_mac], entry
        on_cni0 = json.loads(node.cmd("ip -j link show master cni0 2>/dev/null"))
        assert sorted(link["ifname"] for link in on_cni0) == sorted(pod.name for pod in pods)
        assert node.ovs.vsctl("list-br").split() == ["br-phy"]
        assert json.loads((conf_dir / "10-flannel.conflist").read_text())["plugins"][0]["type"] \
            == "flannel"  # fmt: skip
        assert sorted(p.name for p in store.iterdir()) == [str(pods[0].addr)]
        assert not (tmp_path / "migrate.json").exists()
        for src in sources:
            assert cluster.reachable(src, pods[1].addr)


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
