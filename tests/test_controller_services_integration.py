"""Services through the controller onto real ovs-vswitchd bridges: groups read back and
left alone when right, a backend change is a group change only, drift (a deleted group)
repaired by the audit while learned affinity entries are left alone, a restart sends
nothing, client-IP affinity decided by the switch from the client's address (harness:
tests/ofharness.py, which compares flows and groups as OVS renders them)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from flows.ports import GATEWAY_OFPORT, gateway_mac
from flows.services import affinity_links
from leases.etcd_server import EtcdServer
from ovsdb.instance import OvsInstance
from tests.ofharness import PREFIX, VXFLOW, Cluster, node_ip, pod, running, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(etcd: EtcdServer, ovs: OvsInstance) -> Iterator[Cluster]:
    with running(etcd, ovs) as c:
        yield c


def services(cluster: Cluster) -> dict:
    """A node with a pod, two others; a TCP service with affinity on two backends, a UDP
    one, one without backends."""
    n1, n2 = cluster.lease(1), cluster.lease(2)
    cluster.lease(3)
    cluster.registry.put_endpoint(pod(n1, 10, 5), n1)
    cluster.registry.set_service_network("198.20.0.0/16")
    b1, b2 = str(pod(n1, 10, 5).ip), str(pod(n2, 20, 7).ip)
    spec = {
        "web": {"Name": "web", "VIP": "198.20.0.10", "Ports": [{"Port": 80, "TargetPort": 8080}],
                "Backends": [{"IP": b1, "Weight": 2}, {"IP": b2}],
                "SessionAffinity": "ClientIP", "SessionAffinityTimeout": 30},
        "dns": {"Name": "dns", "VIP": "198.20.0.53", "Ports": [{"Port": 53, "Protocol": "UDP"}],
                "Backends": [{"IP": b1}, {"IP": b2}]},
        "none": {"Name": "none", "VIP": "198.20.0.99", "Ports": [{"Port": 80}]},
    }  # fmt: skip
    for value in spec.values():
        cluster.registry.put_service(value)
    return spec


def flow_durations(cluster: Cluster, bridge: str) -> list[float]:
    out = cluster.ovs.ofctl("dump-flows", bridge)
    return [float(d) for d in re.findall(r"duration=([\d.]+)s", out)]


def test_services_land_a_backend_change_is_one_group_mod_and_a_restart_sends_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    spec = services(cluster)
    bridges = [cluster.add_switch(i) for i in (1, 2)]
    cluster.controller.start(tmp_path)
    cluster.wait_converged()
    groups_on = {b: cluster.ovs.ofctl("dump-groups", b) for b in bridges}
    # dns's (web has affinity: its flows pick, it has no group)
    assert all(text.count("group_id=") == 1 for text in groups_on.values()), groups_on
    assert "198.20.0.99" in "".join(cluster.dump(bridges[0]))  # the counted no-backend drop

    # a backend added to dns: one group-mod per switch, no flow touched
    mods = cluster.controller.metric("vxflow_controller_group_mods_total")
    adds = cluster.controller.metric("vxflow_controller_flow_mods_total", command="add")
    changed = time.monotonic()
    dns = {
        **spec["dns"],
        "Backends": [*spec["dns"]["Backends"], {"IP": "198.19.3.30", "Weight": 3}],
    }
    cluster.registry.put_service(dns)
    cluster.wait_converged()
    wait_for("one group-mod per switch",
             lambda: cluster.controller.metric("vxflow_controller_group_mods_total") == mods + 2)  # fmt: skip
    assert cluster.controller.metric("vxflow_controller_flow_mods_total", command="add") == adds
    for bridge in bridges:
        assert min(flow_durations(cluster, bridge)) >= time.monotonic() - changed - 0.5
        assert "nat(dst=198.19.3.30:53)" in cluster.ovs.ofctl("dump-groups", bridge)

    # restart: flows and groups read back, found right, nothing sent
    cluster.controller.stop()
    restarted = time.monotonic()
    cluster.controller.start(tmp_path)
    wait_for("both switches in sync", lambda: cluster.controller.log().count("in sync") >= 2)
    assert cluster.controller.metric("vxflow_controller_group_mods_total") == 0
    for command in ("add", "delete"):
        assert cluster.controller.metric("vxflow_controller_flow_mods_total", command=command) == 0
    cluster.wait_converged()
    for bridge in bridges:
        assert min(flow_durations(cluster, bridge)) >= time.monotonic() - restarted - 0.5
    assert cluster.controller.metric("vxflow_controller_openflow_errors_total") == 0

    # a service removed: its flows and group leave every switch
    cluster.registry.delete_service("dns")
    cluster.wait_converged()
    assert all("198.20.0.53" not in line for line in cluster.dump(bridges[0]))


def test_audit_restores_a_deleted_group_and_leaves_learned_entries(
    cluster: Cluster, tmp_path: Path
) -> None:
    services(cluster)
    bridge = cluster.add_switch(1)
    cluster.controller.audit_interval = 1
    cluster.controller.start(tmp_path)
    cluster.wait_converged()
    # an affinity entry as the switch learns one (the e2e tests learn them from traffic)
    cluster.ovs.ofctl("add-flow", bridge, "table=41,priority=100,idle_timeout=30,cookie=0x7606000000000a00,"
                      "tcp,nw_src=198.19.1.10,nw_dst=198.20.0.10,tp_dst=80,actions=load:0xc6130114->NXM_NX_REG1[]")  # fmt: skip
    def repairs() -> float:
        return sum(cluster.controller.metric("vxflow_controller_drift_repairs_total", found_by=f)
                   for f in ("monitor", "audit"))  # fmt: skip

    before = repairs()
    # drift: a group deleted by hand (OpenFlow deletes the flows pointing at it as well; the
    # flow monitor reports those, and the controller reads flows and groups back)
    cluster.ovs.ofctl("del-groups", bridge, f"group_id={53 << 8}")
    wait_for("the repair", lambda: repairs() > before)
    cluster.wait_converged()
    assert "cookie=0x7606" in cluster.ovs.ofctl("dump-flows", bridge)  # the learned entry stayed
    log = cluster.controller.log()
    assert "groups differ" in log
    assert "rejected" not in log, log


@pytest.mark.parametrize("value", ['{"ServiceNetwork": "198.19.0.0/16"}', "{oops"])
def test_an_invalid_service_network_keeps_the_last_valid_one(
    cluster: Cluster, tmp_path: Path, value: str
) -> None:
    services(cluster)
    bridge = cluster.add_switch(1)
    cluster.controller.start(tmp_path)
    cluster.wait_converged()
    before = cluster.dump(bridge)
    cluster.registry.etcd.put(cluster.registry.keys.vxflow_config, value)
    wait_for("the rejection", lambda: "rejected vxflow_config" in cluster.controller.log())
    time.sleep(1)  # a change (none is due) would have landed by now
    assert cluster.dump(bridge) == before


def test_flows_show_and_diff_cover_groups_and_skip_learned_entries(cluster: Cluster) -> None:
    services(cluster)
    bridge = cluster.add_switch(1)  # no controller: the switch starts empty
    common = ["--etcd-endpoints", cluster.etcd.endpoint, "--etcd-prefix", PREFIX]
    node = ["--node", "198.18.0.1"]
    target = ["--switch", f"unix:{cluster.ovs.mgmt_socket(bridge)}"]

    def vxflow(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([VXFLOW, *args], capture_output=True, text=True, timeout=60)

    shown = vxflow("flows", "show", *node, *common)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    group_lines = [line for line in lines if line.startswith("group_id=")]
    assert len(group_lines) == 1 and lines[-1:] == group_lines  # dns's, after the flows
    missing = vxflow("flows", "diff", *node, *target, *common)
    assert missing.returncode == 1
    assert {line for line in missing.stdout.splitlines() if line.startswith("+ group_id=")} == {
        f"+ {line}" for line in group_lines
    }
    # loaded by hand as `flows show` printed them (groups first): no difference left
    cluster.ovs.ofctl("add-groups", bridge, "-", input="\n".join(group_lines) + "\n")
    flow_lines = [line for line in lines if not line.startswith("group_id=")]
    cluster.ovs.ofctl("add-flows", bridge, "-", input="\n".join(flow_lines) + "\n")
    cluster.ovs.ofctl("add-flow", bridge, "table=41,priority=100,cookie=0x7606000000000a00,"
                      "tcp,nw_src=198.19.1.10,nw_dst=198.20.0.10,tp_dst=80,actions=load:1->NXM_NX_REG1[]")  # fmt: skip
    same = vxflow("flows", "diff", *node, *target, *common)
    assert same.returncode == 0 and same.stdout == "", same.stdout + same.stderr
    assert "1 groups, 1 desired, 0 differ" in same.stderr
    cluster.ovs.ofctl("mod-group", bridge, group_lines[0].replace("weight:1", "weight:9", 1))
    changed = vxflow("flows", "diff", *node, *target, *common)
    assert changed.returncode == 1
    assert [line[:2] for line in changed.stdout.splitlines()] == ["- ", "+ "]


def pick(cluster: Cluster, bridge: str, client: str, vip: str = "198.20.0.10") -> tuple[int | None, str]:
    """The multipath link (None: no multipath, a learned entry picked) and the backend `bridge`'s flows pick for a new TCP connection
    from `client` (a source on the node's host side) to vip:80: OVS's own ofproto/trace,
    through conntrack as new."""
    own = next(le for le in cluster.registry.snapshot().leases if le.public_ip == node_ip(1))
    out = cluster.ovs.appctl(
        "ofproto/trace", bridge,
        f"in_port={GATEWAY_OFPORT},dl_src={gateway_mac(own.subnet)},tcp,nw_src={client},"
        f"nw_dst={vip},nw_ttl=64,tp_src=40000,tp_dst=80",
        "--ct-next", "trk,new",
    )  # fmt: skip
    link = re.search(r"-> NXM_NX_REG0\[\] is now (0x[\da-f]+|0)$", out, re.M)
    (backend,) = re.findall(r"Datapath actions: ct\(commit,zone=7678,nat\(dst=([\d.]+):8080\)\)", out)
    return (int(link[1], 0) if link else None), backend


def test_affinity_on_a_real_switch_picks_by_client_address_and_weight(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The multipath link of each client address, on ovs-vswitchd itself: the same backend
    every time (no learned entry needed), the one the link table deals that link
    (`affinity_links`: 2:1 by weight), a backend added keeps every client's link and moves
    only the clients of links that changed hands, and a learned entry wins over the link.

    Exact, not by share: the backends' addresses come from random leases, and how many links
    change hands when one is added varies with them (the table's bound is the unit tests'
    business, test_controller_services.py); the clients and the VIP are fixed, so is the
    link each client hashes to."""
    spec = services(cluster)
    b1, b2 = (b["IP"] for b in spec["web"]["Backends"])
    bridge = cluster.add_switch(1)
    cluster.controller.start(tmp_path)
    cluster.wait_converged()

    def table() -> list[str]:  # the link table of the service as the registry holds it
        (web,) = (sv for sv in cluster.registry.snapshot().services if sv.name == "web")
        return [str(ip) for ip in affinity_links(web.backends)]

    clients = [f"10.{i // 250}.{i % 250}.{i % 7 + 1}" for i in range(300)]
    first = {c: pick(cluster, bridge, c) for c in clients}
    assert {c: pick(cluster, bridge, c) for c in clients[:50]} == {c: first[c] for c in clients[:50]}
    before = table()
    assert (len(before), before.count(b1)) == (67, 44), before  # weight 2 of 3, 1 link each first
    assert {c: backend for c, (_, backend) in first.items()} == {c: before[link] for c, (link, _) in first.items()}
    assert len({link for link, _ in first.values()}) > 60  # the clients spread over the links

    b3 = "198.19.3.30"
    grown = {**spec["web"], "Backends": [*spec["web"]["Backends"], {"IP": b3}]}
    cluster.registry.put_service(grown)
    cluster.wait_converged()
    after = {c: pick(cluster, bridge, c) for c in clients}
    now = table()
    assert {c: link for c, (link, _) in after.items()} == {c: link for c, (link, _) in first.items()}
    assert {c: backend for c, (_, backend) in after.items()} == {c: now[link] for c, (link, _) in after.items()}
    assert {backend for _, backend in after.values()} == {b1, b2, b3}
    kept = [c for c, (link, _) in first.items() if before[link] == now[link]]
    assert len(kept) > len(clients) / 2 and all(after[c] == first[c] for c in kept)

    # an entry the switch learned earlier (client on b2) wins over the client's link (b1)
    client = next(c for c, (_, backend) in after.items() if backend == b1)
    cluster.ovs.ofctl("add-flow", bridge, "table=41,priority=100,idle_timeout=30,cookie=0x7606000000000a00,"
                      f"tcp,nw_src={client},nw_dst=198.20.0.10,tp_dst=80,"
                      f"actions=load:{int(IPv4Address(b2)):#x}->NXM_NX_REG1[]")  # fmt: skip
    assert pick(cluster, bridge, client) == (None, b2)
    assert cluster.controller.metric("vxflow_controller_openflow_errors_total") == 0
