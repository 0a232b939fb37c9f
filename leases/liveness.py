"""Node liveness: the agents' records in etcd, and the rule that calls a node DOWN (pure).

    <prefix>/vxflow/nodes/<PublicIP>   {"PublicIP": "198.18.0.3", "TTL": 2}

With DirectRouting on, the record also names the peers the node reaches without a
gateway (leases/direct.py): `"Direct": ["198.18.0.4", ...]`, their PublicIPs, and on a
dual-stack node their PublicIPv6s that it reaches so (flannel decides each family
apart); absent when off.

Each agent keeps its record on an etcd lease of its own, TTL seconds long (`vxflow agent
--liveness-ttl`, default DEFAULT_TTL), renewed every TTL / RENEWALS_PER_TTL seconds from
a thread of its own, and revoked on a clean stop. The 24 h subnet lease stays as flannel
has it: a dead node keeps its subnet, its record is gone within TTL (plus etcd's expiry
check, half a second).

`node_down` is the rule every controller replica applies (and `vxflow status` with it).
"""

from __future__ import annotations

import json
from ipaddress import AddressValueError, IPv4Address, IPv6Address, ip_address

from leases.controllers import _bound
from leases.direct import MAX_DIRECT
from leases.keys import KV, KeyKind
from leases.model import Liveness
from leases.validate import MAX_VALUE_BYTES, Reason, Rejection, _field, _Invalid, _object

DEFAULT_TTL = 2  # seconds; etcd grants no less than 1.5 election timeouts (2 s by default)
MAX_TTL = 300
RENEWALS_PER_TTL = 4  # a record survives three lost renewals in a row
BAD_TTL = "bad_ttl"  # the reason code of a record whose TTL is out of range
BAD_DIRECT = "bad_direct"  # ... whose Direct list is not a list of IP addresses
MAX_RECORD_BYTES = MAX_VALUE_BYTES + 42 * MAX_DIRECT  # room for a full Direct list (IPv6's)


def _direct(obj: dict) -> frozenset[IPv4Address | IPv6Address] | None:
    if obj.get("Direct") is None:
        return None
    peers = _field(obj, "Direct", list)
    if len(peers) > MAX_DIRECT:
        raise _Invalid(BAD_DIRECT, f"Direct names {len(peers)} peers, more than {MAX_DIRECT}")
    try:
        if not all(isinstance(p, str) for p in peers):
            raise ValueError("not a list of address strings")
        return frozenset(ip_address(p) for p in peers)
    except ValueError as exc:
        raise _Invalid(BAD_DIRECT, f"Direct: {exc}") from None


def _liveness(name: str, kv: KV) -> Liveness:
    try:
        ip = IPv4Address(name)
    except AddressValueError as exc:
        raise _Invalid(Reason.BAD_KEY, f"node key name {name!r} is not an IPv4 address") from exc
    obj = _object(kv.value, MAX_RECORD_BYTES)
    if _field(obj, "PublicIP", str) != name:
        raise _Invalid(Reason.BAD_KEY, f"PublicIP {obj['PublicIP']!r} differs from the key's {name}")
    ttl = _field(obj, "TTL", int)
    if not 1 <= ttl <= MAX_TTL:
        raise _Invalid(BAD_TTL, f"TTL {ttl} is not in 1..{MAX_TTL}")
    direct = _direct(obj)
    _bound(kv)
    return Liveness(ip, ttl, kv.lease, direct)


def check_liveness(kv: KV, name: str) -> Liveness | Rejection:
    """Validate one `<prefix>/vxflow/nodes/<name>` entry (unbound: rejected, as it would
    keep a dead node alive for ever)."""
    try:
        return _liveness(name, kv)
    except _Invalid as bad:
        return Rejection(KeyKind.NODE, kv.key, bad.reason, bad.detail, kv.mod_revision)


def liveness_to_json(record: Liveness) -> str:
    obj: dict = {"PublicIP": str(record.public_ip), "TTL": record.ttl}
    if record.direct is not None:
        obj["Direct"] = [str(ip) for ip in sorted(record.direct, key=lambda a: (a.version, a))]
    return json.dumps(obj, separators=(",", ":"))


def node_down(judged: bool, alive: bool, connected: bool) -> bool:
    """Whether a node is DOWN, so that its backends leave every service.

    - `judged`: the node's agent publishes pods (it has endpoints, which are bound to its
      24 h subnet lease and so outlive a crash). A node without any (a flannel node in a
      mixed cluster, an agent of a version without liveness records, a node without
      pods) is never DOWN: nothing says it would be.
    - `alive`: its liveness record is in etcd, i.e. its agent renewed it within its TTL.
    - `connected`: its switch holds an OpenFlow connection to this replica that answers
      (when the record goes, the replica probes the switch with an echo and drops a
      connection that does not answer at once: controller.app's `_probe`).

    DOWN = judged and not alive and not connected. Either signal alone keeps the node UP:
    a node whose controller connection is cut (a partition) but whose agent reaches etcd
    stays UP, and so does a node whose agent died or lost etcd while its switch is still
    connected (its data plane works). A crashed node loses both within the record's TTL.
    """
    return judged and not alive and not connected
