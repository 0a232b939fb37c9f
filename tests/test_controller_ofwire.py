"""The fast encoder against os-ken's own serialisation, byte for byte, and the decoder's round trip."""

from __future__ import annotations

import struct
import subprocess
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest
from os_ken.ofproto import nicira_ext, ofproto_parser, ofproto_protocol
from os_ken.ofproto import ofproto_v1_4 as ofp
from os_ken.ofproto import ofproto_v1_4_parser as parser

from controller import ofwire
from flows.compiler import FLOWS_PER_LEASE, compile_node, node_table
from flows.flow import Flow, Masked, Table, to_ofctl
from flows.policy import policy_table
from flows.ports import vtep_mac_for
from flows.services import ServicePlan
from leases.model import (
    Backend,
    BackendConfig,
    Endpoint,
    Lease,
    NetworkConfig,
    Service,
    ServicePort,
)
from leases.pods import ContainerPort, PodIdentity
from leases.policy import parse_policy

DP = ofproto_protocol.ProtocolDesc(version=ofp.OFP_VERSION)
OSKEN_NAME = {
    "ip_src": "ipv4_src",
    "ip_dst": "ipv4_dst",
    "tun_id": "tunnel_id",
    "tun_dst": "tun_ipv4_dst",
    "tun_src": "tun_ipv4_src",
}
CONFIG = NetworkConfig(IPv4Network("198.19.0.0/16"), backend=BackendConfig(vni=4096))


def leases(n: int) -> list[Lease]:
    out = []
    for i in range(1, n + 1):
        ip = IPv4Address(f"198.18.{i // 250}.{i % 250 + 1}")
        out.append(Lease(IPv4Network(f"198.19.{i}.0/24"), ip, 4096, vtep_mac_for(ip)))
    return out


BACKENDS = (Backend(IPv4Address("198.19.1.7"), 3), Backend(IPv4Address("198.19.2.9")))
SERVICES = ServicePlan(
    IPv4Network("198.20.0.0/16"),
    (
        Service("web", IPv4Address("198.20.0.10"),
                (ServicePort(80, "TCP", 8080), ServicePort(53, "UDP", 5353)), BACKENDS),
        Service("sticky", IPv4Address("198.20.1.1"), (ServicePort(443, "TCP", 8443),
                ServicePort(9, "UDP", 9)), BACKENDS, affinity_timeout=600),
        Service("empty", IPv4Address("198.20.0.11"), (ServicePort(80, "TCP", 8080),)),
    ),
)  # fmt: skip


def table() -> frozenset[Flow]:
    pods = [
        Endpoint(IPv4Network("198.19.1.0/24"), IPv4Address("198.19.1.7"), "02:00:00:00:01:07", 9)
    ]
    return compile_node(CONFIG, leases(4), pods, leases(4)[0].public_ip, SERVICES)


def _osken_value(value):
    if isinstance(value, IPv4Network | IPv6Network):
        return (str(value.network_address), str(value.netmask))
    if isinstance(value, Masked):
        return (value.value, value.mask)
    return str(value) if isinstance(value, IPv4Address | IPv6Address) else value


NXM = {"eth_type": "eth_type_nxm", "ip_proto": "ip_proto_nxm", "ip_src": "ipv4_src_nxm",
       "ip_dst": "ipv4_dst_nxm", "tcp_dst": "tcp_dst_nxm", "udp_dst": "udp_dst_nxm",
       "ipv6_src": "ipv6_src_nxm", "ipv6_dst": "ipv6_dst_nxm"}  # fmt: skip


def _osken_nat(nat):
    if nat is None:
        return []
    if nat == ():
        return [parser.NXActionNAT(flags=0)]
    kind, ip, port = nat
    flags = 1 if kind == "src" else 2  # NX_NAT_F_SRC, NX_NAT_F_DST (nicira-ext.h)
    address = {f"range_ipv{ip.version}_min": str(ip)}
    return [parser.NXActionNAT(flags=flags, range_proto_min=port or None, **address)]


