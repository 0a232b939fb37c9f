"""OpenFlow 1.4 wire format for `flows.flow.Flow`: fast encoding and read-back decoding.

os-ken's generic path (build an OFPFlowMod object graph, serialise it) costs
~62 µs per flow. A vxflow table has a handful of shapes, and most bytes of a
flow-mod are the same for every flow of a shape, so the pieces are encoded
once and cached: each match field and each action is packed on first use and
reused after; a flow-mod is one fixed-header pack plus joins. The result is
checked byte-for-byte against os-ken's own serialisation in the unit tests.

Decoding is the inverse, for flow-stats replies: what the switch holds becomes
plain Flow values again, so read-back and desired tables compare as sets.
Anything this module does not know (a field, an action, an instruction) is
decoded to an "unknown" value that never equals a desired flow, so a foreign
entry is replaced or deleted rather than trusted.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flows.compiler import FLOWS_PER_LEASE, RemoteRoutes
from flows.flow import Flow, Masked, Owner, Value, cookie_for

OFP_VERSION = 0x05  # OpenFlow 1.4: the first version with bundles
OFP_HEADER_SIZE = 8
OFPT_ERROR = 1
OFPT_ECHO_REQUEST = 2
OFPT_ECHO_REPLY = 3
OFPT_FLOW_MOD = 14
OFPT_MULTIPART_REQUEST = 18
OFPT_MULTIPART_REPLY = 19
OFPT_BARRIER_REQUEST = 20
OFPT_BARRIER_REPLY = 21
OFPT_ROLE_REQUEST = 24
OFPT_ROLE_REPLY = 25
OFPT_ROLE_STATUS = 30
OFPT_PACKET_IN = 10
OFPT_METER_MOD = 29
OFPMC_ADD, OFPMC_MODIFY = 0, 1
OFPMF_PKTPS, OFPMF_BURST, OFPMF_STATS = 2, 4, 8
OFPMBT_DROP = 1
OFPET_METER_MOD_FAILED = 12
OFPMMFC_METER_EXISTS = 1
OFPT_BUNDLE_CONTROL = 33
OFPT_BUNDLE_ADD_MESSAGE = 34

OFPFC_ADD = 0
OFPFC_DELETE_STRICT = 4
OFPMP_FLOW = 1
OFPMPF_REPLY_MORE = 1
OFPBCT_OPEN_REQUEST = 0
OFPBCT_COMMIT_REQUEST = 4
OFPBCT_DISCARD_REQUEST = 6
OFPBF_ATOMIC = 1
OFP_NO_BUFFER = 0xFFFFFFFF
OFPP_ANY = 0xFFFFFFFF
OFPG_ANY = 0xFFFFFFFF
OFPTT_ALL = 0xFF

OFPIT_GOTO_TABLE = 1
OFPIT_APPLY_ACTIONS = 4
OFPIT_METER = 6
OFPAT_OUTPUT = 0
OFPP_CONTROLLER = 0xFFFFFFFD
OFPAT_GROUP = 22
OFPAT_DEC_NW_TTL = 24
OFPAT_SET_FIELD = 25
OFPAT_EXPERIMENTER = 0xFFFF
NX_VENDOR_ID = 0x00002320
NXAST_REG_MOVE = 6
NXAST_MULTIPATH = 10
NXAST_RESUBMIT_TABLE = 14
NXAST_LEARN = 16
NXAST_CONJUNCTION = 34
NXAST_CT = 35
NXAST_NAT = 36
NXAST_CT_CLEAR = 43
NX_CT_F_COMMIT = 1
NX_CT_RECIRC_NONE = 0xFF
NX_NAT_F_SRC, NX_NAT_F_DST = 1, 2
NX_NAT_RANGE_IPV4_MIN, NX_NAT_RANGE_IPV6_MIN, NX_NAT_RANGE_PROTO_MIN = 1, 4, 16
# multipath's hash fields and link algorithms (nicira-ext.h), by ovs-ofctl's names
NX_HASH_FIELDS = {"eth_src": 0, "symmetric_l4": 1, "symmetric_l3l4": 2, "symmetric_l3l4+udp": 3,
                  "nw_src": 4, "nw_dst": 5}  # fmt: skip
NX_MP_ALGORITHMS = {"modulo_n": 0, "hash_threshold": 1, "hrw": 2, "iter_hash": 3}
OFPP_IN_PORT16 = 0xFFF8
ETH_TYPE_IP_VALUE = 0x0800  # resubmit's in_port is a 16-bit (OpenFlow 1.0) port number
ETH_TYPE_IPV6_VALUE = 0x86DD
OFPCML_NO_BUFFER = 0xFFFF

OFB, NXM0, NXM1 = 0x8000, 0x0000, 0x0001
ERICSSON = 0x1000  # OVS's class of the ND extension fields (nd_reserved, nd_options_type)


@dataclass(frozen=True)
class _Field:
    name: str
    oxm_class: int
    oxm_field: int
    size: int
    kind: str  # "int", "mac", "ip" (IPv4) or "ip6"

    @property
    def order(self) -> int:
        """os-ken's ordering of OXM fields in a match (class << 7 | field)."""
        return (self.oxm_class << 7) | self.oxm_field

    def header(self, masked: bool = False) -> int:
        size = self.size * 2 if masked else self.size
        return (self.oxm_class << 16) | (self.oxm_field << 9) | (int(masked) << 8) | size


