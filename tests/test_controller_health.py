"""Health-check verdicts in the controller's model (pure): a backend unready for a service
leaves that service's group and affinity link table on every switch (the same diff as a
DOWN node's), comes back with a ready verdict or when the verdict goes; a service whose
backends are all unready compiles as one without backends; a verdict counts only while
its service has a HealthCheck."""

from __future__ import annotations

from dataclasses import replace

from controller.model import ClusterModel
from flows.groups import group_cookie
from flows.services import group_id
from leases.events import ReadinessAdded, ReadinessRemoved, ServiceAdded, ServiceRemoved
from leases.model import HealthCheck, Readiness, VxflowConfig
from tests.test_controller_liveness import (
    DNS,
    LEASES,
    N1,
    N2,
    NET,
    PODS,
    STICKY,
    WEB,
    buckets,
    drops_as_one_without_backends,
    links,
)
from tests.test_controller_sync import CONFIG

CHECK = HealthCheck("TCP", 8080, period=1, failure_threshold=2)
CHECKED = tuple(replace(s, health_check=CHECK) for s in (WEB, DNS, STICKY))
C_WEB, C_DNS, C_STICKY = CHECKED
ALL = {str(p.ip) for p in PODS}


def verdict(pod: int, service: str, ready: bool) -> Readiness:
    return Readiness(PODS[pod].node_subnet, PODS[pod].ip, service, ready, 7)


def cluster(services=CHECKED, readiness=()) -> ClusterModel:
    model = ClusterModel()
    model.connected = {lease.public_ip for lease in LEASES}
    model.load(CONFIG, LEASES, PODS, vxflow=VxflowConfig(NET), services=services,
               alive=model.connected, readiness=readiness)  # fmt: skip
    return model


def test_an_unready_backend_leaves_only_its_services_group_and_links_and_comes_back() -> None:
    model = cluster()
    assert buckets(model, N1, C_WEB) == ALL and links(model, N1) == ALL
    impact = model.apply([ReadinessAdded(verdict(2, "web", False), 10)])
    assert impact.service_cookies == {group_cookie(group_id(NET, C_WEB, 0))}
    assert not impact.all_nodes and not impact.full_nodes and impact.flushes == []
    for node in (N1, N2):
        assert buckets(model, node, C_WEB) == ALL - {str(PODS[2].ip)}
        assert buckets(model, node, C_DNS) == ALL  # another service's verdict is its own
        assert links(model, node) == ALL
    # the sticky service's verdict: out of its affinity links and per-backend flows too
    model.apply([ReadinessAdded(verdict(2, "sticky", False), 11)])
    assert links(model, N1) == ALL - {str(PODS[2].ip)}
    # ready again (a changed verdict is removed, then added in one batch)
    impact = model.apply([ReadinessRemoved(verdict(2, "web", False), 12),
                          ReadinessAdded(verdict(2, "web", True), 12)])  # fmt: skip
    assert impact.service_cookies == {group_cookie(group_id(NET, C_WEB, 0))}
    assert buckets(model, N1, C_WEB) == ALL
    # the verdict withdrawn (the agent restarted: not judged yet): in service
    model.apply([ReadinessRemoved(verdict(2, "sticky", False), 13)])
    assert links(model, N1) == ALL


def test_a_udp_backend_unready_has_its_conntrack_entries_flushed() -> None:
    model = cluster()
    impact = model.apply([ReadinessAdded(verdict(1, "dns", False), 20)])
    assert [(f.vip, f.backend, f.port) for f in impact.flushes] == [(C_DNS.vip, PODS[1].ip, 53)]


def test_a_service_all_of_whose_backends_are_unready_drops_as_one_without_backends() -> None:
    model = cluster(readiness=[verdict(i, "web", False) for i in range(3)])
    assert drops_as_one_without_backends(model, N1, C_WEB)
    assert buckets(model, N1, C_DNS) == ALL


def test_a_verdict_counts_only_while_its_service_has_a_check() -> None:
    model = cluster(services=(WEB,), readiness=[verdict(0, "web", False)])
    assert buckets(model, N1, WEB) == ALL  # a record left from a check since removed
    impact = model.apply([ServiceRemoved(WEB, 30), ServiceAdded(C_WEB, 30)])  # the check added
    assert group_cookie(group_id(NET, C_WEB, 0)) in impact.service_cookies
    assert buckets(model, N1, C_WEB) == ALL - {str(PODS[0].ip)}
    # a verdict of an unknown service or backend changes nothing
    stranger = PODS[0].node_subnet.network_address + 99
    impact = model.apply([ReadinessAdded(Readiness(PODS[0].node_subnet, stranger, "nope", False, 7),
                                         31)])  # fmt: skip
    assert not impact.service_cookies and buckets(model, N1, C_WEB) == ALL - {str(PODS[0].ip)}
