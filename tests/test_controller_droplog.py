"""Logged policy drops (controller/droplog.py), pure: packet-ins as a switch sends them
(built with os-ken's packet library, read back by OVS's own printer) decode to the drop's
direction, group, protocol, addresses and ports; the per-switch guard and the queue never
block and count what they drop; one line per drop names the node, pod, direction,
policies, addresses and ports; the meter's messages; the isolation a drop hit, from the
model."""

from __future__ import annotations

import logging
import struct
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address

import pytest
from os_ken.lib.packet import ethernet, icmp, ipv4, ipv6, packet, tcp, udp
from os_ken.ofproto import ofproto_v1_4 as ofp
from os_ken.ofproto import ofproto_v1_4_parser as parser

from controller import droplog, metrics, ofwire, status
from controller.droplog import Drop, DropLog
from controller.model import FULL, ClusterModel
from controller.switch import State
from flows.compiler import subnet_cookie
from flows.flow import Owner, Table, cookie_for
from flows.policy import DROP_LOG_METER, LOGGED_DROP, drop_cookie
from leases.events import LeaseAdded
from leases.policy import EGRESS, INGRESS
from tests.test_controller_ofwire import ofp_print
from tests.test_controller_policy import DB, DENY_DB, LEASES, N1, PODS, WEB
from tests.test_controller_sync import CONFIG, bare_mods, finish, land_bare, lease, make, stats_body

GROUP = IPv4Address("198.19.1.11")
NODE = IPv4Address("198.18.0.1")


def frame(*layers) -> bytes:
    p = packet.Packet()
    for layer in layers:
        p.add_protocol(layer)
    p.serialize()
    return bytes(p.data)


def eth(eth_type: int = 0x0800) -> ethernet.ethernet:
    return ethernet.ethernet(dst="0a:58:c6:13:01:0b", src="0a:58:c6:13:02:0a", ethertype=eth_type)


def packet_in(data: bytes, table: int = Table.POL_INGRESS, cookie: int = drop_cookie(GROUP),
              max_len: int = 128) -> bytes:  # fmt: skip
    """An OFPT_PACKET_IN as OVS sends one for `controller:max_len` (its match: the in_port
    and a register, as OVS puts the packet's metadata there)."""
    match = bytearray()
    parser.OFPMatch(in_port=3, reg5=int(GROUP)).serialize(match, 0)
    body = struct.pack("!IHBBQ", ofp.OFP_NO_BUFFER, len(data), ofp.OFPR_APPLY_ACTION, table,
                       cookie) + bytes(match) + b"\0\0" + data[:max_len]  # fmt: skip
    return struct.pack("!BBHI", ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, 8 + len(body), 0) + body


TCP4 = frame(eth(), ipv4.ipv4(src="198.19.2.10", dst="198.19.1.11", proto=6),
             tcp.tcp(src_port=40000, dst_port=80, bits=tcp.TCP_SYN))  # fmt: skip


def test_a_packet_in_as_ovs_reads_it_decodes_to_the_drop() -> None:
    msg = packet_in(TCP4)
    printed = ofp_print(msg)
    assert f"cookie={drop_cookie(GROUP):#x}" in printed and "table_id=51" in printed, printed
    assert "tcp_src=40000,tcp_dst=80" in printed.replace("tp_src", "tcp_src").replace("tp_dst", "tcp_dst"), printed
    assert droplog.decode(msg) == Drop(INGRESS, GROUP, "tcp", IPv4Address("198.19.2.10"),
                                       IPv4Address("198.19.1.11"), 40000, 80)  # fmt: skip
    assert droplog.decode(msg).endpoints() == "198.19.2.10:40000 -> 198.19.1.11:80"


