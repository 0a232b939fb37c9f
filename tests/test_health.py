"""`vxflow status`'s report from etcd's view and the replicas' pages (pure)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from leases.keys import KeyKind
from leases.model import Claim, Endpoint, Liveness, Member, NetworkConfig, datapath_id_for
from leases.state import Snapshot
from leases.validate import Rejection
from tests.test_controller_sync import lease
from vxflow.health import assess, render

CONFIG = NetworkConfig(IPv4Network("198.19.0.0/16"))
R1 = Member("r1", "tcp:198.18.0.254:6653", 7, 3, "http://127.0.0.1:9101/status")


def snap(**kw) -> Snapshot:
    base = dict(config=CONFIG, leases=(lease(1), lease(2)), endpoints=(
        Endpoint(lease(1).subnet, IPv4Address("198.19.1.10"), "02:00:00:00:00:0a", 5),),
        revision=42, members=(R1,), claims=tuple(
            Claim(datapath_id_for(lease(i).public_ip), "r1", 10 + i, 7) for i in (1, 2)),
        liveness=(Liveness(lease(1).public_ip, 2, 8),))  # fmt: skip
    return Snapshot(**{**base, **kw})


def switch(i: int, role: str = "master", **kw) -> dict:
    entry = {"datapath_id": f"{datapath_id_for(lease(i).public_ip):016x}",
             "node": str(lease(i).public_ip), "role": role, "generation": 10 + i}  # fmt: skip
    if role == "master":
        entry.update(in_sync=True, flows_installed=20, flows_desired=20, flows_differing=0,
                     last_sync=1000.0, drift_repairs=1, last_error="")  # fmt: skip
    return {**entry, **kw}


def page(*switches: dict, valid: bool = True) -> dict:
    return {"member": "r1", "member_valid": valid, "switches": list(switches)}


TTLS = {str(lease(1).subnet): 3600, str(lease(2).subnet): None}


def test_a_healthy_cluster_and_its_screen():
    report = assess(snap(), TTLS, {"r1": page(switch(1), switch(2))})
    assert report.healthy and report.problems == []
    one, two = report.nodes
    assert (one.master, one.generation, one.connected_to, one.pods) == ("r1", 11, ["r1"], 1)
    assert (one.flows_installed, one.flows_desired, one.drift_repairs) == (20, 20, 1)
    assert two.ttl is None  # a reservation
    text = render(report, now=1010.0).splitlines()
    assert text[0] == "network 198.19.0.0/16, /24 subnets, VXLAN VNI 1 port 8472 (etcd revision 42)"
    assert text[3].split() == ["198.18.0.1", "198.19.1.0/24", "3600s", "alive", "connected", "r1", "(11)",
                               "20/20", "10s", "ago", "1", "1"]  # fmt: skip
    assert text[4].split()[2:4] == ["reserved", "-"]  # no record: no pods of ours either
    assert text[7].split() == ["r1", "tcp:198.18.0.254:6653", "2", "2",
                               "http://127.0.0.1:9101/status"]  # fmt: skip
    assert text[-1] == "healthy"
    assert report.to_json()["healthy"] is True


def test_each_kind_of_trouble_is_one_problem():
    differ = switch(1, in_sync=False, flows_differing=3, last_error="error type 5 code 1 on add")
    orphan = {"datapath_id": f"{datapath_id_for(IPv4Address('198.18.0.9')):016x}",
              "node": "198.18.0.9", "role": "master"}  # fmt: skip
    bad = Rejection(KeyKind.LEASE, "/p/subnets/198.19.9.0-24", "bad_value", "VtepMAC is not a MAC")
    report = assess(snap(rejected=(bad,)), TTLS, {"r1": page(differ, orphan, valid=False)})
    assert report.problems == [
        "node 198.18.0.1 (198.19.1.0/24): 3 flows differ from the desired 20; last refused: "
        "error type 5 code 1 on add",
        "node 198.18.0.2 (198.19.2.0/24): its switch is not connected to any controller "
        "(node or ovs-vswitchd down?)",
        "switch of 198.18.0.9 (76780000c6120009) is connected but its node holds no valid "
        "lease: it has only the table-miss drops",
        "controller r1: its membership has lapsed (it does not write to switches)",
        "rejected lease /p/subnets/198.19.9.0-24: VtepMAC is not a MAC [bad_value]",
    ]
    text = render(report, now=0.0)
    assert "3 flows differ" in text and "disconnected" in text and "REJECTED ETCD ENTRIES" in text
    assert "5 problem(s):" in text


def test_a_switch_that_refused_the_drop_log_meter_is_a_problem():
    refused = switch(1, drop_meter_refused=True)
    report = assess(snap(), TTLS, {"r1": page(refused, switch(2, drop_meter_refused=False))})
    assert report.problems == [
        "node 198.18.0.1 (198.19.1.0/24): its switch refused the meter of logged policy drops "
        "(`--log-policy-drops`): its drops are not logged, they still drop (the meter is tried "
        "again when it reconnects)"]  # fmt: skip
    assert not report.healthy and report.nodes[0].drop_meter_refused


def test_a_slave_only_switch_has_no_master_and_an_unread_page_elsewhere_is_a_problem():
    r2 = Member("r2", "tcp:198.18.0.5:6654", 8, 4, "http://198.18.0.5:9102/status")
    report = assess(snap(members=(R1, r2)), TTLS, {
        "r1": page(switch(1, role="slave")), "r2": "http://198.18.0.5:9102/status: timed out"})
    assert report.problems == [
        "node 198.18.0.1 (198.19.1.0/24): its switch has no master (connected to r1)",
        "node 198.18.0.2 (198.19.2.0/24): its switch is not connected to any controller that "
        "answered (node or ovs-vswitchd down?)",
        "controller r2: status page unreadable: http://198.18.0.5:9102/status: timed out",
    ]
    assert report.controllers[1].connected is None and report.unknown == []


def test_a_page_turned_off_or_on_another_hosts_loopback_is_unknown_not_a_problem():
    """What etcd tells is shown; what only a page could tell is unknown, and healthy stays."""
    off = Member("r1", R1.address, 7, 3, "")
    report = assess(snap(members=(off,)), TTLS, {"r1": ""})
    assert report.healthy and report.problems == []
    assert report.unknown == [
        "controller r1: status unknown: no status page (it runs with --metrics-port 0; "
        "without it, it serves one)",
        "the nodes' switches (no replica's status page was read)",
    ]
    assert report.controllers[0].masters == 2 and report.controllers[0].connected is None
    assert [n.master for n in report.nodes] == ["r1", "r1"]  # the claims, from etcd
    text = render(report, now=0.0).splitlines()
    assert text[-4:] == ["2 unknown (not counted as problems):",
                         f"- {report.unknown[0]}", f"- {report.unknown[1]}", "healthy"]  # fmt: skip
    # a loopback page that does not answer here, or answers as another replica: unknown
    r2 = Member("r2", "tcp:198.18.0.5:6654", 8, 4, "http://127.0.0.1:9102/status")
    refused = "http://127.0.0.1:9102/status: <urlopen error [Errno 111] Connection refused>"
    for answer, why in ((refused, refused),
                        (page(switch(1), switch(2)),  # r1's page, on this host's loopback
                         "http://127.0.0.1:9102/status answers as replica 'r1'")):  # fmt: skip
        report = assess(snap(members=(R1, r2)), TTLS, {"r1": page(switch(1), switch(2)),
                                                       "r2": answer})  # fmt: skip
        assert report.healthy, report.problems
        assert report.unknown == [
            f"controller r2: status unknown: {why} (served on its host's loopback: run "
            "`vxflow status` there, or give it a reachable --metrics-listen)"]  # fmt: skip
        assert report.controllers[1].connected is None


def test_no_config_is_one_problem():
    missing = Rejection(KeyKind.CONFIG, "/p/config", "no_config", "network config is missing")
    report = assess(snap(config=None, members=(), claims=(), rejected=(missing,)), TTLS, {})
    assert report.problems == ["no valid network config: /p/config: network config is missing "
                               "(controller replicas register only once there is one)"]  # fmt: skip
    assert report.rejected == []
    assert render(report).startswith("network: no valid config (etcd revision 42)")
    bad = Rejection(KeyKind.CONFIG, "/p/config", "bad_config", "Network is not a CIDR")
    report = assess(snap(config=None, members=(), claims=(), rejected=(bad,)), TTLS, {})
    assert len(report.problems) == 1 and "Network is not a CIDR" in report.problems[0]
    assert [r["key"] for r in report.rejected] == ["/p/config"]  # shown, not a second problem


def test_no_replica_with_a_config_is_a_problem():
    report = assess(snap(members=(), claims=()), TTLS, {})
    assert report.problems == ["no controller replica is registered"]


def test_a_member_entry_names_its_status_page_or_is_rejected():
    from leases.controllers import check_member, member_to_json
    from tests.test_controller_mastership import member_kv

    raw = member_to_json(R1)
    assert '"Status":"http://127.0.0.1:9101/status"' in raw
    assert check_member(member_kv("r1", value=raw), "r1").status == R1.status
    assert check_member(member_kv("r1"), "r1").status == ""  # a replica without a page
    bad = raw.replace("http://127.0.0.1:9101/status", "file:///etc/passwd")
    rejected = check_member(member_kv("r1", value=bad), "r1")
    assert isinstance(rejected, Rejection) and rejected.reason == "bad_address"


def test_a_crashed_node_is_named_down_and_a_partitioned_one_is_not():
    """DOWN: pods published, no liveness record, switch connected to no replica that
    answered. A cut controller connection alone (the record alive) is only a switch
    problem; a dead agent alone (its switch connected) is no problem."""
    crashed = assess(snap(liveness=()), TTLS, {"r1": page(switch(2))})
    assert crashed.nodes[0].down and not crashed.healthy
    assert crashed.problems == [
        "node 198.18.0.1 (198.19.1.0/24) is DOWN: no liveness record and its switch is not "
        "connected to any controller; its backends are out of every service",
    ]
    assert render(crashed, now=0.0).splitlines()[3].split()[3] == "DOWN"
    cut = assess(snap(), TTLS, {"r1": page(switch(2))})
    assert not cut.nodes[0].down
    assert cut.problems[0].endswith("its switch is not connected to any controller (node or "
                                    "ovs-vswitchd down?)")  # fmt: skip
    agent_gone = assess(snap(liveness=()), TTLS, {"r1": page(switch(1), switch(2))})
    assert not agent_gone.nodes[0].down and agent_gone.healthy
    # no page read: the switches are unknown, no node is called DOWN
    assert not assess(snap(liveness=()), TTLS, {"r1": "unreachable"}).nodes[0].down
