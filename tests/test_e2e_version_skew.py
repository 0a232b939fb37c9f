"""Version skew: the previous release beside this one, in one cluster.

The previous release is commit 54f97e6 (PREVIOUS), the parent of ba5a47a, the latest change
to what vxflow writes to etcd: from ba5a47a on, an endpoint's value carries the pod's
identity (`"Pod": {...}`) when its OVS Interface names the pod. 54f97e6 is built as a
wheel from `git archive`, under the version 0.1.0+g54f97e6 (so that `vxflow_build_info`
and the first log line tell it apart), and installed into a venv of its own
(tests/test_package.py); this release is the checkout's `.venv`.

The cluster starts on the previous release throughout (mininet's VXFLOW_BIN); then
replica ctl2 and the agents of n2 and n3 are restarted on this release: controller N-1
beside controller N, agent N-1 (n1) beside agents N (n2, n3). n2's and n3's pods are
named, so their new agents write endpoints with `Pod`; n1's old agent writes them
without. Shown: every pod reaches every other; neither replica rejects an entry the other
release wrote (`vxflow_controller_rejected_items` is 0 on both, and each release's own
registry reader, run by its own Python, lists every endpoint and rejects nothing); and each
replica alone, its switches'
flows deleted, programs them again from what both releases wrote (its audit repairs the
tables) so that every pod again reaches every other.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemons.build import VERSION
from leases.registry import Registry
from tests.emulation import emulated_cluster
from tests.ofharness import metric
from tests.test_e2e_controllers import master_of, wait_until
from tests.test_package import install_wheel

pytestmark = pytest.mark.e2e

PREVIOUS = "54f97e6"  # the commit before the latest change to an etcd value's format
PREVIOUS_VERSION = f"{VERSION}+g{PREVIOUS}"
TTL = 3  # the replicas' --member-ttl
AUDIT = "2"  # VXFLOW_AUDIT_INTERVAL: deleted flows are put back within seconds


def url(replica) -> str:
    return f"http://127.0.0.1:{replica.metrics_port}/metrics"


def all_pairs_reach(cluster) -> list[str]:
    return [f"{a.name}->{b.name}" for a, b in cluster.pairs() if not cluster.reachable(a, b.addr)]


# What a release's own reader makes of the registry (run by that release's Python).
READ = """
import json, sys
from leases.registry import Registry
with Registry(sys.argv[1], sys.argv[2]) as registry:
    snap = registry.snapshot(report=False)
print(json.dumps({"endpoints": sorted(str(e.ip) for e in snap.endpoints),
                  "rejected": [str(r) for r in snap.rejected]}))
"""


def read_with(python: Path, cluster, cwd: Path) -> dict:
    """READ by `python`, away from the checkout (its `leases` is the installed one)."""
    res = subprocess.run([str(python), "-c", READ, cluster.etcd_endpoint, cluster.spec.prefix],
                         capture_output=True, text=True, timeout=60, cwd=cwd)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)


def pod_identities(cluster) -> dict[str, str | None]:
    """Each endpoint's pod name as this release reads it, by pod address."""
    with Registry(cluster.etcd_endpoint, cluster.spec.prefix) as registry:
        return {str(e.ip): e.pod.name if e.pod else None for e in registry.list_endpoints()}


def test_previous_release_beside_this_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, previous = install_wheel(tmp_path, PREVIOUS_VERSION, commit=PREVIOUS)
    monkeypatch.setenv("VXFLOW_BIN", str(previous / "bin"))
    monkeypatch.setenv("VXFLOW_AUDIT_INTERVAL", AUDIT)
    with emulated_cluster("k", nodes=3, pods=1, controllers=2, member_ttl=TTL) as cluster:
        n1, n2, n3 = nodes = cluster.vxflow_nodes
        old, new = cluster.replicas
        assert metric(url(old), "vxflow_build_info", version=PREVIOUS_VERSION) == 1
        for node in (n2, n3):  # named pods: an agent of this release writes "Pod"
            (pod,) = cluster.pods_of(node)
            node.ovs.vsctl("set", "Interface", pod.name, f'external_ids:vxflow-pod="{pod.name}"',
                           'external_ids:vxflow-labels="{\\"app\\": \\"skew\\"}"')  # fmt: skip

        monkeypatch.delenv("VXFLOW_BIN")  # from here on: this release, the checkout's .venv
        cluster.restart_controller_connected(1, timeout=30)
        for node in (n2, n3):
            cluster.stop_agent(node)
            cluster.start_agent(node)
        assert metric(url(new), "vxflow_build_info", version=VERSION) == 1
        assert metric(url(old), "vxflow_build_info", version=PREVIOUS_VERSION) == 1
        for node, now in ((n1, 0), (n2, 1), (n3, 1)):
            log = cluster.node_dir(node) / "agent.log"
            wait_until(f"{node.name}'s agent of this release started",
                       lambda log=log, now=now: log.read_text().count(
                           f"vxflow {VERSION} agent starting") == now, 30)  # fmt: skip
            assert log.read_text().count(f"vxflow {PREVIOUS_VERSION} agent starting") == 1

        pods = {node.name: cluster.pods_of(node)[0] for node in nodes}
        wait_until("n2's and n3's endpoints rewritten with the pod's identity by this release",
                   lambda: all(pod_identities(cluster).get(str(pods[n].addr)) == pods[n].name
                               for n in ("n2", "n3")), 30)  # fmt: skip
        assert pod_identities(cluster)[str(pods["n1"].addr)] is None  # the previous agent's
        assert all_pairs_reach(cluster) == []
        for replica in (old, new):
            assert metric(url(replica), "vxflow_controller_rejected_items") == 0, replica.id
        addresses = sorted(str(p.addr) for p in pods.values())
        for python in (previous / "bin" / "python", Path(sys.executable)):
            assert read_with(python, cluster, tmp_path) == {"endpoints": addresses,
                                                            "rejected": []}, python  # fmt: skip

        # each release alone: its switches' flows deleted, it programs them again
        for alone, gone in ((old, new), (new, old)):
            gone.stop()
            wait_until(f"{alone.id} masters every switch",
                       lambda a=alone: all(master_of(cluster, n) == a.id for n in nodes), 30)  # fmt: skip
            for node in nodes:
                node.ovs.ofctl("del-flows", "br-int")
            wait_until(f"every pod reaches every other, programmed by {alone.id} alone",
                       lambda: all_pairs_reach(cluster) == [], 60)  # fmt: skip
            assert metric(url(alone), "vxflow_controller_rejected_items") == 0, alone.id
            with monkeypatch.context() as release:  # each back on its own release
                if gone is old:
                    release.setenv("VXFLOW_BIN", str(previous / "bin"))
                gone.start(cluster.etcd_flags())
            cluster.wait_controller_connected(30)
        assert metric(url(old), "vxflow_build_info", version=PREVIOUS_VERSION) == 1