def test_udp_over_ipv6_icmp_and_vlan_decode_and_what_cannot_is_none() -> None:
    udp6 = frame(eth(0x86DD), ipv6.ipv6(src="fd00::2:a", dst="fd00::1:b", nxt=17),
                 udp.udp(src_port=5353, dst_port=53))  # fmt: skip
    drop = droplog.decode(packet_in(udp6, Table.POL_EGRESS))
    assert drop == Drop(EGRESS, GROUP, "udp", IPv6Address("fd00::2:a"), IPv6Address("fd00::1:b"),
                        5353, 53)  # fmt: skip
    assert drop.pod_ip == IPv6Address("fd00::2:a")  # egress: the source is the guarded pod
    assert drop.endpoints() == "[fd00::2:a]:5353 -> [fd00::1:b]:53"
    ping = frame(eth(), ipv4.ipv4(src="198.19.2.10", dst="198.19.1.11", proto=1),
                 icmp.icmp(data=icmp.echo(id_=1, seq=1)))  # fmt: skip
    drop = droplog.decode(packet_in(ping))
    assert (drop.protocol, drop.sport, drop.endpoints()) == ("icmp", None, "198.19.2.10 -> 198.19.1.11")
    tagged = TCP4[:12] + struct.pack("!HH", 0x8100, 7) + TCP4[12:]
    assert droplog.decode(packet_in(tagged)) == droplog.decode(packet_in(TCP4))
    arp = frame(eth(0x0806)) + bytes(28)
    for bad in (packet_in(arp), packet_in(TCP4[:30]), packet_in(b""), packet_in(TCP4)[:30]):
        assert droplog.decode(bad) is None
    # not a default drop's: not ours to log (the caller handles it as any packet-in)
    for other in (packet_in(TCP4, cookie=cookie_for(Owner.POLICY, 7)), packet_in(TCP4, Table.ROUTE)):
        assert not droplog.is_logged_drop(other) and droplog.decode(other) is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def counts() -> tuple[float, ...]:
    return (metrics.DROPS_LOGGED._value.get(),
            *(metrics.DROPS_SUPPRESSED[r]._value.get() for r in ("rate", "backlog", "undecodable")))  # fmt: skip


def test_each_switch_is_guarded_at_its_rate_and_a_full_queue_counts_without_waiting() -> None:
    clock = Clock()
    log = DropLog(10, lambda *a: ("x/b", ("x/deny",)), clock)
    msg = packet_in(TCP4)
    before = counts()
    taken = [log.receive(NODE, msg) for _ in range(25)]
    assert all(taken)  # every one is a logged drop's, handled here
    assert log.queue.qsize() == 20  # a burst of two seconds' worth
    assert counts()[1] - before[1] == 5  # the rest past the bucket
    other = IPv4Address("198.18.0.2")
    assert log.receive(other, msg) and log.queue.qsize() == 21  # a bucket per switch
    clock.now += 0.5
    for _ in range(6):
        log.receive(NODE, msg)
    assert log.queue.qsize() == 26  # 5 refilled
    assert counts()[1] - before[1] == 6
    assert not log.receive(NODE, packet_in(TCP4, cookie=cookie_for(Owner.BASE)))
    full = DropLog(10**6, lambda *a: None, clock)
    for _ in range(droplog.BACKLOG + 3):
        full.receive(NODE, msg)
    assert full.queue.qsize() == droplog.BACKLOG and counts()[2] - before[2] == 3


def test_one_line_per_drop_names_node_pod_direction_policies_addresses_and_ports(caplog) -> None:
    asked = []

    def isolation(*args):
        asked.append(args)
        return ("x/b", ("x/deny", "x/other"))

    log = DropLog(10, isolation)
    before = counts()
    with caplog.at_level(logging.INFO, logger="controller.droplog"):
        log.write(NODE, packet_in(TCP4))
    assert asked == [(NODE, INGRESS, IPv4Address("198.19.1.11"), GROUP)]
    (record,) = caplog.records
    assert record.getMessage() == ("policy drop: node 198.18.0.1, pod x/b, ingress, default "
                                   "isolation by policy x/deny,x/other: tcp 198.19.2.10:40000 -> "
                                   "198.19.1.11:80")  # fmt: skip
    assert (record.event, record.pod, record.policies, record.dport) == ("policy_drop", "x/b",
                                                                         ["x/deny", "x/other"], 80)  # fmt: skip
    assert counts()[0] - before[0] == 1
    caplog.clear()
    gone = DropLog(10, lambda *a: None)  # a drop of a group the controller no longer knows
    gone.write(NODE, packet_in(TCP4))
    gone.write(NODE, packet_in(TCP4[:20]))
    assert not caplog.records and counts()[3] - before[3] == 2


