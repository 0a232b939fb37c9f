"""End to end: a node's ovs-vswitchd restarts, crashed or planned (real etcd, controller,
agents, OVS, Mininet). How fast traffic flows again is B8's (BENCHMARKS.md); here: that
it does, that the node's table comes back exactly, and that nothing else moves."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.emulation import emulated_cluster

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster() -> Iterator:
    with emulated_cluster("r", nodes=2, pods=1) as running:
        yield running


def restart_under_ping(cluster, planned: bool) -> tuple[str, float]:
    """Restart n1's ovs-vswitchd while its pod pings n2's every 10 ms; (ping's output,
    when the new process was ready as time.time())."""
    n1, n2 = cluster.vxflow_nodes
    src, dst = cluster.pods_of(n1)[0], cluster.pods_of(n2)[0]
    ping = subprocess.Popen(["mnexec", "-a", str(src.pid), "ping", "-n", "-D", "-i", "0.01",
                             "-W", "1", str(dst.addr)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(1)
        _, ready = n1.ovs.restart_vswitchd(planned=planned)
        time.sleep(5)
    finally:
        ping.send_signal(signal.SIGINT)
        out, _ = ping.communicate(timeout=30)
    return out, ready


def replies_after(out: str, ready: float) -> int:
    return sum(float(t) > ready for t in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", out, re.M))


@pytest.mark.parametrize("planned", [False, True], ids=["kill -9", "planned (ovs-ctl restart)"])
def test_traffic_and_the_table_come_back_after_ovs_vswitchd_restarts(cluster, planned) -> None:
    n1, n2 = cluster.vxflow_nodes
    tables = {n.name: sorted(n.dump_flows()) for n in (n1, n2)}
    agent_log = cluster.node_dir(n1) / "agent.log"
    log_before = agent_log.read_text()
    out, ready = restart_under_ping(cluster, planned)
    # pings every 10 ms (or as often as the machine manages) for 5 s after the new process
    # was ready: the bulk must be answered
    assert replies_after(out, ready) > 100, out[-1500:]
    assert {n.name: sorted(n.dump_flows()) for n in (n1, n2)} == tables
    assert "flow-restore-wait" not in n1.ovs.vsctl("get", "Open_vSwitch", ".", "other_config")
    # the restart tooling cleared flow-restore-wait itself; the agent's safety net stayed idle
    assert "nothing was restored" not in agent_log.read_text()[len(log_before):]
    cluster.wait_connected(timeout=30)
