"""Node liveness in the controller's model (pure): which nodes are DOWN from their
liveness records, their pods and this replica's switch connections, and what a DOWN node
does to the compiled services (its backends out of every group and affinity link table,
its UDP backends' conntrack entries flushed; back when it is UP)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from controller.model import FULL, ClusterModel
from flows.flow import Owner, Table, cookie_for
from flows.groups import group_cookie
from flows.services import group_id
from leases.events import EndpointAdded, EndpointRemoved, LivenessAdded, LivenessRemoved
from leases.model import Backend, Endpoint, Liveness, Service, ServicePort, VxflowConfig
from tests.test_controller_sync import CONFIG, lease

NET = IPv4Network("198.20.0.0/16")
LEASES = [lease(1), lease(2), lease(3)]
N1, N2, N3 = (lease_.public_ip for lease_ in LEASES)
# a pod on each node, each a backend
PODS = [Endpoint(lease_.subnet, lease_.subnet.network_address + 5, f"0a:58:00:00:00:0{i}", 3)
        for i, lease_ in enumerate(LEASES, 1)]  # fmt: skip
WEB = Service("web", IPv4Address("198.20.0.10"), (ServicePort(80, "TCP", 8080),),
              tuple(Backend(p.ip) for p in PODS))  # fmt: skip
DNS = Service("dns", IPv4Address("198.20.0.53"), (ServicePort(53, "UDP", 5353),),
              tuple(Backend(p.ip) for p in PODS))  # fmt: skip
STICKY = Service("sticky", IPv4Address("198.20.0.11"), (ServicePort(80, "TCP", 8080),),
                 tuple(Backend(p.ip) for p in PODS), affinity_timeout=60)  # fmt: skip


def record(ip: IPv4Address) -> Liveness:
    return Liveness(ip, 2, 7)


def cluster(alive=(N1, N2, N3), connected=(N1, N2, N3), pods=PODS,
            services=(WEB, DNS, STICKY)) -> ClusterModel:  # fmt: skip
    model = ClusterModel()
    model.connected = set(connected)
    model.load(CONFIG, LEASES, pods, vxflow=VxflowConfig(NET), services=services, alive=alive)
    return model


def buckets(model: ClusterModel, node: IPv4Address, service: Service) -> set[str]:
    """The backends of `service`'s group on `node`'s switch, as the compiled group has them."""
    gid = group_id(NET, service, 0)
    table = model.desired(node, FULL)
    (group,) = [g for g in table.groups if g.group_id == gid]
    return {str(b.actions[0][4][1]) for b in group.buckets}


def links(model: ClusterModel, node: IPv4Address) -> set[str]:
    """The backends STICKY's affinity links (and its per-backend SVC_DNAT flows) name."""
    table = model.desired(node, FULL)
    cookie = cookie_for(Owner.SERVICE, group_id(NET, STICKY, 0))
    return {str(f.actions[-1][4][1]) for f in table.flows
            if f.cookie == cookie and f.table in (Table.SVC_LINK, Table.SVC_DNAT) and f.actions
            and f.actions[-1][0] == "ct"}  # fmt: skip


def test_down_only_without_record_and_without_switch_and_with_pods() -> None:
    assert cluster().down_nodes() == {}
    # a partition: the switch is cut off, the record lives: UP
    assert cluster(connected=(N1, N2)).down_nodes() == {}
    # the agent died (or lost etcd), its switch is connected: UP
    assert cluster(alive=(N1, N2)).down_nodes() == {}
    # both gone: DOWN (known at a (re)load, so a replica started after the crash agrees)
    assert cluster(alive=(N1, N2), connected=(N1, N2)).down_nodes() == {N3: LEASES[2].subnet}
    # no pods published on it (a flannel node): never DOWN
    assert cluster(alive=(N1, N2), connected=(N1, N2), pods=PODS[:2]).down_nodes() == {}


