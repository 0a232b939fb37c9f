"""The fast path: the `vxflow` client that `vxflow-cni install` writes, served by `vxflow agent`.

A real agent (etcd, OVS, its lease, br-int, subnet.env) runs in an emulated
node with `--cni-socket`; the client runs in the node's namespace as a
runtime runs it. Besides what the plugin's own tests check, here: that the
agent served the call (its log, the debug lines it relays), that results and
errors are those of the in-process plugin, the fallback when no agent
answers or the agent declines, concurrent ADDs, and that an ADD the client
gave up on, or whose agent was killed in the middle, leaves exactly nothing
(or exactly the one attachment the in-process retry made).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from cni.attachments import host_ifname
from cni.main import USAGE
from tests.cni_node import CNI_PATH, VXFLOW_CNI, CniNode
from tests.emulation import Underlay
from tests.test_ovsdb_agent import AgentProc, Cluster, make_cluster, wait_for

pytestmark = pytest.mark.integration


@dataclass
class Fast:
    cluster: Cluster
    agent: AgentProc
    cni: CniNode  # runs the installed client
    client: str

    def in_process(self) -> CniNode:
        """The same node, driven through `vxflow-cni` (the full plugin, in-process)."""
        return CniNode(self.cni.underlay, self.cni.node, self.cni.workdir,
                       conf_extra=self.cni.conf_extra)  # fmt: skip

    def endpoints(self) -> list[str]:
        return sorted(self.cluster.endpoints(self.agent.subnet()))


@pytest.fixture
def fast(underlay: Underlay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fast]:
    monkeypatch.setenv("VXFLOW_CNI_LOG_LEVEL", "debug")  # the client says which way a call went
    with contextmanager(make_cluster)(underlay, tmp_path, 1) as cluster:
        agent = cluster.agents[0].start()
        agent.subnet()  # leased, br-int converged, subnet.env written
        wait_for(agent.cni_socket.exists, "the agent's CNI socket")
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        subprocess.run([VXFLOW_CNI, "install", str(bin_dir)], check=True, capture_output=True)
        client = str(bin_dir / "vxflow")
        cni = CniNode(underlay, agent.node, agent.workdir, exe=client,
                      conf_extra={"agentSocket": str(agent.cni_socket)})  # fmt: skip
        yield Fast(cluster, agent, cni, client)


def served(fast: Fast, command: str, container: str) -> bool:
    """Whether the agent's log shows it ran this call."""
    return f"CNI {command} {container}/eth0: status" in fast.agent.log_text()


def test_calls_are_served_by_the_agent(fast: Fast) -> None:
    cni = fast.cni
    assert os.stat(fast.agent.cni_socket).st_mode & 0o777 == 0o600
    before = cni.state()
    netns = cni.container("f1")
    code, result, err = cni.plugin("ADD", "f1", netns)
    assert code == 0, (result, err)
    assert "in-process" not in err and served(fast, "ADD", "f1")
    assert "vxflow-cni: DEBUG ADD f1/eth0 " in err  # the plugin's step times, relayed
    host = host_ifname("f1", "eth0")
    address = result["ips"][0]["address"].split("/")[0]
    assert [i["name"] for i in result["interfaces"]] == [host, "eth0"]
    assert result["interfaces"][1]["sandbox"] == netns
    assert cni.pod_ports() == [host] and cni.allocations() == [address]
    wait_for(lambda: fast.endpoints() == [address], "the endpoint in etcd")  # the agent's loop

    conf = {**cni.conf(), "prevResult": result}
    assert cni.plugin("CHECK", "f1", netns, conf=conf)[:2] == (0, None)
    assert served(fast, "CHECK", "f1")
    assert cni.plugin("DEL", "f1", netns, conf=conf)[:2] == (0, None)
    assert cni.state() == before
    assert cni.plugin("DEL", "f1", netns, conf=conf)[:2] == (0, None)  # idempotent
    assert cni.state() == before
    wait_for(lambda: fast.endpoints() == [], "the endpoint removed")
    env = {**os.environ, "CNI_COMMAND": "VERSION"}
    res = subprocess.run(["ip", "netns", "exec", cni.node.netns, fast.client],
                         input=json.dumps(cni.conf()), env=env, capture_output=True, text=True)  # fmt: skip
    assert json.loads(res.stdout)["supportedVersions"][-1] == "1.1.0"