def _osken_learn(action):
    _, table_id, idle, priority, cookie, proto, port_field, value, eth_type = action
    src, dst, bits = ("ip_src", "ip_dst", 32) if eth_type == 0x0800 else ("ipv6_src", "ipv6_dst", 128)
    specs = [
        parser.NXFlowSpecMatch(src=eth_type, dst=(NXM["eth_type"], 0), n_bits=16),
        parser.NXFlowSpecMatch(src=proto, dst=(NXM["ip_proto"], 0), n_bits=8),
        *(parser.NXFlowSpecMatch(src=(NXM[f], 0), dst=(NXM[f], 0), n_bits=n)
          for f, n in ((src, bits), (dst, bits), (port_field, 16))),
        parser.NXFlowSpecLoad(src=value, dst=("reg1", 0), n_bits=32),
    ]  # fmt: skip
    return parser.NXActionLearn(
        table_id=table_id, specs=specs, idle_timeout=idle, priority=priority, cookie=cookie
    )


def _osken_action(action):
    kind = action[0]
    if kind == "output":
        return parser.OFPActionOutput(action[1], ofp.OFPCML_NO_BUFFER)
    if kind == "controller":
        return parser.OFPActionOutput(ofp.OFPP_CONTROLLER, action[1])
    if kind == "set_field":
        return parser.OFPActionSetField(**{OSKEN_NAME.get(action[1], action[1]):
                                           _osken_value(action[2])})  # fmt: skip
    if kind == "dec_ttl":
        return parser.OFPActionDecNwTtl()
    if kind == "group":
        return parser.OFPActionGroup(action[1])
    if kind == "resubmit":
        return parser.NXActionResubmitTable(in_port=0xFFF8, table_id=action[1])
    if kind == "ct":
        _, commit, zone, table_id, nat = action
        return parser.NXActionCT(
            flags=nicira_ext.NX_CT_F_COMMIT if commit else 0, zone_src="", zone_ofs_nbits=zone,
            recirc_table=table_id, alg=0, actions=_osken_nat(nat),
        )  # fmt: skip
    if kind == "learn":
        return _osken_learn(action)
    if kind == "multipath":
        _, fields, basis, algorithm, n_links, register = action
        return parser.NXActionMultipath(
            fields=ofwire.NX_HASH_FIELDS[fields], basis=basis,
            algorithm=getattr(nicira_ext, f"NX_MP_ALG_{algorithm.upper()}"), max_link=n_links - 1,
            arg=0, ofs_nbits=nicira_ext.ofs_nbits(0, 31), dst=register,
        )  # fmt: skip
    assert kind == "move"
    width = ofwire.FIELDS[action[1]].size * 8
    return parser.NXActionRegMove(src_field=action[1], dst_field=action[2], n_bits=width)


def osken_flow_mod(f: Flow, command: int) -> parser.OFPFlowMod:
    match = parser.OFPMatch(**{OSKEN_NAME.get(k, k): _osken_value(v) for k, v in f.match})
    inst = []
    if f.actions and f.actions[0][0] == "meter" and command == ofp.OFPFC_ADD:
        inst.append(parser.OFPInstructionMeter(f.actions[0][1]))
    acts = [a for a in f.actions if a[0] not in ("goto_table", "meter")]
    if acts and command == ofp.OFPFC_ADD:
        inst.append(
            parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, [_osken_action(a) for a in acts])
        )
    if f.actions and f.actions[-1][0] == "goto_table" and command == ofp.OFPFC_ADD:
        inst.append(parser.OFPInstructionGotoTable(f.actions[-1][1]))
    return parser.OFPFlowMod(
        DP,
        cookie=f.cookie,
        cookie_mask=0,
        table_id=f.table,
        command=command,
        priority=f.priority,
        buffer_id=ofp.OFP_NO_BUFFER,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        match=match,
        instructions=inst,
    )


def serialized(msg, xid: int) -> bytes:
    msg.set_xid(xid)
    msg.serialize()
    return bytes(msg.buf)


