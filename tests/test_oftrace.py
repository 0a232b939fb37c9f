"""ofproto/trace output as values, from what OVS 3.1 prints (pure)."""

from __future__ import annotations

from ipaddress import IPv4Address

from flows.explain import drop_reason, owner_text
from ovsdb.oftrace import parse

TO_TUNNEL = """\
Flow: icmp,in_port=3,vlan_tci=0x0000,dl_src=0a:58:c6:13:32:fe,dl_dst=0a:58:c6:13:32:01,nw_src=198.19.50.254,nw_dst=198.19.27.254,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,icmp_type=0,icmp_code=0

bridge("br-int")
----------------
 0. ip,in_port=3,dl_src=0a:58:c6:13:32:fe,nw_src=198.19.50.254, priority 100, cookie 0x76030000c61332fe
    goto_table:20
20. ip,nw_dst=198.19.27.0/24, priority 100, cookie 0x76020000c6131b00
    dec_ttl
    set_field:0e:76:c6:12:00:21->eth_src
    set_field:0e:76:c6:12:00:22->eth_dst
    set_field:198.18.0.34->tun_dst
    set_field:0x1->tun_id
    output:1
     -> output to native tunnel
     -> tunneling to 198.18.0.34 via br-phy

bridge("br-phy")
----------------
 0. priority 0
    NORMAL
     -> forwarding to learned port

Final flow: icmp,tun_src=0.0.0.0,tun_dst=198.18.0.34,in_port=3,vlan_tci=0x0000,dl_src=0e:76:c6:12:00:21,dl_dst=0e:76:c6:12:00:22,nw_src=198.19.50.254,nw_dst=198.19.27.254,nw_tos=0,nw_ecn=0,nw_ttl=63,nw_frag=no
Megaflow: recirc_id=0,eth,icmp,in_port=3,nw_dst=198.19.27.0/24,nw_ttl=64,nw_frag=no
Datapath actions: set(ipv4(ttl=63)),tnl_push(tnl_port(4)),1
"""

SPOOFED = """\
Flow: icmp,in_port=3,vlan_tci=0x0000,dl_src=0a:58:c6:13:32:fe,dl_dst=0a:58:c6:13:32:01,nw_src=198.19.250.9,nw_dst=198.19.27.254,nw_ttl=64

bridge("br-int")
----------------
 0. priority 0, cookie 0x7601000000000000
    drop

Final flow: unchanged
Megaflow: recirc_id=0,eth,ip,in_port=3,nw_frag=no
Datapath actions: drop
"""


def test_a_packet_into_the_tunnel():
    t = parse(TO_TUNNEL, "br-int")
    assert [(s.table, s.priority, s.cookie) for s in t.steps] == [
        (0, 100, 0x76030000C61332FE), (20, 100, 0x76020000C6131B00)]
    assert t.steps[1].actions[-1] == "output:1" and len(t.steps[1].actions) == 6  # no notes
    assert t.outputs == [1] and (t.tun_dst, t.tun_id) == (IPv4Address("198.18.0.34"), 1)
    assert (t.final["dl_src"], t.final["nw_ttl"]) == ("0e:76:c6:12:00:21", "63")
    assert t.datapath_actions.endswith(",1")
    assert owner_text(t.steps[1].cookie, 24) == "lease 198.19.27.0/24"
    assert owner_text(t.steps[0].cookie, 24) == "endpoint 198.19.50.254"


def test_a_dropped_packet_and_its_reason():
    t = parse(SPOOFED, "br-int")
    (step,) = t.steps
    assert (step.table, step.priority, step.match, step.actions) == (0, 0, "", ("drop",))
    assert t.outputs == [] and t.final["nw_src"] == "198.19.250.9"  # "unchanged": the packet
    assert drop_reason(step.table, step.priority, step.cookie, pod_port=True).startswith(
        "spoof guard")
    assert drop_reason(0, 0, step.cookie, pod_port=False) == "no flow admits traffic from this port"
    assert owner_text(0x51, 24) == "not vxflow's (cookie 0x51)"