FIELDS = {
    f.name: f
    for f in (
        _Field("in_port", OFB, 0, 4, "int"),
        _Field("eth_dst", OFB, 3, 6, "mac"),
        _Field("eth_src", OFB, 4, 6, "mac"),
        _Field("eth_type", OFB, 5, 2, "int"),
        _Field("ip_src", OFB, 11, 4, "ip"),
        _Field("ip_dst", OFB, 12, 4, "ip"),
        _Field("ip_proto", OFB, 10, 1, "int"),
        _Field("tcp_src", OFB, 13, 2, "int"),
        _Field("tcp_dst", OFB, 14, 2, "int"),
        _Field("udp_src", OFB, 15, 2, "int"),
        _Field("udp_dst", OFB, 16, 2, "int"),
        _Field("arp_op", OFB, 21, 2, "int"),
        _Field("arp_spa", OFB, 22, 4, "ip"),
        _Field("arp_tpa", OFB, 23, 4, "ip"),
        _Field("arp_sha", OFB, 24, 6, "mac"),
        _Field("arp_tha", OFB, 25, 6, "mac"),
        _Field("tun_id", OFB, 38, 8, "int"),
        _Field("reg0", NXM1, 0, 4, "int"),
        _Field("reg1", NXM1, 1, 4, "int"),
        _Field("reg2", NXM1, 2, 4, "int"),
        _Field("reg3", NXM1, 3, 4, "int"),
        _Field("reg4", NXM1, 4, 4, "int"),
        _Field("reg5", NXM1, 5, 4, "int"),
        _Field("conj_id", NXM1, 37, 4, "int"),
        _Field("tun_src", NXM1, 31, 4, "ip"),
        _Field("tun_dst", NXM1, 32, 4, "ip"),
        _Field("ct_state", NXM1, 105, 4, "int"),
        _Field("ipv6_src", OFB, 26, 16, "ip6"),
        _Field("ipv6_dst", OFB, 27, 16, "ip6"),
        _Field("icmpv6_type", OFB, 29, 1, "int"),
        _Field("icmpv6_code", OFB, 30, 1, "int"),
        _Field("nd_target", OFB, 31, 16, "ip6"),
        _Field("nd_sll", OFB, 32, 6, "mac"),
        _Field("nd_tll", OFB, 33, 6, "mac"),
        _Field("tun_ipv6_src", NXM1, 109, 16, "ip6"),
        _Field("tun_ipv6_dst", NXM1, 110, 16, "ip6"),
        _Field("nd_reserved", ERICSSON, 1, 4, "int"),
        _Field("nd_options_type", ERICSSON, 2, 1, "int"),
    )
}
# Read-back may name a field by its older NXM header instead of the OXM one.
_BY_HEADER: dict[tuple[int, int], _Field] = {(f.oxm_class, f.oxm_field): f for f in FIELDS.values()}
_BY_HEADER.update(
    {
        (NXM0, 1): FIELDS["eth_dst"],
        (NXM0, 2): FIELDS["eth_src"],
        (NXM0, 3): FIELDS["eth_type"],
        (NXM0, 15): FIELDS["arp_op"],
        (NXM0, 16): FIELDS["arp_spa"],
        (NXM0, 17): FIELDS["arp_tpa"],
        (NXM1, 17): FIELDS["arp_sha"],
        (NXM1, 18): FIELDS["arp_tha"],
        (NXM1, 16): FIELDS["tun_id"],
        (NXM0, 6): FIELDS["ip_proto"],
        (NXM0, 7): FIELDS["ip_src"],
        (NXM0, 8): FIELDS["ip_dst"],
        (NXM0, 9): FIELDS["tcp_src"],
        (NXM0, 10): FIELDS["tcp_dst"],
        (NXM0, 11): FIELDS["udp_src"],
        (NXM0, 12): FIELDS["udp_dst"],
        (NXM1, 19): FIELDS["ipv6_src"],
        (NXM1, 20): FIELDS["ipv6_dst"],
        (NXM1, 21): FIELDS["icmpv6_type"],
        (NXM1, 22): FIELDS["icmpv6_code"],
        (NXM1, 23): FIELDS["nd_target"],
        (NXM1, 24): FIELDS["nd_sll"],
        (NXM1, 25): FIELDS["nd_tll"],
    }
)
# learn's flow specs name fields by their NXM headers (OVS writes them back so)
_NXM_HEADER = {
    "eth_type": 0x00000602, "ip_proto": 0x00000C01, "ip_src": 0x00000E04,
    "ip_dst": 0x00001004, "tcp_src": 0x00001202, "tcp_dst": 0x00001402,
    "udp_src": 0x00001602, "udp_dst": 0x00001802, "reg1": 0x00010204,
    "ipv6_src": 0x00012610, "ipv6_dst": 0x00012810,
}  # fmt: skip
# a learned entry's address fields and their width, by its eth_type
_LEARN_IP = {ETH_TYPE_IP_VALUE: ("ip_src", "ip_dst", 32),
             ETH_TYPE_IPV6_VALUE: ("ipv6_src", "ipv6_dst", 128)}  # fmt: skip

_HEADER = struct.Struct("!BBHI")
_FLOW_MOD = struct.Struct("!BBHIQQBBHHHIIIHH")  # header + ofp_flow_mod up to the match
_BUNDLE_ADD = struct.Struct("!BBHIIHH")  # header, bundle_id, pad, flags
_BUNDLE_CTRL = struct.Struct("!BBHIIHH")  # header, bundle_id, type, flags
_FLOW_STATS = struct.Struct("!HBxIIHHHHH2xQQQ")
_ROLE = struct.Struct("!BBHII4xQ")  # header, role, pad (a status: reason, pad), generation_id
_MULTIPART = struct.Struct("!HH4x")  # after the header: type, flags, pad
_ERROR = struct.Struct("!HH")  # after the header: type, code
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


def pad8(n: int) -> int:
    """`n` bytes rounded up to OpenFlow's 8-byte alignment (a match, an action, an
    instruction are padded so)."""
    return (n + 7) // 8 * 8


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


class _Layout:
    """Builds one struct format for a whole message and the Python expressions of its
    arguments: constants inline, per-flow values read from `f`, `m` (match), `a` (actions)."""

    def __init__(self) -> None:
        self.fmt: list[str] = []
        self.args: list[str] = []
        self.size = 0

    def put(self, code: str, *args: object) -> None:
        self.fmt.append(code)
        self.args += [str(a) for a in args]
        self.size = struct.calcsize("!" + "".join(self.fmt))

    def pad(self) -> None:
        if self.size % 8:
            self.put(f"{8 - self.size % 8}x")

    def value(self, field: _Field, expr: str, masked: bool) -> None:
        """An OXM TLV whose value is `expr` (masked: an IPv4Network, or a Masked int)."""
        self.put("I", field.header(masked))
        if masked and field.kind == "ip":
            self.put("II", f"int({expr}.network_address)", f"int({expr}.netmask)")
        elif masked and field.kind == "ip6":
            self.put("16s16s", f"{expr}.network_address.packed", f"{expr}.netmask.packed")
        elif masked:
            code = _CODES[field.size]
            self.put(code * 2, f"{expr}.value", f"{expr}.mask")
        elif field.kind == "mac":
            self.put("6s", f"_mac({expr})")
        elif field.kind == "ip":
            self.put("I", f"int({expr})")
        elif field.kind == "ip6":
            self.put("16s", f"{expr}.packed")
        else:
            self.put(_CODES[field.size], expr)


