"""A rolling upgrade that loses nothing: every controller replica, one at a time, then every
node's agent, one at a time, restarted onto the next release, under a pod-to-pod ping across
nodes and a TCP connection held through a service VIP.

The next release is this tree built as a wheel under a higher version and installed into a
venv of its own (tests/test_package.py); the cluster starts from the checkout's `.venv` and
each restart takes the new venv's `vxflow` (mininet's VXFLOW_BIN). While it runs, old and
new daemons share the etcd prefix and the switches (their `vxflow_build_info` says which is
which). The ping (every 50 ms) must lose no packet, the held connection must echo a line
after every step, and every switch must have a master again before the next step.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from daemons.build import VERSION
from leases.registry import Registry
from tests.emulation import emulated_cluster
from tests.ofharness import metric
from tests.test_e2e_cluster import in_host
from tests.test_e2e_controllers import master_of, wait_until
from tests.test_e2e_services import NAMESRV, PORT, SERVICE_NETWORK, VIP, put_service, wait_routed
from tests.test_package import install_wheel

pytestmark = pytest.mark.e2e

NEW = f"{VERSION}.post1"  # the next release (the same code: the skew is one of versions only)
TTL = 3  # the replicas' --member-ttl


def build_version(replica) -> str | None:
    url = f"http://127.0.0.1:{replica.metrics_port}/metrics"
    for version in (VERSION, NEW):
        if metric(url, "vxflow_build_info", version=version) == 1:
            return version
    return None


def test_rolling_upgrade_loses_no_ping_and_breaks_no_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, venv = install_wheel(tmp_path, NEW)
    with emulated_cluster("r", nodes=3, pods=1, controllers=2, member_ttl=TTL) as cluster:
        nodes = cluster.vxflow_nodes
        pods = [cluster.pods_of(n)[0] for n in nodes]
        servers = [in_host(p, sys.executable, NAMESRV, "serve", p.name, str(PORT),
                           stdout=subprocess.PIPE) for p in pods[:2]]  # fmt: skip
        ping = held = None
        try:
            for server in servers:
                assert server.stdout.readline().strip() == "listening"
            with Registry(cluster.etcd_endpoint, cluster.spec.prefix) as registry:
                registry.set_service_network(str(SERVICE_NETWORK))
            wait_routed(cluster)
            put_service(cluster, pods[:2])
            wait_until("every switch mastered, connected to both replicas",
                       lambda: all(master_of(cluster, n) for n in nodes)
                       and all(n.ovs.vsctl("--columns=is_connected", "--bare", "list",
                                           "controller").split().count("true") == 2
                               for n in nodes), 30)  # fmt: skip
            ping = in_host(pods[2], "ping", "-n", "-i", "0.05", str(pods[0].addr),
                           stdout=subprocess.PIPE)  # fmt: skip
            held = in_host(pods[2], sys.executable, NAMESRV, "hold", VIP, "80",
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
            assert held.stdout.readline().split()[0] in {p.name for p in pods[:2]}

            def still_connected(step: str) -> None:
                held.stdin.write(f"{step}\n")
                held.stdin.flush()
                assert held.stdout.readline().strip() == step, f"connection broken by {step}"

            monkeypatch.setenv("VXFLOW_BIN", str(venv / "bin"))  # restarts take the new release
            for i, replica in enumerate(cluster.replicas):
                cluster.restart_controller_connected(i, timeout=30)
                wait_until(f"{replica.id} back: every switch mastered, connected to both",
                           lambda: all(master_of(cluster, n) for n in nodes)
                           and all(n.ovs.vsctl("--columns=is_connected", "--bare", "list",
                                               "controller").split().count("true") == 2
                                   for n in nodes), 30)  # fmt: skip
                assert [build_version(r) for r in cluster.replicas] == (
                    [NEW] * (i + 1) + [VERSION] * (len(cluster.replicas) - i - 1)
                )
                still_connected(f"after {replica.id}")
            for node in nodes:
                log = cluster.node_dir(node) / "agent.log"
                written = log.read_text().count("wrote ")
                cluster.stop_agent(node)
                cluster.start_agent(node)
                wait_until(f"{node.name}'s new agent with its lease, bridge and subnet.env",
                           lambda log=log, n=written: log.read_text().count("wrote ") > n, 30)  # fmt: skip
                assert log.read_text().count(f"vxflow {NEW} agent starting") == 1
                still_connected(f"after {node.name}'s agent")
            ping.send_signal(signal.SIGINT)
            out, _ = ping.communicate(timeout=10)
            sent = int(re.search(r"(\d+) packets transmitted", out).group(1))
            answered = {int(seq) for seq in re.findall(r"icmp_seq=(\d+) ttl=", out)}
            # every echo answered but perhaps the last, still in flight when ping was stopped
            missing = set(range(1, sent)) - answered
            assert sent > 100 and not missing, (sorted(missing), out.splitlines()[-3:])
            held.stdin.close()
            assert held.wait(timeout=10) == 0
        finally:
            for proc in (ping, held, *servers):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