def test_the_meter_is_an_add_then_a_modify_as_ovs_reads_them() -> None:
    data = droplog.meter_mods(50, 7)
    add, modify = data[:32], data[32:]
    assert struct.unpack_from("!BBHI", add) == (ofwire.OFP_VERSION, ofwire.OFPT_METER_MOD, 32, 7)
    assert struct.unpack_from("!I", modify, 4)[0] == 8
    assert "ADD meter=1 pktps burst stats bands=\ntype=drop rate=50 burst_size=50" in ofp_print(add)
    assert "MOD meter=1 pktps burst stats bands=\ntype=drop rate=50 burst_size=50" in ofp_print(modify)
    assert DROP_LOG_METER == 1


def test_the_model_names_the_pod_and_policies_a_drop_hit() -> None:
    model = ClusterModel(log_drops=True)
    model.load(CONFIG, LEASES, PODS, policies=[DENY_DB])
    (group,) = set(model.policy_table(N1).groups.values())
    assert model.isolation(N1, INGRESS, DB.ip, group) == ("shop/p111", ("shop/db-from-web",))
    assert model.isolation(N1, INGRESS, WEB.ip, group) == (None, ("shop/db-from-web",))
    assert model.isolation(N1, EGRESS, DB.ip, group) is None
    drops = [f for f in model.policy_table(N1).flows if f.cookie == drop_cookie(group)]
    assert drops and all(f.actions[0] == ("meter", DROP_LOG_METER) for f in drops)



def test_every_readback_adds_the_meter_first_and_a_refused_drop_is_retried_after_it() -> None:
    """The meter goes before the readback (so before any flow using it): an add (refused
    where the meter is there: not a problem) and a modify; a flow the switch refuses while
    the meter is missing (deleted behind our back) fails its change, and the retry's
    readback adds the meter again before the flow."""
    model = ClusterModel(log_drops=True)
    model.load(CONFIG, LEASES, PODS, policies=[DENY_DB])
    sync, channel, delayed = make(model, N1)
    sync.meter_rate = 100

    def readback(flows) -> None:
        sent = channel.take()
        assert [t for t, _, _ in sent] == [ofwire.OFPT_METER_MOD, ofwire.OFPT_METER_MOD,
                                           ofwire.OFPT_MULTIPART_REQUEST,
                                           ofwire.OFPT_MULTIPART_REQUEST]  # fmt: skip
        (_, add, meter), (_, modify, _), (_, flows_xid, _), (_, groups_xid, _) = sent
        assert meter + sent[1][2] == droplog.meter_mods(100, add) and modify == add + 1
        held = sync.last_error
        assert sync.on_error(add, ofwire.OFPET_METER_MOD_FAILED, ofwire.OFPMMFC_METER_EXISTS, b"")
        assert sync.last_error == held  # (the meter was there: nothing wrong)
        sync.on_flow_stats(flows_xid, stats_body(flows), more=False)
        sync.on_group_desc(groups_xid, b"", more=False)

    desired = list(model.desired(N1, FULL))
    (drop,) = [f for f in desired if f.actions[:1] == (("meter", DROP_LOG_METER),)]
    sync.start()
    readback([f for f in desired if f != drop])
    sent = channel.take()
    assert bare_mods(sent) == [ofwire.OFPFC_ADD]
    mod_xid, barrier = sent[0][1], sent[-1][1]
    assert sync.on_error(mod_xid, ofwire.OFPET_METER_MOD_FAILED, 2, b"")  # OFPMMFC_INVALID_METER
    sync.on_barrier(barrier)
    assert "meter:1,controller:128" in sync.last_error and not sync.in_sync
    (_, retry), *_ = delayed
    retry()
    readback([f for f in desired if f != drop])  # the meter again first, then the flow
    sent = channel.take()
    assert bare_mods(sent) == [ofwire.OFPFC_ADD]
    sync.on_barrier(sent[-1][1])
    assert sync.in_sync and sync.installed.get(drop.key) == drop


