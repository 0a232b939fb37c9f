"""OpenFlow 1.4 wire format of groups (`flows.groups.Group`) and conntrack flushes.

Group-mods ride in the same bundles as flow-mods (controller/switch.py): a
group is added before the flows pointing at it and deleted after them. Each
bucket is packed by a template generated once per bucket shape, its actions
encoded exactly as in flow-mods (`ofwire.action_layout`); the result is
checked byte-for-byte against os-ken's serialisation in the unit tests.
Group-desc replies decode back to `Group` values, so read-back and desired
groups compare as values; a bucket vxflow would not write (a watched port or
group, an action it does not know) decodes to something that never equals a
desired one.

NXT_CT_FLUSH (OVS >= 3.1) drops the conntrack entries a removed UDP backend
still holds, so its clients' next datagrams are balanced anew.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address, IPv6Address

from controller import ofwire
from flows.groups import Bucket, Group
from flows.services import Flush

OFPT_EXPERIMENTER = 4
OFPT_GROUP_MOD = 15
OFPGC_ADD, OFPGC_MODIFY, OFPGC_DELETE = 0, 1, 2
OFPMP_GROUP_DESC = 7
NXT_CT_FLUSH = 32
NXT_CT_ORIG_TUPLE, NXT_CT_REPLY_TUPLE, NXT_CT_ZONE_ID = 0, 1, 2
NXT_CT_TUPLE_SRC, NXT_CT_TUPLE_DST, NXT_CT_TUPLE_SRC_PORT, NXT_CT_TUPLE_DST_PORT = 0, 1, 2, 3

_GROUP_MOD = struct.Struct("!BBHIHBxI")  # header, command, type, pad, group_id
_GROUP_DESC = struct.Struct("!HBxI")  # length, type, pad, group_id
_BUCKET = struct.Struct("!HHII4x")  # len, weight, watch_port, watch_group, pad
_BUNDLE_ADD = struct.Struct("!BBHIIHH")


_BUCKET_PACKERS: dict[tuple, object] = {}


def _bucket_packer(sample: Bucket):
    """`pack(bucket) -> bytes` for every bucket whose actions have `sample`'s shape."""
    lay = ofwire._Layout()
    lay.put("HHII4x", "{length}", "b.weight", ofwire.OFPP_ANY, ofwire.OFPG_ANY)
    ofwire.action_layout(lay, sample.actions, "a")
    args = [str(lay.size) if a == "{length}" else a for a in lay.args]
    return ofwire.compile_packer("b", "a = b.actions", lay.fmt, args)


def encode_bucket(bucket: Bucket) -> bytes:
    shape = ofwire.actions_shape(bucket.actions)
    pack = _BUCKET_PACKERS.get(shape)
    if pack is None:
        pack = _BUCKET_PACKERS[shape] = _bucket_packer(bucket)
    return pack(bucket)


_ENCODED: dict[int, tuple[Group, bytes]] = {}  # id(group) -> (group, its buckets' bytes)
ENCODED_KEPT = 256


def _buckets(group: Group) -> bytes:
    """The buckets' bytes, encoded once per Group object: one event's group goes to every
    switch, the same object each time (the model shares it)."""
    held = _ENCODED.get(id(group))
    if held is not None and held[0] is group:
        return held[1]
    if len(_ENCODED) >= ENCODED_KEPT:
        _ENCODED.clear()
    data = b"".join(encode_bucket(b) for b in group.buckets)
    _ENCODED[id(group)] = (group, data)
    return data


def encode_group_mod(group: Group, command: int, xid: int, bundle_id: int | None = None) -> bytes:
    """OFPT_GROUP_MOD (a delete carries no buckets), wrapped in OFPT_BUNDLE_ADD_MESSAGE
    when `bundle_id` is given (inner and outer xid equal)."""
    buckets = b"" if command == OFPGC_DELETE else _buckets(group)
    length = _GROUP_MOD.size + len(buckets)
    inner = _GROUP_MOD.pack(
        ofwire.OFP_VERSION, OFPT_GROUP_MOD, length, xid, command, group.type, group.group_id
    ) + buckets
    if bundle_id is None:
        return inner
    return _BUNDLE_ADD.pack(
        ofwire.OFP_VERSION, ofwire.OFPT_BUNDLE_ADD_MESSAGE, _BUNDLE_ADD.size + length, xid,
        bundle_id, 0, ofwire.OFPBF_ATOMIC,
    ) + inner  # fmt: skip


