"""Health checks in the registry (pure): a service's HealthCheck parsed with kubelet's
defaults or the whole service rejected with its reason, and the agents' verdicts
(`<prefix>/vxflow/health/...`) validated, reported as events and read as unready backends."""

from __future__ import annotations

import json
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from flows.ports import vtep_mac_for
from leases.etcd_server import EtcdServer
from leases.events import ReadinessAdded, ReadinessRemoved
from leases.health import (
    check_readiness,
    counts,
    holds,
    readiness_to_json,
    split_backends,
    unready_by_service,
    unready_of,
)
from leases.keys import KV, KeyKind
from leases.model import HealthCheck, Lease, Readiness, Service
from leases.registry import Registry
from leases.services import service_to_json
from leases.state import View, diff
from leases.validate import Rejection
from tests.test_leases_cli import PREFIX, assert_operator_error, run
from tests.test_leases_services import KEYS, WEB, judged


def checked(check: object) -> Service | Rejection:
    return judged({**WEB, "HealthCheck": check})


def test_a_health_check_parses_with_kubelets_defaults_and_round_trips() -> None:
    svc = checked({"Type": "TCP", "Port": 8080})
    assert svc.health_check == HealthCheck("TCP", 8080, "", period=10, timeout=1,
                                           failure_threshold=3, success_threshold=1)  # fmt: skip
    http = checked({"Type": "HTTP", "Port": 8080})
    assert http.health_check.path == "/"  # HTTP's default path
    full = {"Type": "HTTP", "Port": 81, "Path": "/healthz?full=1", "PeriodSeconds": 2,
            "TimeoutSeconds": 2, "FailureThreshold": 4, "SuccessThreshold": 2}  # fmt: skip
    svc = checked(full)
    assert svc.health_check == HealthCheck("HTTP", 81, "/healthz?full=1", 2, 2, 4, 2)
    assert json.loads(service_to_json(svc))["HealthCheck"] == full
    assert judged(service_to_json(svc)) == svc  # the canonical value parses back the same
    assert "HealthCheck" not in json.loads(service_to_json(judged(WEB)))
    assert judged(WEB).health_check is None and checked(None).health_check is None


@pytest.mark.parametrize(
    ("check", "reason", "words"),
    [
        ("TCP", "wrong_type", "HealthCheck is not an object"),
        ({"Port": 80}, "bad_health_check", 'Type null is not "TCP" or "HTTP"'),
        ({"Type": "tcp", "Port": 80}, "bad_health_check", 'Type "tcp"'),
        ({"Type": "TCP"}, "missing_field", "HealthCheck Port is missing"),
        ({"Type": "TCP", "Port": "80"}, "wrong_type", "HealthCheck Port has the wrong type"),
        ({"Type": "TCP", "Port": True}, "wrong_type", "HealthCheck Port has the wrong type"),
        ({"Type": "TCP", "Port": 0}, "bad_health_check", "HealthCheck Port 0 is not in 1..65535"),
        ({"Type": "TCP", "Port": 65536}, "bad_health_check", "Port 65536"),
        ({"Type": "TCP", "Port": 80, "Path": "/"}, "bad_health_check", 'Path is for Type "HTTP"'),
        ({"Type": "HTTP", "Port": 80, "Path": "healthz"}, "bad_health_check", "starting with /"),
        ({"Type": "HTTP", "Port": 80, "Path": "/a b"}, "bad_health_check", "without spaces"),
        ({"Type": "HTTP", "Port": 80, "Path": "/a\r\nX: y"}, "bad_health_check", "printable"),
        ({"Type": "HTTP", "Port": 80, "Path": "/" + "a" * 1024}, "bad_health_check", "1-1024"),
        ({"Type": "HTTP", "Port": 80, "Path": 5}, "wrong_type", "Path has the wrong type"),
        ({"Type": "TCP", "Port": 80, "PeriodSeconds": 0}, "bad_health_check", "PeriodSeconds 0"),
        ({"Type": "TCP", "Port": 80, "PeriodSeconds": 1.5}, "wrong_type", "PeriodSeconds"),
        ({"Type": "TCP", "Port": 80, "TimeoutSeconds": 3601}, "bad_health_check", "1..3600"),
        ({"Type": "TCP", "Port": 80, "FailureThreshold": 0}, "bad_health_check", "Failure"),
        ({"Type": "TCP", "Port": 80, "SuccessThreshold": 1001}, "bad_health_check", "1..1000"),
        ({"Type": "TCP", "Port": 80, "Periodseconds": 1}, "bad_health_check",
         "unknown field(s) Periodseconds"),
    ],
)  # fmt: skip
def test_a_bad_health_check_rejects_the_whole_service(check: object, reason: str, words: str) -> None:
    result = checked(check)
    assert isinstance(result, Rejection), result
    assert (result.kind, result.reason) == (KeyKind.SERVICE, reason), result
    assert words in result.detail, result.detail