def test_a_meter_that_cannot_be_built_leaves_the_switch_idle_not_reading_for_ever() -> None:
    """The readback's messages are built before the switch counts as reading: were the
    meter's rate out of its 32 bits (the options bound it), the switch would otherwise be
    left READING with no deadline armed, never synced again."""
    model = ClusterModel(log_drops=True)
    model.load(CONFIG, LEASES, PODS, policies=[DENY_DB])
    sync, channel, _ = make(model, N1)
    sync.meter_rate = 2**32
    with pytest.raises(struct.error):
        sync.start()
    assert sync.state is State.IDLE and channel.take() == []


def test_a_switch_refusing_the_meter_gets_plain_drops_and_still_takes_changes(caplog) -> None:
    """A switch without meters (a datapath without meter support) refuses the meter: said
    once and counted, and its policy drops are plain drops from then on (the table it
    takes, every later change too) rather than flows it would refuse, whole bundles with
    them, for ever; a reconnect (a new sync) tries the meter again."""
    model = ClusterModel(log_drops=True)
    model.load(CONFIG, LEASES, PODS, policies=[DENY_DB])
    logged = [f for f in model.desired(N1, FULL) if f.actions == LOGGED_DROP]
    assert logged
    refused = metrics.DROP_METERS_REFUSED._value.get()

    def connect():
        sync, channel, _ = make(model, N1)
        sync.meter_rate = 100
        sync.start()
        sent = channel.take()
        assert [t for t, _, _ in sent[:2]] == [ofwire.OFPT_METER_MOD] * 2
        return sync, channel, sent

    sync, channel, sent = connect()
    (_, add, _), (_, modify, _), (_, flows_xid, _), (_, groups_xid, _) = sent
    assert status._switch(1, sync, None, model)["drop_meter_refused"] is False
    with caplog.at_level(logging.WARNING, "controller.switch"):
        assert sync.on_error(add, ofwire.OFPET_METER_MOD_FAILED, 10, b"")  # out of meters
        assert sync.on_error(modify, ofwire.OFPET_METER_MOD_FAILED, 3, b"")  # unknown meter
    (line,) = [r.getMessage() for r in caplog.records if "meter" in r.getMessage()]
    assert f"switch {N1}" in line and "error type 12 code 10" in line, line
    assert metrics.DROP_METERS_REFUSED._value.get() == refused + 1
    assert status._switch(1, sync, None, model)["drop_meter_refused"] is True  # `vxflow status`
    sync.on_flow_stats(flows_xid, b"", more=False)
    sync.on_group_desc(groups_xid, b"", more=False)
    finish(sync, channel, channel.take())
    assert sync.in_sync and not sync.last_error
    assert not [f for f in sync.installed.values() if ("meter", DROP_LOG_METER) in f.actions]
    assert all(sync.installed.get(f.key) == replace(f, actions=()) for f in logged)
    impact = model.apply([LeaseAdded(lease(3), 10)])  # a lease change: taken
    sync.request(impact.scope_for(N1, model.own_lease(N1).subnet))
    sent = channel.take()
    assert bare_mods(sent) == [ofwire.OFPFC_ADD] * 2
    land_bare(sync, sent)
    assert sync.in_sync and subnet_cookie(lease(3).subnet) in {f.cookie for f in sync.installed.values()}
    sync.audit()  # its later readbacks do not ask for the meter again
    assert ofwire.OFPT_METER_MOD not in [t for t, _, _ in channel.take()]
    connect()  # a reconnect does
