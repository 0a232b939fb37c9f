"""End to end: the emulated cluster with three controller replicas.

Each node's agent is given one replica's target and learns the others from
etcd, so every switch connects to all three; each switch reports one master.
The master of a pod's node is killed with SIGKILL while that pod pings a pod
on another node: nothing is lost (fail_mode secure keeps the flows), and a
lease and a pod added right after the kill reach every switch once the
survivors have taken over.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from ipaddress import IPv4Address

import pytest

from flows.ports import pod_mac, vtep_mac_for
from leases.registry import Registry
from tests.emulation import emulated_cluster

pytestmark = pytest.mark.e2e

TTL = 3  # the replicas' --member-ttl


def master_of(cluster, node) -> str | None:
    """The replica id a node's br-int reports as master (None while there is none)."""
    out = node.ovs.vsctl("--format=csv", "--data=bare", "--no-headings",
                         "--columns=target,role,is_connected", "list", "controller")  # fmt: skip
    targets = {r.target: r.id for r in cluster.replicas}
    held = [t for t, role, up in (line.split(",") for line in out.splitlines())
            if role == "master" and up == "true"]  # fmt: skip
    return targets.get(held[0]) if len(held) == 1 else None


def wait_until(what: str, check, timeout: float) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"timed out: {what}"
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_killed_master_loses_no_ping_and_changes_after_it_reach_every_switch() -> None:
    with emulated_cluster("c", nodes=3, pods=2, controllers=3, member_ttl=TTL) as cluster:
        n1, n2, n3 = cluster.vxflow_nodes
        wait_until("every switch connected to all 3 replicas with one master",
                   lambda: all(master_of(cluster, n) for n in cluster.vxflow_nodes)
                   and all(n.ovs.vsctl("--columns=is_connected", "--bare", "list", "controller")
                           .split().count("true") == 3 for n in cluster.vxflow_nodes), 30)  # fmt: skip
        src, dst = cluster.pods_of(n1)[0], cluster.pods_of(n2)[0]
        victim = next(r for r in cluster.replicas if r.id == master_of(cluster, n1))
        count = 300  # 15 s at 50 ms: longer than the failover takes
        ping = subprocess.Popen(
            ["mnexec", "-a", str(src.pid), "ping", "-n", "-i", "0.05", "-c", str(count),
             str(dst.addr)], stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            time.sleep(1)
            victim.stop(signal.SIGKILL)
            killed = time.monotonic()
            # right after the kill: a new node's lease and a new pod on n1
            newcomer = IPv4Address(str(n3.underlay_ip + 20))
            with Registry(cluster.etcd_endpoint, cluster.spec.prefix) as registry:
                registry.acquire(newcomer, vtep_mac_for(newcomer), ttl=60)
            pod_ip = cluster.wait_subnet(n1, 5).network_address + 100
            n1.sh("ip link add vxe2e type veth peer name vxe2ep && ip link set vxe2e up")
            n1.ovs.vsctl("add-port", "br-int", "vxe2e", "--", "set", "Interface", "vxe2e",
                         f'external_ids:attached-mac="{pod_mac(pod_ip)}"',
                         f'external_ids:vxflow-ip="{pod_ip}"')  # fmt: skip
            took = wait_until(
                "the new lease on every switch and the new pod on n1",
                lambda: all(any(str(newcomer) in f for f in n.dump_flows())
                            for n in cluster.vxflow_nodes)
                and any(str(pod_ip) in f for f in n1.dump_flows()),
                timeout=TTL + 20,
            )  # fmt: skip
            print(f"the lease and pod added after the kill were on every switch after "
                  f"{time.monotonic() - killed:.2f}s (member TTL {TTL}s; waited {took:.2f}s)")
            survivors = {r.id for r in cluster.replicas if r is not victim}
            wait_until("ovs-vswitchd to report survivors as masters (it refreshes lazily)",
                       lambda: all(master_of(cluster, n) in survivors
                                   for n in cluster.vxflow_nodes), 15)  # fmt: skip
            out, _ = ping.communicate(timeout=60)
        finally:
            if ping.poll() is None:
                ping.kill()
                ping.communicate()
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert m and int(m[1]) == count and int(m[2]) == count, out
