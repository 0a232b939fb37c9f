"""The controller cluster's entries: replica membership and per-switch mastership claims.

Pure: validation and the JSON values, like `leases.validate` for leases and
endpoints. Both kinds live under vxflow's own sub-prefix and are bound to
the replica's etcd lease, so a replica that stops renewing vanishes from
etcd together with every claim it held, in one revision.

    <prefix>/vxflow/controllers/<id>      {"ID": id, "Address": "tcp:IP:PORT" (or ssl:),
                                           "Status": "http://IP:PORT/status" (optional)}
    <prefix>/vxflow/masters/<dpid, hex>   {"Controller": id}

A claim's mod_revision is the generation_id its holder sends to the switch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from ipaddress import AddressValueError, IPv4Address

from leases.keys import KV, KeyKind
from leases.model import Claim, Member
from leases.validate import Reason, Rejection, _field, _Invalid, _object

MAX_MEMBERS = 16  # controller replicas that count (the oldest); a cluster needs a few
MEMBER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,62}")
_TARGET = re.compile(r"(tcp|ssl):([0-9.]+):(\d{1,5})")
_DPID = re.compile(r"[0-9a-f]{16}")
_STATUS_URL = re.compile(r"http://[0-9.]+:\d{1,5}/[\w./-]*")


class ControllerReason:
    """Reason codes of rejected member and claim entries (beside `leases.validate.Reason`)."""

    BAD_ADDRESS = "bad_address"
    NOT_BOUND = "not_bound"  # no etcd lease: it would outlive its replica


def member_id_problem(member_id: str) -> str | None:
    """Why `member_id` cannot name a replica (None if it can)."""
    if MEMBER_ID.fullmatch(member_id):
        return None
    return (
        f"controller id {member_id!r} must be 1-63 letters, digits and . _ : @ - "
        "(starting with a letter or digit)"
    )


def target_problem(target: str) -> str | None:
    """Why `target` is not an OpenFlow target a switch can connect to (None if it is)."""
    m = _TARGET.fullmatch(target)
    if m is None:
        return f"address {target!r} is not tcp:IPv4:PORT or ssl:IPv4:PORT"
    try:
        ip = IPv4Address(m.group(2))
    except AddressValueError:
        return f"address {target!r} does not hold an IPv4 address"
    if ip.is_unspecified or ip.is_multicast:
        return f"address {target!r}: {ip} is not an address a switch can connect to"
    if not 1 <= int(m.group(3)) <= 65535:
        return f"address {target!r}: port out of range"
    return None


def advertised_target(listen: str, port: int, scheme: str = "tcp") -> str:
    """The target switches reach this replica on; empty when it listens on every address."""
    if listen in ("", "0.0.0.0", "::"):
        return ""
    return f"{scheme}:{listen}:{port}"


def target_ip(target: str) -> IPv4Address | None:
    """The IPv4 address of a `tcp:IP:PORT` or `ssl:IP:PORT` target (None: not one)."""
    m = _TARGET.fullmatch(target)
    try:
        return IPv4Address(m.group(2)) if m else None
    except AddressValueError:
        return None


def _bound(kv: KV) -> None:
    if not kv.lease:
        raise _Invalid(ControllerReason.NOT_BOUND, "not bound to an etcd lease")


def _member(name: str, kv: KV) -> Member:
    problem = member_id_problem(name)
    if problem:
        raise _Invalid(Reason.BAD_KEY, problem)
    obj = _object(kv.value)
    if _field(obj, "ID", str) != name:
        raise _Invalid(Reason.BAD_KEY, f"ID {obj['ID']!r} differs from the key's {name!r}")
    address = _field(obj, "Address", str)
    problem = target_problem(address) if address else "no Address (the target switches reach it on)"
    if problem:
        raise _Invalid(ControllerReason.BAD_ADDRESS, problem)
    status = _field(obj, "Status", str) if "Status" in obj else ""
    if status and not _STATUS_URL.fullmatch(status):
        raise _Invalid(ControllerReason.BAD_ADDRESS, f"status URL {status!r} is not http://IP:PORT/PATH")
    _bound(kv)
    return Member(name, address, kv.lease, kv.create_revision, status)


def check_member(kv: KV, name: str) -> Member | Rejection:
    """Validate one `<prefix>/vxflow/controllers/<name>` entry."""
    try:
        return _member(name, kv)
    except _Invalid as bad:
        return Rejection(KeyKind.MEMBER, kv.key, bad.reason, bad.detail, kv.mod_revision)


def _claim(name: str, kv: KV) -> Claim:
    if not _DPID.fullmatch(name):
        raise _Invalid(Reason.BAD_KEY, f"claim key name {name!r} is not a 16-digit hex datapath-id")
    controller = _field(_object(kv.value), "Controller", str)
    problem = member_id_problem(controller)
    if problem:
        raise _Invalid(Reason.BAD_KEY, problem)
    _bound(kv)
    return Claim(int(name, 16), controller, kv.mod_revision, kv.lease)


def check_claim(kv: KV, name: str) -> Claim | Rejection:
    """Validate one `<prefix>/vxflow/masters/<name>` entry."""
    try:
        return _claim(name, kv)
    except _Invalid as bad:
        return Rejection(KeyKind.CLAIM, kv.key, bad.reason, bad.detail, kv.mod_revision)


def capped(members: Iterable[Member]) -> tuple[list[Member], int]:
    """The MAX_MEMBERS oldest members (by create revision, then id), which every replica
    and agent picks alike, and how many more there are (ignored: anyone with a credential
    for the prefix can register members, and each costs every mastership decision and
    every bridge a controller target)."""
    ordered = sorted(members, key=lambda m: (m.create_revision, m.id))
    return ordered[:MAX_MEMBERS], max(len(ordered) - MAX_MEMBERS, 0)


def member_to_json(member: Member) -> str:
    value = {"ID": member.id, "Address": member.address}
    if member.status:
        value["Status"] = member.status
    return json.dumps(value, separators=(",", ":"))


def claim_to_json(controller: str) -> str:
    return json.dumps({"Controller": controller}, separators=(",", ":"))