def _shape(flow: Flow, command: int) -> tuple:
    """What fixes a flow-mod's layout: everything but the values."""
    return (
        command,
        flow.table,
        flow.priority,
        tuple([(name, type(value)) for name, value in flow.match]),
        actions_shape(flow.actions),
    )


def actions_shape(actions: tuple) -> tuple:
    """What fixes the layout of these actions: everything but their values."""
    return tuple([a[:-1] if a[0] in _VALUE_LAST else _SHAPES.get(a[0], _same)(a) for a in actions])


def _same(action: tuple) -> tuple:
    return action


def _nat_shape(nat: tuple | None) -> tuple | None:
    return nat if not nat else (nat[0], nat[1] and nat[1].version, bool(nat[2]))


# What of an action fixes the layout: its values are read per flow (`a[j][k]`), so one
# template serves every flow of a shape (one per service port, one per backend, ...).
_VALUE_LAST = ("set_field", "output", "group", "resubmit", "controller")
_SHAPES = {
    "ct": lambda a: (*a[:4], _nat_shape(a[4])),
    "learn": lambda a: ("learn", a[5], a[6], a[8]),
    "multipath": lambda a: ("multipath", a[1], a[3], a[5]),
    "conjunction": lambda a: ("conjunction",),
}


def _instructions(lay: _Layout, actions: tuple) -> None:
    """Meter (if any), apply-actions (if any) then goto-table (if any), as OVS reports them
    back. (A meter's id is part of the shape: a constant of the template.)"""
    goto = actions[-1][1] if actions and actions[-1][0] == "goto_table" else None
    first = 1 if actions and actions[0][0] == "meter" else 0
    if first:
        lay.put("HHI", OFPIT_METER, 8, actions[0][1])
    applied = actions[first : -1 if goto is not None else None]
    if applied:
        start = len(lay.args)
        lay.put("HH4x", OFPIT_APPLY_ACTIONS, "{apply_len}")
        begin = lay.size
        action_layout(lay, applied, "a", first)
        lay.args[start + 1] = str(lay.size - begin + 8)
    if goto is not None:
        lay.put("HHB3x", OFPIT_GOTO_TABLE, 8, goto)


def action_layout(lay: _Layout, actions: tuple, base: str, first: int = 0) -> None:
    """The actions, each one's values read from the expression `base[first + j]`."""
    for j, action in enumerate(actions, first):
        kind, a = action[0], f"{base}[{j}]"
        if kind == "output":
            lay.put("HHIH6x", OFPAT_OUTPUT, 16, f"{a}[1]", OFPCML_NO_BUFFER)
        elif kind == "controller":
            lay.put("HHIH6x", OFPAT_OUTPUT, 16, OFPP_CONTROLLER, f"{a}[1]")
        elif kind == "set_field":
            field = FIELDS[action[1]]
            lay.put("HH", OFPAT_SET_FIELD, pad8(8 + field.size))
            lay.value(field, f"{a}[2]", masked=False)
            lay.pad()
        elif kind == "dec_ttl":
            lay.put("HH4x", OFPAT_DEC_NW_TTL, 8)
        elif kind == "move":
            src, dst = FIELDS[action[1]], FIELDS[action[2]]
            if src.size != dst.size:
                raise ValueError(f"move between fields of different widths: {action}")
            lay.put("HHIHHHHII", OFPAT_EXPERIMENTER, 24, NX_VENDOR_ID, NXAST_REG_MOVE,
                    src.size * 8, 0, 0, src.header(), dst.header())  # fmt: skip
        elif kind == "group":
            lay.put("HHI", OFPAT_GROUP, 8, f"{a}[1]")
        elif kind == "resubmit":
            lay.put("HHIHHB3x", OFPAT_EXPERIMENTER, 16, NX_VENDOR_ID, NXAST_RESUBMIT_TABLE,
                    OFPP_IN_PORT16, f"{a}[1]")  # fmt: skip
        elif kind == "ct":
            _ct_layout(lay, action, a)
        elif kind == "learn":
            _learn_layout(lay, action, a)
        elif kind == "multipath":
            dst = FIELDS[action[5]]
            lay.put("HHIHHH2xHHI2xHI", OFPAT_EXPERIMENTER, 32, NX_VENDOR_ID, NXAST_MULTIPATH,
                    NX_HASH_FIELDS[action[1]], f"{a}[2]", NX_MP_ALGORITHMS[action[3]],
                    f"{a}[4] - 1", 0, dst.size * 8 - 1, dst.header())  # fmt: skip
        elif kind == "conjunction":  # the wire counts clauses from 0
            lay.put("HHIHBBI", OFPAT_EXPERIMENTER, 16, NX_VENDOR_ID, NXAST_CONJUNCTION,
                    f"{a}[2] - 1", f"{a}[3]", f"{a}[1]")  # fmt: skip
        elif kind == "ct_clear":
            lay.put("HHIH6x", OFPAT_EXPERIMENTER, 16, NX_VENDOR_ID, NXAST_CT_CLEAR)
        else:
            raise ValueError(f"cannot encode action {action!r}")


