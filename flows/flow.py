"""The plain flow value the compiler produces and the controller installs.

A `Flow` is what one OpenFlow flow entry means, in plain hashable values, so
desired and read-back tables compare as sets. Field names are Open vSwitch's
own (`ip_dst`, `tun_id`, ...), so `to_ofctl` is a direct rendering that
`ovs-ofctl add-flow` accepts.

Value types are canonical, so equal flows are equal values: ports, ethertypes,
opcodes and tunnel ids are `int`; MACs are lower-case colon strings; an exact
IP match is an `IPv4Address` or `IPv6Address`, a masked one an `IPv4Network` or
`IPv6Network`; other masked values (`ct_state`) are `Masked`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network


@dataclass(frozen=True, slots=True)
class Masked:
    """A match on the bits of `mask` only (`value` holds no bits outside it)."""

    value: int
    mask: int


Value = int | str | IPv4Address | IPv4Network | IPv6Address | IPv6Network | Masked
Match = tuple[tuple[str, Value], ...]
# ("output", port) | ("set_field", field, value) | ("move", src, dst) | ("dec_ttl",)
# | ("ct", commit, zone, table, nat) | ("group", id) | ("resubmit", table)
# | ("learn", table, idle_timeout, priority, cookie, ip_proto, port_field, reg1 value, eth_type)
# | ("multipath", fields, basis, algorithm, n_links, register)
# | ("conjunction", id, clause, n_clauses) (clause counted from 1, as ovs-ofctl writes it)
# | ("ct_clear",) | ("controller", max_len) (a packet-in of the packet's first max_len bytes)
# | ("meter", id) | ("goto_table", table): meter and goto are instructions; meter is always
# first and goto always last.
Action = tuple
# ct's nat: None (no NAT), () (apply the connection's NAT), or (kind, ip, port) with kind
# "src" or "dst" and a port of 0 for "keep the port".
Nat = tuple
FlowKey = tuple[int, int, Match]

ETH_TYPE_IP = 0x0800
ETH_TYPE_ARP = 0x0806
ETH_TYPE_IPV6 = 0x86DD
ARP_REQUEST = 1
ARP_REPLY = 2
IP_PROTO_ICMPV6 = 58
ICMPV6_RA = 134  # router advertisement
ICMPV6_NS = 135  # neighbour solicitation
ICMPV6_NA = 136  # neighbour advertisement
OFPP_IN_PORT = 0xFFFFFFF8  # "send back where it came from"; plain output to in_port is dropped


class Table(IntEnum):
    """The pipeline's tables; see flows/compiler.py for what each holds."""

    CLASSIFY = 0
    ARP = 10
    ROUTE = 20
    LOCAL = 30
    SVC_LB = 40  # services: after conntrack, new connections to a VIP:port
    SVC_AFFINITY = 41  # services: learned client-IP affinity entries (looked up, not owned)
    SVC_DNAT = 42  # services with affinity: the backend chosen -> learn + DNAT
    SVC_HAIRPIN_REPLY = 43  # services: replies of a pod to its own service, un-SNATed
    SVC_HAIRPIN_OUT = 44  # services: a hairpinned packet back out of its own port
    SVC_REPLY = 45  # services: a packet from a TargetPort, looked up: a reply is un-DNATed
    SVC_LINK = 46  # services with affinity: the client's hashed link -> its backend
    POL_EGRESS = 50  # policy: a local pod's new connection, judged by its egress rules
    POL_INGRESS = 51  # policy: a new connection to a local pod, judged by its ingress rules


# Tables only a switch with a policy-isolated pod uses (flows/policy.py): their table-miss
# drops come with the policy flows, so a cluster without policy holds not one flow more.
POLICY_TABLES = (Table.POL_EGRESS, Table.POL_INGRESS)


class Owner(IntEnum):
    """Who a flow belongs to; encoded in its cookie."""

    BASE = 1  # the node's fixed pipeline
    LEASE = 2  # a remote node's subnet lease (key: its subnet's network address)
    ENDPOINT = 3  # a local pod port (key: the pod's IP)
    SERVICE = 4  # one port of a service, its flows and group (key: the group id)
    SERVICE_NET = 5  # the services' plumbing (key 0) and reply hooks (key: proto << 16 | port)
    LEARNED = 6  # client-IP affinity entries the switch learns itself (key: the group id)
    POLICY = 7  # policy plumbing (key 0) and the rules' flows (key: the rule's conj_id)
    POLICY_DROP = 8  # a policy isolation group's default drop (key: its first pod's IP)
    DIRECT = 12  # DirectRouting: a peer's subnet routed unencapsulated (key: its subnet's address)


