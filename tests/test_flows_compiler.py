"""The pure compiler: every pipeline stage, rejection of bad input, no overlap between nodes."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Network

import pytest

from flows.compiler import (
    DROP_TUNNEL_OTHER,
    DROP_TUNNEL_SPOOFED,
    compile_node,
    endpoint_flows,
    miss_flows,
    remote_lease_flows,
)
from flows.flow import (
    ARP_REQUEST,
    ETH_TYPE_ARP,
    ETH_TYPE_IP,
    OFPP_IN_PORT,
    POLICY_TABLES,
    Flow,
    Owner,
    Table,
    owner_of,
)
from flows.ports import GATEWAY_OFPORT, TUNNEL_OFPORT, gateway_mac, vtep_mac_for
from flows.validate import lease_problem
from leases.model import BackendConfig, Endpoint, Lease, NetworkConfig

NET = IPv4Network("198.19.0.0/16")
CONFIG = NetworkConfig(NET, backend=BackendConfig(vni=7))


def lease(i: int, **kw) -> Lease:
    ip = IPv4Address(f"198.18.0.{i}")
    fields = dict(
        subnet=IPv4Network(f"198.19.{i}.0/24"), public_ip=ip, vni=7, vtep_mac=vtep_mac_for(ip)
    )
    return Lease(**{**fields, **kw})


def endpoint(node: int, host: int, ofport: int, **kw) -> Endpoint:
    fields = dict(
        node_subnet=IPv4Network(f"198.19.{node}.0/24"),
        ip=IPv4Address(f"198.19.{node}.{host}"),
        mac=f"02:00:00:00:{node:02x}:{host:02x}",
        ofport=ofport,
    )
    return Endpoint(**{**fields, **kw})


LEASES = [lease(1), lease(2), lease(3)]
PODS = [endpoint(1, 10, 5), endpoint(1, 11, 6), endpoint(2, 10, 5)]
NODE1 = IPv4Address("198.18.0.1")


def route_of(lease: Lease, own: Lease) -> Flow:
    return remote_lease_flows(CONFIG, lease, own)[0]


def table(flows: frozenset[Flow], t: Table) -> list[Flow]:
    return sorted((f for f in flows if f.table == t), key=lambda f: -f.priority)


def matches(f: Flow, packet: dict) -> bool:
    for name, value in f.match:
        have = packet.get(name)
        if have is None:
            return False
        if isinstance(value, IPv4Network | IPv6Network):
            if have not in value:
                return False
        elif have != value:
            return False
    return True


def run(flows: frozenset[Flow], packet: dict, hit: list[Flow] | None = None) -> tuple:
    """A tiny OpenFlow interpreter: highest-priority match per table, follow goto_table.
    `hit` collects the flow matched in each table."""
    t = Table.CLASSIFY
    actions: list = []
    while True:
        candidates = [f for f in table(flows, t) if matches(f, packet)]
        assert candidates, f"no flow (not even table-miss) in table {t} for {packet}"
        top = candidates[0]
        assert len([c for c in candidates if c.priority == top.priority]) == 1, "ambiguous match"
        if hit is not None:
            hit.append(top)
        gotos = [a for a in top.actions if a[0] == "goto_table"]
        actions += [a for a in top.actions if a[0] != "goto_table"]
        if not gotos:
            return tuple(actions)
        t = Table(gotos[0][1])


def outputs(actions: tuple) -> list[int]:
    return [a[1] for a in actions if a[0] == "output"]


def pod_packet(pod: Endpoint, dst: str) -> dict:
    return {
        "in_port": pod.ofport,
        "eth_src": pod.mac,
        "eth_type": ETH_TYPE_IP,
        "ip_src": pod.ip,
        "ip_dst": IPv4Address(dst),
    }


@pytest.fixture
def node1() -> frozenset[Flow]:
    return compile_node(CONFIG, LEASES, PODS, NODE1)


def test_every_table_ends_in_drop_and_nothing_floods_or_punts(node1):
    misses = {(f.table, f.priority, f.match, f.actions) for f in node1 if f.priority == 0}
    assert misses == {(int(t), 0, (), ()) for t in Table if t not in POLICY_TABLES}
    allowed_ports = {TUNNEL_OFPORT, GATEWAY_OFPORT, OFPP_IN_PORT, 5, 6}
    for f in node1:
        for a in f.actions:
            assert a[0] in {"output", "set_field", "move", "dec_ttl", "goto_table"}
            if a[0] == "output":
                assert a[1] in allowed_ports, f  # never FLOOD/ALL/NORMAL/CONTROLLER


def test_keys_are_unique_and_cookies_name_owners(node1):
    assert len({f.key for f in node1}) == len(node1)
    owners = {owner_of(f.cookie) for f in node1}
    assert owners == {
        (Owner.BASE, 0),
        (Owner.BASE, 1),  # DROP_TUNNEL_SPOOFED
        (Owner.BASE, 2),  # DROP_TUNNEL_OTHER
        (Owner.LEASE, int(IPv4Address("198.19.2.0"))),
        (Owner.LEASE, int(IPv4Address("198.19.3.0"))),
        (Owner.ENDPOINT, int(IPv4Address("198.19.1.10"))),
        (Owner.ENDPOINT, int(IPv4Address("198.19.1.11"))),
    }


def from_node2(pod: Endpoint) -> dict:
    """What node 2 (198.18.0.2, 198.19.2.0/24) sends through the tunnel to `pod`."""
    return {
        "in_port": TUNNEL_OFPORT,
        "tun_id": 7,
        "tun_src": IPv4Address("198.18.0.2"),
        "eth_type": ETH_TYPE_IP,
        "ip_src": IPv4Address("198.19.2.10"),
        "ip_dst": pod.ip,
        "eth_src": "0e:76:c6:12:00:02",
    }


def test_tunnel_ingress_only_with_the_vni_and_only_delivered_locally(node1):
    pod = PODS[0]
    pkt = from_node2(pod)
    assert outputs(run(node1, pkt)) == [pod.ofport]
    assert ("dec_ttl",) not in run(node1, pkt)  # TTL only decremented into the tunnel
    assert run(node1, {**pkt, "tun_id": 8}) == ()  # another VNI: dropped
    assert run(node1, {**pkt, "ip_src": IPv4Address("10.0.0.1")}) == ()  # not from the overlay
    # never hairpinned back into the tunnel, even for a leased remote subnet
    assert run(node1, {**pkt, "ip_dst": IPv4Address("198.19.3.10")}) == ()
    # to the node itself (its gateway address)
    assert outputs(run(node1, {**pkt, "ip_dst": IPv4Address("198.19.1.1")})) == [GATEWAY_OFPORT]


def test_tunnel_ingress_only_from_the_leases_public_ip_and_subnet(node1):
    """A remote subnet's traffic is accepted only from its lease's PublicIP (tun_src)
    and with a source inside that subnet; each kind of drop hits its own counting flow."""
    pod = PODS[0]
    pkt = from_node2(pod)

    def verdict(**change) -> tuple[tuple, int]:
        hit: list[Flow] = []
        return run(node1, {**pkt, **change}, hit), hit[0].cookie

    assert outputs(verdict()[0]) == [pod.ofport]
    # flannel's host sends from subnet.0 (flannel.1), vxflow's from subnet.1 (vxgw0)
    for host in ("198.19.2.0", "198.19.2.1"):
        assert outputs(verdict(ip_src=IPv4Address(host))[0]) == [pod.ofport]
    assert outputs(verdict(tun_src=IPv4Address("198.18.0.3"),
                           ip_src=IPv4Address("198.19.3.9"))[0]) == [pod.ofport]  # fmt: skip
    rogue = IPv4Address("198.18.0.66")  # an underlay host that holds no lease
    assert verdict(tun_src=rogue) == ((), DROP_TUNNEL_SPOOFED)
    # node 3 claiming node 2's subnet, or the receiver's own subnet
    assert verdict(tun_src=IPv4Address("198.18.0.3")) == ((), DROP_TUNNEL_SPOOFED)
    assert verdict(ip_src=IPv4Address("198.19.1.10")) == ((), DROP_TUNNEL_SPOOFED)
    assert verdict(ip_src=IPv4Address("198.19.200.1")) == ((), DROP_TUNNEL_SPOOFED)
    assert verdict(tun_id=8) == ((), DROP_TUNNEL_OTHER)
    assert verdict(ip_src=IPv4Address("192.0.2.1")) == ((), DROP_TUNNEL_OTHER)
    assert verdict(eth_type=ETH_TYPE_ARP) == ((), DROP_TUNNEL_OTHER)
    ingress = [f for f in node1 if f.table == Table.CLASSIFY and ("tun_src", pkt["tun_src"])
               in f.match]  # fmt: skip
    assert ingress == [remote_lease_flows(CONFIG, LEASES[1], LEASES[0])[1]]
    assert ingress[0].cookie == route_of(LEASES[1], LEASES[0]).cookie  # one owner: the lease


def test_spoof_guard_admits_only_the_pods_own_mac_and_ip(node1):
    pod = PODS[0]
    good = pod_packet(pod, "198.19.1.11")
    assert outputs(run(node1, good)) == [6]
    assert run(node1, {**good, "ip_src": IPv4Address("198.19.1.11")}) == ()
    assert run(node1, {**good, "eth_src": "02:00:00:00:99:99"}) == ()
    assert run(node1, {**good, "in_port": 6}) == ()  # right MAC/IP on another pod's port
    assert run(node1, {**good, "in_port": 42}) == ()  # unknown port
    assert run(node1, {**good, "eth_type": 0x86DD}) == ()  # IPv6: not served
    arp = {
        "in_port": pod.ofport,
        "eth_src": pod.mac,
        "eth_type": ETH_TYPE_ARP,
        "arp_op": ARP_REQUEST,
        "arp_spa": pod.ip,
        "arp_sha": pod.mac,
        "arp_tpa": IPv4Address("198.19.1.1"),
    }
    assert outputs(run(node1, arp)) == [OFPP_IN_PORT]
    assert run(node1, {**arp, "arp_spa": IPv4Address("198.19.1.11")}) == ()
    assert run(node1, {**arp, "arp_sha": "02:00:00:00:99:99"}) == ()


def arp_answer(actions: tuple) -> str:
    sets = {a[1]: a[2] for a in actions if a[0] == "set_field"}
    assert sets["arp_op"] == 2 and sets["eth_src"] == sets["arp_sha"]
    assert outputs(actions) == [OFPP_IN_PORT]
    return sets["arp_sha"]


def test_arp_is_answered_by_flows(node1):
    pod = PODS[0]
    req = {
        "in_port": pod.ofport,
        "eth_src": pod.mac,
        "eth_type": ETH_TYPE_ARP,
        "arp_op": ARP_REQUEST,
        "arp_spa": pod.ip,
        "arp_sha": pod.mac,
    }
    gw = gateway_mac(LEASES[0].subnet)
    assert arp_answer(run(node1, {**req, "arp_tpa": IPv4Address("198.19.1.1")})) == gw
    assert arp_answer(run(node1, {**req, "arp_tpa": PODS[1].ip})) == PODS[1].mac
    # a remote or unused overlay address: the gateway (the switch routes it)
    assert arp_answer(run(node1, {**req, "arp_tpa": IPv4Address("198.19.2.10")})) == gw
    assert arp_answer(run(node1, {**req, "arp_tpa": IPv4Address("198.19.1.99")})) == gw
    # outside the overlay: no answer, no flood
    assert run(node1, {**req, "arp_tpa": IPv4Address("192.0.2.1")}) == ()
    # replies and other opcodes are never forwarded anywhere
    assert run(node1, {**req, "arp_op": 2, "arp_tpa": IPv4Address("198.19.1.1")}) == ()
    # the host asks through the gateway port
    host = {**req, "in_port": GATEWAY_OFPORT, "eth_src": gw, "arp_sha": gw}
    assert arp_answer(run(node1, {**host, "arp_tpa": PODS[0].ip})) == PODS[0].mac
    assert run(node1, {**host, "eth_src": "02:aa:aa:aa:aa:aa"}) == ()


def test_local_pod_exact_delivery_rewrites_macs(node1):
    actions = run(node1, pod_packet(PODS[0], str(PODS[1].ip)))
    sets = {a[1]: a[2] for a in actions if a[0] == "set_field"}
    assert sets == {"eth_src": gateway_mac(LEASES[0].subnet), "eth_dst": PODS[1].mac}
    assert outputs(actions) == [PODS[1].ofport]
    # the /32 flow is exact: an unknown local address is dropped
    assert run(node1, pod_packet(PODS[0], "198.19.1.99")) == ()


def test_remote_lease_route_encapsulating_like_flannel(node1):
    actions = run(node1, pod_packet(PODS[0], "198.19.2.10"))
    assert actions == (
        ("dec_ttl",),
        ("set_field", "eth_src", vtep_mac_for(NODE1)),
        ("set_field", "eth_dst", vtep_mac_for(IPv4Address("198.18.0.2"))),
        ("set_field", "tun_dst", IPv4Address("198.18.0.2")),
        ("set_field", "tun_id", 7),
        ("output", TUNNEL_OFPORT),
    )
    per_lease = [f for f in node1 if owner_of(f.cookie)[0] == Owner.LEASE]
    assert len(per_lease) == 4  # route + ingress check per remote lease, none for its own
    assert set(remote_lease_flows(CONFIG, LEASES[1], LEASES[0])) <= node1
    # dec_ttl appears only on the way into the tunnel
    assert all(
        (("dec_ttl",) in f.actions) == (("output", TUNNEL_OFPORT) in f.actions) for f in node1
    )


def test_host_traffic(node1):
    gw = gateway_mac(LEASES[0].subnet)
    host = {"in_port": GATEWAY_OFPORT, "eth_src": gw, "eth_type": ETH_TYPE_IP}
    host["ip_src"] = IPv4Address("198.19.1.1")
    assert outputs(run(node1, {**host, "ip_dst": PODS[0].ip})) == [PODS[0].ofport]
    assert outputs(run(node1, {**host, "ip_dst": IPv4Address("198.19.3.4")})) == [TUNNEL_OFPORT]
    # unleased overlay address: dropped, never bounced back to the host
    assert run(node1, {**host, "ip_dst": IPv4Address("198.19.200.1")}) == ()
    # a pod's traffic to the world goes to the host, which routes it
    out = run(node1, pod_packet(PODS[0], "192.0.2.1"))
    assert outputs(out) == [GATEWAY_OFPORT] and ("set_field", "eth_dst", gw) in out


def test_node_without_lease_gets_only_table_miss_drops():
    flows = compile_node(CONFIG, LEASES, PODS, IPv4Address("198.18.0.99"))
    assert flows == frozenset(miss_flows())


@pytest.mark.parametrize(
    "bad",
    [
        lease(5, subnet=IPv4Network("10.1.5.0/24")),  # outside the network
        lease(5, subnet=IPv4Network("198.19.4.0/23")),  # wrong length, overlaps others
        lease(5, vni=8),
        lease(5, public_ip=IPv4Address("198.19.9.9")),  # PublicIP inside the overlay
        lease(5, public_ip=IPv4Address("224.0.0.5")),
        lease(5, public_ip=IPv4Address("127.0.0.1")),
        lease(5, vtep_mac="01:00:5e:00:00:01"),
        lease(5, vtep_mac="00:00:00:00:00:00"),
        lease(5, vtep_mac="not-a-mac"),
        lease(5, backend_type="host-gw"),
        lease(5, public_ip=IPv4Address("198.18.0.2")),  # steals node 2's PublicIP
    ],
)
def test_invalid_or_conflicting_lease_yields_no_flow(bad):
    flows = compile_node(CONFIG, [*LEASES, bad], PODS, NODE1)
    assert not [f for f in flows if owner_of(f.cookie) == (Owner.LEASE, int(bad.subnet[0]))]
    assert not [f for f in flows if ("set_field", "tun_dst", bad.public_ip) in f.actions]
    assert all(f.match != (("eth_type", ETH_TYPE_IP), ("ip_dst", bad.subnet)) for f in flows)
    # the bad lease's holder gets only table-miss drops (a conflict disables both claimants)
    assert compile_node(CONFIG, [*LEASES, bad], PODS, bad.public_ip) == frozenset(miss_flows())
    # a bystander keeps its routes to the good leases
    node3 = compile_node(CONFIG, [*LEASES, bad], PODS, IPv4Address("198.18.0.3"))
    assert route_of(LEASES[0], LEASES[2]) in node3
    if bad.public_ip != LEASES[1].public_ip:
        assert node3 == compile_node(CONFIG, LEASES, PODS, IPv4Address("198.18.0.3"))


@pytest.mark.parametrize(
    "bad",
    [
        endpoint(1, 1, 7),  # the gateway address
        endpoint(1, 0, 7),  # network address
        endpoint(1, 255, 7),
        endpoint(1, 20, 7, ip=IPv4Address("198.19.2.20")),  # outside the node's subnet
        endpoint(1, 20, TUNNEL_OFPORT),
        endpoint(1, 20, GATEWAY_OFPORT),
        endpoint(1, 20, 0xFFFFFFFD),
        endpoint(1, 20, 7, mac="ff:ff:ff:ff:ff:ff"),
        endpoint(1, 20, 5),  # ofport of an existing pod: both are rejected
    ],
)
def test_invalid_or_conflicting_endpoint_yields_no_flow(bad):
    flows = compile_node(CONFIG, LEASES, [*PODS, bad], NODE1)
    assert not [f for f in flows if owner_of(f.cookie) == (Owner.ENDPOINT, int(bad.ip))]
    if bad.ofport == 5:
        assert not [f for f in flows if owner_of(f.cookie) == (Owner.ENDPOINT, int(PODS[0].ip))]
    else:
        assert flows == compile_node(CONFIG, LEASES, PODS, NODE1)


def test_other_nodes_endpoints_are_ignored():
    assert compile_node(CONFIG, LEASES, PODS[:2], NODE1) == compile_node(
        CONFIG, LEASES, PODS, NODE1
    )
    assert endpoint_flows(LEASES[1], PODS[2]) and all(
        f in compile_node(CONFIG, LEASES, PODS, IPv4Address("198.18.0.2"))
        for f in endpoint_flows(LEASES[1], PODS[2])
    )


def test_nodes_never_capture_each_others_traffic():
    """For many destinations, every node's table sends a packet to exactly the node
    that holds the destination's lease (or delivers it itself), never elsewhere."""
    leases = [lease(i) for i in range(1, 9)]
    by_subnet = {lz.subnet: lz for lz in leases}
    for own in leases:
        gw = gateway_mac(own.subnet)
        flows = compile_node(CONFIG, leases, [], own.public_ip)
        routed = [f for f in flows if f.table == Table.ROUTE and f.priority == 100]
        nets = [dict(f.match)["ip_dst"] for f in routed]
        assert all(not a.overlaps(b) for i, a in enumerate(nets) for b in nets[i + 1 :])
        for third in (0, 1, 2, 5, 8, 9, 200, 255):
            for last in (1, 2, 77, 255):
                dst = IPv4Address(f"198.19.{third}.{last}")
                pkt = {
                    "in_port": GATEWAY_OFPORT,
                    "eth_src": gw,
                    "eth_type": ETH_TYPE_IP,
                    "ip_src": own.gateway,
                    "ip_dst": dst,
                }
                actions = run(flows, pkt)
                holder = next((lz for s, lz in by_subnet.items() if dst in s), None)
                tun = [a[2] for a in actions if a[:2] == ("set_field", "tun_dst")]
                if holder is None or (holder is own and dst != own.gateway):
                    assert actions == (), (own, dst)  # unleased, or no such local pod
                elif holder is own:
                    assert outputs(actions) == [GATEWAY_OFPORT]
                else:
                    assert tun == [holder.public_ip], (own, dst)