def _ct_layout(lay: _Layout, action: tuple, a: str) -> None:
    """NXAST_CT with an immediate zone, and NXAST_NAT nested when it has one."""
    _, commit, _zone, table, nat = action
    start = len(lay.args)
    lay.put("HHIHHIHB3xH", OFPAT_EXPERIMENTER, "{ct_len}", NX_VENDOR_ID, NXAST_CT,
            NX_CT_F_COMMIT if commit else 0, 0, f"{a}[2]",
            NX_CT_RECIRC_NONE if table is None else f"{a}[3]", 0)  # fmt: skip
    begin = lay.size - 24
    if nat is not None:
        present = 0
        flags = {"src": NX_NAT_F_SRC, "dst": NX_NAT_F_DST}[nat[0]] if nat else 0
        codes, args = "", []
        if nat and nat[1] is not None and nat[1].version == 6:
            present |= NX_NAT_RANGE_IPV6_MIN
            codes, args = codes + "16s", [*args, f"{a}[4][1].packed"]
        elif nat and nat[1] is not None:
            present |= NX_NAT_RANGE_IPV4_MIN
            codes, args = codes + "I", [*args, f"int({a}[4][1])"]
        if nat and nat[2]:
            present |= NX_NAT_RANGE_PROTO_MIN
            codes, args = codes + "H", [*args, f"{a}[4][2]"]
        size = pad8(16 + struct.calcsize("!" + codes) if codes else 16)
        lay.put("HHIH2xHH" + codes, OFPAT_EXPERIMENTER, size, NX_VENDOR_ID, NXAST_NAT,
                flags, present, *args)  # fmt: skip
        lay.pad()
    lay.args[start + 1] = str(lay.size - begin)


def _learn_layout(lay: _Layout, action: tuple, a: str) -> None:
    """NXAST_LEARN of vxflow's one learned shape (flows.flow.learn): match eth_type and
    ip_proto, copy the source and destination address and the port field, load the value
    into reg1."""
    _, _table, _idle, _prio, _cookie, _proto, port_field, _value, eth_type = action
    ip_src, ip_dst, ip_bits = _LEARN_IP[eth_type]
    port_bits = FIELDS[port_field].size * 8
    start = len(lay.args)
    lay.put("HHIHHHHQHB1xHH", OFPAT_EXPERIMENTER, "{learn_len}", NX_VENDOR_ID, NXAST_LEARN,
            f"{a}[2]", 0, f"{a}[3]", f"{a}[4]", 0, f"{a}[1]", 0, 0)  # fmt: skip
    begin = lay.size - 32
    imm, copy = 1 << 13, 0  # src: immediate or field; dst: match (0) or load (1 << 11)
    lay.put("HHIH", imm | 16, eth_type, _NXM_HEADER["eth_type"], 0)
    lay.put("HHIH", imm | 8, f"{a}[5]", _NXM_HEADER["ip_proto"], 0)
    for name, bits in ((ip_src, ip_bits), (ip_dst, ip_bits), (port_field, port_bits)):
        lay.put("HIHIH", copy | bits, _NXM_HEADER[name], 0, _NXM_HEADER[name], 0)
    lay.put("HIIH", imm | 1 << 11 | 32, f"{a}[7]", _NXM_HEADER["reg1"], 0)
    lay.pad()
    lay.args[start + 1] = str(lay.size - begin)


def _layout(flow: Flow, command: int, bundled: bool) -> tuple[list[str], list[str]]:
    """The struct codes of a flow-mod of `flow`'s shape and the argument expressions
    (constants, `xid`, `bundle_id`, or values read from `f`, `m` = f.match, `a` = f.actions)."""
    lay = _Layout()
    if bundled:
        lay.put("BBHIIHH", OFP_VERSION, OFPT_BUNDLE_ADD_MESSAGE, "{outer_len}", "xid",
                "bundle_id", 0, OFPBF_ATOMIC)
    inner = lay.size
    lay.put("BBHIQQBBHHHIIIHH", OFP_VERSION, OFPT_FLOW_MOD, "{inner_len}", "xid", "f.cookie",
            0, flow.table, command, 0, 0, flow.priority,
            OFP_NO_BUFFER, OFPP_ANY, OFPG_ANY, 0, 0)
    match_start = lay.size
    lay.put("HH", 1, "{match_len}")
    order = sorted(range(len(flow.match)), key=lambda i: FIELDS[flow.match[i][0]].order)
    for i in order:
        name, value = flow.match[i]
        masked = isinstance(value, IPv4Network | IPv6Network | Masked)
        lay.value(FIELDS[name], f"m[{i}][1]", masked=masked)
    match_len = lay.size - match_start
    lay.pad()
    if command == OFPFC_ADD:
        _instructions(lay, flow.actions)
    lengths = {"outer_len": lay.size, "inner_len": lay.size - inner, "match_len": match_len}
    return lay.fmt, [a.format(**lengths) if a.startswith("{") else a for a in lay.args]


def _compile_template(flow: Flow, command: int, bundled: bool):
    """Generate `pack(f, xid, bundle_id) -> bytes` for every flow of `flow`'s shape.

    The message is one struct.pack of constants and value expressions; the
    source is generated once per shape (a handful per table), as dataclasses
    and namedtuple do for their methods.
    """
    fmt, args = _layout(flow, command, bundled)
    return compile_packer("f, xid, bundle_id", "m = f.match; a = f.actions", fmt, args)


def compile_packer(params: str, prelude: str, fmt: list[str], args: list[str]):
    """`def pack(<params>): <prelude>; return struct.pack(fmt, *args)`, generated once."""
    source = f"def pack({params}):\n    {prelude}\n    return _pack({', '.join(args)})\n"
    namespace = {"_pack": struct.Struct("!" + "".join(fmt)).pack, "_mac": mac_bytes}
    exec(source, namespace)
    return namespace["pack"]


_TEMPLATES: dict[tuple, object] = {}


def _template(flow: Flow, command: int, bundled: bool):
    key = (bundled, *_shape(flow, command))
    pack = _TEMPLATES.get(key)
    if pack is None:
        pack = _TEMPLATES[key] = _compile_template(flow, command, bundled)
    return pack


def encode_flow_mod(flow: Flow, command: int, xid: int) -> bytes:
    """One OFPT_FLOW_MOD. A delete (strict) names the entry by its key alone: cookie mask 0.

    With an exact cookie OVS scans every flow sharing that cookie for each
    delete (its cookie index), which is quadratic for a burst of foreign flows
    of cookie 0: 1,364 deletes among 60,000 such flows took 4 s, by key 0.05 s.
    """
    return _template(flow, command, False)(flow, xid, 0)


def encode_bundle_add(bundle_id: int, flow: Flow, command: int, xid: int) -> bytes:
    """The flow-mod wrapped in OFPT_BUNDLE_ADD_MESSAGE (inner and outer xid equal)."""
    return _template(flow, command, True)(flow, xid, bundle_id)


