"""The node agent on emulated nodes: real etcd, real ovsdb-server/ovs-vswitchd, agent subprocesses.

Each agent runs as `vxflow agent` inside its node's namespace and reaches etcd
over the underlay at 198.18.0.254; it is stopped by its PID in `finally`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network, IPv6Network
from pathlib import Path

import pytest

from daemons.processes import stop_process
from leases.etcd_server import EtcdServer, free_loopback_port
from leases.model import Readiness
from leases.registry import Registry
from leases.subnet_env import read_subnet_env
from ovsdb.ipmasq import listed_rules, masq_rules
from tests.emulation import ROOT_UNDERLAY_IP, Node, Underlay
from tests.ofharness import metric

PREFIX = "/vxflow-test/network"
CONFIG = '{"Network": "198.19.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}'
VXFLOW = str(Path(sys.executable).parent / "vxflow")


def wait_for(pred: Callable[[], object], what: str, timeout: float = 20.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class AgentProc:
    node: Node
    workdir: Path
    etcd: EtcdServer
    proc: subprocess.Popen | None = None
    starts: int = 0
    extra: tuple[str, ...] = field(default=())
    env: dict[str, str] = field(default_factory=dict)  # FLANNELD_* settings instead of flags
    wrap: tuple[str, ...] = ()  # runs the agent (e.g. setpriv with a unit's capabilities)

    @property
    def subnet_file(self) -> Path:
        return self.workdir / "subnet.env"

    @property
    def cni_socket(self) -> Path:
        return self.workdir / "cni.sock"

    @property
    def log(self) -> Path:
        return self.workdir / "agent.log"

    def start(self) -> AgentProc:
        self.starts += 1
        cmd = [
            "ip", "netns", "exec", self.node.netns, *self.wrap, VXFLOW, "--log-level", "debug",
            "agent",
            "--etcd-endpoints", f"http://{ROOT_UNDERLAY_IP}:{self.etcd.client_port}",
            "--etcd-prefix", PREFIX,
            *(() if "FLANNELD_IFACE" in self.env else ("--public-ip", str(self.node.underlay_ip))),
            "--subnet-file", str(self.subnet_file), "--ovsdb", self.node.ovs.db_target,
            "--resync-interval", "3", "--cni-socket", str(self.cni_socket), *self.extra,
        ]  # fmt: skip
        with open(self.log, "a") as out:
            out.write(f"--- start {self.starts}\n")
            out.flush()
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
            )
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Stop our agent by its PID (SIGKILL after 10 s); its exit status."""
        proc, self.proc = self.proc, None
        return stop_process(proc, sig)

    def subnet(self) -> IPv4Network:
        """The subnet from subnet.env, once the bridge's gateway carries its address too."""
        env = wait_for(lambda: read_subnet_env(self.subnet_file), f"{self.subnet_file}")
        gw = str(env.subnet)
        wait_for(lambda: gateway_address(self.node) == [gw], f"{gw} on {self.node.netns} vxgw0")
        return env.subnet.network

    def log_text(self) -> str:
        return self.log.read_text()


@dataclass
class Cluster:
    underlay: Underlay
    etcd: EtcdServer
    registry: Registry
    agents: list[AgentProc]

    def endpoint_kvs(self) -> list:
        kvs, _ = self.registry.etcd.range(self.registry.keys.endpoints, prefix=True)
        return kvs

    def endpoints(self, subnet: IPv4Network) -> dict[str, tuple[str, int]]:
        return {str(e.ip): (e.mac, e.ofport) for e in self.registry.list_endpoints(subnet)}


def make_cluster(underlay: Underlay, tmp_path: Path, nodes: int) -> Iterator[Cluster]:
    members = [underlay.add_node() for _ in range(nodes)]
    etcd = EtcdServer(host=str(ROOT_UNDERLAY_IP)).start()
    registry = Registry(f"http://127.0.0.1:{etcd.client_port}", PREFIX)
    agents = []
    try:
        registry.set_config(CONFIG)
        for node in members:
            workdir = tmp_path / node.netns
            workdir.mkdir()
            agents.append(AgentProc(node, workdir, etcd))
        yield Cluster(underlay, etcd, registry, agents)
    finally:
        for agent in agents:
            agent.stop()
        registry.close()
        etcd.stop()


@pytest.fixture
def cluster3(underlay: Underlay, tmp_path: Path) -> Iterator[Cluster]:
    yield from make_cluster(underlay, tmp_path, 3)


@pytest.fixture
def cluster1(underlay: Underlay, tmp_path: Path) -> Iterator[Cluster]:
    yield from make_cluster(underlay, tmp_path, 1)


def add_internal_pod(node: Node, name: str, ip: str, mac: str) -> None:
    """A pod port as a CNI plugin would leave it (an internal port stands in for the veth)."""
    node.ovs.vsctl(
        "add-port", "br-int", name, "--", "set", "Interface", name, "type=internal",
        f"external_ids:attached-mac={mac}", f"external_ids:vxflow-ip={ip}",
    )  # fmt: skip