def test_lease_change_replaces_the_flow_under_the_same_key():
    moved = replace(LEASES[1], public_ip=IPv4Address("198.18.0.42"))
    moved = replace(moved, vtep_mac=vtep_mac_for(moved.public_ip))
    old = route_of(LEASES[1], LEASES[0])
    new = route_of(moved, LEASES[0])
    assert old.key == new.key and old.cookie == new.cookie and old != new
    # the ingress check names the PublicIP in its match: a new key, the old one goes
    old_in, new_in = (remote_lease_flows(CONFIG, lz, LEASES[0])[1] for lz in (LEASES[1], moved))
    assert old_in.key != new_in.key and old_in.cookie == new_in.cookie


def test_lease_guard_ranges_and_macs_are_ipaddress_ones():
    """lease_problem checks addresses as integers; the verdicts are ipaddress's."""
    base = LEASES[1]
    for first in [0, 1, 10, 126, 127, 128, 169, 198, 223, 224, 239, 240, 255]:
        for rest in (0, 0x00FEFF, 0xFE0001, 0xFFFFFF, 0x123456):
            ip = IPv4Address(first << 24 | rest)
            bad = ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local
            bad = bad or ip == IPv4Address("255.255.255.255") or ip in CONFIG.network
            assert (lease_problem(CONFIG, replace(base, public_ip=ip)) is not None) == bad, ip
    for subnet in ("10.0.0.0/8", "0.0.0.0/24", str(CONFIG.network), "198.19.255.0/24"):
        outside = not IPv4Network(subnet).subnet_of(CONFIG.network)
        problem = lease_problem(CONFIG, replace(base, subnet=IPv4Network(subnet)))
        assert problem is not None if outside else True, subnet
    for mac, ok in [("02:00:00:00:00:01", True), ("03:00:00:00:00:01", False),
                    ("00:00:00:00:00:00", False), ("02:00:00:00:00:0A", False),
                    ("02:00:00:00:00", False)]:  # fmt: skip
        assert (lease_problem(CONFIG, replace(base, vtep_mac=mac)) is None) == ok, mac