def encode_bundle_adds(bundle_id: int, flows: Iterable[Flow], command: int, first_xid: int,
                       shared: bool = False) -> bytes:  # fmt: skip
    """Many bundle adds in one buffer, xids counting up from `first_xid`: the hot path.

    `shared`: the flows are likely encoded for other switches too (a change fanned out to
    every switch: a new policy's rule is the same flows on each), so each is encoded once
    and kept (in SHARED, up to SHARED_MAX of them), and this encoding is that one with its
    xids and bundle id."""
    templates = _TEMPLATES
    out: list[bytes | bytearray] = []
    xid = first_xid
    if shared and len(_SHARED) > SHARED_MAX:
        _SHARED.clear()
    for f in flows:
        if shared:
            held = _SHARED.get((command, f))
            if held is None:
                held = _SHARED[command, f] = _template(f, command, True)(f, 0, 0)
            msg = bytearray(held)
            _IDS.pack_into(msg, 4, xid, bundle_id)
            _XID.pack_into(msg, 20, xid)  # (the flow-mod's own, inside)
            out.append(msg)
        else:
            pack = templates.get((True, *_shape(f, command))) or _template(f, command, True)
            out.append(pack(f, xid, bundle_id))
        xid += 1
    return b"".join(out)


# bundle adds encoded for `encode_bundle_adds(shared=True)`, by (command, flow), with xid and
# bundle id 0: where those are in the message, the outer xid and the bundle id, and the
# inner xid
_SHARED: dict[tuple[int, Flow], bytes] = {}
SHARED_MAX = 8192
_IDS = struct.Struct("!II")
_XID = struct.Struct("!I")


_CODE = re.compile(r"(\d*)([a-zA-Z])")


def _row_layout(
    sample: Flow, bundled: bool, per_lease: dict[str, str], codes: list[str], exprs: list[str],
    consts: list[bytes],
) -> None:
    """Append the add (bundled or bare) of `sample`'s shape, split into what differs
    per row (`per_lease`: layout argument -> expression of the row or of the call) and
    what all flows of that shape share, packed once into constant runs `_c0`, `_c1`, ...
    (equivalence tests hold the result to encode_bundle_adds and encode_flow_mod)."""
    fmt, args = _layout(sample, OFPFC_ADD, bundled=bundled)
    env = {"f": sample, "m": sample.match, "a": sample.actions, "_mac": mac_bytes}
    run = b""
    seen: set[str] = set()
    pending = iter(args)

    def flush() -> None:
        nonlocal run
        if run:
            codes.append(f"{len(run)}s")
            exprs.append(f"_c{len(consts)}")
            consts.append(run)
            run = b""

    for part in fmt:
        for count, code in _CODE.findall(part):
            singles = [count + code] if code in "xs" else [code] * int(count or 1)
            for single in singles:
                arg = None if code == "x" else next(pending)
                if arg in per_lease:
                    seen.add(arg)
                    flush()
                    codes.append(single)
                    exprs.append(per_lease[arg])
                else:
                    values = () if arg is None else (eval(arg, env),)  # our layout's own text
                    run += struct.pack("!" + single, *values)
    flush()
    missing = set(per_lease) - seen
    if missing:
        raise ValueError(f"remote-lease flow shape changed: {missing} not in the layout")


def _routes_layout(route: Flow, ingress: Flow, bundled: bool, six: bool, codes: list[str],
                   exprs: list[str], consts: list[bytes]) -> None:  # fmt: skip
    """Append the adds (bundled or bare) of one remote lease's two flows
    (`remote_lease_flows`) as one struct: per lease, the subnet `s` (cookie, ip_dst /
    ip_src), the PublicIP `p` (tun_dst / tun_src) and the VtepMAC octets `mac` (eth_dst);
    per switch, its own VtepMAC octets `own` (eth_src); plus the xids. The rest is fixed
    by the network config, so one packer serves every switch. `six`: the lease's IPv6
    route and check (`lease_v6_flows`), sent right after its IPv4 two (xids + 2 and + 3),
    from its row6 (flows.compiler.route_row6) `s6`, `p6`, `mac6` and the switch's `own6`
    (the cookie still from `s`)."""
    if six:
        dst, tun_dst, src, tun_src = "ipv6_dst", "tun_ipv6_dst", "ipv6_src", "tun_ipv6_src"
        net, addr, first = "{}.network_address.packed", "{}.packed", 2
    else:
        dst, tun_dst, src, tun_src = "ip_dst", "tun_dst", "ip_src", "tun_src"
        net, addr, first = "int({}.network_address)", "int({})", 0
    s, p, mac, own = (f"{name}6" if six else name for name in ("s", "p", "mac", "own"))
    head = {"xid": f"xid + {first}" if first else "xid", "f.cookie": f"{cookie_for(Owner.LEASE)} | s"}
    if bundled:
        head["bundle_id"] = "bundle_id"
    names = [name for name, _ in route.match]
    sets = {a[1]: j for j, a in enumerate(route.actions) if a[0] == "set_field"}
    _row_layout(route, bundled, {
        **head,
        net.format(f"m[{names.index(dst)}][1]"): s,
        addr.format(f"a[{sets[tun_dst]}][2]"): p,
        f"_mac(a[{sets['eth_dst']}][2])": mac,
        f"_mac(a[{sets['eth_src']}][2])": own,
    }, codes, exprs, consts)  # fmt: skip
    names = [name for name, _ in ingress.match]
    _row_layout(ingress, bundled, {
        **head,
        "xid": f"xid + {first + 1}",
        net.format(f"m[{names.index(src)}][1]"): s,
        addr.format(f"m[{names.index(tun_src)}][1]"): p,
    }, codes, exprs, consts)  # fmt: skip


