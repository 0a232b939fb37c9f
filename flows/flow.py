"""The plain flow value the compiler produces and the controller installs.

A `Flow` is what one OpenFlow flow entry means, in plain hashable values, so
desired and read-back tables compare as sets. Field names are Open vSwitch's
own (`ip_dst`, `tun_id`, ...), so `to_ofctl` is a direct rendering that
`ovs-ofctl add-flow` accepts.

Value types are canonical, so equal flows are equal values: ports, ethertypes,
opcodes and tunnel ids are `int`; MACs are lower-case colon strings; an exact
IPv4 match is an `IPv4Address`, a masked one an `IPv4Network`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv4Network

Value = int | str | IPv4Address | IPv4Network
Match = tuple[tuple[str, Value], ...]
# ("output", port) | ("set_field", field, value) | ("move", src, dst) | ("dec_ttl",)
# | ("goto_table", table): goto is an instruction and is always last.
Action = tuple
FlowKey = tuple[int, int, Match]

ETH_TYPE_IP = 0x0800
ETH_TYPE_ARP = 0x0806
ARP_REQUEST = 1
ARP_REPLY = 2
OFPP_IN_PORT = 0xFFFFFFF8  # "send back where it came from"; plain output to in_port is dropped


class Table(IntEnum):
    """The pipeline's tables; see flows/compiler.py for what each holds."""

    CLASSIFY = 0
    ARP = 10
    ROUTE = 20
    LOCAL = 30


class Owner(IntEnum):
    """Who a flow belongs to; encoded in its cookie."""

    BASE = 1  # the node's fixed pipeline
    LEASE = 2  # a remote node's subnet lease (key: its subnet's network address)
    ENDPOINT = 3  # a local pod port (key: the pod's IP)


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


def goto_table(table: int) -> Action:
    return ("goto_table", int(table))


def _value_text(field: str, value: Value) -> str:
    if field == "eth_type":
        return f"0x{value:04x}"
    if field == "tun_id":
        return hex(value)
    return str(value)


def _action_text(action: Action) -> str:
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
    raise ValueError(f"unknown action {action!r}")


def to_ofctl(f: Flow) -> str:
    """The flow in `ovs-ofctl add-flow` syntax (also how `vxflow flows show` prints it)."""
    match = ",".join(f"{name}={_value_text(name, value)}" for name, value in f.match)
    actions = ",".join(_action_text(a) for a in f.actions) or "drop"
    head = f"cookie={f.cookie:#x},table={f.table},priority={f.priority}"
    return f"{head},{match} actions={actions}" if match else f"{head} actions={actions}"
