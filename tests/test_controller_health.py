"""Health-check verdicts in the controller's model (pure): a backend unready for a service
leaves that service's group and affinity link table on every switch (the same diff as a
DOWN node's), comes back with a ready verdict or when the verdict goes; a service whose
backends are all unready compiles as one without backends; a verdict counts only while
its service has a HealthCheck, an IPv6 backend's while its node's lease holds it."""

from __future__ import annotations

from dataclasses import replace

from controller.model import FULL, ClusterModel
from flows.groups import group_cookie
from flows.services import group_id
from leases.events import (
    LeaseChanged,
    ReadinessAdded,
    ReadinessRemoved,
    ServiceAdded,
    ServiceRemoved,
)
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
from tests.test_flows_ipv6 import DUAL, HALVES, PODS6
from tests.test_flows_ipv6_services import REMOTE6, SVC6, WEB6

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


def test_an_ipv6_backends_verdict_counts_while_its_nodes_lease_holds_the_address() -> None:
    """An IPv6 service's backend unready leaves its group on every switch like an IPv4 one;
    its key names only the node's IPv4 subnet, so the verdict counts while that lease's IPv6
    subnet holds the address: not under another node's subnet, and not once the lease's
    IPv6 subnet moves (a lease event counts it again), again when it moves back."""
    web6 = replace(WEB6, health_check=CHECK)
    model = ClusterModel()
    model.connected = {lease.public_ip for lease in HALVES}
    model.load(DUAL, HALVES, PODS6, vxflow=VxflowConfig(NET, SVC6), services=[web6],
               alive=model.connected)  # fmt: skip
    node1, gid = HALVES[0].public_ip, group_id(SVC6, web6, 0)

    def serving() -> set[str]:
        (group,) = [g for g in model.desired(node1, FULL).groups if g.group_id == gid]
        return {str(b.actions[0][4][1]) for b in group.buckets}

    both = {str(b.ip) for b in web6.backends}
    cookie = group_cookie(gid)
    assert serving() == both
    holder = next(lease for lease in HALVES if REMOTE6 in lease.ipv6_subnet)
    stranger = next(lease for lease in HALVES if REMOTE6 not in lease.ipv6_subnet)
    impact = model.apply([ReadinessAdded(Readiness(stranger.subnet, REMOTE6, "web6", False), 40)])
    assert cookie not in impact.service_cookies and serving() == both  # another node's word
    record = Readiness(holder.subnet, REMOTE6, "web6", False, 7)
    impact = model.apply([ReadinessAdded(record, 41)])
    assert cookie in impact.service_cookies and serving() == both - {str(REMOTE6)}
    moved = replace(holder, ipv6_subnet=DUAL.ipv6.subnet_max)  # a subnet no lease holds
    assert REMOTE6 not in moved.ipv6_subnet
    for old, new, want in ((holder, moved, both), (moved, holder, both - {str(REMOTE6)})):
        impact = model.apply([LeaseChanged(old, new, 42)])
        assert cookie in impact.service_cookies and serving() == want, (new.ipv6_subnet, want)
    model.apply([ReadinessRemoved(record, 43)])
    assert serving() == both