def _route_packer(v4: Flow, v6: tuple[Flow, Flow] | None, bundled: bool):
    """Generate `pack_rows(items, xid, bundle_id, own, own6) -> bytes` for the routes of
    any switch: `items` are rows, or with `v6` (a sample lease's IPv6 flows) (row, row6)
    pairs whose row6 may be None (RemoteRoutes.items)."""
    codes: list[str] = []
    exprs: list[str] = []
    consts: list[bytes] = []
    _routes_layout(*v4, bundled, False, codes, exprs, consts)
    pack = f"        append(_pack({', '.join(exprs)}))\n"
    if v6 is None:
        loop = "    for s, p, mac in items:\n" + pack + f"        xid += {FLOWS_PER_LEASE}\n"
    else:
        codes6: list[str] = []
        exprs6: list[str] = []
        _routes_layout(*v6, bundled, True, codes6, exprs6, consts)
        loop = (
            "    for (s, p, mac), six in items:\n" + pack
            + "        if six is None:\n"
            + f"            xid += {FLOWS_PER_LEASE}\n"
            + "            continue\n"
            + "        s6, p6, mac6 = six\n"
            + f"        append(_pack6({', '.join(exprs6)}))\n"
            + f"        xid += {2 * FLOWS_PER_LEASE}\n"
        )  # fmt: skip
    source = (
        "def pack_rows(items, xid, bundle_id, own, own6):\n"
        "    out = []\n"
        "    append = out.append\n" + loop + "    return b''.join(out)\n"
    )
    namespace: dict[str, object] = {f"_c{i}": c for i, c in enumerate(consts)}
    namespace["_pack"] = struct.Struct("!" + "".join(codes)).pack
    if v6 is not None:
        namespace["_pack6"] = struct.Struct("!" + "".join(codes6)).pack
    exec(source, namespace)
    return namespace["pack_rows"]


# (bundled, with IPv6 halves, id of the network config) -> (that config, its packer)
_ROUTE_PACKERS: dict[tuple[bool, bool, int], tuple[object, Callable]] = {}


def route_encoder(routes: RemoteRoutes, bundled: bool = True) -> Callable[..., bytes]:
    """`encode(items, first_xid, bundle_id=0)`: adds of the remote-lease flows of some or
    all of `routes.items()` (in RemoteRoutes' order, `routes.count(items)` messages),
    bundle adds or bare flow-mods, xids counting up from `first_xid`. The hot path of a
    cold sync and of a lease event, byte-identical to encode_bundle_adds (bundled) or
    encode_flow_mod (bare) of the same flows. The packer is made once per network
    config (what differs between two switches' routes is the eth_src alone) and found
    by the config object's identity: a lease event asks once per switch."""
    if not routes:
        return lambda items, first_xid, bundle_id=0: b""
    six = next((i for i, row6 in enumerate(routes.rows6) if row6 is not None), None)
    key = (bundled, six is not None, id(routes.config))
    found = _ROUTE_PACKERS.get(key)
    if found is None or found[0] is not routes.config:
        if len(_ROUTE_PACKERS) >= 16:  # configs come and go (rarely): keep the newest
            _ROUTE_PACKERS.clear()
        if six is None:
            v4, v6 = routes.lease_flows(0), None
        else:
            v4, v6 = routes.lease_flows(six)[:FLOWS_PER_LEASE], routes.lease_flows(six)[FLOWS_PER_LEASE:]
        found = _ROUTE_PACKERS[key] = routes.config, _route_packer(v4, v6, bundled)
    pack, own = found[1], _mac_octets(routes.own_mac)
    own6 = _mac_octets(routes.own.vtep_mac_v6) if six is not None else b""
    if six is None and routes.rows6:  # no half among them: the IPv4 packer takes rows
        return lambda items, first_xid, bundle_id=0: pack([r for r, _ in items], first_xid,
                                                          bundle_id, own, own6)  # fmt: skip
    return lambda items, first_xid, bundle_id=0: pack(items, first_xid, bundle_id, own, own6)


@lru_cache(maxsize=1 << 16)
def _mac_octets(mac: str) -> bytes:
    """`mac_bytes`, kept: a switch's own MACs are asked for once per switch per lease event,
    where parsing them again costs more than packing."""
    return mac_bytes(mac)


def encode_bundle_control(bundle_id: int, ctrl_type: int, xid: int) -> bytes:
    return _BUNDLE_CTRL.pack(
        OFP_VERSION, OFPT_BUNDLE_CONTROL, 16, xid, bundle_id, ctrl_type, OFPBF_ATOMIC
    )


def encode_barrier(xid: int) -> bytes:
    return _HEADER.pack(OFP_VERSION, OFPT_BARRIER_REQUEST, 8, xid)


def encode_meter_mod(command: int, meter_id: int, rate: int, burst: int, xid: int) -> bytes:
    """OFPT_METER_MOD of a packets/s meter with one drop band: past `rate` packets a second
    (and a burst of `burst`), what passes it is dropped."""
    return struct.pack("!BBHIHHIHHII4x", OFP_VERSION, OFPT_METER_MOD, 32, xid, command,
                       OFPMF_PKTPS | OFPMF_BURST | OFPMF_STATS, meter_id, OFPMBT_DROP, 16, rate,
                       burst)  # fmt: skip


def encode_echo_request(xid: int) -> bytes:
    return _HEADER.pack(OFP_VERSION, OFPT_ECHO_REQUEST, 8, xid)


def encode_role_request(role: int, generation_id: int, xid: int) -> bytes:
    """OFPT_ROLE_REQUEST (OFPCR_ROLE_*, generation_id as an unsigned 64-bit number)."""
    return _ROLE.pack(OFP_VERSION, OFPT_ROLE_REQUEST, _ROLE.size, xid, role, generation_id)


def encode_flow_stats_request(xid: int) -> bytes:
    """All flows of all tables."""
    body = struct.pack(
        "!HH4xB3xII4xQQHH4x", OFPMP_FLOW, 0, OFPTT_ALL, OFPP_ANY, OFPG_ANY, 0, 0, 1, 4
    )
    return _HEADER.pack(OFP_VERSION, OFPT_MULTIPART_REQUEST, 8 + len(body), xid) + body


# -- decoding ---------------------------------------------------------------


def _decode_value(field: _Field, raw: bytes) -> Value:
    if field.kind == "mac":
        return raw.hex(":")
    if field.kind == "ip":
        return IPv4Address(raw)
    if field.kind == "ip6":
        return IPv6Address(raw)
    return int.from_bytes(raw, "big")