@pytest.mark.parametrize("command", [ofwire.OFPFC_ADD, ofwire.OFPFC_DELETE_STRICT])
def test_flow_mods_are_byte_identical_to_osken(command):
    flows = table()
    assert {a[0] for f in flows for a in f.actions} == {
        "output",
        "set_field",
        "dec_ttl",
        "move",
        "goto_table",
        "ct",
        "group",
        "resubmit",
        "learn",
        "multipath",
    }  # every action kind covered
    assert {name for f in flows for name, _ in f.match} >= {
        "ct_state", "ip_proto", "tcp_src", "tcp_dst", "udp_src", "udp_dst", "reg0", "reg1",
    }  # fmt: skip
    for xid, f in enumerate(sorted(flows, key=lambda f: (f.table, f.priority, str(f.match))), 1):
        assert ofwire.encode_flow_mod(f, command, xid) == serialized(
            osken_flow_mod(f, command), xid
        ), f


def test_bundle_messages_are_byte_identical_to_osken():
    f = next(iter(table()))
    inner = osken_flow_mod(f, ofp.OFPFC_ADD)
    inner.set_xid(77)
    add = parser.OFPBundleAddMsg(DP, 5, ofp.OFPBF_ATOMIC, inner, [])
    assert ofwire.encode_bundle_add(5, f, ofwire.OFPFC_ADD, 77) == serialized(add, 77)
    ctrl = parser.OFPBundleCtrlMsg(DP, 5, ofp.OFPBCT_COMMIT_REQUEST, ofp.OFPBF_ATOMIC, [])
    assert ofwire.encode_bundle_control(5, ofwire.OFPBCT_COMMIT_REQUEST, 78) == serialized(ctrl, 78)
    assert ofwire.encode_barrier(79) == serialized(parser.OFPBarrierRequest(DP), 79)
    req = parser.OFPFlowStatsRequest(
        DP, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, 0, 0, parser.OFPMatch()
    )
    assert ofwire.encode_flow_stats_request(80) == serialized(req, 80)


def ofp_print(data: bytes) -> str:
    """Open vSwitch's own decoding of a message (ovs-ofctl, no switch involved)."""
    out = subprocess.run(
        ["ovs-ofctl", "ofp-print", data.hex()], capture_output=True, text=True, check=True
    )
    assert "error" not in out.stdout.lower(), out.stdout
    return out.stdout


def test_ovs_reads_our_multipath_as_the_action_we_mean():
    """nicira-ext.h's numbers for the hash fields and algorithms, checked by OVS's parser:
    os-ken names the algorithms only."""
    (pick,) = [f for f in table() if any(a[0] == "multipath" for a in f.actions)][:1]
    for fields in ofwire.NX_HASH_FIELDS:
        for algorithm in ofwire.NX_MP_ALGORITHMS:
            action = ("multipath", fields, 257, algorithm, 67, "reg0")
            f = replace(pick, actions=(action, *pick.actions[1:]))
            printed = ofp_print(ofwire.encode_flow_mod(f, ofwire.OFPFC_ADD, 1))
            assert f"actions=multipath({fields},257,{algorithm},67,0,NXM_NX_REG0[])," in printed


def test_only_the_multipath_vxflow_writes_decodes_as_one():
    ours = ("multipath", "nw_src", 257, "modulo_n", 67, "reg0")
    raw = bytearray(ofwire.encode_flow_mod(replace(next(iter(table())), actions=(ours,)), 0, 1))
    at = raw.index(bytes.fromhex("00002320000a"))  # NX_VENDOR_ID, NXAST_MULTIPATH
    action = bytes(raw[at - 4 : at + 28])
    assert ofwire._decode_action(action, 0, 32) == ours
    # another argument, 16 bits of the register, unknown hash fields or algorithm
    for offset, value in ((20, b"\0\0\0\1"), (26, b"\0\x0f"), (10, b"\0\x09"), (16, b"\0\x07")):
        changed = action[:offset] + value + action[offset + len(value) :]
        assert ofwire._decode_action(changed, 0, 32)[0] == "unknown_action"


def stats_entry(f: Flow) -> bytes:
    """An ofp_flow_stats entry as a switch would report `f`."""
    mod = ofwire.encode_flow_mod(f, ofwire.OFPFC_ADD, 1)
    body = mod[ofwire._FLOW_MOD.size :]  # match + instructions
    return (
        ofwire._FLOW_STATS.pack(
            48 + len(body), f.table, 3, 4, f.priority, 0, 0, 0, 0, f.cookie, 10, 1000
        )
        + body
    )


