"""Group-mods and group-desc against os-ken's serialisation byte for byte, their decoding,
and what Open vSwitch's own parser (`ovs-ofctl ofp-print`) reads in them and in NXT_CT_FLUSH."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address

import pytest
from os_ken.ofproto import ofproto_v1_4 as ofp
from os_ken.ofproto import ofproto_v1_4_parser as parser

from controller import groups
from flows.groups import Bucket, Group
from flows.services import Flush, plan_groups
from tests.test_controller_ofwire import DP, SERVICES, _osken_action, ofp_print, serialized

GROUPS = plan_groups(SERVICES)


def osken_group_mod(g: Group, command: int) -> parser.OFPGroupMod:
    buckets = [
        parser.OFPBucket(b.weight, ofp.OFPP_ANY, ofp.OFPG_ANY, [_osken_action(a) for a in b.actions])
        for b in g.buckets
    ]
    return parser.OFPGroupMod(
        DP, command, g.type, g.group_id, [] if command == ofp.OFPGC_DELETE else buckets
    )


def osken_bytes(msg, xid: int) -> bytes:
    """os-ken's serialisation, completed where it is short: when a message ends in an
    NXActionNAT (a ct bucket: the last action of the last bucket), os-ken writes the
    action's declared 24 bytes as 22 (its padding never lands) and counts the message
    without them, so OVS refuses it (OFPBRC_BAD_LEN, asserted below). Every byte os-ken
    does write must equal ours; the two missing ones are zeros, and both length fields
    (message, bundle) grow by them."""
    raw = bytearray(serialized(msg, xid))
    short = -len(raw) % 8
    if short:
        raw += b"\0" * short
        for pos in range(0, len(raw), 8):  # the length fields of the nested headers
            if raw[pos] == ofp.OFP_VERSION and raw[pos + 1] in (15, 34) and pos < 24:
                raw[pos + 2 : pos + 4] = (
                    int.from_bytes(raw[pos + 2 : pos + 4], "big") + short
                ).to_bytes(2, "big")
    return bytes(raw)


def test_osken_alone_writes_ct_buckets_short() -> None:
    g = GROUPS[0]
    assert "OFPBRC_BAD_LEN" in subprocess.run(
        ["ovs-ofctl", "ofp-print", serialized(osken_group_mod(g, ofp.OFPGC_ADD), 1).hex()],
        capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert "OFPBRC_BAD_LEN" not in ofp_print(groups.encode_group_mod(g, groups.OFPGC_ADD, 1))


def test_every_bucket_kind_is_covered() -> None:
    kinds = {a[0] for g in GROUPS for b in g.buckets for a in b.actions}
    assert kinds == {"ct"}  # (a port with affinity has no group: its flows pick)
    assert {b.weight for g in GROUPS for b in g.buckets} == {1, 3}


@pytest.mark.parametrize("command", [groups.OFPGC_ADD, groups.OFPGC_MODIFY, groups.OFPGC_DELETE])
def test_group_mods_are_byte_identical_to_osken(command: int) -> None:
    for xid, g in enumerate(GROUPS, 1):
        assert groups.encode_group_mod(g, command, xid) == osken_bytes(
            osken_group_mod(g, command), xid
        )
    g = GROUPS[0]
    inner = osken_group_mod(g, command)
    inner.set_xid(33)
    add = parser.OFPBundleAddMsg(DP, 4, ofp.OFPBF_ATOMIC, inner, [])
    assert groups.encode_group_mod(g, command, 33, bundle_id=4) == osken_bytes(add, 33)
    assert groups.encode_group_mods(GROUPS, command, 40, 4) == b"".join(
        groups.encode_group_mod(g, command, 40 + i, 4) for i, g in enumerate(GROUPS)
    )


def test_group_desc_request_and_reply() -> None:
    assert groups.encode_group_desc_request(12) == serialized(
        parser.OFPGroupDescStatsRequest(DP, 0), 12
    )
    body = b"".join(groups.group_desc_entry(g) for g in GROUPS)
    assert list(groups.decode_group_desc(body)) == GROUPS
    # a bucket vxflow never writes (it watches a port or a group) never equals a desired one
    for port, group in ((7, ofp.OFPG_ANY), (ofp.OFPP_ANY, 7)):
        watched = parser.OFPBucket(1, port, group, [parser.OFPActionGroup(9)])
        buf = bytearray()
        watched.serialize(buf, 0)
        entry = groups._GROUP_DESC.pack(8 + len(buf), 1, 5) + bytes(buf)
        (decoded,) = groups.decode_group_desc(entry)
        assert decoded != Group(5, (Bucket(1, (("group", 9),)),))
        assert decoded.buckets[0].actions[0] == ("group", 9)


def test_ovs_reads_our_group_mods_as_the_groups_we_mean() -> None:
    for g in GROUPS:
        printed = ofp_print(groups.encode_group_mod(g, groups.OFPGC_ADD, 7)).splitlines()[1].strip()
        assert printed.startswith(f"ADD group_id={g.group_id},type=select,bucket=")
        for bucket, text in zip(g.buckets, printed.split(",bucket=")[1:], strict=True):
            assert text.startswith(f"weight:{bucket.weight}," if bucket.weight != 1 else "actions=")
            ((_, _, zone, table, (kind, ip, port)),) = bucket.actions
            assert text.endswith(f"ct(commit,table={table},zone={zone},nat({kind}={ip}:{port}))")


def test_ovs_reads_our_ct_flush_as_the_entries_of_one_backend() -> None:
    flush = Flush(IPv4Address("198.20.0.10"), 53, IPv4Address("198.19.1.7"), 5353)
    data = groups.encode_ct_flush(7678, flush, 9)
    assert ofp_print(data).strip() == (
        "NXT_CT_FLUSH (OF1.4) (xid=0x9): zone=7678 "
        "'ct_nw_src=::,ct_nw_dst=198.20.0.10,ct_tp_src=0,ct_tp_dst=53,ct_nw_proto=17' "
        "'ct_nw_src=198.19.1.7,ct_nw_dst=::,ct_tp_src=5353,ct_tp_dst=0'"
    )