def _decode_masked(field: _Field, raw: bytes, mask: bytes) -> Value | tuple:
    if field.kind in ("ip", "ip6"):
        width = 8 * field.size
        bits = int.from_bytes(mask, "big")
        prefix = bin(bits).count("1")
        if bits == ((1 << width) - 1) ^ ((1 << (width - prefix)) - 1):
            network = IPv4Network if field.kind == "ip" else IPv6Network
            net = network((int.from_bytes(raw, "big"), prefix), strict=False)
            return net.network_address if prefix == width else net
    if field.kind == "int":  # ct_state's flags, a port range's block
        return Masked(int.from_bytes(raw, "big"), int.from_bytes(mask, "big"))
    return ("masked", raw.hex(), mask.hex())


@lru_cache(maxsize=1 << 18)
def decode_oxm_list(buf: bytes) -> tuple[tuple[str, object], ...]:
    """TLVs to (name, value) pairs, sorted by name like Flow.match."""
    out = []
    pos = 0
    while pos + 4 <= len(buf):
        (header,) = _U32.unpack_from(buf, pos)
        cls, fld, masked, size = (
            header >> 16,
            (header >> 9) & 0x7F,
            (header >> 8) & 1,
            header & 0xFF,
        )
        raw = buf[pos + 4 : pos + 4 + size]
        pos += 4 + size
        field = _BY_HEADER.get((cls, fld))
        if field is None or size != field.size * (2 if masked else 1):
            out.append((f"oxm_{cls:04x}_{fld}", raw.hex()))
        elif masked:
            out.append((field.name, _decode_masked(field, raw[: field.size], raw[field.size :])))
        else:
            out.append((field.name, _decode_value(field, raw)))
    return tuple(sorted(out, key=lambda kv: kv[0]))


def _decode_action(buf: bytes, pos: int, length: int) -> tuple:
    (atype,) = _U16.unpack_from(buf, pos)
    body = buf[pos : pos + length]
    if atype == OFPAT_OUTPUT:
        port, max_len = struct.unpack_from("!IH", body, 4)
        return ("controller", max_len) if port == OFPP_CONTROLLER else ("output", port)
    if atype == OFPAT_DEC_NW_TTL:
        return ("dec_ttl",)
    if atype == OFPAT_SET_FIELD:
        pairs = decode_oxm_list(_set_field_tlv(body))
        if len(pairs) == 1:
            return ("set_field", *pairs[0])
    if atype == OFPAT_GROUP and length == 8:
        return ("group", _U32.unpack_from(body, 4)[0])
    if atype == OFPAT_EXPERIMENTER and length >= 16:
        vendor, subtype = struct.unpack_from("!IH", body, 4)
        decode = _NX_ACTIONS.get(subtype) if vendor == NX_VENDOR_ID else None
        decoded = decode(body) if decode is not None else None
        if decoded is not None:
            return decoded
    return ("unknown_action", body.hex())


def _field_at(header: int) -> _Field | None:
    return _BY_HEADER.get((header >> 16, (header >> 9) & 0x7F))


def _decode_move(body: bytes) -> tuple | None:
    if len(body) != 24:
        return None
    n_bits, src_ofs, dst_ofs, src, dst = struct.unpack_from("!HHHII", body, 10)
    s, d = _field_at(src), _field_at(dst)
    if s and d and src_ofs == dst_ofs == 0 and n_bits == s.size * 8 == d.size * 8:
        return ("move", s.name, d.name)
    return None


def _decode_resubmit(body: bytes) -> tuple | None:
    in_port, table = struct.unpack_from("!HB", body, 10)
    return ("resubmit", table) if len(body) == 16 and in_port == OFPP_IN_PORT16 else None


def _decode_ct(body: bytes) -> tuple | None:
    """NXAST_CT with an immediate zone and at most a plain NXAST_NAT nested."""
    flags, zone_src, zone, table, alg = struct.unpack_from("!HIHB3xH", body, 10)
    if zone_src or alg or flags & ~NX_CT_F_COMMIT or len(body) < 24:
        return None
    nested, nat = body[24:], None
    if nested:
        length, vendor, subtype, nat_flags, present = struct.unpack_from("!2xHIH2xHH", nested)
        if (length, vendor, subtype) != (len(nested), NX_VENDOR_ID, NXAST_NAT) or (
            present & ~(NX_NAT_RANGE_IPV4_MIN | NX_NAT_RANGE_IPV6_MIN | NX_NAT_RANGE_PROTO_MIN)
        ) or (present & NX_NAT_RANGE_IPV4_MIN and present & NX_NAT_RANGE_IPV6_MIN):
            return None
        kind = {0: None, NX_NAT_F_SRC: "src", NX_NAT_F_DST: "dst"}.get(nat_flags, "?")
        pos, ip, port = 16, None, 0
        if present & NX_NAT_RANGE_IPV4_MIN:
            ip, pos = IPv4Address(nested[pos : pos + 4]), pos + 4
        if present & NX_NAT_RANGE_IPV6_MIN:
            ip, pos = IPv6Address(nested[pos : pos + 16]), pos + 16
        if present & NX_NAT_RANGE_PROTO_MIN:
            (port,) = _U16.unpack_from(nested, pos)
        if kind == "?" or (kind is None and present):
            return None
        nat = () if kind is None else (kind, ip, port)
    return ("ct", bool(flags & NX_CT_F_COMMIT), zone, None if table == NX_CT_RECIRC_NONE else table, nat)


def _decode_conjunction(body: bytes) -> tuple | None:
    clause, n_clauses, conj_id = struct.unpack_from("!BBI", body, 10)
    return ("conjunction", conj_id, clause + 1, n_clauses) if len(body) == 16 else None


def _decode_ct_clear(body: bytes) -> tuple | None:
    return ("ct_clear",) if len(body) == 16 else None


_LEARN_LEN = pad8(32 + 2 * 10 + 3 * 14 + 12)  # header, 2 immediate matches, 3 copies, 1 load
_LEARN_PORTS = {_NXM_HEADER[n]: n for n in ("tcp_src", "tcp_dst", "udp_src", "udp_dst")}