def test_decoder_round_trips_every_flow():
    flows = table()
    body = b"".join(stats_entry(f) for f in flows)
    assert set(ofwire.decode_flow_stats(body)) == flows


def test_decoder_reads_nxm_headers_and_marks_the_unknown():
    # eth_src as the old NXM header, then an unknown OXM field (vlan_vid)
    tlvs = bytes.fromhex("00000406020000000001") + bytes.fromhex("80000c021001")
    assert ofwire.decode_oxm_list(tlvs) == (
        ("eth_src", "02:00:00:00:00:01"),
        ("oxm_8000_6", "1001"),
    )
    # a write-actions instruction is not something vxflow writes
    inst = bytes.fromhex("0003000800000000")
    assert ofwire.decode_instructions(inst)[0][0] == "unknown_instruction"


def test_bulk_encoding_equals_one_message_at_a_time():
    flows = sorted(table(), key=lambda f: (f.table, f.priority, str(f.match)))
    for command in (ofwire.OFPFC_ADD, ofwire.OFPFC_DELETE_STRICT):
        bulk = ofwire.encode_bundle_adds(9, flows, command, 100)
        one_by_one = b"".join(
            ofwire.encode_bundle_add(9, f, command, 100 + i) for i, f in enumerate(flows)
        )
        assert bulk == one_by_one


def test_shared_encoding_equals_the_plain_one_for_any_xid_and_bundle(monkeypatch):
    """A change fanned out to every switch encodes each flow once (`shared`): what each
    switch gets is byte for byte its own encoding, also once the kept encodings were let go."""
    monkeypatch.setattr(ofwire, "SHARED_MAX", 10)
    flows = sorted(table(), key=lambda f: (f.table, f.priority, str(f.match)))
    assert len(flows) > 2 * ofwire.SHARED_MAX
    for command in (ofwire.OFPFC_ADD, ofwire.OFPFC_DELETE_STRICT):
        for bundle_id, xid in ((9, 100), (0xFFFFFFFF, 0xFFFF0000), (1, 1)):
            for part in (flows[:5], flows, flows[3:8]):
                shared = ofwire.encode_bundle_adds(bundle_id, part, command, xid, shared=True)
                assert shared == ofwire.encode_bundle_adds(bundle_id, part, command, xid)


def test_route_rows_encode_exactly_as_their_flows():
    """The cold sync's row encoder equals the generic one (itself equal to os-ken's),
    for any slice of the rows and any xid, with MACs and PublicIPs that vary per lease:
    each row is its lease's route and tunnel-ingress check, in that order."""
    many = leases(250)
    many[7] = replace(many[7], vtep_mac="fe:ff:00:01:80:7f")
    own = many[3]
    routes = node_table(CONFIG, many, [], own).routes
    assert routes is not None and len(routes) == FLOWS_PER_LEASE * (len(many) - 1)
    flows = routes.flows()
    assert [f.table for f in flows[:2]] == [Table.ROUTE, Table.CLASSIFY]
    encode = ofwire.route_encoder(routes)
    n = FLOWS_PER_LEASE
    for start, stop, xid in ((0, len(routes.rows), 1), (5, 6, 0xFFFFFF00), (17, 240, 4242)):
        assert encode(routes.rows[start:stop], xid, 3) == (
            ofwire.encode_bundle_adds(3, flows[n * start : n * stop], ofwire.OFPFC_ADD, xid)
        )
    expected = b""
    for i, f in enumerate(flows[n * 6 : n * 7]):
        inner = osken_flow_mod(f, ofp.OFPFC_ADD)
        inner.set_xid(9 + i)
        expected += serialized(parser.OFPBundleAddMsg(DP, 3, ofp.OFPBF_ATOMIC, inner, []), 9 + i)
    assert encode(routes.rows[6:7], 9, 3) == expected
    assert encode([], 9, 3) == b""