def test_errors_are_the_in_process_plugins(fast: Fast) -> None:
    cni, plain = fast.cni, fast.in_process()
    before = cni.state()
    netns = cni.container("f2")
    cases = {
        "subnet.env missing": (cni.conf(subnetFile=str(cni.workdir / "none.env")), 11),
        "no such IPAM plugin": (cni.conf(ipam={"type": "no-such-ipam"}), 7),
        "agentTimeout not positive": (cni.conf(agentTimeout=0), 7),
        "unsupported version": ({**cni.conf(), "cniVersion": "0.2.0"}, 1),
    }
    for what, (conf, code) in cases.items():
        fast_result = cni.plugin("ADD", "f2", netns, conf=conf)
        plain_result = plain.plugin("ADD", "f2", netns, conf=conf)
        assert fast_result[:2] == plain_result[:2], what
        assert fast_result[0] == 1 and fast_result[1]["code"] == code, (what, fast_result)
        assert cni.state() == before, what
    assert served(fast, "ADD", "f2")
    subprocess.run(["nsenter", f"--net={netns}", "ip", "link", "add", "eth0", "type", "veth",
                    "peer", "name", "eth0p"], check=True)  # fmt: skip
    status, out, _ = cni.plugin("ADD", "f2", netns)
    assert (status, out["code"]) == (1, 100) and "exists already" in out["msg"], out
    assert cni.state() == before
    subprocess.run(["nsenter", f"--net={netns}", "ip", "link", "del", "eth0"], check=True)
    # the agent makes the veth through netlink: its failures too leave nothing behind
    conf = cni.conf(ipam={"routes": [{"dst": "203.0.113.0/24", "gw": "192.0.2.1"}]})
    status, out, _ = cni.plugin("ADD", "f2", netns, conf=conf)
    assert (status, out["code"]) == (1, 101) and "veth pair" in out["msg"], out
    assert "Network is unreachable" in out["details"], out
    assert cni.state() == before and cni.links(netns) == {"lo"}
    cni.node.ovs.stop_process("ovs-vswitchd")  # the port never gets an ofport
    try:
        status, out, _ = cni.plugin("ADD", "f2", netns)
        assert (status, out["code"]) == (1, 101) and "assigned no ofport" in out["details"], out
        assert cni.state() == before and cni.links(netns) == {"lo"}
    finally:
        cni.node.ovs.start_vswitchd()
    code, _, err = cni.plugin("ADD", "f2", netns)  # the kept OVSDB connection still serves
    assert code == 0 and served(fast, "ADD", "f2"), err
    assert cni.plugin("DEL", "f2", netns)[0] == 0
    assert cni.state() == before


def test_without_an_agent_the_client_runs_the_plugin_itself(fast: Fast, tmp_path: Path) -> None:
    cni = fast.cni
    fast.agent.stop()
    assert not fast.agent.cni_socket.exists()  # removed on a clean stop
    before = cni.state()
    netns = cni.container("f3")
    code, _, err = cni.plugin("ADD", "f3", netns)
    assert code == 0 and "ADD in-process: no agent" in err, err
    assert cni.pod_ports() == [host_ifname("f3", "eth0")]
    # a socket file nobody listens on (an agent killed before it could remove it)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(fast.agent.cni_socket))
    stale.close()
    code, out, err = cni.plugin("DEL", "f3", netns)
    assert (code, out) == (0, None) and "DEL in-process: no agent" in err, err
    assert cni.state() == before
    # the usage, through the installed client
    res = subprocess.run([fast.client, "--help"], capture_output=True, text=True)
    assert (res.returncode, res.stdout) == (0, USAGE)


def test_a_caller_in_another_namespace_is_declined(fast: Fast) -> None:
    """The pod's veth is made in the server's namespace: it must be the caller's."""
    conf = fast.cni.conf(cniVersion="1.1.0")
    env = {**os.environ, "CNI_COMMAND": "STATUS", "CNI_PATH": CNI_PATH}
    res = subprocess.run([fast.client], input=json.dumps(conf), env=env, capture_output=True,
                         text=True)  # fmt: skip  (run in the root namespace, not the node's)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "declined: the caller is in another network namespace" in res.stderr
    assert "declined a CNI call: the caller is in another network namespace" in (
        fast.agent.log_text()
    )


def test_concurrent_adds_and_dels(fast: Fast) -> None:
    cni = fast.cni
    before = cni.state()
    names = [f"c{i}" for i in range(8)]
    sandboxes = {name: cni.container(f"f4{name}") for name in names}
    with ThreadPoolExecutor(len(names)) as pool:
        added = list(pool.map(lambda n: cni.plugin("ADD", n, sandboxes[n]), names))
    assert [code for code, _, _ in added] == [0] * len(names), added
    addresses = {result["ips"][0]["address"] for _, result, _ in added}
    assert len(addresses) == len(names)
    assert cni.pod_ports() == sorted(host_ifname(n, "eth0") for n in names)
    assert all(served(fast, "ADD", n) for n in names)
    with ThreadPoolExecutor(len(names)) as pool:
        deleted = list(pool.map(lambda n: cni.plugin("DEL", n, sandboxes[n]), names))
    assert [code for code, _, _ in deleted] == [0] * len(names), deleted
    assert cni.state() == before