def _decode_learn(body: bytes) -> tuple | None:
    """vxflow's one learned shape (see `_learn_layout`); anything else is not ours."""
    idle, hard, prio, cookie, flags, table, fin_idle, fin_hard = struct.unpack_from(
        "!HHHQHB1xHH", body, 10
    )
    if hard or flags or fin_idle or fin_hard or len(body) != _LEARN_LEN:
        return None
    (
        h1, eth_type, d1, o1, h2, proto, d2, o2,
        h3, s3, so3, d3, o3, h4, s4, so4, d4, o4, h5, s5, so5, d5, o5, h6, value, d6, o6,
    ) = struct.unpack_from("!HHIH" "HHIH" "HIHIH" "HIHIH" "HIHIH" "HIIH", body, 32)  # fmt: skip
    port, (ip_src, ip_dst, bits) = _LEARN_PORTS.get(s5), _LEARN_IP.get(eth_type, ("", "", 0))
    expected = bits and (
        h1, d1, h2, d2, h3, s3, d3, h4, s4, d4, h5, d5, h6, d6,
    ) == (
        1 << 13 | 16, _NXM_HEADER["eth_type"], 1 << 13 | 8,
        _NXM_HEADER["ip_proto"], bits, _NXM_HEADER[ip_src], _NXM_HEADER[ip_src], bits,
        _NXM_HEADER[ip_dst], _NXM_HEADER[ip_dst], 16, s5, 1 << 13 | 1 << 11 | 32,
        _NXM_HEADER["reg1"],
    )  # fmt: skip
    if not expected or port is None or o1 or o2 or so3 or o3 or so4 or o4 or so5 or o5 or o6:
        return None
    return ("learn", table, idle, prio, cookie, proto, port, value, eth_type)


_HASH_FIELD_NAMES = {v: k for k, v in NX_HASH_FIELDS.items()}
_MP_ALGORITHM_NAMES = {v: k for k, v in NX_MP_ALGORITHMS.items()}


def _decode_multipath(body: bytes) -> tuple | None:
    """NXAST_MULTIPATH into a whole register with a zero argument (what vxflow writes)."""
    if len(body) != 32:
        return None
    fields, basis, algorithm, max_link, arg, ofs_nbits, dst = struct.unpack_from(
        "!HH2xHHI2xHI", body, 10
    )
    field = _field_at(dst)
    if (
        arg
        or field is None
        or dst != field.header()
        or ofs_nbits != field.size * 8 - 1
        or fields not in _HASH_FIELD_NAMES
        or algorithm not in _MP_ALGORITHM_NAMES
    ):
        return None
    return ("multipath", _HASH_FIELD_NAMES[fields], basis, _MP_ALGORITHM_NAMES[algorithm],
            max_link + 1, field.name)  # fmt: skip


_NX_ACTIONS = {
    NXAST_REG_MOVE: _decode_move,
    NXAST_MULTIPATH: _decode_multipath,
    NXAST_RESUBMIT_TABLE: _decode_resubmit,
    NXAST_CT: _decode_ct,
    NXAST_CONJUNCTION: _decode_conjunction,
    NXAST_CT_CLEAR: _decode_ct_clear,
    NXAST_LEARN: _decode_learn,
}


def _set_field_tlv(body: bytes) -> bytes:
    (header,) = _U32.unpack_from(body, 4)
    return body[4 : 8 + (header & 0xFF)]


@lru_cache(maxsize=1 << 17)
def decode_instructions(buf: bytes) -> tuple:
    meter: list[tuple] = []
    actions: list[tuple] = []
    goto: list[tuple] = []
    pos = 0
    while pos + 4 <= len(buf):
        itype, ilen = struct.unpack_from("!HH", buf, pos)
        if ilen < 4:
            break
        if itype == OFPIT_APPLY_ACTIONS:
            apos = pos + 8
            while apos + 4 <= pos + ilen:
                (alen,) = _U16.unpack_from(buf, apos + 2)
                if alen < 4:
                    break
                actions.append(_decode_action(buf, apos, alen))
                apos += alen
        elif itype == OFPIT_GOTO_TABLE:
            goto.append(("goto_table", buf[pos + 4]))
        elif itype == OFPIT_METER and ilen == 8:
            meter.append(("meter", _U32.unpack_from(buf, pos + 4)[0]))
        else:
            actions.append(("unknown_instruction", buf[pos : pos + ilen].hex()))
        pos += ilen
    return tuple(meter + actions + goto)


def decode_multipart_reply(msg: bytes) -> tuple[int, bool, bytes]:
    """(multipart type, whether more replies follow, body) of a whole OFPT_MULTIPART_REPLY."""
    kind, flags = _MULTIPART.unpack_from(msg, OFP_HEADER_SIZE)
    return kind, bool(flags & OFPMPF_REPLY_MORE), msg[OFP_HEADER_SIZE + _MULTIPART.size :]


def decode_role(msg: bytes) -> tuple[int, int]:
    """(role, generation_id) of a whole OFPT_ROLE_REPLY or OFPT_ROLE_STATUS (the status's
    reason sits in the reply's padding)."""
    *_, role, generation_id = _ROLE.unpack_from(msg)
    return role, generation_id


def decode_error(msg: bytes) -> tuple[int, int, bytes]:
    """(type, code, the start of the message it refused) of a whole OFPT_ERROR."""
    err_type, code = _ERROR.unpack_from(msg, OFP_HEADER_SIZE)
    return err_type, code, msg[OFP_HEADER_SIZE + _ERROR.size :]


_POLICY_DROP = cookie_for(Owner.POLICY_DROP) >> 32


def decode_flow_stats(body: bytes, drops: dict[tuple[int, int], int] | None = None) -> Iterable[Flow]:
    """Entries of one OFPMP_FLOW reply body (after the multipart header); the packet
    counts of the policy stage's default drops go into `drops` by (table, cookie)."""
    pos = 0
    while pos + _FLOW_STATS.size <= len(body):
        length, table, _sec, _nsec, priority, _idle, _hard, _flags, _imp, cookie, packets, _b = (
            _FLOW_STATS.unpack_from(body, pos)
        )
        if drops is not None and cookie >> 32 == _POLICY_DROP:
            drops[table, cookie] = packets
        if length < _FLOW_STATS.size:  # (wirecheck refuses these before they get here)
            return
        mpos = pos + _FLOW_STATS.size
        (mlen,) = _U16.unpack_from(body, mpos + 2)
        match = decode_oxm_list(bytes(body[mpos + 4 : mpos + mlen]))
        ipos = mpos + pad8(mlen)
        yield Flow(
            table, priority, match, decode_instructions(bytes(body[ipos : pos + length])), cookie
        )
        pos += length
