"""etcd's v2 store: a network config (and leases) that vxflow would otherwise not see.

flannel before v0.14, and the seed's `ETCDCTL_API=2 etcdctl mk` or curl to
`/v2/keys`, wrote `<prefix>/config` and the subnet leases into etcd's v2
store. etcd keeps that store apart from the v3 store that vxflow (and flannel
since v0.14) reads: neither API sees the other's keys. This module names such
a config where the v3 store has none, and copies it, validated as `config
set` validates, with its leases, into v3 (`vxflow config import-v2`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from leases.config import ConfigError, parse_config
from leases.errors import ImportRefused, RegistryError
from leases.etcd_client import DEFAULT_ENDPOINTS, NO_ACCESS, EtcdClient
from leases.keys import KV, Keys
from leases.model import FLANNEL_DEFAULT_PREFIX, Lease, NetworkConfig
from leases.validate import Reason, Rejection, check_lease, public_ip_of, resolve_conflicts

if TYPE_CHECKING:
    from leases.registry import Registry


@dataclass(frozen=True)
class V2Entry:
    """One key of the v2 store directly under `<prefix>/subnets/`."""

    key: str
    value: str | None  # None: a directory, not a lease
    ttl: int | None  # seconds left (v2 rounds up); None: no TTL, a reservation


def read_config(etcd: EtcdClient, keys: Keys) -> str | None:
    """The v2 store's `<prefix>/config`; None if absent or the server serves no v2."""
    node = etcd.v2_get(keys.config)
    if node is None or node.get("dir"):
        return None
    return str(node.get("value", ""))


def read_subnets(etcd: EtcdClient, keys: Keys) -> list[V2Entry]:
    """Every key the v2 store holds under `<prefix>/subnets/` (one request)."""
    node = etcd.v2_get(keys.subnets.rstrip("/"), recursive=True)
    if node is None:
        return []
    return [
        V2Entry(
            key=str(child.get("key", "")),
            value=None if child.get("dir") else str(child.get("value", "")),
            ttl=int(child["ttl"]) if "ttl" in child else None,
        )
        for child in node.get("nodes", ())
    ]


def import_command(registry: Registry) -> str:
    """The `vxflow config import-v2` line that copies this registry's v2 config and leases."""
    words = ["vxflow config import-v2"]
    endpoints = ",".join(registry.etcd.endpoints)
    if endpoints != DEFAULT_ENDPOINTS:
        words.append(f"--etcd-endpoints {endpoints}")
    if registry.keys.prefix != FLANNEL_DEFAULT_PREFIX:
        words.append(f"--etcd-prefix {registry.keys.prefix}")
    words.append("--with-leases")
    return " ".join(words)


def config_note(registry: Registry) -> str:
    """What to say where the v3 store has no `<prefix>/config` but the v2 store has one:
    where it is and the command that copies it; "" otherwise (no v2 config, no v2 API,
    or a v2 store that refuses us: the v3 error then stands as it was)."""
    try:
        raw = read_config(registry.etcd, registry.keys)
    except RegistryError:
        return ""
    if raw is None:
        return ""
    options = (
        "" if registry.etcd.access == NO_ACCESS else " (with this command's TLS/credential options)"
    )
    return (
        " in etcd's v3 store, which vxflow reads; etcd's v2 store holds one there (written by "
        "flannel before v0.14, or by `ETCDCTL_API=2 etcdctl mk` or curl to /v2/keys): copy it "
        f"and its leases into v3 with `{import_command(registry)}`{options}"
    )


@dataclass(frozen=True)
class LeaseCopy:
    """A valid v2 lease (or reservation) to copy: its key, value as v2 holds it, TTL."""

    lease: Lease
    key: str
    value: str
    ttl: int | None  # seconds; None: a reservation (no TTL)


@dataclass(frozen=True)
class Skipped:
    """A v2 subnet entry that is not copied, and why."""

    key: str
    why: str