def slow_ipam(folder: Path, seconds: float) -> Path:
    """An IPAM plugin that takes its time: host-local after `seconds` (it marks its start)."""
    folder.mkdir(exist_ok=True)
    script = folder / "slow-ipam"
    script.write_text(f"#!/bin/sh\ntouch {folder}/started-$CNI_COMMAND\nsleep {seconds}\n"
                      f"exec {CNI_PATH}/host-local\n")  # fmt: skip
    script.chmod(0o755)
    return folder


def test_an_add_the_client_gave_up_on_is_undone_by_the_agent(fast: Fast, tmp_path: Path) -> None:
    cni = fast.cni
    before = cni.state()
    cni.cni_path = f"{slow_ipam(tmp_path / 'slow', 2)}:{CNI_PATH}"
    netns = cni.container("f5")
    conf = cni.conf(ipam={"type": "slow-ipam"}, agentTimeout=0.5)
    start = time.monotonic()
    status, out, err = cni.plugin("ADD", "f5", netns, conf=conf)
    assert time.monotonic() - start < 2, "the client waited for the agent beyond its timeout"
    assert (status, out["code"]) == (1, 11) and out["msg"] == "the vxflow agent did not answer"
    wait_for(lambda: "f5/eth0: the client left before taking the result; undone"
             in fast.agent.log_text(), "the agent's undo")  # fmt: skip
    assert served(fast, "ADD", "f5") and served(fast, "DEL", "f5")
    assert cni.state() == before
    assert cni.links(netns) == {"lo"}
    code, _, err = cni.plugin("ADD", "f5", netns)  # the runtime's retry
    assert code == 0, err
    assert cni.plugin("DEL", "f5", netns)[0] == 0
    assert cni.state() == before


def test_an_agent_killed_during_add_leaves_one_attachment(fast: Fast, tmp_path: Path) -> None:
    cni = fast.cni
    before = cni.state()
    slow = slow_ipam(tmp_path / "slow", 1)
    cni.cni_path = f"{slow}:{CNI_PATH}"
    netns = cni.container("f6")
    conf = cni.conf(ipam={"type": "slow-ipam"})
    with ThreadPoolExecutor(1) as pool:
        adding = pool.submit(cni.plugin, "ADD", "f6", netns, conf=conf)
        wait_for((slow / "started-ADD").exists, "the agent's IPAM call")
        (slow / "started-ADD").unlink()
        fast.agent.stop(signal.SIGKILL)  # its IPAM call (now orphaned) goes on
        code, result, err = adding.result()
    assert code == 0, (result, err)
    assert "went away" in err and "running ADD in-process" in err, err
    assert (slow / "started-ADD").exists()  # the in-process ADD called IPAM again
    address = result["ips"][0]["address"].split("/")[0]
    assert cni.pod_ports() == [host_ifname("f6", "eth0")]
    assert cni.allocations() == [address] and len(cni.records()) == 1
    time.sleep(1.5)  # the killed agent's IPAM call has finished: host-local keys addresses by
    assert cni.allocations() == [address]  # container and ifname, so it took no second one
    assert cni.plugin("DEL", "f6", netns, conf=conf)[0] == 0
    assert cni.state() == before


def test_an_agent_without_a_cni_socket_serves_none(underlay: Underlay, tmp_path: Path) -> None:
    with contextmanager(make_cluster)(underlay, tmp_path, 1) as cluster:
        agent = cluster.agents[0]
        agent.extra = ("--cni-socket", "")
        agent.start().subnet()
        assert not agent.cni_socket.exists()
        assert "serving CNI calls" not in agent.log_text()


def replica_kept(cni: CniNode, container: str) -> str:
    """An ADD and DEL of `container` (the server keeps its OVSDB replica from then on); its netns."""
    netns = cni.container(container)
    assert cni.plugin("ADD", container, netns)[0] == 0
    assert cni.plugin("DEL", container, netns)[0] == 0
    return netns


def test_a_restarted_ovsdb_server_is_reconnected(fast: Fast) -> None:
    """The server's kept OVSDB replica is replaced once its session dropped."""
    cni = fast.cni
    before = cni.state()
    netns = replica_kept(cni, "f7")
    cni.node.ovs.stop_ovsdb_server()
    cni.node.ovs.start_ovsdb_server()
    code, result, err = cni.plugin("ADD", "f7", netns)
    assert code == 0 and served(fast, "ADD", "f7"), (result, err)
    assert cni.pod_ports() == [host_ifname("f7", "eth0")]
    assert cni.plugin("DEL", "f7", netns)[0] == 0
    assert cni.state() == before