COOKIE_MAGIC = 0x76  # "v": top byte of every vxflow cookie
_OWNER_KEY_BITS = 32


def cookie_for(owner: Owner, key: int = 0) -> int:
    """`0x76 | owner | 0000 | 32-bit key`: one owner's flows share one cookie."""
    return (COOKIE_MAGIC << 56) | (int(owner) << 48) | (key & 0xFFFFFFFF)


def owner_of(cookie: int) -> tuple[Owner, int] | None:
    """Inverse of `cookie_for`; None for a cookie vxflow did not write."""
    if cookie >> 56 != COOKIE_MAGIC or (cookie >> _OWNER_KEY_BITS) & 0xFFFF:
        return None
    try:
        return Owner((cookie >> 48) & 0xFF), cookie & 0xFFFFFFFF
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow entry. `actions` empty means drop."""

    table: int
    priority: int
    match: Match
    actions: tuple[Action, ...]
    cookie: int

    @property
    def key(self) -> FlowKey:
        """What identifies an entry in OpenFlow: adding a flow with an equal key replaces it."""
        return (self.table, self.priority, self.match)


def flow(
    table: int, priority: int, match: Mapping[str, Value], actions: Iterable[Action], cookie: int
) -> Flow:
    """Build a Flow with its match in canonical (sorted) order."""
    return Flow(int(table), priority, tuple(sorted(match.items())), tuple(actions), cookie)


def output(port: int) -> Action:
    return ("output", port)


def set_field(field: str, value: Value) -> Action:
    return ("set_field", field, value)


def move(src: str, dst: str) -> Action:
    """Copy a whole field to another of the same width (NXAST_REG_MOVE)."""
    return ("move", src, dst)


def dec_ttl() -> Action:
    return ("dec_ttl",)


def controller(max_len: int) -> Action:
    """Send the packet's first `max_len` bytes to the controller (a packet-in, reason action)."""
    return ("controller", max_len)


def meter(meter_id: int) -> Action:
    """Pass the packet through meter `meter_id` first (the meter instruction: it may drop it)."""
    return ("meter", meter_id)


def goto_table(table: int) -> Action:
    return ("goto_table", int(table))


def ct(zone: int, table: int | None, *, commit: bool = False, nat: Nat | None = None) -> Action:
    """Send through conntrack in `zone`, then continue in `table` (a recirculation); `table`
    None: no recirculation, the packet goes on with the next action (a commit)."""
    return ("ct", commit, zone, None if table is None else int(table), nat)


def ct_clear() -> Action:
    """Forget the packet's conntrack state (-trk again), so later tables see it untracked."""
    return ("ct_clear",)


def conjunction(conj_id: int, clause: int, n_clauses: int) -> Action:
    """This flow is clause `clause` (1..n_clauses) of conjunctive match `conj_id`."""
    return ("conjunction", conj_id, clause, n_clauses)


def group(group_id: int) -> Action:
    return ("group", group_id)


def resubmit(table: int) -> Action:
    """Run `table` and come back (unlike goto, any table, also an earlier one)."""
    return ("resubmit", int(table))


def learn(
    table: int, idle_timeout: int, priority: int, cookie: int, ip_proto: int, port_field: str,
    value: int, eth_type: int = ETH_TYPE_IP,
) -> Action:  # fmt: skip
    """Learn `eth_type, ip_proto, ip_src, ip_dst, <port_field> -> load value->reg1` into
    `table` (the client-IP affinity entry: this client, this VIP:port, this backend); IPv6's
    addresses for eth_type IPv6."""
    return ("learn", int(table), idle_timeout, priority, cookie, ip_proto, port_field, value,
            eth_type)  # fmt: skip


def multipath(fields: str, basis: int, algorithm: str, n_links: int, register: str) -> Action:
    """Hash `fields` (ovs-ofctl's names: "nw_src", ...) with `basis`, pick one of `n_links`
    links with `algorithm` ("modulo_n", "hrw", ...) and store it in the whole `register`
    (NXAST_MULTIPATH, its algorithm argument 0)."""
    return ("multipath", fields, basis, algorithm, n_links, register)