SUBNET = IPv4Network("10.20.3.0/24")
IP = IPv4Address("10.20.3.7")


def verdict_kv(value: str | None = None, name: str = "10.20.3.0-24/10.20.3.7/web",
               lease: int = 9, rev: int = 4) -> KV:  # fmt: skip
    raw = value if value is not None else readiness_to_json(Readiness(SUBNET, IP, "web", False))
    return KV(KEYS.health + name, raw.encode(), rev, rev, lease)


def test_verdicts_validate_with_reasons() -> None:
    assert KEYS.classify(verdict_kv().key) == (KeyKind.HEALTH, "10.20.3.0-24/10.20.3.7/web")
    good = check_readiness(verdict_kv(), "10.20.3.0-24/10.20.3.7/web")
    assert good == Readiness(SUBNET, IP, "web", False, 9)
    assert good.key_name == "10.20.3.0-24/10.20.3.7/web"
    assert check_readiness(verdict_kv(lease=0), good.key_name).etcd_lease_id == 0  # a reservation
    bad = {
        "bad_json": verdict_kv("{"),
        "wrong_type": verdict_kv('{"IP": "10.20.3.7", "Service": "web", "Ready": "no"}'),
        "missing_field": verdict_kv('{"IP": "10.20.3.7", "Ready": false}'),
    }
    misnamed = {  # another node's backend, a key that names another backend or service
        "10.20.4.0-24/10.20.3.7/web",
        "10.20.3.0-24/10.20.3.8/web",
        "10.20.3.0-24/10.20.3.7/api",
        "10.20.3.0-24/10.20.3.7/Web!",
        "10.20.3.0-24/10.20.3.7",
        "10.20.3.0-24/ten/web",
    }
    for reason, kv in bad.items():
        result = check_readiness(kv, "10.20.3.0-24/10.20.3.7/web")
        assert isinstance(result, Rejection) and result.reason == reason, (reason, result)
    for name in misnamed:
        result = check_readiness(verdict_kv(name=name), name)
        assert isinstance(result, Rejection) and result.reason == "bad_key", (name, result)
        assert result.kind is KeyKind.HEALTH


def test_an_ipv6_backends_verdict_validates_and_counts_while_its_lease_holds_it() -> None:
    """A dual-stack pod's verdict (an IPv6 service's backend): its key names the node's IPv4
    subnet and the pod's IPv6 address as Python writes it; it counts (in a snapshot's
    unready backends) only while the lease of that subnet holds the address."""
    six = IPv6Address("fc00:0:0:3::7")
    name = f"10.20.3.0-24/{six}/web6"
    record = Readiness(SUBNET, six, "web6", False, 9)
    kv = verdict_kv(readiness_to_json(record), name=name)
    assert record.key_name == name and check_readiness(kv, name) == record
    for odd in ("10.20.3.0-24/FC00:0:0:3::7/web6", "10.20.3.0-24/fc00:0:0:3:0::7/web6",
                "10.20.3.0-24/fc00::3::7/web6"):  # fmt: skip
        result = check_readiness(verdict_kv(readiness_to_json(record), name=odd), odd)
        assert isinstance(result, Rejection) and result.reason == "bad_key", (odd, result)
    dual = Lease(SUBNET, IPv4Address("198.18.0.3"), 1, vtep_mac_for(IPv4Address("198.18.0.3")),
                 ipv6_subnet=IPv6Network("fc00:0:0:3::/64"),
                 public_ipv6=IPv6Address("fd00:198:18::3"), vtep_mac_v6="0e:00:00:00:00:03")
    elsewhere = replace(dual, ipv6_subnet=IPv6Network("fc00:0:0:9::/64"))
    assert counts(record, {SUBNET: dual}) and holds(dual, six) and holds(dual, IP)
    for leases in ({}, {SUBNET: elsewhere}, {SUBNET: replace(dual, ipv6_subnet=None)}):
        assert not counts(record, leases), leases
    assert counts(Readiness(SUBNET, IP, "web", False), {})  # IPv4: its key says (checked)
    assert unready_by_service([record], {SUBNET: dual}) == {"web6": frozenset({six})}
    assert unready_by_service([record], {SUBNET: elsewhere}) == {}