def test_bare_route_rows_encode_exactly_as_their_flows_on_every_switch():
    """A lease event's routes go out bare: the row encoder equals encode_flow_mod (itself
    equal to os-ken's) for each switch, though one packer serves them all (only the
    switch's own VtepMAC differs between two switches' routes)."""
    many = leases(40)
    many[7] = replace(many[7], vtep_mac="fe:ff:00:01:80:7f")
    for own in (many[3], many[7], many[39]):
        routes = node_table(CONFIG, many, [], own).routes
        flows = routes.flows()
        encode = ofwire.route_encoder(routes, bundled=False)
        n = FLOWS_PER_LEASE
        for start, stop, xid in ((0, len(routes.rows), 1), (5, 6, 0xFFFFFF00)):
            assert encode(routes.rows[start:stop], xid) == b"".join(
                ofwire.encode_flow_mod(f, ofwire.OFPFC_ADD, xid + i)
                for i, f in enumerate(flows[n * start : n * stop])
            )
        expected = b"".join(
            serialized(osken_flow_mod(f, ofp.OFPFC_ADD), 9 + i) for i, f in enumerate(flows[:n])
        )
        assert encode(routes.rows[:1], 9) == expected


@pytest.mark.parametrize("bundled", [True, False])
def test_dual_stack_route_rows_encode_exactly_as_their_flows(bundled: bool):
    """On a dual-stack switch a lease's row carries its IPv6 route and check too (four
    flows), or not (an IPv4-only lease, or a half not routed: two): the row encoder equals
    the generic one over every slice, xid and switch, and with no half among the rows
    (or none routed on the switch) it still encodes the IPv4 two alone."""
    from bench.leasegen import cluster as dual_cluster

    c = dual_cluster(60, dual=True)
    many = list(c.leases)
    many[5] = replace(many[5], ipv6_subnet=None, public_ipv6=None, vtep_mac_v6=None)
    many[9] = replace(many[9], vtep_mac_v6="fe:ff:00:01:80:7f", vtep_mac="02:00:00:00:00:09")
    for own in (many[3], many[9], many[5]):  # many[5]: a switch routing no IPv6
        routes = node_table(c.config, many, [], own).routes
        flows = routes.flows()
        assert len(flows) == len(routes) == FLOWS_PER_LEASE * (
            len(many) - 1 + (0 if own is many[5] else len(many) - 2))
        encode = ofwire.route_encoder(routes, bundled=bundled)
        items = routes.items()
        for start, stop, xid in ((0, len(items), 1), (5, 6, 0xFFFFFF00), (4, 11, 4242), (7, 7, 3)):
            first = routes.count(items[:start])
            chunk = flows[first : first + routes.count(items[start:stop])]
            want = (ofwire.encode_bundle_adds(3, chunk, ofwire.OFPFC_ADD, xid) if bundled else
                    b"".join(ofwire.encode_flow_mod(f, ofwire.OFPFC_ADD, xid + i)
                             for i, f in enumerate(chunk)))  # fmt: skip
            assert encode(items[start:stop], xid, 3) == want, (own.subnet, start, stop)
        assert [routes.flow(i) for i in range(len(routes))] == flows
    v4_only = node_table(c.config, many[4:7], [], many[3]).routes  # a dual switch, one half
    assert v4_only.rows6 and v4_only.halves == 2
    none_routed = replace(v4_only, leases=[many[5]], rows=v4_only.rows[1:2], rows6=[None])
    assert ofwire.route_encoder(none_routed, bundled)(none_routed.items(), 7, 3) == (
        ofwire.route_encoder(replace(none_routed, rows6=()), bundled)(none_routed.rows, 7, 3))


def _parsed_by_osken(msg: bytes):
    version, msg_type, length, xid = ofproto_parser.header(msg)
    return ofproto_parser.msg(DP, version, msg_type, length, xid, bytearray(msg))