CT_NEW, CT_EST, CT_REL, CT_RPL, CT_INV, CT_TRK = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_CT_FLAGS = (("new", CT_NEW), ("est", CT_EST), ("rel", CT_REL), ("rpl", CT_RPL),
             ("inv", CT_INV), ("trk", CT_TRK))  # fmt: skip


def ct_state(plus: int = 0, minus: int = 0) -> Masked:
    """ct_state=+a+b-c: the flags in `plus` set, those in `minus` clear, the rest any."""
    return Masked(plus, plus | minus)


def _value_text(field: str, value: Value) -> str:
    if field == "ct_state" and isinstance(value, Masked):
        return "".join(
            ("+" if value.value & bit else "-") + name
            for name, bit in _CT_FLAGS
            if value.mask & bit
        )
    if isinstance(value, Masked):
        return f"{value.value:#x}/{value.mask:#x}"
    if field == "eth_type":
        return f"0x{value:04x}"
    if field == "tun_id":
        return hex(value)
    return str(value)


def _action_text(action: Action) -> str:
    """One action in ovs-ofctl syntax."""
    kind = action[0]
    if kind == "output":
        return "in_port" if action[1] == OFPP_IN_PORT else f"output:{action[1]}"
    if kind == "set_field":
        return f"set_field:{_value_text(action[1], action[2])}->{action[1]}"
    if kind == "move":
        return f"move:{action[1]}[]->{action[2]}[]"
    if kind == "dec_ttl":
        return "dec_ttl"
    if kind == "goto_table":
        return f"goto_table:{action[1]}"
    if kind == "meter":
        return f"meter:{action[1]}"
    if kind == "controller":
        return f"controller:{action[1]}"
    if kind == "ct":
        return _ct_text(action)
    if kind == "group":
        return f"group:{action[1]}"
    if kind == "resubmit":
        return f"resubmit(,{action[1]})"
    if kind == "learn":
        _, table, idle, priority, cookie, proto, port_field, value, eth_type = action
        src, dst = _NXM_IP[eth_type]
        return (
            f"learn(table={table},idle_timeout={idle},priority={priority},cookie={cookie:#x},"
            f"eth_type={eth_type:#x},nw_proto={proto},{src}[],{dst}[],"
            f"{_NXM_PORT[port_field]}[],load:{value:#x}->NXM_NX_REG1[])"
        )
    if kind in ("unknown_action", "unknown_instruction"):  # read back from a switch: shown raw
        return f"{kind}({action[1]})"
    if kind == "multipath":
        _, fields, basis, algorithm, n_links, register = action
        return f"multipath({fields},{basis},{algorithm},{n_links},0,{register}[])"
    if kind == "conjunction":
        return f"conjunction({action[1]},{action[2]}/{action[3]})"
    if kind == "ct_clear":
        return "ct_clear"
    raise ValueError(f"unknown action {action!r}")


_NXM_IP = {ETH_TYPE_IP: ("NXM_OF_IP_SRC", "NXM_OF_IP_DST"),
           ETH_TYPE_IPV6: ("NXM_NX_IPV6_SRC", "NXM_NX_IPV6_DST")}  # fmt: skip
_NXM_PORT = {
    "tcp_src": "NXM_OF_TCP_SRC", "tcp_dst": "NXM_OF_TCP_DST",
    "udp_src": "NXM_OF_UDP_SRC", "udp_dst": "NXM_OF_UDP_DST",
}  # fmt: skip


def _ct_text(action: Action) -> str:
    _, commit, zone, table, nat = action
    parts = ["commit"] if commit else []
    parts += [f"table={table}"] if table is not None else []
    parts.append(f"zone={zone}")
    if nat == ():
        parts.append("nat")
    elif nat is not None:
        kind, ip, port = nat
        ip = f"[{ip}]" if ip.version == 6 else ip  # ovs-ofctl's brackets: the port follows
        parts.append(f"nat({kind}={ip}:{port})" if port else f"nat({kind}={ip})")
    return f"ct({','.join(parts)})"


def to_ofctl(f: Flow) -> str:
    """The flow in `ovs-ofctl add-flow` syntax (also how `vxflow flows show` prints it)."""
    match = ",".join(f"{name}={_value_text(name, value)}" for name, value in f.match)
    actions = ",".join(_action_text(a) for a in f.actions) or "drop"
    head = f"cookie={f.cookie:#x},table={f.table},priority={f.priority}"
    return f"{head},{match} actions={actions}" if match else f"{head} actions={actions}"
