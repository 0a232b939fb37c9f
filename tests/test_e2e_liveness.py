"""End to end: a node crashes under a stream of new connections to a service (real etcd,
controller, agents, OVS, Mininet), and comes back.

Three nodes; the service's backends are the pods on n2 and n3, the client the pod on n1.
n3's agent and ovs-vswitchd are killed -9 (a power loss, but for the kernel closing the
switch's connections) while the client opens a new connection every 0.2 s: connections
fail only until the liveness record lapses (--liveness-ttl, 2 s, plus etcd's expiry
check), and `vxflow status` names n3 DOWN by then. Restarted, n3's backend takes new
connections again as soon as its agent is back.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from leases.registry import Registry
from tests.emulation import emulated_cluster
from tests.test_e2e_cluster import in_host
from tests.test_e2e_services import NAMESRV, PORT, SERVICE_NETWORK, VIP, put_service, wait_routed

pytestmark = pytest.mark.e2e

GOAL = 3.0  # seconds from the crash to the last failed connection, and to `status` saying so
BACK = 2.0  # seconds from the agent's return to its backend answering again


@pytest.fixture(scope="module")
def cluster() -> Iterator:
    with emulated_cluster("l", nodes=3, pods=1) as running:
        servers = []
        try:
            for node in running.vxflow_nodes[1:]:
                pod = running.pods_of(node)[0]
                server = in_host(pod, sys.executable, NAMESRV, "serve", pod.name, str(PORT),
                                 stdout=subprocess.PIPE)  # fmt: skip
                assert server.stdout.readline().strip() == "listening"
                servers.append(server)
            with Registry(running.etcd_endpoint, running.spec.prefix) as registry:
                registry.set_service_network(str(SERVICE_NETWORK))
            wait_routed(running)
            yield running
        finally:
            for server in servers:
                server.kill()
                server.wait()


def status_cmd(cluster) -> list[str]:
    return [sys.executable, "-m", "vxflow", "status", "-o", "json", *cluster.etcd_flags()]


def status(cluster) -> tuple[dict, int]:
    """`vxflow status -o json` on the cluster: the report and the exit status."""
    out = subprocess.run(status_cmd(cluster), capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout), out.returncode


def first_down(cluster, ip: str, timeout: float = 15) -> tuple[dict, int]:
    """The earliest report (by its `taken`, when it had read everything) that names `ip`
    DOWN, and its exit status: a `vxflow status` started every 0.2 s, each on its own (one
    takes most of a second, mostly starting Python)."""
    running: list[subprocess.Popen] = []
    found: list[tuple[dict, int]] = []
    deadline = time.monotonic() + timeout
    try:
        while not found and time.monotonic() < deadline:
            running.append(subprocess.Popen(status_cmd(cluster), stdout=subprocess.PIPE, text=True))
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                running.remove(proc)
                report = json.loads(proc.stdout.read())
                if named_down(report, ip):
                    found.append((report, proc.returncode))
        for proc in running:  # started earlier than the one found: may have seen it sooner
            proc.wait(timeout=30)
            report = json.loads(proc.stdout.read())
            if named_down(report, ip):
                found.append((report, proc.returncode))
    finally:
        for proc in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert found, f"status never named {ip} DOWN within {timeout}s"
    return min(found, key=lambda item: item[0]["taken"])


def named_down(report: dict, ip: str) -> bool:
    node = next((n for n in report["nodes"] if n["public_ip"] == ip), None)
    return node is not None and node["down"] and any(f"{ip} " in p and "is DOWN" in p
                                                     for p in report["problems"])


def test_a_crashed_nodes_backend_leaves_within_the_goal_and_returns_with_its_agent(cluster):
    n1, n2, n3 = cluster.vxflow_nodes
    client, pod2, pod3 = (cluster.pods_of(n)[0] for n in (n1, n2, n3))
    put_service(cluster, [pod2, pod3])
    ip3 = str(n3.underlay_ip)
    report, code = status(cluster)
    assert code == 0 and not named_down(report, ip3), report["problems"]
    underlay = n3.sh("ip -4 -o addr show dev br-phy").split()[3]  # br-phy goes with the switch

    stream = in_host(client, sys.executable, NAMESRV, "stream", VIP, "80", "8", "5",
                     stdout=subprocess.PIPE)  # fmt: skip
    time.sleep(2)
    crash = time.time()
    n3.stop_proc("agent", signal.SIGKILL)
    n3.ovs.stop_process("ovs-vswitchd", kill=True)
    report, code = first_down(cluster, ip3)
    seen = report["taken"]
    assert code == 1
    results = json.loads(stream.communicate(timeout=30)[0])

    failed = [t for t, answer in results if answer is None]
    timeline = [(round(t - crash, 2), answer) for t, answer in results]
    after = [answer and answer.split()[0] for t, answer in results if t > crash + GOAL]
    log = cluster.replicas[0].log_path.read_text()
    why = [line for line in log.splitlines() if ip3 in line][-4:]
    assert failed and max(failed) - crash <= GOAL, (time.strftime("%T", time.localtime(crash)),
                                                    crash % 1, why, timeline)  # fmt: skip
    assert after and set(after) == {pod2.name}, timeline  # every later one went to n2
    assert seen - crash <= GOAL, (seen - crash, report["problems"])

    # n3 back: ovs-vswitchd, then its agent; its backend answers again within BACK
    n3.ovs.start_vswitchd()
    n3.sh(f"ip addr replace {underlay} dev br-phy && ip link set br-phy up")
    cluster.start_agent(n3)
    with Registry(cluster.etcd_endpoint, cluster.spec.prefix) as registry:
        while n3.underlay_ip not in registry.snapshot().alive():
            time.sleep(0.05)
    back = time.time()
    answered = None
    while answered is None and time.time() < back + 10:
        result = json.loads(subprocess.run(
            ["mnexec", "-a", str(client.pid), sys.executable, NAMESRV, "connect", VIP, "80", "4"],
            capture_output=True, text=True, timeout=60, check=True).stdout)  # fmt: skip
        if any(a.startswith(pod3.name) for a in result["answers"]):
            answered = time.time()
    assert answered is not None and answered - back <= BACK, (answered, back)
    report, _ = status(cluster)
    assert not named_down(report, ip3), report["problems"]
    # one log line per transition
    log = cluster.replicas[0].log_path.read_text()
    assert log.count(f"node {ip3} (") == 1 and log.count(f"node {ip3} is UP again") == 1