@pytest.mark.parametrize("msg_type", [ofp.OFPT_ROLE_REPLY, ofp.OFPT_ROLE_STATUS])
def test_role_replies_and_statuses_decode_as_osken_reads_them(msg_type):
    """The controller reads these in the switch's receive loop, without os-ken's parser."""
    role, generation = ofp.OFPCR_ROLE_SLAVE, 0xFEDC_BA98_7654_3210
    msg = struct.pack("!BBHIIB3xQ", ofp.OFP_VERSION, msg_type, 24, 7, role, 1, generation)
    parsed = _parsed_by_osken(msg)
    assert ofwire.decode_role(msg) == (parsed.role, parsed.generation_id) == (role, generation)


def test_errors_decode_as_osken_reads_them():
    refused = ofwire.encode_barrier(9)
    msg = struct.pack("!BBHIHH", ofp.OFP_VERSION, ofp.OFPT_ERROR, 12 + len(refused), 9,
                      ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_IS_SLAVE) + refused  # fmt: skip
    parsed = _parsed_by_osken(msg)
    assert ofwire.decode_error(msg) == (parsed.type, parsed.code, bytes(parsed.data))
    assert ofwire.decode_error(msg) == (ofp.OFPET_BAD_REQUEST, ofp.OFPBRC_IS_SLAVE, refused)


@pytest.mark.parametrize("flags", [0, ofp.OFPMPF_REPLY_MORE])
def test_multipart_replies_decode_as_osken_reads_them(flags):
    flow = Flow(Table.CLASSIFY, 100, (("in_port", 1),), (("output", 2),), cookie=0x42)
    body = stats_entry(flow)
    msg = struct.pack("!BBHIHH4x", ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY, 16 + len(body), 3,
                      ofp.OFPMP_FLOW, flags) + body  # fmt: skip
    parsed = _parsed_by_osken(msg)
    kind, more, got = ofwire.decode_multipart_reply(msg)
    assert (kind, more) == (parsed.type, bool(parsed.flags & ofp.OFPMPF_REPLY_MORE))
    assert got == body and list(ofwire.decode_flow_stats(got)) == [flow]


def policy_flows(log_drops: bool = False) -> list[Flow]:
    """A switch's policy stage with every shape it writes: conjunctions over pods, peers
    (an ipBlock with except) and ports (numbered, a range, named), the conj_id flows, hooks
    (`log_drops`: its default drops logged)."""
    subnet = IPv4Network("198.19.1.0/24")
    web = PodIdentity("x", "web", (("app", "web"),), (ContainerPort("http", 8080),))
    eps = [Endpoint(subnet, IPv4Address("198.19.1.5"), "0a:58:00:00:00:05", 5, "", web)]
    policy = parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "x"}, "spec": {"podSelector": {},
        "ingress": [{"from": [{"ipBlock": {"cidr": "198.19.0.0/16", "except": ["198.19.2.0/24"]}}],
                     "ports": [{"port": 64, "endPort": 127}, {"port": "http"}, {"port": 53, "protocol": "UDP"}]}],
        "egress": [{}]}})  # fmt: skip
    return in_order(policy_table([policy], [], eps, eps, subnet, log_drops=log_drops).flows)


def in_order(flows: list[Flow]) -> list[Flow]:
    """A stage's flows by key: a table has no order, and the stage's follows the order its
    keys were touched in, a set's (of string hashes, which vary from process to process)."""
    return sorted(flows, key=lambda f: repr(f.key))


def dual_stack_policy_flows() -> list[Flow]:
    """The same stage for a dual-stack pod, with an IPv6 ipBlock (and except) beside."""
    subnet, subnet6 = IPv4Network("198.19.1.0/24"), IPv6Network("fd00:0:0:1::/64")
    web = PodIdentity("x", "web", (("app", "web"),), (ContainerPort("http", 8080),))
    eps = [Endpoint(subnet, IPv4Address("198.19.1.5"), "0a:58:00:00:00:05", 5, "", web,
                    IPv6Address("fd00:0:0:1::5"))]  # fmt: skip
    policy = parse_policy({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "x"}, "spec": {"podSelector": {},
        "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/48", "except": ["fd00:0:0:2::/64"]}},
                              {"podSelector": {}}],
                     "ports": [{"port": 64, "endPort": 127}, {"port": "http"}]}],
        "egress": [{}]}})  # fmt: skip
    return in_order(policy_table([policy], [], eps, eps, subnet, subnet6).flows)


