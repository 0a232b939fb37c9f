"""`vxflow status` against real etcd, a real controller and real ovs-vswitchd bridges: a
healthy cluster, a drifted switch, a rejected lease, a node down; text, JSON, exit status
(harness: tests/ofharness.py). The report's logic alone: tests/test_health.py."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from leases.etcd_server import EtcdServer
from leases.model import Member, datapath_id_for
from ovsdb.instance import OvsInstance
from tests.ofharness import PREFIX, VXFLOW, Cluster, node_ip, pod, running, wait_for
from tests.overlay import unleased_subnet
from vxflow.status import fetch_page

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(etcd: EtcdServer, ovs: OvsInstance) -> Iterator[Cluster]:
    with running(etcd, ovs) as c:
        c.controller.member_id = "r1"
        yield c


def status(cluster: Cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [VXFLOW, "status", "--etcd-endpoints", cluster.etcd.endpoint, "--etcd-prefix", PREFIX,
         *args], capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def report(cluster: Cluster) -> tuple[int, dict]:
    res = status(cluster, "-o", "json")
    return res.returncode, json.loads(res.stdout)


def nodes(doc: dict) -> dict[str, dict]:
    return {n["public_ip"]: n for n in doc["nodes"]}


@pytest.mark.random_leases
def test_status_healthy_drifted_rejected_and_node_down(cluster: Cluster, tmp_path) -> None:
    n1, n2 = cluster.lease(1), cluster.lease(2)
    cluster.registry.put_endpoint(pod(n1, 10, 5), n1)
    b1 = cluster.add_switch(1)
    b2 = cluster.add_switch(2)
    cluster.controller.start(tmp_path)
    cluster.wait_converged()
    wait_for("a healthy report", lambda: report(cluster)[0] == 0)

    text = status(cluster)
    assert text.returncode == 0, text.stdout + text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == f"network 198.19.0.0/16, /24 subnets, VXLAN VNI 1 port 8472 (etcd " \
        f"revision {report(cluster)[1]['revision']})"  # fmt: skip
    row = next(line for line in lines if line.startswith(str(node_ip(1))))
    flows = len(cluster.dump(b1))
    assert row.split()[:5] == [str(node_ip(1)), str(n1.subnet), row.split()[2], "alive",
                               "connected"]  # fmt: skip
    assert "r1 (" in row and f"{flows}/{flows}" in row and row.split()[-1] == "1", row
    assert lines[-1] == "healthy"
    assert any(line.startswith("r1 ") and f"http://127.0.0.1:{cluster.controller.metrics_port}"
               "/status" in line for line in lines)  # fmt: skip
    rc, doc = report(cluster)
    assert doc["healthy"] is True and doc["problems"] == []
    one = nodes(doc)[str(node_ip(1))]
    claim = cluster.registry.snapshot().claims[0]
    assert one["master"] == "r1" and one["generation"] == claim.generation
    assert one["flows_installed"] == one["flows_desired"] == flows and one["in_sync"] is True
    assert 3500 < one["ttl"] <= 3600 and one["pods"] == 1 and one["connected_to"] == ["r1"]
    assert doc["controllers"][0]["masters"] == 2 and doc["controllers"][0]["connected"] == 2

    # drifted: switch 1's routing table may hold no more flows, and a new lease needs one
    routes = len([f for f in cluster.dump(b1) if "table=20" in f])
    cluster.ovs.vsctl("--", "--id=@ft", "create", "Flow_Table", f"flow_limit={routes}",
                      "overflow_policy=refuse", "--", "set", "Bridge", b1, "flow_tables:20=@ft")  # fmt: skip
    n3 = cluster.lease(3)
    cluster.add_switch(3)
    seen: list[dict] = []

    def drift_reported() -> bool:
        # one report that says it all, once settled: the add in flight counts as differing
        # before the switch refuses it (no refusal named yet), and node 3's new switch may
        # not have connected yet
        doc = report(cluster)[1]
        seen[:] = [doc]
        one = nodes(doc)[str(node_ip(1))]
        settled = one["flows_differing"] >= 1 and bool(one["last_error"])
        return settled and len(doc["problems"]) == 1

    wait_for("the drift reported", drift_reported)
    (doc,) = seen
    one = nodes(doc)[str(node_ip(1))]
    assert one["in_sync"] is False and one["flows_differing"] >= 1
    assert "error type 5 code 1 on add of" in one["last_error"]  # OFPFMFC_TABLE_FULL
    assert len(doc["problems"]) == 1, doc["problems"]
    problem = doc["problems"][0]
    assert problem.startswith(f"node {node_ip(1)} ({n1.subnet}): ") and "flows differ" in problem
    assert nodes(doc)[str(node_ip(2))]["in_sync"] is True
    text = status(cluster)
    assert text.returncode == 1 and "1 problem(s):" in text.stdout and "differ" in text.stdout
    cluster.ovs.vsctl("clear", "Bridge", b1, "flow_tables")
    wait_for("the drift repaired", lambda: report(cluster)[0] == 0, 40)
    cluster.ovs.vsctl("del-br", cluster.bridges.pop(node_ip(3)))
    cluster.registry.release(n3)

    # a rejected lease: a value that does not match its key
    key = cluster.registry.keys.lease(unleased_subnet(cluster.registry))
    cluster.registry.etcd.put(key, '{"PublicIP": "198.18.0.9", "BackendType": "vxlan", '
                              '"BackendData": {"VNI": 1, "VtepMAC": "zz"}}')  # fmt: skip
    rc, doc = report(cluster)
    assert rc == 1 and [r["key"] for r in doc["rejected"]] == [key]
    assert any(p.startswith(f"rejected lease {key}: ") for p in doc["problems"])
    text = status(cluster)
    assert "REJECTED ETCD ENTRIES" in text.stdout and key in text.stdout
    cluster.registry.etcd.delete(key)

    # a switch gone, its node's lease and liveness record not (a partition)
    cluster.ovs.vsctl("del-br", b2)
    del cluster.bridges[node_ip(2)]
    wait_for("node 2 reported down", lambda: any(
        "not connected" in p for p in report(cluster)[1]["problems"]))  # fmt: skip
    rc, doc = report(cluster)
    two = nodes(doc)[str(node_ip(2))]
    assert rc == 1 and two["connected_to"] == [] and two["ttl"] > 3000
    assert doc["problems"] == [f"node {node_ip(2)} ({n2.subnet}): its switch is not connected "
                               "to any controller (node or ovs-vswitchd down?)"]  # fmt: skip
    row = next(line for line in status(cluster).stdout.splitlines()
               if line.startswith(str(node_ip(2))))  # fmt: skip
    assert row.split()[3:5] == ["alive", "disconnected"]
    assert f"{datapath_id_for(node_ip(2)):016x}" not in json.dumps(doc["controllers"])

    # a node DOWN: it has a pod, and its liveness record goes too (a crash)
    cluster.registry.put_endpoint(pod(n2, 20, 6), n2)
    cluster.registry.etcd.delete(cluster.registry.keys.node(node_ip(2)))
    rc, doc = report(cluster)
    assert rc == 1 and nodes(doc)[str(node_ip(2))]["down"] is True
    assert doc["problems"] == [f"node {node_ip(2)} ({n2.subnet}) is DOWN: no liveness record and "
                               "its switch is not connected to any controller; its backends "
                               "are out of every service"]  # fmt: skip
    row = next(line for line in status(cluster).stdout.splitlines()
               if line.startswith(str(node_ip(2))))  # fmt: skip
    assert row.split()[3:5] == ["DOWN", "disconnected"]
    wait_for("the controller's DOWN line", lambda: f"node {node_ip(2)} ({n2.subnet}) is DOWN"
             in cluster.controller.log())  # fmt: skip
    assert cluster.controller.metric("vxflow_controller_node_transitions_total", to="down") == 1


def test_status_without_etcd_is_unknown_exit_3() -> None:
    res = subprocess.run([VXFLOW, "status", "--etcd-endpoints", "http://127.0.0.1:9"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 3
    assert res.stderr == "Error: etcd unreachable: http://127.0.0.1:9: Connection refused\n"


def test_status_on_an_empty_prefix_is_one_problem_and_logs_nothing(etcd: EtcdServer) -> None:
    res = subprocess.run([VXFLOW, "status", "--etcd-endpoints", etcd.endpoint, "--etcd-prefix",
                          "/empty/network"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 1 and res.stderr == ""
    assert res.stdout.splitlines()[-2:] == [
        "1 problem(s):",
        "- no valid network config: /empty/network/config: network config is missing "
        "(controller replicas register only once there is one)",
    ]


class _Pages(BaseHTTPRequestHandler):
    """/small: a page; /huge: an endless one; /drip: a byte every 50 ms, for ever."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        with contextlib.suppress(OSError):  # the reader hangs up: done
            if self.path == "/small":
                self.wfile.write(b'{"member": "r1", "switches": []}')
            while self.path == "/huge":
                self.wfile.write(b" " * 65536)
            while self.path == "/drip":
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.05)

    def log_message(self, *args) -> None:
        pass


def test_a_status_page_is_read_within_a_size_and_a_time_limit() -> None:
    """A page's URL is any member's word: an endless or dripping page is given up with a
    one-line reason instead of filling memory or holding `vxflow status` for ever."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        page = fetch_page(Member("r1", "tcp:127.0.0.1:6653", 1, 1, f"{base}/small"), 3.0)
        assert page == {"member": "r1", "switches": []}
        huge = fetch_page(Member("r1", "tcp:127.0.0.1:6653", 1, 1, f"{base}/huge"), 30.0, 1 << 20)
        assert huge == f"{base}/huge: the page is larger than 1,048,576 bytes"
        drip = fetch_page(Member("r1", "tcp:127.0.0.1:6653", 1, 1, f"{base}/drip"), 0.5)
        assert drip == f"{base}/drip: the page was not read in 0.5s"
    finally:
        server.shutdown()
        server.server_close()
