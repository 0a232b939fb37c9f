"""IPv6 services (an IPv6ServiceNetwork on a dual-stack cluster): IPv4's flows in IPv6's
fields through the compiler and the controller's model, on the wire and in OVS's parser;
an IPv4-only cluster's table exactly as before (a golden table, compiled at e5098ec)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest

from controller import groups, ofwire
from controller.model import FULL, ClusterModel
from flows.arp import nd_reply
from flows.compiler import compile_table
from flows.family import V6
from flows.flow import (
    ETH_TYPE_IPV6,
    ICMPV6_NS,
    IP_PROTO_ICMPV6,
    Flow,
    Owner,
    Table,
    cookie_for,
    owner_of,
    to_ofctl,
)
from flows.groups import group_to_ofctl
from flows.ports import gateway_mac
from flows.services import (
    HAIRPIN_ZONE,
    SERVICE_ZONE,
    V6_KEY,
    Flush,
    ServicePlan,
    affinity_links,
    group_id,
    hairpin_source,
    reply_cookie,
)
from leases.events import ServiceAdded
from leases.model import Backend, Service, ServicePort, VxflowConfig
from leases.pods import ContainerPort, PodIdentity
from leases.policy import parse_policy
from leases.services import affinity_key
from tests.test_controller_ofwire import OSKEN_NAME, osken_flow_mod, serialized, stats_entry
from tests.test_flows_compiler import CONFIG, LEASES, NODE1, PODS
from tests.test_flows_ipv6 import DUAL, HALVES, NET6, PODS6, is_v6

SVC4 = IPv4Network("198.20.0.0/16")
SVC6 = IPv6Network("fd00:96::/108")
LOCAL6, REMOTE6 = PODS6[0].ipv6, PODS6[2].ipv6  # on node 1, on node 2
WEB4 = Service("web", IPv4Address("198.20.0.10"), (ServicePort(80, "TCP", 8080),),
               (Backend(PODS[0].ip), Backend(PODS[2].ip)))  # fmt: skip
WEB6 = Service("web6", IPv6Address("fd00:96::10"),
               (ServicePort(80, "TCP", 8080), ServicePort(53, "UDP", 5353)),
               (Backend(LOCAL6, 2), Backend(REMOTE6)))  # fmt: skip
STICKY6 = Service("sticky6", IPv6Address("fd00:96::1:1"), (ServicePort(443, "TCP", 8443),),
                  (Backend(LOCAL6), Backend(REMOTE6)), affinity_timeout=600)  # fmt: skip
EMPTY6 = Service("empty6", IPv6Address("fd00:96::11"), (ServicePort(80, "TCP", 8080),))
PLAN = ServicePlan(SVC4, (EMPTY6, STICKY6, WEB4, WEB6), SVC6)
GW_MAC = gateway_mac(LEASES[0].subnet)
GOLDEN = Path(__file__).with_name("golden") / "ipv4_services_and_policy.txt"


def table(plan: ServicePlan | None = PLAN, leases=HALVES, pods=PODS6):
    return compile_table(DUAL, leases, pods, NODE1, plan)


def of_service(t, service: Service, slot: int = 0) -> list[Flow]:
    cookie = cookie_for(Owner.SERVICE, group_id(SVC6, service, slot))
    return [f for f in t if f.cookie == cookie]


def test_a_v6_vip_is_balanced_by_its_group_over_its_v6_backends() -> None:
    t = table()
    gid = group_id(SVC6, WEB6, 0)
    assert gid == V6_KEY | 0x10 << 8 and group_id(SVC6, WEB6, 1) == gid | 1
    (dispatch,) = [f for f in of_service(t, WEB6) if f.table == Table.ROUTE]
    assert dict(dispatch.match) == {"eth_type": ETH_TYPE_IPV6, "ipv6_dst": WEB6.vip,
                                    "ip_proto": 6, "tcp_dst": 80}  # fmt: skip
    assert dispatch.actions == (("ct", False, SERVICE_ZONE, Table.SVC_LB, ()),)
    (new,) = [f for f in of_service(t, WEB6) if f.table == Table.SVC_LB]
    assert new.actions == (("group", gid),)
    (group,) = [g for g in t.groups if g.group_id == gid]
    assert group_to_ofctl(group) == (
        f"group_id={gid},type=select,"
        f"bucket=weight:2,actions=ct(commit,table=20,zone={SERVICE_ZONE},nat(dst=[{LOCAL6}]:8080)),"
        f"bucket=weight:1,actions=ct(commit,table=20,zone={SERVICE_ZONE},nat(dst=[{REMOTE6}]:8080))"
    )
    # an IPv6 service without backends: its counted drop, no group
    (drop,) = [f for f in of_service(t, EMPTY6) if f.table == Table.SVC_LB]
    assert drop.actions == () and group_id(SVC6, EMPTY6, 0) not in {g.group_id for g in t.groups}


def test_the_v6_range_is_answered_dropped_and_hairpinned_as_ipv4s() -> None:
    t = table()
    net = [f for f in t if owner_of(f.cookie) == (Owner.SERVICE_NET, 0) and is_v6(f)]
    ns = {"eth_type": ETH_TYPE_IPV6, "ip_proto": IP_PROTO_ICMPV6, "icmpv6_type": ICMPV6_NS,
          "icmpv6_code": 0, "nd_target": SVC6}  # fmt: skip
    assert [f.actions for f in net if dict(f.match) == ns] == [nd_reply(GW_MAC, True)]
    assert [f.actions for f in net if dict(f.match) == {"eth_type": ETH_TYPE_IPV6,
                                                        "ipv6_dst": SVC6}] == [()]  # fmt: skip
    source = hairpin_source(SVC6)
    assert source == IPv6Address("fd00:96::f:ffff")
    assert any(dict(f.match).get("ipv6_dst") == source for f in net)
    # a pod reaching itself through a v6 VIP leaves SNATed to the hairpin source
    pod = PODS6[0]
    (hairpin,) = [f for f in t if f.table == Table.LOCAL and dict(f.match).get("ipv6_src") == pod.ipv6
                  and dict(f.match).get("ipv6_dst") == pod.ipv6]  # fmt: skip
    assert hairpin.actions[-1] == ("ct", True, HAIRPIN_ZONE, Table.SVC_HAIRPIN_OUT, ("src", source, 0))
    assert owner_of(hairpin.cookie) == (Owner.ENDPOINT, int(pod.ip))
    # a backend's reply over IPv6: its own reply hook, keyed apart from IPv4's of the port
    (hook,) = [f for f in t if f.cookie == reply_cookie(WEB6.ports[0], V6)]
    assert dict(hook.match)["ipv6_src"] == NET6 and dict(hook.match)["tcp_src"] == 8080
    assert reply_cookie(WEB6.ports[0], V6) != reply_cookie(WEB4.ports[0])


def test_v6_affinity_learns_a_hashed_backend_key_and_links_commit_to_v6_backends() -> None:
    flows = of_service(table(), STICKY6)
    dnat = sorted((f for f in flows if f.table == Table.SVC_DNAT and f.priority == 100),
                  key=lambda f: str(f.match))  # fmt: skip
    keys = {dict(f.match)["reg1"] for f in dnat}
    assert keys == {affinity_key(LOCAL6), affinity_key(REMOTE6)} and len(keys) == 2
    for f in dnat:
        learn, commit = f.actions
        assert learn[0] == "learn" and learn[7] == dict(f.match)["reg1"] and learn[8] == ETH_TYPE_IPV6
        assert "NXM_NX_IPV6_SRC[],NXM_NX_IPV6_DST[],NXM_OF_TCP_DST[]" in to_ofctl(f)
        assert commit[4][0] == "dst" and affinity_key(commit[4][1]) == dict(f.match)["reg1"]
    links = [f for f in flows if f.table == Table.SVC_LINK]
    assert [f.actions[1][4][1] for f in sorted(links, key=lambda f: dict(f.match)["reg0"])] == list(
        affinity_links(STICKY6.backends))
    assert set(affinity_links(STICKY6.backends)) == {LOCAL6, REMOTE6}


def test_two_v6_backends_of_one_key_are_refused() -> None:
    """(A 32-bit hash of 2**128 addresses: a clash is rare, but found, not left to chance.)"""
    from leases.keys import KV
    from leases.services import check_service

    base = int(IPv6Address("fc00:0:0:1::"))
    seen: dict[int, IPv6Address] = {}
    for i in range(1, 1 << 20):
        ip = IPv6Address(base + i)
        if (other := seen.setdefault(affinity_key(ip), ip)) != ip:
            break
    else:
        pytest.fail("no clash in 2**20 addresses")
    value = json.dumps({"Name": "c", "VIP": "fd00:96::5", "Ports": [{"Port": 80}],
                        "Backends": [{"IP": str(other)}, {"IP": str(ip)}]})  # fmt: skip
    got = check_service(KV("k", value.encode(), 1, 1), "c", DUAL, VxflowConfig(SVC4, SVC6))
    assert got.reason == "duplicate_backend" and "affinity key" in got.detail


def test_an_ipv4_only_node_or_plan_gets_no_v6_service_flow() -> None:
    v4_plan = ServicePlan(SVC4, (WEB4,))
    only4 = table(v4_plan)
    # a dual-stack node: IPv6 services add IPv6 flows and groups only, IPv4's stay as they were
    both = table()
    assert set(only4) <= set(both) and all(is_v6(f) for f in set(both) - set(only4))
    assert {g.group_id for g in both.groups} - {g.group_id for g in only4.groups} == {
        group_id(SVC6, WEB6, 0), group_id(SVC6, WEB6, 1)}
    # the cluster is dual stack, this node is not (its lease has no IPv6 half)
    plain = table(leases=[LEASES[0], *HALVES[1:]])
    assert set(plain) == set(table(v4_plan, leases=[LEASES[0], *HALVES[1:]]))
    assert not any(is_v6(f) for f in plain) and not any(g.group_id & V6_KEY for g in plain.groups)


def test_the_models_tables_equal_the_compilers_and_a_v6_service_event_is_its_cookies() -> None:
    vx = VxflowConfig(SVC4, SVC6)
    model = ClusterModel()
    model.load(DUAL, HALVES, PODS6, vxflow=vx, services=[WEB4, STICKY6, EMPTY6],
               alive=[x.public_ip for x in HALVES])  # (no node DOWN: every backend serves)
    before = model.desired(NODE1, FULL)
    assert set(before) == set(table(ServicePlan(SVC4, (EMPTY6, STICKY6, WEB4), SVC6)))
    impact = model.apply([ServiceAdded(WEB6, 5)])
    scoped = model.desired(NODE1, impact.scope_for(NODE1, LEASES[0].subnet))
    full = model.desired(NODE1, FULL)
    assert set(full) == set(table())
    assert set(scoped) == {f for f in full if f.cookie in impact.service_cookies}
    assert {g.group_id for g in scoped.groups} == {group_id(SVC6, WEB6, 0), group_id(SVC6, WEB6, 1)}
    # a node DOWN takes its IPv6 backends out (by its lease's IPv6 half)
    down = model._serving(WEB6, down={LEASES[1].subnet: LEASES[1].public_ip})
    assert [b.ip for b in down.backends] == [LOCAL6]


def test_v6_service_flows_encode_as_osken_does_decode_back_and_parse_in_ovs() -> None:
    six = sorted((f for f in table() if is_v6(f) and (owner_of(f.cookie)[0] in
                  (Owner.SERVICE, Owner.SERVICE_NET) or "zone=" in to_ofctl(f))),
                 key=lambda f: (f.table, f.priority, str(f.match)))  # fmt: skip
    kinds = {a[0] for f in six for a in f.actions}
    assert {"learn", "ct", "multipath", "group"} <= kinds
    for xid, f in enumerate(six, 1):
        if any(a[0] == "set_field" and a[1].startswith("nd_") for a in f.actions):
            continue  # the range's neighbour answer: OVS's ND fields, not os-ken's (below)
        renamed = Flow(f.table, f.priority, tuple((OSKEN_NAME.get(k, k), v) for k, v in f.match),
                       f.actions, f.cookie)  # fmt: skip
        want = serialized(osken_flow_mod(renamed, ofwire.OFPFC_ADD), xid)
        assert ofwire.encode_flow_mod(f, ofwire.OFPFC_ADD, xid) == want, to_ofctl(f)
    assert list(ofwire.decode_flow_stats(b"".join(stats_entry(f) for f in six))) == six
    for f in six:
        res = subprocess.run(["ovs-ofctl", "-O", "OpenFlow14", "parse-flow", to_ofctl(f)],
                             capture_output=True, text=True)  # fmt: skip
        assert res.returncode == 0, (to_ofctl(f), res.stderr)
    (group,) = [g for g in table().groups if g.group_id == group_id(SVC6, WEB6, 0)]
    printed = subprocess.run(["ovs-ofctl", "ofp-print", groups.encode_group_mod(group, 0, 1).hex()],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert f"nat(dst=[{LOCAL6}]:8080)" in printed and f"nat(dst=[{REMOTE6}]:8080)" in printed
    assert list(groups.decode_group_desc(groups.group_desc_entry(group))) == [group]


def test_a_removed_v6_udp_backends_conntrack_flush_names_its_addresses_as_they_are() -> None:
    flush = Flush(WEB6.vip, 53, REMOTE6, 5353)
    msg = groups.encode_ct_flush(SERVICE_ZONE, flush, 7)
    printed = subprocess.run(["ovs-ofctl", "ofp-print", msg.hex()], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    assert f"ct_ipv6_dst={WEB6.vip}," in printed and f"ct_ipv6_src={REMOTE6}," in printed, printed


def golden_table(log_drops: bool = False) -> list[str]:
    """An IPv4-only node with services of every kind (a group, affinity, no backend, UDP),
    its pods' hairpin flows and a policy stage, as ovs-ofctl lines and groups
    (`log_drops`: the stage's default drops logged)."""
    web = PodIdentity("x", "web", (("app", "web"),), (ContainerPort("http", 8080),))
    pods = [replace(PODS[0], pod=web), *PODS[1:]]
    sticky = Service("sticky", IPv4Address("198.20.1.1"), (ServicePort(443, "TCP", 8443),),
                     (Backend(PODS[0].ip), Backend(PODS[2].ip, 3)), affinity_timeout=600)  # fmt: skip
    dns = Service("dns", IPv4Address("198.20.0.53"), (ServicePort(53, "UDP", 5353),),
                  (Backend(PODS[1].ip),))  # fmt: skip
    empty = Service("empty", IPv4Address("198.20.0.11"), (ServicePort(80, "TCP", 8080),))
    policy = parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "x"}, "spec": {"podSelector": {},
        "ingress": [{"from": [{"ipBlock": {"cidr": "198.19.0.0/16", "except": ["198.19.2.0/24"]}},
                              {"podSelector": {"matchLabels": {"app": "web"}}}],
                     "ports": [{"port": 64, "endPort": 127}, {"port": "http"}]}],
        "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}})  # fmt: skip
    t = compile_table(CONFIG, LEASES, pods, NODE1, ServicePlan(SVC4, (dns, empty, sticky, WEB4)),
                      [policy], log_drops=log_drops)  # fmt: skip
    return sorted(to_ofctl(f) for f in t) + sorted(group_to_ofctl(g) for g in t.groups)


def test_an_ipv4_only_cluster_gets_exactly_the_flows_it_got_before_ipv6_services() -> None:
    """The golden file is this function's output before IPv6 services and policy: at e5098ec,
    then as compiled by 60c9f29 (policy isolation groups) and 2fcd176 (only the node's own
    addresses pass the gateway port unjudged), both still IPv4 only; and by the incremental
    policy stage (each isolation group's hooks load a digest of its own, a clause flow's
    conjunctions are in conj_id order)."""
    assert golden_table() == GOLDEN.read_text().splitlines()


def test_status_counts_a_down_nodes_ipv6_backends_down() -> None:
    """`vxflow status`: a DOWN node's backends, by its IPv6 subnet too."""
    from leases.state import Snapshot
    from vxflow.health import Node, _services

    snap = Snapshot(DUAL, tuple(HALVES), tuple(PODS6), 7, services=(WEB6,))
    node2 = Node(str(HALVES[1].public_ip), str(HALVES[1].subnet), None, 1, down=True,
                 ipv6_subnet=str(HALVES[1].ipv6_subnet))  # fmt: skip
    (state,) = _services(snap, [node2])
    assert (state.ready, state.down) == ([str(LOCAL6)], [str(REMOTE6)])
