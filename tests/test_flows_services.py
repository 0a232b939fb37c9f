"""The services' part of the compiler (pure): VIP flows, groups and buckets, zones, weights,
affinity (its links and how a backend change moves them), hairpin, the counted no-backend
drop, and group diffs."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest

from flows.compiler import compile_node, compile_table
from flows.diff import diff_flows
from flows.flow import Flow, Owner, Table, cookie_for, owner_of, to_ofctl
from flows.groups import Bucket, Group, diff_groups, group_to_ofctl
from flows.ports import pod_mac, vtep_mac_for
from flows.services import (
    HAIRPIN_ZONE,
    PRIO_HAIRPIN,
    SERVICE_ZONE,
    ServicePlan,
    affinity_links,
    group_id,
    hairpin_source,
    is_learned,
    plan_groups,
    port_flows,
)
from leases.model import Backend, Endpoint, Lease, NetworkConfig, Service, ServicePort
from leases.services import LINK_TABLES, MAX_BACKENDS, link_count, service_flows

CONFIG = NetworkConfig(IPv4Network("198.19.0.0/16"))
SERVICE_NET = IPv4Network("198.20.0.0/16")
N1, N2 = IPv4Address("198.18.0.1"), IPv4Address("198.18.0.2")
POD = IPv4Address("198.19.1.254")
REMOTE_POD = IPv4Address("198.19.2.254")


def lease(i: int) -> Lease:
    ip = IPv4Address(f"198.18.0.{i}")
    return Lease(IPv4Network(f"198.19.{i}.0/24"), ip, 1, vtep_mac_for(ip))


LEASES = [lease(1), lease(2)]
ENDPOINT = Endpoint(IPv4Network("198.19.1.0/24"), POD, pod_mac(POD), 3)
WEB = Service(
    "web",
    IPv4Address("198.20.0.10"),
    (ServicePort(80, "TCP", 8080), ServicePort(53, "UDP", 5353)),
    (Backend(POD, 2), Backend(REMOTE_POD, 1)),
)
STICKY = Service(
    "sticky", IPv4Address("198.20.1.1"), (ServicePort(443, "TCP", 8443),),
    (Backend(REMOTE_POD, 1),), affinity_timeout=600,
)  # fmt: skip
EMPTY = Service("empty", IPv4Address("198.20.0.11"), (ServicePort(80, "TCP", 8080),))


def plan(*services: Service) -> ServicePlan:
    return ServicePlan(SERVICE_NET, services)


def service_lines(services: ServicePlan | None, node: IPv4Address = N1) -> list[str]:
    """The flows services add (and hairpin flows), in ovs-ofctl syntax, table by table."""
    table = compile_table(CONFIG, LEASES, [ENDPOINT], node, services)
    kept = [
        f for f in table
        if owner_of(f.cookie)[0] in (Owner.SERVICE, Owner.SERVICE_NET) or "zone=" in to_ofctl(f)
    ]  # fmt: skip
    return [to_ofctl(f) for f in sorted(kept, key=lambda f: (f.table, -f.priority, str(f.match)))]


def test_every_service_flow_and_group_of_a_node() -> None:
    """The whole contribution, as ovs-ofctl would take it: the pipeline in one picture."""
    gw, c_net = "0a:58:c6:13:01:01", "cookie=0x7605000000000000"
    web80, web53, empty, sticky = (
        "0x7604000000000a00",
        "0x7604000000000a01",
        "0x7604000000000b00",
        "0x7604000000010100",
    )
    arp = ("move:eth_src[]->eth_dst[],set_field:0a:58:c6:13:01:01->eth_src,set_field:2->arp_op,"
           "move:arp_sha[]->arp_tha[],set_field:0a:58:c6:13:01:01->arp_sha,move:arp_tpa[]->reg0[],"
           "move:arp_spa[]->arp_tpa[],move:reg0[]->arp_spa[],in_port")  # fmt: skip
    ip = "eth_type=0x0800"
    lines = service_lines(plan(WEB, STICKY, EMPTY))
    to_remote = ("learn(table=41,idle_timeout=600,priority=100,cookie=0x7606000000010100,eth_type=0x800,"
                 "nw_proto=6,NXM_OF_IP_SRC[],NXM_OF_IP_DST[],NXM_OF_TCP_DST[],load:0xc61302fe->NXM_NX_REG1[]),"
                 "ct(commit,table=20,zone=7678,nat(dst=198.19.2.254:8443))")  # fmt: skip
    # sticky's one backend holds every one of its 67 links
    assert [line for line in lines if ",table=46," in line] == [
        f"cookie={sticky},table=46,priority=100,{ip},ip_dst=198.20.1.1,ip_proto=6,reg0={k},tcp_dst=443 actions={to_remote}"
        for k in sorted(range(67), key=str)
    ]
    assert [line for line in lines if ",table=46," not in line] == [
        f"{c_net},table=10,priority=10,arp_op=1,arp_tpa=198.20.0.0/16,eth_type=0x0806 actions={arp}",
        f"cookie={web53},table=20,priority=200,{ip},ip_dst=198.20.0.10,ip_proto=17,udp_dst=53 actions=ct(table=40,zone=7678,nat)",
        f"cookie={web80},table=20,priority=200,{ip},ip_dst=198.20.0.10,ip_proto=6,tcp_dst=80 actions=ct(table=40,zone=7678,nat)",
        f"cookie={empty},table=20,priority=200,{ip},ip_dst=198.20.0.11,ip_proto=6,tcp_dst=80 actions=ct(table=40,zone=7678,nat)",
        f"cookie={sticky},table=20,priority=200,{ip},ip_dst=198.20.1.1,ip_proto=6,tcp_dst=443 actions=ct(table=40,zone=7678,nat)",
        f"{c_net},table=20,priority=200,{ip},ip_dst=198.20.255.255 actions=move:eth_src[]->eth_dst[],ct(table=43,zone=7679,nat)",
        f"{c_net},table=20,priority=50,{ip},ip_dst=198.20.0.0/16 actions=drop",
        f"cookie=0x76030000c61301fe,table=30,priority=220,{ip},in_port=3,ip_dst=198.19.1.254,ip_src=198.19.1.254 actions=set_field:0a:58:c6:13:01:fe->eth_dst,ct(commit,table=44,zone=7679,nat(src=198.20.255.255))",
        f"cookie=0x76050000001114e9,table=30,priority=200,ct_state=-trk,{ip},ip_proto=17,ip_src=198.19.0.0/16,udp_src=5353 actions=ct(table=45,zone=7678)",
        f"cookie=0x7605000000061f90,table=30,priority=200,ct_state=-trk,{ip},ip_proto=6,ip_src=198.19.0.0/16,tcp_src=8080 actions=ct(table=45,zone=7678)",
        f"cookie=0x76050000000620fb,table=30,priority=200,ct_state=-trk,{ip},ip_proto=6,ip_src=198.19.0.0/16,tcp_src=8443 actions=ct(table=45,zone=7678)",
        f"cookie={web53},table=40,priority=100,ct_state=+new+trk,{ip},ip_dst=198.20.0.10,ip_proto=17,udp_dst=53 actions=group:2561",
        f"cookie={web80},table=40,priority=100,ct_state=+new+trk,{ip},ip_dst=198.20.0.10,ip_proto=6,tcp_dst=80 actions=group:2560",
        f"cookie={empty},table=40,priority=100,ct_state=+new+trk,{ip},ip_dst=198.20.0.11,ip_proto=6,tcp_dst=80 actions=drop",
        f"cookie={sticky},table=40,priority=100,ct_state=+new+trk,{ip},ip_dst=198.20.1.1,ip_proto=6,tcp_dst=443 actions=resubmit(,41),goto_table:42",
        f"{c_net},table=40,priority=10,ct_state=+est+trk,{ip} actions=resubmit(,20)",
        f"{c_net},table=40,priority=10,ct_state=+rel+trk,{ip} actions=resubmit(,20)",
        f"cookie={sticky},table=42,priority=100,{ip},ip_dst=198.20.1.1,ip_proto=6,reg1=3323134718,tcp_dst=443 actions={to_remote}",
        f"cookie={sticky},table=42,priority=10,{ip},ip_dst=198.20.1.1,ip_proto=6,tcp_dst=443 actions=multipath(nw_src,257,modulo_n,67,0,reg0[]),goto_table:46",
        f"{c_net},table=43,priority=10,ct_state=+est+trk,{ip} actions=ct(table=44,zone=7678,nat)",
        f"{c_net},table=43,priority=10,ct_state=+rel+trk,{ip} actions=ct(table=44,zone=7678,nat)",
        f"{c_net},table=44,priority=10,{ip} actions=set_field:{gw}->eth_src,in_port",
        f"{c_net},table=45,priority=10,ct_state=+rel+trk,{ip} actions=ct(table=30,zone=7678,nat)",
        f"{c_net},table=45,priority=10,ct_state=+est+rpl+trk,{ip} actions=ct(table=30,zone=7678,nat)",
        f"{c_net},table=45,priority=1,{ip} actions=resubmit(,30)",
    ]
    assert [group_to_ofctl(g) for g in plan_groups(plan(WEB, STICKY, EMPTY))] == [
        "group_id=2560,type=select,bucket=weight:2,actions=ct(commit,table=20,zone=7678,nat(dst=198.19.1.254:8080)),bucket=weight:1,actions=ct(commit,table=20,zone=7678,nat(dst=198.19.2.254:8080))",
        "group_id=2561,type=select,bucket=weight:2,actions=ct(commit,table=20,zone=7678,nat(dst=198.19.1.254:5353)),bucket=weight:1,actions=ct(commit,table=20,zone=7678,nat(dst=198.19.2.254:5353))",
    ]  # sticky has none: its flows pick


def test_group_ids_come_from_the_vip_offset_and_port_slot() -> None:
    assert group_id(SERVICE_NET, WEB, 0) == 10 << 8 | 0  # 198.20.0.10: offset 10
    assert group_id(SERVICE_NET, WEB, 1) == 10 << 8 | 1
    assert group_id(SERVICE_NET, STICKY, 0) == 0x101 << 8  # 198.20.1.1: offset 257
    # every service port of a large plan gets its own group, each one cookie's key
    many = [
        Service(f"s{i}", SERVICE_NET.network_address + i,
                tuple(ServicePort(p, "TCP", 80) for p in (1, 2, 3)), (Backend(POD),))
        for i in range(1, 2000)
    ]  # fmt: skip
    groups = plan_groups(plan(*many))
    assert len({g.group_id for g in groups}) == 3 * 1999
    assert all(g.group_id < 0xFFFFFF00 for g in groups)  # below OFPG_MAX


def test_weights_are_bucket_weights_and_zones_are_vxflows() -> None:
    (web80, web53) = plan_groups(plan(WEB))
    assert [b.weight for b in web80.buckets] == [2, 1]
    commits = [a for g in (web80, web53) for b in g.buckets for a in b.actions]
    assert {a[0] for a in commits} == {"ct"}
    assert {(a[1], a[2], a[3]) for a in commits} == {(True, SERVICE_ZONE, Table.ROUTE)}
    assert [a[4] for a in commits] == [
        ("dst", POD, 8080), ("dst", REMOTE_POD, 8080), ("dst", POD, 5353), ("dst", REMOTE_POD, 5353),
    ]  # fmt: skip
    hairpin = [
        f for f in compile_node(CONFIG, LEASES, [ENDPOINT], N1, plan(WEB)) if f.priority == PRIO_HAIRPIN
    ]
    assert [f.actions[-1][2] for f in hairpin] == [HAIRPIN_ZONE]
    assert hairpin[0].actions[-1][4] == ("src", hairpin_source(SERVICE_NET), 0)
    assert hairpin_source(SERVICE_NET) == IPv4Address("198.20.255.255")


def _flows(services: ServicePlan | None, node: IPv4Address = N1) -> frozenset[Flow]:
    return compile_node(CONFIG, LEASES, [ENDPOINT], node, services)


def test_a_backend_change_changes_only_the_group() -> None:
    """Adding, removing or reweighting a backend: the flows stay, one group changes."""
    before = plan(WEB, EMPTY)
    for backends in (
        (*WEB.backends, Backend(IPv4Address("198.19.3.9"))),  # added
        WEB.backends[1:],  # removed
        (Backend(POD, 5), WEB.backends[1]),  # reweighted
    ):
        after = plan(replace(WEB, backends=backends), EMPTY)
        assert not diff_flows(_flows(before), _flows(after))
        changed = diff_groups(plan_groups(before), plan_groups(after))
        assert (changed.add, changed.delete) == ((), ())
        assert [g.group_id for g in changed.modify] == [2560, 2561]  # both ports of web
        assert [b.weight for b in changed.modify[0].buckets] == [b.weight for b in backends]


def test_a_service_without_backends_drops_with_its_own_cookie_and_gets_no_group() -> None:
    flows = _flows(plan(EMPTY))
    gid = group_id(SERVICE_NET, EMPTY, 0)
    drop = [
        f for f in flows if f.table == Table.SVC_LB and f.cookie == cookie_for(Owner.SERVICE, gid)
    ]
    assert [(f.priority, f.actions) for f in drop] == [(100, ())]
    assert plan_groups(plan(EMPTY)) == []
    # its traffic never reaches the host route: the range drop (also counted) sits above it
    route = {f.priority: f for f in flows if f.table == Table.ROUTE and len(f.match) <= 2}
    assert route[50].match == (("eth_type", 0x0800), ("ip_dst", SERVICE_NET))
    assert route[50].actions == () and route[1].actions[-1] == ("output", 2)  # 1: to the host
    # a first backend: the drop becomes the group, the group appears
    first = replace(EMPTY, backends=(Backend(POD),))
    d = diff_flows(flows, _flows(plan(first)))
    assert [(f.table, f.actions) for f in d.add] == [(Table.SVC_LB, (("group", gid),))]
    assert d.delete == ()


def test_affinity_learns_the_backend_and_its_links_pick_one_without_a_group() -> None:
    assert plan_groups(plan(STICKY)) == []
    gid = group_id(SERVICE_NET, STICKY, 0)
    flows = [f for f in _flows(plan(STICKY)) if f.cookie == cookie_for(Owner.SERVICE, gid)]
    dnat = [f for f in flows if f.table == Table.SVC_DNAT and f.priority == 100]
    (learn, commit) = dnat[0].actions
    assert learn == ("learn", Table.SVC_AFFINITY, 600, 100, cookie_for(Owner.LEARNED, gid),
                     6, "tcp_dst", int(REMOTE_POD), 0x0800)  # fmt: skip
    assert commit == ("ct", True, SERVICE_ZONE, Table.ROUTE, ("dst", REMOTE_POD, 8443))
    assert ("reg1", int(REMOTE_POD)) in dnat[0].match
    # no entry (or one of a removed backend): the client's address picks the link
    (pick,) = [f for f in flows if f.table == Table.SVC_DNAT and f.priority == 10]
    assert pick.actions == (("multipath", "nw_src", 257, "modulo_n", 67, "reg0"),
                            ("goto_table", Table.SVC_LINK))  # fmt: skip
    links = [f for f in flows if f.table == Table.SVC_LINK]
    assert sorted(dict(f.match)["reg0"] for f in links) == list(range(67))
    assert {f.actions for f in links} == {dnat[0].actions}  # each link commits by itself
    learned = Flow(Table.SVC_AFFINITY, 100, (), (), cookie_for(Owner.LEARNED, gid))
    assert is_learned(learned)
    assert not any(is_learned(f) for f in _flows(plan(STICKY)))


def backends(n: int, weight=lambda i: 1) -> tuple[Backend, ...]:
    return tuple(Backend(IPv4Address(f"198.19.{i // 200 + 1}.{i % 200 + 2}"), weight(i))
                 for i in range(n))  # fmt: skip


def test_links_follow_the_weights() -> None:
    for group in (backends(3), backends(3, lambda i: 2 if i == 0 else 1), backends(5, lambda i: i + 1),
                  backends(2, lambda i: 1000 if i else 1), backends(40), backends(300)):  # fmt: skip
        links = affinity_links(group)
        assert len(links) == link_count(len(group)) and len(links) in LINK_TABLES
        held = Counter(links)
        rest, total = len(links) - len(group), sum(b.weight for b in group)
        for b in group:  # one each, the rest by weight (within one link)
            assert abs(held[b.ip] - 1 - rest * b.weight / total) < 1, (b, held)
    assert Counter(affinity_links(backends(3, lambda i: 2 if i == 0 else 1))) == {
        IPv4Address("198.19.1.2"): 33, IPv4Address("198.19.1.3"): 17, IPv4Address("198.19.1.4"): 17,
    }  # fmt: skip
    assert link_count(16) == 67 and link_count(17) == 257 and link_count(MAX_BACKENDS) == 2053


def test_the_links_are_the_same_on_every_replica_and_for_every_port() -> None:
    """A stable hash (never Python's salted one): fixed expectations (a change here would
    move clients when the controllers are upgraded), and one backend set gives one table."""
    links = affinity_links(backends(3))
    assert Counter(links) == Counter({IPv4Address("198.19.1.2"): 23, IPv4Address("198.19.1.3"): 22,
                                      IPv4Address("198.19.1.4"): 22})  # fmt: skip
    assert links[:6] == tuple(IPv4Address(a) for a in (
        "198.19.1.2", "198.19.1.2", "198.19.1.4", "198.19.1.3", "198.19.1.3", "198.19.1.4"))  # fmt: skip
    affinity_links.cache_clear()
    assert affinity_links(backends(3)) == links
    two = replace(STICKY, ports=(ServicePort(443, "TCP", 8443), ServicePort(53, "UDP", 53)),
                  backends=backends(3))  # fmt: skip
    picks = [f for slot in (0, 1) for f in port_flows(SERVICE_NET, two, slot) if f.table == Table.SVC_LINK]
    by_port = {}
    for f in picks:
        by_port.setdefault(dict(f.match)["ip_proto"], []).append((dict(f.match)["reg0"], f.actions[1][4][1]))
    assert by_port[6] == by_port[17]  # one client, one backend on every port (no entry yet)


@pytest.mark.parametrize("n", [3, 4, 6, 10, 15])
def test_a_backend_change_moves_few_links_of_the_other_backends(n: int) -> None:
    """Removing or adding one backend re-deals the removed one's links (or the added one's
    share) and a few more: at most 10 of 67 links move between backends that stay."""
    before = affinity_links(backends(n))
    for k in range(n):
        fewer = backends(n)[:k] + backends(n)[k + 1 :]
        after = affinity_links(fewer)
        gone = backends(n)[k].ip
        assert sum(a != b for a, b in zip(before, after, strict=True) if a != gone) <= 10
        changed = diff_flows(_sticky_flows(backends(n)), _sticky_flows(fewer))
        moved = [f for f in changed.add if f.table == Table.SVC_LINK]
        assert len(moved) == sum(a != b for a, b in zip(before, after, strict=True))
        assert [f.table for f in changed.delete] == [Table.SVC_DNAT]  # its learned-entry flow
        assert not [f for f in changed.add if f.table != Table.SVC_LINK]  # multipath stays
    grown = backends(n + 1)
    after = affinity_links(grown)
    taken = Counter(b for a, b in zip(before, after, strict=True) if a != b)
    assert sum(taken.values()) - taken[grown[-1].ip] <= 10


def _sticky_flows(group: tuple[Backend, ...]) -> frozenset[Flow]:
    return _flows(plan(replace(STICKY, backends=group)))


def test_reply_hooks_are_shared_per_protocol_and_target_port() -> None:
    twin = replace(WEB, name="twin", vip=IPv4Address("198.20.0.12"))
    hooks = [f for f in _flows(plan(WEB, twin)) if f.table == Table.LOCAL and f.priority == 200]
    assert len(hooks) == 2  # 8080/TCP and 5353/UDP, once each
    assert {owner_of(f.cookie)[0] for f in hooks} == {Owner.SERVICE_NET}


def test_no_services_no_range_no_lease_no_service_flows() -> None:
    plain = _flows(None)
    assert not [f for f in plain if owner_of(f.cookie)[0] in (Owner.SERVICE, Owner.SERVICE_NET)]
    assert not [f for f in plain if "zone=" in to_ofctl(f)]  # no hairpin without a range
    # a range without services: the plumbing only (the range is dropped, ARP answered)
    bare = service_lines(plan())
    assert len(bare) == 12 and any("ip_dst=198.20.0.0/16 actions=drop" in line for line in bare)
    # a node without a lease gets the table-miss drops only, whatever the services
    nobody = IPv4Address("198.18.0.9")
    assert {f.priority for f in _flows(plan(WEB), nobody)} == {0}
    assert compile_table(CONFIG, LEASES, [], nobody, plan(WEB)).groups == []


def test_group_diff_adds_modifies_and_deletes_by_id() -> None:
    a, b, c = (Group(i, (Bucket(1, (("group", 9),)),)) for i in (1, 2, 3))
    b2 = replace(b, buckets=(Bucket(3, (("group", 9),)),))
    d = diff_groups([a, b], [b2, c])
    assert (d.add, d.modify, d.delete) == ((c,), (b2,), (a,))
    assert len(d) == 3 and d
    assert not diff_groups([a, b], [b, a])


@pytest.mark.parametrize("backends", [0, 1, 16, 17, 64, 65, 257, MAX_BACKENDS])
def test_the_flow_budget_counts_what_the_ports_compile_to(backends: int) -> None:
    """`leases.services.service_flows` (what the flow budget refuses by) is exact."""
    ips = tuple(Backend(IPv4Address(int(POD) - 300 + i), 1) for i in range(backends))
    for svc in (replace(WEB, backends=ips), replace(STICKY, backends=ips)):
        compiled = sum(len(port_flows(SERVICE_NET, svc, slot)) for slot in range(len(svc.ports)))
        assert service_flows(svc) == compiled