def gateway_address(node: Node) -> list[str]:
    out = node.run("ip", "-j", "addr", "show", "dev", "vxgw0", check=False)
    if not out.strip():
        return []  # not created yet
    link = json.loads(out)[0]
    return [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet"]


@pytest.mark.integration
def test_three_agents_three_subnets_and_pod_endpoints(cluster3: Cluster) -> None:
    cluster3.agents[2].env = {"FLANNELD_IFACE": "br-phy"}  # PublicIP from the interface
    for agent in cluster3.agents:
        agent.start()
    subnets = [agent.subnet() for agent in cluster3.agents]
    assert len(set(subnets)) == 3
    leases = {lease.public_ip: lease for lease in cluster3.registry.list_leases()}
    for agent, subnet in zip(cluster3.agents, subnets, strict=True):
        assert leases[agent.node.underlay_ip].subnet == subnet
        assert subnet.subnet_of(IPv4Network("198.19.0.0/16")) and subnet.prefixlen == 24
        assert agent.subnet_file.read_text() == (
            f"FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET={subnet.network_address + 1}/24\n"
            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        )
        assert gateway_address(agent.node) == [f"{subnet.network_address + 1}/24"]

    # pod ports on node 1: a veth pod, an internal-port pod, and three bad ones
    agent, subnet = cluster3.agents[0], subnets[0]
    node, base = agent.node, subnet.network_address
    pod = cluster3.underlay.add_pod(node, f"{base + 10}/24", "0a:58:00:00:00:0a")
    node.ovs.vsctl("set", "Interface", pod.port, "external_ids:attached-mac=0A:58:00:00:00:0A",
                   f"external_ids:vxflow-ip={base + 10}")  # fmt: skip
    add_internal_pod(node, "pod11", str(base + 11), "0a:58:00:00:00:0b")
    add_internal_pod(node, "badmac", str(base + 12), "zz:58:00:00:00:0c")
    add_internal_pod(node, "outside", str(subnets[1].network_address + 5), "0a:58:00:00:00:0d")
    add_internal_pod(node, "badip", "198.19.300.1", "0a:58:00:00:00:0e")
    expected = {str(base + 10): ("0a:58:00:00:00:0a", pod.ofport)}
    ofport11 = int(node.ovs.vsctl("get", "Interface", "pod11", "ofport"))
    expected[str(base + 11)] = ("0a:58:00:00:00:0b", ofport11)
    wait_for(lambda: cluster3.endpoints(subnet) == expected, f"endpoints {expected}")
    log = wait_for(lambda: "pod port badip rejected" in agent.log_text() and agent.log_text(),
                   "the rejection log lines")  # fmt: skip
    assert "pod port badmac rejected: external_ids:attached-mac: not a MAC address" in log
    assert (
        f"pod port outside rejected: vxflow-ip {subnets[1].network_address + 5} is outside" in log
    )
    assert "pod port badip rejected: external_ids:vxflow-ip='198.19.300.1' is not" in log
    assert len(cluster3.endpoint_kvs()) == 2  # nothing of the bad ones reached etcd
    kv = cluster3.registry.etcd.get(f"{PREFIX}/vxflow/endpoints/{base}-24/{base + 10}")
    assert kv.lease == cluster3.registry.lease_for(subnet).etcd_lease_id  # bound to the node lease

    node.ovs.vsctl("del-port", "br-int", "pod11")
    del expected[str(base + 11)]
    wait_for(lambda: cluster3.endpoints(subnet) == expected, "pod11's endpoint to go")

    # SIGTERM keeps the lease (flanneld's behaviour)
    assert agent.stop() == 0
    assert "keeping lease" in agent.log_text()
    assert cluster3.registry.lease_for(subnet).public_ip == node.underlay_ip
    assert cluster3.endpoints(subnet) == expected


@pytest.mark.integration
def test_agent_kill9_restart_and_ovsdb_server_restart(cluster1: Cluster) -> None:
    agent = cluster1.agents[0].start()
    node, subnet = agent.node, agent.subnet()
    base = subnet.network_address
    add_internal_pod(node, "pod5", str(base + 5), "0a:58:00:00:00:05")
    add_internal_pod(node, "pod6", str(base + 6), "0a:58:00:00:00:06")
    wait_for(lambda: len(cluster1.endpoints(subnet)) == 2, "two endpoints")
    before = {kv.key: kv.mod_revision for kv in cluster1.endpoint_kvs()}
    lease_before = cluster1.registry.lease_for(subnet)

    agent.stop(signal.SIGKILL)
    agent.start()
    wait_for(lambda: agent.log_text().count("holding lease") == 2, "the restarted agent's lease")
    time.sleep(4)  # a full resync interval: anything it would rewrite, it has rewritten
    assert agent.subnet() == subnet
    assert cluster1.registry.lease_for(subnet).etcd_lease_id == lease_before.etcd_lease_id
    assert {kv.key: kv.mod_revision for kv in cluster1.endpoint_kvs()} == before  # untouched
    assert len(cluster1.registry.list_leases()) == 1

    # ovsdb-server restarts under the agent; meanwhile the bridge drifted in the file
    node.ovs.stop_ovsdb_server()
    drift = [
        "Open_vSwitch",
        {"op": "update", "table": "Bridge", "where": [["name", "==", "br-int"]],
         "row": {"fail_mode": "standalone", "controller": ["set", []]}},
    ]  # fmt: skip
    node.ovs.run("ovsdb-tool", "transact", str(node.ovs.db_path), json.dumps(drift))
    node.ovs.start_ovsdb_server()
    wait_for(lambda: node.ovs.vsctl("get", "Bridge", "br-int", "fail_mode").strip() == "secure",
             "fail_mode repaired after the ovsdb-server restart")  # fmt: skip
    assert node.ovs.vsctl("get-controller", "br-int").split() == ["tcp:127.0.0.1:6653"]
    assert "OVSDB" in agent.log_text() and "reconnected" in agent.log_text()
    add_internal_pod(node, "pod7", str(base + 7), "0a:58:00:00:00:07")
    wait_for(lambda: len(cluster1.endpoints(subnet)) == 3, "pod7 published after the restart")
    assert agent.proc is not None and agent.proc.poll() is None
    assert agent.stop() == 0


@pytest.mark.integration
def test_agent_keeps_lease_through_etcd_outage_and_releases_on_request(
    cluster1: Cluster,
) -> None:
    agent = cluster1.agents[0]
    agent.extra = ("--release-on-exit",)
    agent.start()
    subnet = agent.subnet()
    base = subnet.network_address
    cluster1.etcd.stop(remove_data=False)
    add_internal_pod(agent.node, "pod9", str(base + 9), "0a:58:00:00:00:09")
    wait_for(lambda: "retrying in" in agent.log_text(), "the agent noticing etcd is gone")
    cluster1.etcd.start()
    wait_for(lambda: str(base + 9) in cluster1.endpoints(subnet), "pod9 published after recovery")
    assert cluster1.registry.lease_for(subnet).public_ip == agent.node.underlay_ip
    assert agent.stop() == 0
    assert cluster1.registry.lease_for(subnet) is None  # --release-on-exit gave it back
    assert cluster1.endpoint_kvs() == []
    assert IPv4Interface(f"{base + 1}/24") == read_subnet_env(agent.subnet_file).subnet


@pytest.mark.integration
def test_agent_follows_a_config_change_at_once_and_its_metrics_move(cluster1: Cluster) -> None:
    """The watch, not the resync (10 minutes here), brings a changed config in; the agent's
    metrics (on its underlay address) show the lease, the bridge, endpoints and the change."""
    agent = cluster1.agents[0]
    node = agent.node
    port = free_loopback_port()
    agent.extra = ("--resync-interval", "600", "--metrics-port", str(port),
                   "--metrics-listen", str(node.underlay_ip))  # fmt: skip
    agent.start()
    subnet = agent.subnet()
    url = f"http://{node.underlay_ip}:{port}/metrics"
    assert 86_000 < metric(url, "vxflow_agent_lease_ttl_seconds") <= 86_400
    assert metric(url, "vxflow_agent_lease_info", subnet=str(subnet),
                  public_ip=str(node.underlay_ip)) == 1  # fmt: skip
    assert metric(url, "vxflow_agent_lease_acquisitions_total") == 1
    assert metric(url, "vxflow_agent_bootstrap_changes_total") > 0
    assert metric(url, "vxflow_agent_ovsdb_connected") == 1
    assert metric(url, "vxflow_agent_controller_targets") == 1
    add_internal_pod(node, "pod5", str(subnet.network_address + 5), "0a:58:00:00:00:05")
    wait_for(lambda: metric(url, "vxflow_agent_endpoints") == 1, "the endpoint counted")
    assert metric(url, "vxflow_agent_endpoint_changes_total", op="put") == 1

    changed = json.loads(CONFIG)
    changed["Backend"]["MTU"] = 1400
    cluster1.registry.set_config(json.dumps(changed))
    wait_for(lambda: "FLANNEL_MTU=1400" in agent.subnet_file.read_text(),
             "subnet.env with the new MTU", timeout=10)  # fmt: skip
    assert node.run("cat", "/sys/class/net/vxgw0/mtu").strip() == "1400"
    assert metric(url, "vxflow_agent_config_changes_total") == 1
    assert metric(url, "vxflow_agent_lease_acquisitions_total") == 2
    assert agent.subnet() == subnet  # the lease still fits: kept
    assert "network config changed" in agent.log_text()


# The smallest OpenFlow peer: HELLO, then echo replies, on every connection. It only
# stands in for the controller's connection (a flow-restore-wait ends it).
OF_PEER = """
import socket, struct, sys, threading
def serve(conn):
    conn.sendall(struct.pack("!BBHI", 4, 0, 8, 1)); buf = b""
    while data := conn.recv(65536):
        buf += data
        while len(buf) >= 8 and len(buf) >= struct.unpack("!H", buf[2:4])[0]:
            version, kind, length, xid = struct.unpack("!BBHI", buf[:8])
            msg, buf = buf[:length], buf[length:]
            if kind == 2:
                conn.sendall(struct.pack("!BBHI", version, 3, length, xid) + msg[8:])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(4)
while True:
    threading.Thread(target=serve, args=(srv.accept()[0],), daemon=True).start()
"""


@pytest.mark.integration
def test_agent_clears_a_flow_restore_wait_left_behind_and_only_that(cluster1: Cluster) -> None:
    """flow-restore-wait set on a running, connected switch (ahead of a restart) stays; a
    restarted switch waiting with nothing restored is released after --flow-restore-timeout;
    one whose flows were restored (the tooling died before clearing it) at once."""
    agent = cluster1.agents[0]
    node = agent.node
    port = free_loopback_port()
    url = f"http://{node.underlay_ip}:{port}/metrics"
    agent.extra = ("--flow-restore-timeout", "3", "--metrics-port", str(port),
                   "--metrics-listen", str(node.underlay_ip))  # fmt: skip
    peer = subprocess.Popen(["ip", "netns", "exec", node.netns, sys.executable, "-c", OF_PEER,
                             "6653"])  # fmt: skip

    def waiting() -> bool:
        return "flow-restore-wait" in node.ovs.vsctl("get", "Open_vSwitch", ".", "other_config")

    def connected() -> bool:
        return node.ovs.vsctl("--columns=is_connected", "--bare", "list", "Controller") == "true\n"

    def restart_waiting() -> None:
        node.ovs.vsctl("set", "Open_vSwitch", ".", "other_config:flow-restore-wait=true")
        node.ovs.stop_process("ovs-vswitchd")
        node.ovs.start_vswitchd()

    try:
        agent.start()
        agent.subnet()
        wait_for(connected, "the controller connection")
        node.ovs.vsctl("set", "Open_vSwitch", ".", "other_config:flow-restore-wait=true")
        time.sleep(5)  # longer than the timeout: the running switch is not waiting
        assert waiting() and connected()

        node.ovs.stop_process("ovs-vswitchd")
        node.ovs.start_vswitchd()  # starts waiting; nothing restores its flows
        # etcd is out of reach meanwhile (the node's underlay is on the waiting switch)
        wait_for(lambda: not waiting(), "flow-restore-wait cleared after the timeout", 30)
        wait_for(lambda: metric(url, "vxflow_agent_flow_restore_wait_cleared_total",
                                why="timeout") == 1, "the clearing counted")  # fmt: skip
        assert "stayed empty for 3s: nothing was restored" in agent.log_text()
        wait_for(connected, "the controller connection after the restart")

        restart_waiting()
        wait_for(lambda: "br-int" in node.ovs.appctl("ofproto/list", check=False), "the bridge back")
        node.ovs.ofctl("add-flow", "br-int", "priority=0,actions=drop")  # restored
        wait_for(lambda: not waiting(), "flow-restore-wait cleared", 30)
        wait_for(lambda: metric(url, "vxflow_agent_flow_restore_wait_cleared_total",
                                why="restored") == 1, "the clearing counted")  # fmt: skip
        assert "br-int holds its restored flows: cleared flow-restore-wait" in agent.log_text()
    finally:
        agent.stop()
        peer.kill()
        peer.wait()


def our_masq_rules(node: Node, family: str = "ip") -> list | None:
    out = node.run("nft", "-j", "list", "table", family, "vxflow", check=False)
    return listed_rules(json.loads(out)) if out.strip() else None


def rule_handles(node: Node) -> list[int]:
    listing = json.loads(node.run("nft", "-j", "list", "table", "ip", "vxflow"))
    return [item["rule"]["handle"] for item in listing["nftables"] if "rule" in item]


@pytest.mark.integration
def test_ip_masq_rules_installed_restored_and_only_ours_removed(cluster1: Cluster) -> None:
    """--ip-masq: flannel's rules, kept (not rewritten) while intact, restored when deleted."""
    agent = cluster1.agents[0]
    node = agent.node
    node.run("nft", "add table ip other; add chain ip other post "
             "{ type nat hook postrouting priority 100; }; "
             "add rule ip other post ip saddr 10.0.0.0/8 masquerade")  # fmt: skip
    foreign = node.run("nft", "list", "table", "ip", "other")
    agent.extra = ("--ip-masq",)
    agent.start()
    subnet = agent.subnet()
    wanted = masq_rules(IPv4Network("198.19.0.0/16"), subnet)
    wait_for(lambda: our_masq_rules(node) == wanted, "flannel's masquerade rules")
    assert "FLANNEL_IPMASQ=true" in agent.subnet_file.read_text()
    shown = node.run("nft", "list", "table", "ip", "vxflow")  # as README.md shows it
    assert shown.count("masquerade fully-random") == 2 and shown.count("return") == 4, shown
    handles = rule_handles(node)
    time.sleep(6)  # a check (every 5 s) finds them intact and leaves them alone
    assert rule_handles(node) == handles
    assert agent.log_text().count("installed the masquerade rules") == 1

    node.run("nft", "delete", "rule", "ip", "vxflow", "postrtg", "handle", str(handles[3]))
    wait_for(lambda: our_masq_rules(node) == wanted, "one deleted rule restored", timeout=12)
    node.run("nft", "delete", "table", "ip", "vxflow")
    wait_for(lambda: our_masq_rules(node) == wanted, "the deleted table restored", timeout=12)
    assert "restored them" in agent.log_text()
    assert node.run("nft", "list", "table", "ip", "other") == foreign

    agent.stop()
    agent.extra = ()
    agent.start()  # without --ip-masq: our table goes, the foreign one stays
    wait_for(lambda: our_masq_rules(node) is None, "our table removed")
    assert node.run("nft", "list", "table", "ip", "other") == foreign


@pytest.mark.integration
def test_ip_masq_of_a_dual_stack_node_has_flannels_ipv6_rules_too(cluster1: Cluster) -> None:
    cluster1.registry.set_config(DUAL_CONFIG)
    agent = cluster1.agents[0]
    agent.extra = ("--ip-masq", "--public-ipv6", "fd18::a")
    agent.start()
    subnet = agent.subnet()
    lease = next(x for x in cluster1.registry.list_leases() if x.subnet == subnet)
    assert lease.ipv6_subnet is not None
    four = masq_rules(IPv4Network("198.19.0.0/16"), subnet)
    six = masq_rules(IPv6Network("fc00::/48"), lease.ipv6_subnet)
    wait_for(lambda: (our_masq_rules(agent.node), our_masq_rules(agent.node, "ip6")) == (four, six),
             "flannel's masquerade rules of both families")  # fmt: skip
    agent.stop()
    agent.extra = ()
    agent.start()  # without --ip-masq: both tables of ours go
    wait_for(lambda: [our_masq_rules(agent.node, f) for f in ("ip", "ip6")] == [None, None],
             "our tables removed")  # fmt: skip


def test_an_agent_and_a_controller_with_their_defaults_are_healthy_in_status(
    cluster1: Cluster,
) -> None:
    """The agent as it runs (no metrics port: the default, off) and a replica on the underlay
    with its defaults (its status page on an ephemeral loopback port): the agent connects the
    bridge to the replica it finds in etcd, and `vxflow status` settles at exit 0."""
    agent = cluster1.agents[0]
    agent.start()
    agent.subnet()
    etcd = f"http://127.0.0.1:{cluster1.etcd.client_port}"
    with open(agent.workdir / "controller.log", "wb") as log:
        controller = subprocess.Popen([
            VXFLOW, "controller", "--listen", str(ROOT_UNDERLAY_IP), "--port",
            str(free_loopback_port()), "--etcd-endpoints", etcd, "--etcd-prefix", PREFIX,
        ], stdout=log, stderr=log)  # fmt: skip
    try:
        def healthy() -> dict | None:
            res = subprocess.run([VXFLOW, "status", "-o", "json", "--etcd-endpoints", etcd,
                                  "--etcd-prefix", PREFIX], capture_output=True, text=True,
                                 timeout=60)  # fmt: skip
            doc = json.loads(res.stdout)
            node = doc["nodes"][0] if doc["nodes"] else {}
            return doc if res.returncode == 0 and node.get("in_sync") else None

        doc = wait_for(healthy, "a healthy status with the node's switch in sync", 30)
        assert doc["problems"] == [] and doc["unknown"] == []
        assert [n["public_ip"] for n in doc["nodes"]] == [str(agent.node.underlay_ip)]
        assert doc["controllers"][0]["connected"] == 1 and doc["controllers"][0]["masters"] == 1
    finally:
        stop_process(controller)


def routed(node: Node, net: str) -> bool:
    return bool(json.loads(node.run("ip", "-j", "route", "show", net) or "[]"))


@pytest.mark.integration
def test_agent_refuses_a_service_network_holding_etcd_or_its_next_hop(cluster1: Cluster) -> None:
    """A ServiceNetwork written behind the CLI's back that holds etcd, or the next hop of
    this node's route to a controller, is never routed into vxgw0 (the node would lose
    them): logged once, counted; a harmless one is routed."""
    agent = cluster1.agents[0]
    node = agent.node
    port = free_loopback_port()
    agent.extra = ("--metrics-port", str(port), "--metrics-listen", str(node.underlay_ip))
    node.run("ip", "route", "add", "203.0.113.0/24", "via", "198.18.0.200")
    assert cluster1.registry.register_member("r1", "tcp:203.0.113.5:6653", 60) is not None
    agent.start()
    agent.subnet()
    url = f"http://{node.underlay_ip}:{port}/metrics"
    wait_for(lambda: metric(url, "vxflow_agent_controller_targets") == 1, "the controller")
    key = cluster1.registry.keys.vxflow_config
    for net, why in (("198.18.0.252/30", f"holds etcd endpoint http://{ROOT_UNDERLAY_IP}:"),
                     ("198.18.0.200/30", "holds this node's next hop to controller tcp:203.0.113.5")):  # fmt: skip
        cluster1.registry.etcd.put(key, json.dumps({"ServiceNetwork": net}))
        wait_for(lambda w=why: w in agent.log_text(), f"{net} refused")
        time.sleep(4)  # a resync (3 s) reads it again: still refused, not logged again
        assert not routed(node, net) and agent.log_text().count(why) == 1
    assert metric(url, "vxflow_agent_service_network_refused_total") == 2
    cluster1.registry.etcd.put(key, json.dumps({"ServiceNetwork": "198.20.0.0/16"}))
    wait_for(lambda: routed(node, "198.20.0.0/16"), "the harmless ServiceNetwork routed")


@pytest.mark.integration
def test_agent_publishes_its_backends_verdicts_and_deletes_those_not_its_own(cluster1: Cluster) -> None:
    """A service with a HealthCheck and a backend on this node (a pod port nothing answers
    on: no controller programs the bridge here): the agent's verdict, unready, is published
    bound to its lease and logged once, and counted; a verdict left from before under its
    subnet (another run's) is deleted; the check removed, the verdict goes."""
    agent = cluster1.agents[0]
    node, reg = agent.node, cluster1.registry
    port = free_loopback_port()
    agent.extra = ("--metrics-port", str(port), "--metrics-listen", str(node.underlay_ip))
    agent.start()
    subnet = agent.subnet()
    lease = reg.lease_for(subnet)
    base = subnet.network_address
    reg.put_readiness(Readiness(subnet, base + 9, "old", False), lease)  # left from before
    add_internal_pod(node, "pod5", str(base + 5), "0a:58:00:00:00:05")
    wait_for(lambda: len(cluster1.endpoints(subnet)) == 1, "the pod's endpoint")
    reg.set_service_network("198.20.0.0/16")
    web = {"Name": "web", "VIP": "198.20.0.10", "Ports": [{"Port": 80, "TargetPort": 8080}],
           "Backends": [{"IP": str(base + 5)}, {"IP": str(base + 6)}],  # base + 6: no pod
           "HealthCheck": {"Type": "TCP", "Port": 8080, "PeriodSeconds": 1,
                           "FailureThreshold": 1}}  # fmt: skip
    reg.put_service(web)
    want = [Readiness(subnet, base + 5, "web", False, lease.etcd_lease_id)]
    wait_for(lambda: reg.list_readiness(subnet) == want, "the pod's verdict alone")
    url = f"http://{node.underlay_ip}:{port}/metrics"
    assert metric(url, "vxflow_agent_health_probes_total", result="failure") >= 1
    assert metric(url, "vxflow_agent_health_transitions_total", to="unready") == 1
    assert agent.log_text().count(f"backend {base + 5} of service web is unready") == 1
    reg.put_service({k: v for k, v in web.items() if k != "HealthCheck"})
    wait_for(lambda: reg.list_readiness(subnet) == [], "the verdict gone with the check")
    assert agent.stop() == 0


DUAL_CONFIG = (
    '{"Network": "198.19.0.0/16", "SubnetLen": 24, "EnableIPv6": true,'
    ' "IPv6Network": "fc00::/48", "Backend": {"Type": "vxlan", "VNI": 1}}'
)


@pytest.mark.integration
def test_dual_stack_config_gives_dual_stack_leases_and_ipv4_keeps_working(
    cluster3: Cluster,
) -> None:
    """Under EnableIPv6: a node with --public-ipv6 and one whose --iface carries a global
    IPv6 address get flannel's dual-stack lease and subnet.env; a node with neither gets an
    IPv4-only one. Each brings its IPv4 gateway up as before and says once, in its log,
    what vxflow does not do over IPv6 yet."""
    cluster3.registry.set_config(DUAL_CONFIG)
    flag, iface, none = cluster3.agents
    flag.extra = ("--public-ipv6", "fd18::a")
    iface.node.run("ip", "-6", "addr", "add", "fd18::b/64", "dev", "br-phy", "nodad")
    iface.env = {"FLANNELD_IFACE": "br-phy"}
    for agent in cluster3.agents:
        agent.start()
    subnets = [agent.subnet() for agent in cluster3.agents]  # IPv4 gateways up, as before
    leases = {lease.public_ip: lease for lease in cluster3.registry.list_leases()}
    assert [leases[a.node.underlay_ip].subnet for a in cluster3.agents] == subnets
    for agent, public_ipv6 in ((flag, "fd18::a"), (iface, "fd18::b")):
        lease = leases[agent.node.underlay_ip]
        assert str(lease.public_ipv6) == public_ipv6
        six = lease.ipv6_subnet
        assert six is not None and six.subnet_of(IPv6Network("fc00::/48")) and six.prefixlen == 64
        key = f"{PREFIX}/subnets/{lease.subnet.network_address}-24&{six.network_address}-64"
        assert cluster3.registry.etcd.get(key) is not None  # flannel's dual-stack key
        assert agent.subnet_file.read_text() == (
            f"FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET={lease.subnet.network_address + 1}/24\n"
            f"FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET={six.network_address + 1}/64\n"
            "FLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n"  # fits the IPv6 underlay (70 bytes)
        )
        # the bridge has the IPv6 tunnel on the PublicIPv6 and the IPv6 gateway on vxgw0
        gateway6 = agent.node.run("ip", "-6", "-o", "addr", "show", "dev", "vxgw0", "scope", "global")
        assert f"{six.network_address + 1}/64" in gateway6, gateway6
        assert "fc00::/48 dev vxgw0" in agent.node.run("ip", "-6", "route", "show", "fc00::/48")
        options = agent.node.ovs.vsctl("get", "Interface", "vxlan6", "options")
        assert f'local_ip="{public_ipv6}"' in options and 'remote_ip=flow' in options, options
    assert leases[flag.node.underlay_ip].ipv6_subnet != leases[iface.node.underlay_ip].ipv6_subnet
    assert "vxlan6" not in none.node.ovs.vsctl("list-ports", "br-int").split()
    plain = leases[none.node.underlay_ip]
    assert (plain.ipv6_subnet, plain.public_ipv6) == (None, None)
    assert none.subnet_file.read_text() == (
        f"FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET={plain.subnet.network_address + 1}/24\n"
        "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    )
    assert "has no PublicIPv6: leasing IPv4 only" in none.log_text()
    for agent in cluster3.agents:
        assert agent.log_text().count("MTU - 70 (flannel: - 50)") == 1, agent.log_text()

    # restarted, a node asks for both of its subnets again (subnet.env) and gets them
    lease = leases[flag.node.underlay_ip]
    flag.stop()
    cluster3.registry.release(lease)
    flag.start()
    again = wait_for(lambda: cluster3.registry.lease_for(lease.subnet), "the lease taken again")
    assert flag.subnet() == lease.subnet
    assert again.ipv6_subnet == lease.ipv6_subnet and again.etcd_lease_id != lease.etcd_lease_id


@pytest.mark.integration
def test_liveness_record_lives_on_its_own_short_lease_and_goes_with_the_agent(
    cluster1: Cluster,
) -> None:
    """The record is on an etcd lease of its own (not the subnet lease), of --liveness-ttl
    seconds, kept alive for many TTLs; a kill -9 leaves it to expire, a restart writes it
    again, a clean stop (SIGTERM) removes it at once, while the subnet lease stays."""
    agent = cluster1.agents[0]
    agent.extra = ("--liveness-ttl", "2")
    agent.start()
    subnet = agent.subnet()
    registry, ip = cluster1.registry, agent.node.underlay_ip

    def record():
        return next((r for r in registry.snapshot().liveness if r.public_ip == ip), None)

    first = wait_for(record, "the liveness record")
    assert first.ttl == 2
    assert first.etcd_lease_id != registry.lease_for(subnet).etcd_lease_id
    assert registry.etcd.time_to_live(first.etcd_lease_id)[1] == 2  # its granted TTL
    time.sleep(5)  # longer than two TTLs: renewed meanwhile
    assert record() == first

    agent.stop(signal.SIGKILL)
    wait_for(lambda: record() is None, "the record expiring after a kill -9", timeout=6)
    assert registry.lease_for(subnet) is not None  # the subnet lease stays (24 h)
    agent.start()
    again = wait_for(record, "the record written again by the restarted agent")
    assert again.etcd_lease_id != first.etcd_lease_id

    assert agent.stop() == 0
    assert record() is None  # revoked at the stop, not left to expire
    assert registry.lease_for(subnet) is not None


def vxflow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([VXFLOW, *args], capture_output=True, text=True, timeout=60)


def published_pod(cluster: Cluster, subnet: IPv4Network) -> dict | None:
    """The one endpoint's `Pod` object as etcd holds it (None: no endpoint, or unnamed)."""
    kvs = cluster.endpoint_kvs()
    if len(kvs) != 1:
        return None
    return json.loads(kvs[0].value).get("Pod")


def start_with_pod(cluster: Cluster, port: str, name: str, host: int
                   ) -> tuple[AgentProc, IPv4Network, str]:  # fmt: skip
    """The agent started, and a pod shop/NAME labelled app=web on an internal port at the
    subnet's address `host`, once published: (agent, subnet, the pod's IP)."""
    agent = cluster.agents[0].start()
    subnet = agent.subnet()
    ip = str(subnet.network_address + host)
    add_internal_pod(agent.node, port, ip, f"0a:58:00:00:00:{host:02x}")
    agent.node.ovs.vsctl("set", "Interface", port, "external_ids:vxflow-namespace=shop",
                         f"external_ids:vxflow-pod={name}",
                         "external_ids:vxflow-labels=" + json.dumps('{"app":"web"}'))  # fmt: skip
    wait_for(lambda: published_pod(cluster, subnet), f"shop/{name} published")
    return agent, subnet, ip


@pytest.mark.integration
def test_pod_identity_is_published_followed_changed_by_the_cli_and_explained(
    cluster1: Cluster,
) -> None:
    """The identity on the Interface reaches etcd with the endpoint; a change of the
    external_ids (by ovs-vsctl, or `vxflow pods label`/`ports` through the node's OVSDB)
    re-publishes it; an agent restart keeps it; `policies explain` judges it."""
    agent, subnet, ip = start_with_pod(cluster1, "web0", "web-0", 9)
    node = agent.node
    want = {"Namespace": "shop", "Name": "web-0", "Labels": {"app": "web"}, "Ports": []}
    assert published_pod(cluster1, subnet) == want

    node.ovs.vsctl("set", "Interface", "web0",
                   "external_ids:vxflow-labels=" + json.dumps('{"app":"web","tier":"front"}'))  # fmt: skip
    want["Labels"] = {"app": "web", "tier": "front"}
    wait_for(lambda: published_pod(cluster1, subnet) == want, "the new labels re-published")

    ovsdb = ("--ovsdb", node.ovs.db_target)
    res = vxflow("pods", "label", "shop/web-0", "tier=back", "legacy=yes", "legacy-", *ovsdb)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "labelled shop/web-0 (port web0): app=web,tier=back\n"
    res = vxflow("pods", "ports", "shop/web-0", "http=8080", "dns=53/udp", *ovsdb)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "ports of shop/web-0 (port web0): dns=53/UDP,http=8080/TCP\n"
    want = {"Namespace": "shop", "Name": "web-0", "Labels": {"app": "web", "tier": "back"},
            "Ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                      {"name": "http", "containerPort": 8080, "protocol": "TCP"}]}  # fmt: skip
    wait_for(lambda: published_pod(cluster1, subnet) == want, "the CLI's change published")
    # bad input: one line, exit 2, nothing written; an unknown pod: exit 1
    for args, text in (
        (("label", "shop/web-0", "bad key=x"), "label key 'bad key'"),
        (("label", "shop/web-0", "tier"), "is neither KEY=VALUE nor KEY-"),
        (("label", "shop", "a=b"), "'shop' is not NAMESPACE/NAME"),
        (("label", "Shop/web-0", "a=b"), "Shop/web-0: namespace:"),
        (("ports", "shop/web-0", "http=0"), "port '0' must be a number 1-65535"),
        (("ports", "shop/web-0", "http=80/ICMP"), "protocol must be one of TCP, UDP, SCTP"),
        (("ports", "shop/web-0", "HTTP=80"), "port name 'HTTP'"),
    ):
        res = vxflow("pods", *args, *ovsdb)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, (args, res.stderr)
        assert text in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
    res = vxflow("pods", "label", "shop/nobody", "a=b", *ovsdb)
    assert res.returncode == 1 and "no pod shop/nobody on br-int" in res.stderr, res.stderr
    assert published_pod(cluster1, subnet) == want

    agent.stop(signal.SIGKILL)  # the identity lives on the Interface: a restart reads it back
    agent.start()
    wait_for(lambda: agent.log_text().count("holding lease") == 2, "the restarted agent's lease")
    time.sleep(4)  # a full resync interval
    assert published_pod(cluster1, subnet) == want

    etcd = ("--etcd-endpoints", f"http://127.0.0.1:{cluster1.etcd.client_port}",
            "--etcd-prefix", PREFIX)  # fmt: skip
    res = vxflow("pods", "list", "-o", "json", *etcd)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == [{**want, "IP": ip, "Node": str(node.underlay_ip),
                                       "Port": "web0"}]  # fmt: skip
    manifest = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "web-in", "namespace": "shop"},
                "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                         "ingress": [{"from": [{"podSelector": {}}],
                                      "ports": [{"port": "http"}]}]}}  # fmt: skip
    res = subprocess.run([VXFLOW, "policies", "set", "-", *etcd], input=json.dumps(manifest),
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    res = vxflow("policies", "explain", "shop/web-0", *etcd)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        f"pod shop/web-0 {ip} on node {node.underlay_ip}, labels app=web,tier=back",
        "Ingress: isolated by shop/web-in; allowed is what any rule below allows",
        "  shop/web-in rule 1: from every pod in namespace shop [shop/web-0]; "
        "ports TCP/http (8080 on this pod)",
        "Egress: not isolated (no policy selects it for Egress): all traffic allowed",
    ]
    res = vxflow("policies", "explain", "shop/nobody", *etcd)
    assert res.returncode == 1 and "no pod shop/nobody is published in etcd" in res.stderr