def encode_group_desc_request(xid: int) -> bytes:
    """All groups with their buckets (OpenFlow 1.4 always asks for all)."""
    return struct.pack(
        "!BBHIHH4x", ofwire.OFP_VERSION, ofwire.OFPT_MULTIPART_REQUEST, 16, xid,
        OFPMP_GROUP_DESC, 0,
    )  # fmt: skip


def _decode_bucket(body: bytes) -> Bucket:
    length, weight, watch_port, watch_group = _BUCKET.unpack_from(body)
    actions = ofwire.decode_instructions(
        struct.pack("!HH4x", ofwire.OFPIT_APPLY_ACTIONS, length - _BUCKET.size + 8)
        + bytes(body[_BUCKET.size : length])
    )
    if (watch_port, watch_group) != (ofwire.OFPP_ANY, ofwire.OFPG_ANY):  # vxflow watches none
        actions += (("unknown_watch", watch_port, watch_group),)
    return Bucket(weight, actions)


def decode_group_desc(body: bytes) -> Iterator[Group]:
    """Entries of one OFPMP_GROUP_DESC reply body (after the multipart header)."""
    pos = 0
    while pos + _GROUP_DESC.size <= len(body):
        length, gtype, group_id = _GROUP_DESC.unpack_from(body, pos)
        buckets, bpos = [], pos + _GROUP_DESC.size
        while bpos + _BUCKET.size <= pos + length:
            (blen,) = struct.unpack_from("!H", body, bpos)
            if blen < _BUCKET.size:
                break
            buckets.append(_decode_bucket(bytes(body[bpos : bpos + blen])))
            bpos += blen
        yield Group(group_id, tuple(buckets), gtype)
        pos += max(length, _GROUP_DESC.size)


def group_desc_entry(group: Group) -> bytes:
    """An ofp_group_desc as a switch reports `group` (for tests and the stand-in switch)."""
    buckets = b"".join(encode_bucket(b) for b in group.buckets)
    return _GROUP_DESC.pack(_GROUP_DESC.size + len(buckets), group.type, group.group_id) + buckets


def _prop(ptype: int, value: bytes) -> bytes:
    """An OpenFlow property: type, length (without padding), value, padded to 8 bytes."""
    raw = struct.pack("!HH", ptype, 4 + len(value)) + value
    return raw + b"\0" * (-len(raw) % 8)


def _mapped(ip: IPv4Address | IPv6Address) -> bytes:
    """An IPv6 address as is, an IPv4 one mapped into IPv6, as OVS wants."""
    return ip.packed if ip.version == 6 else b"\0" * 10 + b"\xff\xff" + ip.packed


def _tuple(ptype: int, ip: IPv4Address | IPv6Address, port: int, ip_tlv: int, port_tlv: int) -> bytes:
    """A nested tuple property (aligned to 8 bytes before its content, as OVS nests)."""
    inner = _prop(ip_tlv, _mapped(ip)) + _prop(port_tlv, struct.pack("!H", port))
    return struct.pack("!HH4x", ptype, 8 + len(inner)) + inner


def encode_ct_flush(zone: int, flush: Flush, xid: int) -> bytes:
    """NXT_CT_FLUSH of the entries in `zone` of one service port's connections that a
    backend answers: original destination VIP:port, reply source backend:target_port."""
    body = struct.pack("!IIB7x", ofwire.NX_VENDOR_ID, NXT_CT_FLUSH, flush.ip_proto)
    body += _tuple(NXT_CT_ORIG_TUPLE, flush.vip, flush.port, NXT_CT_TUPLE_DST, NXT_CT_TUPLE_DST_PORT)
    body += _tuple(NXT_CT_REPLY_TUPLE, flush.backend, flush.target_port, NXT_CT_TUPLE_SRC,
                   NXT_CT_TUPLE_SRC_PORT)  # fmt: skip
    body += _prop(NXT_CT_ZONE_ID, struct.pack("!H", zone))
    return struct.pack("!BBHI", ofwire.OFP_VERSION, OFPT_EXPERIMENTER, 8 + len(body), xid) + body


def encode_group_mods(
    groups: Iterable[Group], command: int, first_xid: int, bundle_id: int | None
) -> bytes:
    return b"".join(
        encode_group_mod(g, command, first_xid + i, bundle_id) for i, g in enumerate(groups)
    )