def test_a_crash_takes_the_nodes_backends_out_of_every_group_and_link_table() -> None:
    model = cluster()
    assert buckets(model, N1, WEB) == {str(p.ip) for p in PODS}
    assert links(model, N1) == {str(p.ip) for p in PODS}
    # the switch goes first (FIN or echo timeout): nothing changes yet
    impact = model.set_connected(N3, False)
    assert not impact.service_cookies and model.down_nodes() == {}
    # then the record expires: DOWN, both services' ports to every switch
    impact = model.apply([LivenessRemoved(record(N3), 20)])
    assert model.down_nodes() == {N3: LEASES[2].subnet}
    assert impact.service_cookies == {group_cookie(group_id(NET, s, 0)) for s in (WEB, DNS, STICKY)}
    assert not impact.all_nodes and not impact.full_nodes
    for node in (N1, N2):
        assert buckets(model, node, WEB) == {str(PODS[0].ip), str(PODS[1].ip)}
        assert buckets(model, node, DNS) == {str(PODS[0].ip), str(PODS[1].ip)}
        assert links(model, node) == {str(PODS[0].ip), str(PODS[1].ip)}
    # the UDP backend's conntrack entries are flushed, the TCP ones need none
    assert [(f.vip, f.backend, f.port) for f in impact.flushes] == [(DNS.vip, PODS[2].ip, 53)]
    # the scope of the change holds exactly those services' flows and groups
    table = model.desired(N1, impact.scope_for(N1, LEASES[0].subnet))
    assert {g.group_id for g in table.groups} == {group_id(NET, WEB, 0), group_id(NET, DNS, 0)}


def test_the_node_back_brings_its_backends_back() -> None:
    model = cluster(alive=(N1, N2), connected=(N1, N2))
    assert buckets(model, N1, WEB) == {str(PODS[0].ip), str(PODS[1].ip)}
    # its switch reconnects first (OVS back before the agent): UP already
    impact = model.set_connected(N3, True)
    assert model.down_nodes() == {} and impact.flushes == []
    assert group_cookie(group_id(NET, WEB, 0)) in impact.service_cookies
    assert buckets(model, N1, WEB) == {str(p.ip) for p in PODS}
    assert links(model, N1) == {str(p.ip) for p in PODS}
    # or its agent's record comes back first
    model = cluster(alive=(N1, N2), connected=(N1, N2))
    model.apply([LivenessAdded(record(N3), 30)])
    assert model.down_nodes() == {} and buckets(model, N2, DNS) == {str(p.ip) for p in PODS}


def test_a_down_nodes_last_pod_going_makes_it_unjudged_and_a_new_pod_judged_again() -> None:
    model = cluster(alive=(N1, N2), connected=(N1, N2))
    model.apply([EndpointRemoved(PODS[2], 40)])
    assert model.down_nodes() == {}
    model.apply([EndpointAdded(PODS[2], 41)])
    assert model.down_nodes() == {N3: LEASES[2].subnet}


def test_a_service_all_of_whose_backends_are_down_drops_as_one_without_backends() -> None:
    only = Service("only", IPv4Address("198.20.0.12"), (ServicePort(80, "TCP", 8080),),
                   (Backend(PODS[1].ip), Backend(PODS[2].ip)))  # fmt: skip
    model = cluster(alive=(N1, N2), connected=(N1,), services=(only,))
    model.apply([LivenessRemoved(record(N2), 50)])
    assert set(model.down_nodes()) == {N2, N3}
    assert drops_as_one_without_backends(model, N1, only)


def drops_as_one_without_backends(model: ClusterModel, node: IPv4Address, service: Service) -> bool:
    """`node`'s switch has no group for the service's port, and its one drop flow instead."""
    table = model.desired(node, FULL)
    gid = group_id(NET, service, 0)
    drops = [f for f in table.flows if f.cookie == cookie_for(Owner.SERVICE, gid)
             and f.table == Table.SVC_LB and not f.actions]  # fmt: skip
    return gid not in {g.group_id for g in table.groups} and len(drops) == 1