@pytest.mark.integration
def test_the_readme_pod_commands_as_typed(cluster1: Cluster) -> None:
    """README (Pod identity): the four lines as typed, on the pod's node: the node's OVSDB
    at the default /var/run/openvswitch/db.sock (bound there in a private mount namespace,
    over a tmpfs /run: the host's /run is untouched), etcd from the environment."""
    agent, subnet, ip = start_with_pod(cluster1, "web", "web", 7)
    node = agent.node
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    lines = readme.split("### Pod identity and `policies explain`")[1].split("```")[1].split("\n")
    lines = [line for line in lines if line.strip()]
    assert lines == ["vxflow pods list", "vxflow pods label shop/web tier=front",
                     "vxflow pods ports shop/web http=8080/TCP",
                     "vxflow policies explain shop/web"]  # fmt: skip
    env = {**os.environ, "PATH": f"{Path(VXFLOW).parent}:{os.environ['PATH']}",
           "FLANNELD_ETCD_ENDPOINTS": f"http://127.0.0.1:{cluster1.etcd.client_port}",
           "FLANNELD_ETCD_PREFIX": PREFIX}  # fmt: skip

    def typed(line: str) -> str:
        script = " && ".join(["mount --make-rprivate /", "mount -t tmpfs tmpfs /run",
                              "mkdir /run/openvswitch",
                              f"mount --bind {node.ovs.db_sock.parent} /run/openvswitch", line])  # fmt: skip
        res = subprocess.run(["unshare", "--mount", "sh", "-c", script], env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert res.returncode == 0, (line, res.stderr)
        return res.stdout

    listed = typed(lines[0]).splitlines()
    assert listed[1].split() == ["shop", "web", ip, str(node.underlay_ip), "app=web", "<none>"]
    assert typed(lines[1]) == "labelled shop/web (port web): app=web,tier=front\n"
    assert typed(lines[2]) == "ports of shop/web (port web): http=8080/TCP\n"
    want = {"Namespace": "shop", "Name": "web", "Labels": {"app": "web", "tier": "front"},
            "Ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}  # fmt: skip
    wait_for(lambda: published_pod(cluster1, subnet) == want, "the README's changes published")
    assert typed(lines[3]).splitlines()[1:] == [
        "Ingress: not isolated (no policy selects it for Ingress): all traffic allowed",
        "Egress: not isolated (no policy selects it for Egress): all traffic allowed",
    ]