def test_an_ovsdb_server_gone_for_good_is_try_again_later_and_leaves_nothing(fast: Fast) -> None:
    """The kept replica's session drops and does not come back: the spec's code 11, the
    veth undone. The port's insert was sent and its outcome is unknown, so the address and
    the record stay (a port may claim the address) until the runtime's DEL, which follows a
    failed ADD, removes the port and releases them once OVSDB is back."""
    cni = fast.cni
    before = cni.state()
    netns = replica_kept(cni, "f8")
    cni.node.ovs.stop_ovsdb_server()
    try:
        code, result, err = cni.plugin("ADD", "f8", netns)
        assert code == 1 and result["code"] == 11, (result, err)
        assert result["msg"] == "OVSDB is not reachable", result
        assert served(fast, "ADD", "f8")
        assert cni.links() == before["links"] and cni.links(netns) == {"lo"}
        assert len(cni.allocations()) == 1 and len(cni.records()) == 1
    finally:
        cni.node.ovs.start_ovsdb_server()
    assert cni.plugin("DEL", "f8", netns)[:2] == (0, None)
    assert cni.state() == before


def test_status_and_gc_through_the_agent(fast: Fast) -> None:
    cni = fast.cni
    cni.cni_version = "1.1.0"  # STATUS and GC came with 1.1.0
    before = cni.state()
    kept, stale = cni.container("f8k"), cni.container("f8s")
    assert cni.plugin("ADD", "kept", kept)[0] == 0
    assert cni.plugin("ADD", "stale", stale)[0] == 0
    valid = {"cni.dev/valid-attachments": [{"containerID": "kept", "ifname": "eth0"}]}
    env = {**os.environ, "CNI_PATH": CNI_PATH}
    for command, conf in (("STATUS", cni.conf()), ("GC", {**cni.conf(), **valid})):
        res = subprocess.run(["ip", "netns", "exec", cni.node.netns, fast.client],
                             input=json.dumps(conf), env={**env, "CNI_COMMAND": command},
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert (res.returncode, res.stdout) == (0, ""), res.stdout + res.stderr
        assert f"{command} served by the agent" in res.stderr
    assert cni.pod_ports() == [host_ifname("kept", "eth0")]
    assert len(cni.allocations()) == 1 and len(cni.records()) == 1
    assert cni.plugin("DEL", "kept", kept)[0] == 0
    assert cni.state() == before


def test_churn_of_300_pods_with_ovsdb_restarted_twice(fast: Fast) -> None:
    """300 pods ADDed and DELeted (at most 15 alive at once, so the /24 wraps around and
    host-local hands addresses out again) through the agent while ovsdb-server is
    restarted twice, gone for a second each time, with calls in flight (the kept OVSDB
    replica waits for it to come back; a failed call is retried as a runtime does);
    no address ever goes to two live pods (nor do two ports claim one, which the agent
    would log), and nothing is left: no port, address, record or veth."""
    cni = fast.cni
    before = cni.state()
    namespaces = [cni.container(f"churn{n}") for n in range(16)]
    settings = {"socket": str(fast.agent.cni_socket), "conf": cni.conf(), "cni_path": CNI_PATH,
                "pods": 300, "namespaces": namespaces}  # fmt: skip
    driver = subprocess.Popen(
        ["ip", "netns", "exec", cni.node.netns, sys.executable, "-m", "tests.cni_churn",
         json.dumps(settings)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    restarted = []
    try:
        assert driver.stdout is not None
        for line in driver.stdout:
            if line.startswith("progress "):
                if int(line.split()[1]) in (100, 200):  # the driver goes on meanwhile
                    cni.node.ovs.stop_ovsdb_server()
                    time.sleep(1)  # calls in flight meet no OVSDB
                    cni.node.ovs.start_ovsdb_server()
                    restarted.append(line)
                continue
            seen = json.loads(line)
    finally:
        assert driver.wait(timeout=600) == 0
    assert len(restarted) == 2
    assert seen["adds"] == 300 and seen["gave_up"] == [] and seen["double"] == [], seen
    assert cni.state() == before
    assert all(cni.links(netns) == {"lo"} for netns in namespaces)
    assert "is claimed by ports" not in fast.agent.log_text()
    wait_for(lambda: fast.endpoints() == [], "every endpoint withdrawn")