def test_a_dual_stack_policy_stage_parses_in_ovs_and_decodes_back():
    flows = dual_stack_policy_flows()
    assert any(dict(f.match).get("ipv6_src") == IPv6Network("fd00:0:0:8000::/49") for f in flows)
    for f in flows:
        res = subprocess.run(["ovs-ofctl", "-O", "OpenFlow14", "parse-flow", to_ofctl(f)],
                             capture_output=True, text=True)  # fmt: skip
        assert res.returncode == 0, (to_ofctl(f), res.stderr)
    printed = "".join(ofp_print(ofwire.encode_flow_mod(f, ofwire.OFPFC_ADD, 1)) for f in flows)
    assert "ipv6_src=fd00:0:0:8000::/49" in printed and "conj_id=" in printed
    assert list(ofwire.decode_flow_stats(b"".join(stats_entry(f) for f in flows))) == flows


def test_ovs_reads_the_policy_stage_as_we_mean_it():
    printed = "".join(ofp_print(ofwire.encode_flow_mod(f, ofwire.OFPFC_ADD, 1)) for f in policy_flows())
    for text in ("conjunction(", ",2/3)", "ct_clear", "ct(commit,zone=7680)", "conj_id=",
                 "reg2=0", "reg3=0", "tp_dst=0x40/0xffc0", "ct(table=51,zone=7680)"):  # fmt: skip
        assert text in printed, text


def test_ovs_parses_the_policy_stage_as_vxflow_flows_show_prints_it():
    for f in policy_flows():
        res = subprocess.run(["ovs-ofctl", "-O", "OpenFlow14", "parse-flow", to_ofctl(f)],
                             capture_output=True, text=True)  # fmt: skip
        assert res.returncode == 0, (to_ofctl(f), res.stderr)


def test_decoder_round_trips_the_policy_stage():
    flows = policy_flows()
    drops: dict = {}
    body = b"".join(stats_entry(f) for f in flows)
    assert list(ofwire.decode_flow_stats(body, drops)) == flows
    assert drops == {(f.table, f.cookie): 10 for f in flows if f.cookie >> 48 & 0xFF == 8}
    assert len(drops) == 2  # the pod isolated both ways


def test_a_logged_drop_is_a_meter_then_a_packet_in_as_osken_and_ovs_read_it():
    """`--log-policy-drops`: each default drop passes meter 1, then sends its first 128 bytes
    to the controller; byte-identical to os-ken's encoding, read so by OVS (its parser and
    its printer), decoded back from a readback; the rest of the stage is unchanged but its
    digest."""
    logged, plain = policy_flows(log_drops=True), policy_flows()
    drops = [f for f in logged if f.cookie >> 48 & 0xFF == 8]
    assert len(drops) == 2 and all(f.actions == (("meter", 1), ("controller", 128)) for f in drops)
    # the same entries; the hooks' digest of the stage (reg4) changes with it, as it should
    assert [f.key for f in logged] == [f.key for f in plain]
    def rest(flows: list[Flow]) -> list[tuple]:
        return [f.actions for f in flows if f.cookie >> 48 & 0xFF != 8
                and not any(a[:2] == ("set_field", "reg4") for a in f.actions)]  # fmt: skip

    assert rest(logged) == rest(plain)
    for f in drops:
        assert to_ofctl(f).endswith(" actions=meter:1,controller:128")
        res = subprocess.run(["ovs-ofctl", "-O", "OpenFlow14", "parse-flow", to_ofctl(f)],
                             capture_output=True, text=True)  # fmt: skip
        assert res.returncode == 0, (to_ofctl(f), res.stderr)
        for command in (ofwire.OFPFC_ADD, ofwire.OFPFC_DELETE_STRICT):
            assert ofwire.encode_flow_mod(f, command, 7) == serialized(osken_flow_mod(f, command), 7)
        printed = ofp_print(ofwire.encode_flow_mod(f, ofwire.OFPFC_ADD, 1))
        assert "actions=meter:1,CONTROLLER:128" in printed, printed
    assert list(ofwire.decode_flow_stats(b"".join(stats_entry(f) for f in logged))) == logged