def test_the_view_reports_verdicts_and_a_snapshot_reads_the_unready_backends() -> None:
    view = View(KEYS).load([verdict_kv()], 4)
    before = view.snapshot()
    record = Readiness(SUBNET, IP, "web", False, 9)
    assert before.readiness == (record,) and before.unready() == {"web": frozenset({IP})}
    ready = verdict_kv(readiness_to_json(Readiness(SUBNET, IP, "web", True)), rev=5)
    events, _, _ = view.apply({ready.key: ready}, 5)
    assert events == [ReadinessRemoved(record, 5), ReadinessAdded(Readiness(SUBNET, IP, "web", True, 9), 5)]
    assert diff(before, view.snapshot()) == events  # a re-list yields the same
    assert view.snapshot().unready() == {}


def test_verdicts_count_only_while_the_service_has_a_check() -> None:
    unchecked = judged(WEB)
    svc = checked({"Type": "TCP", "Port": 8080})
    unready = {"web": frozenset({IP})}
    assert unready_of(unchecked, unready) == frozenset()  # left from a check since removed
    assert unready_of(svc, unready) == {IP}
    assert split_backends(svc, unready) == ([IPv4Address("10.20.1.5")], [IP])
    assert split_backends(svc, {}) == ([IPv4Address("10.20.1.5"), IP], [])


@pytest.mark.integration
def test_services_list_and_status_show_ready_and_unready_backends(etcd: EtcdServer) -> None:
    """Against a real etcd: the README's example service is accepted; verdicts bound to
    two nodes' leases show in `services list` (table and json) and `vxflow status`."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("### Health checks")[1].split("```text")[1].split("```")[0]
    with Registry(etcd.endpoint, PREFIX) as reg:
        reg.set_config('{"Network": "10.20.0.0/16", "Backend": {"Type": "vxlan"}}')
        reg.set_service_network("10.96.0.0/16")
        result = run(etcd, "services", "set", "-", stdin=example)
        assert result.exit_code == 0 and "HTTP 8080/healthz every 2s" in result.output, result.output
        # a bad check refuses the whole service, in one line; what was stored stays
        bad = {**json.loads(example), "HealthCheck": {"Type": "TCP", "Port": 8080, "Path": "/"}}
        assert_operator_error(run(etcd, "services", "set", "-", stdin=json.dumps(bad)),
                              'HealthCheck Path is for Type "HTTP" only [bad_health_check]')
        assert reg.snapshot().services[0].health_check.path == "/healthz"
        a, b = (reg.acquire(ip, vtep_mac_for(ip)) for ip in (IPv4Address("198.18.0.3"),
                                                              IPv4Address("198.18.0.4")))  # fmt: skip
        ip_a, ip_b = a.subnet.network_address + 5, b.subnet.network_address + 5
        reg.put_service({**json.loads(example), "Backends": [{"IP": str(ip_a)}, {"IP": str(ip_b)}]})
        reg.put_readiness(Readiness(a.subnet, ip_a, "web", False), a)
        reg.put_readiness(Readiness(b.subnet, ip_b, "web", True), b)
        with pytest.raises(ValueError, match="not in lease"):  # only a node's own backends
            reg.put_readiness(Readiness(a.subnet, ip_a, "web", False), b)
        assert reg.list_readiness(a.subnet) == [Readiness(a.subnet, ip_a, "web", False, a.etcd_lease_id)]
        table = run(etcd, "services", "list").output
        assert "READY" in table and f"{ip_a}(unready)" in table and " 1/2 " in table, table
        (svc,) = json.loads(run(etcd, "services", "list", "-o", "json").output)["services"]
        assert (svc["ReadyBackends"], svc["UnreadyBackends"]) == ([str(ip_b)], [str(ip_a)])
        status = run(etcd, "status", "-o", "json")
        (state,) = json.loads(status.output)["services"]
        assert (state["ready"], state["unready"], state["down"]) == ([str(ip_b)], [str(ip_a)], [])
        # `flows show` leaves it out of the group, as the controller does
        shown = run(etcd, "flows", "show", "--node", "198.18.0.3").output
        (group,) = [line for line in shown.splitlines() if line.startswith("group_id=")]
        assert f"nat(dst={ip_b}:" in group and f"nat(dst={ip_a}:" not in group, group
        # both unready: the service drops as one without backends, and status says so
        reg.put_readiness(Readiness(b.subnet, ip_b, "web", False), b)
        table = run(etcd, "services", "list").output
        assert "0/2 (none ready: dropped)" in table, table
        status = run(etcd, "status")
        assert status.exit_code == 1
        assert "service web (10.96.0.10): none of its 2 backends serves (2 unready by its health " \
               "check): new connections to it fail" in status.output, status.output
        # the lease goes (the node released it): its verdict goes with it
        reg.release(a)
        assert reg.list_readiness(a.subnet) == []