@dataclass(frozen=True)
class ImportPlan:
    """What `config import-v2` writes: the config (unless v3 holds an equal one) and leases."""

    raw: str  # the v2 config as stored (copied byte for byte)
    config: NetworkConfig
    write_config: bool  # False: the v3 store holds an equal config already
    replaces: KV | None  # the different v3 config this replaces (--force)
    copies: tuple[LeaseCopy, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    not_read: int = 0  # v2 subnet entries left alone without --with-leases


def plan_import(registry: Registry, *, with_leases: bool, force: bool) -> ImportPlan:
    """Read and validate the v2 config (and leases) and compare with the v3 store.

    Raises ImportRefused if there is no v2 config, it is invalid, or v3 holds a
    different config and not `force`.
    """
    keys = registry.keys
    raw = read_config(registry.etcd, keys)
    if raw is None:
        raise ImportRefused(
            f"etcd's v2 store holds no {keys.config} (or the server serves no v2 API: etcd 3.4 "
            "needs --enable-v2=true, 3.5 and later have none): nothing to import"
        )
    try:
        cfg = parse_config(raw)
    except ConfigError as exc:
        raise ImportRefused(f"the v2 store's {keys.config} is invalid: {exc}") from exc
    current = registry.etcd.get(keys.config)
    same = current is not None and _parses_to(current.value, cfg)
    if current is not None and not same and not force:
        raise ImportRefused(
            f"the v3 store holds a different {keys.config} ({current.value.decode('utf-8', 'replace')}"
            f"; the v2 store's: {raw}): --force replaces it"
        )
    entries = read_subnets(registry.etcd, keys)
    if not with_leases:
        return ImportPlan(raw, cfg, not same, None if same else current, not_read=len(entries))
    v3, _ = registry.etcd.range(keys.subnets, prefix=True)
    copies, skipped = _leases(entries, cfg, {kv.key: kv for kv in v3})
    return ImportPlan(raw, cfg, not same, None if same else current, copies, skipped)


def _parses_to(value: bytes, cfg: NetworkConfig) -> bool:
    try:
        return parse_config(value) == cfg
    except ConfigError:
        return False


def _leases(
    entries: list[V2Entry], cfg: NetworkConfig, v3: dict[str, KV]
) -> tuple[tuple[LeaseCopy, ...], tuple[Skipped, ...]]:
    """The entries vxflow's own validation accepts (each alone, then one lease per PublicIP
    and no overlaps) and the v3 store does not hold already; the others, with the reason."""
    skipped: list[Skipped] = []
    valid: dict[str, Lease] = {}
    found: dict[str, tuple[str, int | None]] = {}  # (value, TTL) of the valid ones
    for entry in entries:
        if entry.value is None:
            skipped.append(Skipped(entry.key, f"a directory, not a lease [{Reason.BAD_KEY}]"))
            continue
        checked = check_lease(entry.key, entry.value, cfg)
        if isinstance(checked, Rejection):
            skipped.append(Skipped(entry.key, f"{checked.detail} [{checked.reason}]"))
        else:
            valid[entry.key], found[entry.key] = checked, (entry.value, entry.ttl)
    kept, conflicts = resolve_conflicts(valid)
    skipped += [Skipped(r.key, f"{r.detail} [{r.reason}]") for r in conflicts]
    holders = {public_ip_of(kv.value): key for key, kv in v3.items()}
    copies = []
    for key, lease in sorted(kept.items()):
        value, ttl = found[key]
        if key in v3:
            held = "the same value" if v3[key].value == value.encode() else "another value"
            skipped.append(Skipped(key, f"the v3 store holds this subnet with {held} already"))
        elif lease.public_ip in holders:
            skipped.append(Skipped(key, f"PublicIP {lease.public_ip} holds "
                                        f"{holders[lease.public_ip]} in the v3 store"))  # fmt: skip
        else:
            copies.append(LeaseCopy(lease, key, value, ttl))
    return tuple(copies), tuple(sorted(skipped, key=lambda s: s.key))


def apply_import(
    registry: Registry, plan: ImportPlan, copied: Callable[[LeaseCopy, bool], None]
) -> None:
    """Write the plan: leases first (each bound to an etcd lease of the TTL it had left,
    a reservation without one), then the config, so no node that waits for the config
    picks a subnet a v2 node holds. `copied(copy, ok)` hears of each lease; `ok` is False
    if the v3 store got that subnet meanwhile (it is left as it is). Every write is
    conditional: nothing another writer put into v3 meanwhile is overwritten."""
    etcd = registry.etcd
    for copy in plan.copies:
        lease_id = etcd.grant(copy.ttl) if copy.ttl is not None else None
        ok = etcd.put_if(copy.key, copy.value, mod_revision=0, lease=lease_id)
        if not ok and lease_id is not None:
            etcd.revoke(lease_id)
        copied(copy, ok)
    if plan.write_config:
        revision = plan.replaces.mod_revision if plan.replaces else 0
        if not etcd.put_if(registry.keys.config, plan.raw, mod_revision=revision):
            raise ImportRefused(
                f"{registry.keys.config} changed in the v3 store while importing: run it again"
            )
