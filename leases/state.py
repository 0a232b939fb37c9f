"""The registry's view of etcd: raw key-values in, a validated `Snapshot` out, and diffs.

Pure. The watch keeps the raw key-values of the prefix, rebuilds the view after
every batch of etcd events or a full re-list, and emits the difference to the
previous view. Because events are derived from states, a re-list after an etcd
restart or a compaction yields exactly the changes the consumer missed, and a
replayed etcd event yields nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from leases.config import ConfigError, parse_config
from leases.events import (
    ConfigChanged,
    EndpointAdded,
    EndpointRemoved,
    Event,
    LeaseAdded,
    LeaseChanged,
    LeaseRemoved,
)
from leases.keys import KV, KeyKind, Keys
from leases.model import Endpoint, Lease, NetworkConfig
from leases.validate import Reason, Rejection, check_endpoint, check_lease, resolve_conflicts


@dataclass(frozen=True)
class Snapshot:
    """The valid entries of one network prefix at one etcd revision.

    `config` is None only if no valid config was ever seen; a watch keeps the
    last valid config while the stored one is missing or invalid (and reports
    it in `rejected`), so a typo in the config never withdraws every route.
    """

    config: NetworkConfig | None
    leases: tuple[Lease, ...]  # sorted by subnet
    endpoints: tuple[Endpoint, ...]  # sorted by (node subnet, ip)
    revision: int
    rejected: tuple[Rejection, ...] = ()
    kvs: Mapping[str, KV] = field(default_factory=dict, repr=False, compare=False)

    def lease_for_subnet(self, subnet: IPv4Network) -> Lease | None:
        return next((lease for lease in self.leases if lease.subnet == subnet), None)

    def lease_for_public_ip(self, public_ip: IPv4Address) -> Lease | None:
        return next((lease for lease in self.leases if lease.public_ip == public_ip), None)

    def endpoints_of(self, node_subnet: IPv4Network) -> tuple[Endpoint, ...]:
        return tuple(ep for ep in self.endpoints if ep.node_subnet == node_subnet)


EMPTY = Snapshot(config=None, leases=(), endpoints=(), revision=0)


def _config(
    kvs: Mapping[str, KV], keys: Keys, fallback: NetworkConfig | None
) -> tuple[NetworkConfig | None, Rejection | None]:
    kv = kvs.get(keys.config)
    if kv is None:
        return fallback, Rejection(
            KeyKind.CONFIG, keys.config, Reason.NO_CONFIG, "network config is missing"
        )
    try:
        return parse_config(kv.value), None
    except ConfigError as exc:
        return fallback, Rejection(
            KeyKind.CONFIG, keys.config, Reason.BAD_CONFIG, str(exc), kv.mod_revision
        )


def build_snapshot(
    keys: Keys, kvs: Iterable[KV], revision: int, *, fallback_config: NetworkConfig | None = None
) -> Snapshot:
    """Validate everything under `keys.root` and keep what is usable.

    Never raises on bad data: each unusable entry becomes a Rejection.
    """
    by_key = {kv.key: kv for kv in kvs}
    config, config_rejection = _config(by_key, keys, fallback_config)
    rejected: list[Rejection] = [config_rejection] if config_rejection else []
    if config is None:
        return Snapshot(None, (), (), revision, tuple(rejected), by_key)
    candidates: dict[str, Lease] = {}
    endpoint_kvs: list[tuple[KV, str]] = []
    for kv in sorted(by_key.values(), key=lambda kv: kv.key):
        kind = keys.classify(kv.key)
        if kind is None or kind[0] is KeyKind.CONFIG:
            continue
        if kind[0] is KeyKind.ENDPOINT:
            endpoint_kvs.append((kv, kind[1]))
            continue
        result = check_lease(
            kv.key, kv.value, config, etcd_lease_id=kv.lease or None, mod_revision=kv.mod_revision
        )
        if isinstance(result, Rejection):
            rejected.append(result)
        else:
            candidates[kv.key] = result
    kept, conflicts = resolve_conflicts(candidates)
    rejected.extend(conflicts)
    by_subnet = {lease.subnet: lease for lease in kept.values()}
    endpoints: list[Endpoint] = []
    for kv, name in endpoint_kvs:
        result = check_endpoint(kv.key, name, kv.value, by_subnet, mod_revision=kv.mod_revision)
        if isinstance(result, Rejection):
            rejected.append(result)
        else:
            endpoints.append(result)
    return Snapshot(
        config=config,
        leases=tuple(sorted(kept.values(), key=lambda lease: lease.subnet)),
        endpoints=tuple(sorted(endpoints, key=lambda ep: (ep.node_subnet, ep.ip))),
        revision=revision,
        rejected=tuple(rejected),
        kvs=by_key,
    )


def _same(a: Lease, b: Lease) -> bool:
    """Equal for routing purposes: a rewrite that changes only the revision is no event."""
    return dataclasses.replace(a, mod_revision=0) == dataclasses.replace(b, mod_revision=0)


def diff(old: Snapshot, new: Snapshot) -> list[Event]:
    """The events that turn `old` into `new`, in an order safe to apply one by one.

    Config first, removals before additions; endpoints go before their lease
    is removed and come after their lease is added.
    """
    rev = new.revision
    events: list[Event] = []
    if new.config is not None and new.config != old.config:
        events.append(ConfigChanged(old.config, new.config, rev))
    old_eps = {(ep.node_subnet, ep.ip): ep for ep in old.endpoints}
    new_eps = {(ep.node_subnet, ep.ip): ep for ep in new.endpoints}
    events += [EndpointRemoved(ep, rev) for k, ep in old_eps.items() if new_eps.get(k) != ep]
    old_leases = {lease.subnet: lease for lease in old.leases}
    new_leases = {lease.subnet: lease for lease in new.leases}
    events += [LeaseRemoved(lease, rev) for s, lease in old_leases.items() if s not in new_leases]
    for subnet, lease in new_leases.items():
        before = old_leases.get(subnet)
        if before is None:
            events.append(LeaseAdded(lease, rev))
        elif not _same(before, lease):
            events.append(LeaseChanged(before, lease, rev))
    events += [EndpointAdded(ep, rev) for k, ep in new_eps.items() if old_eps.get(k) != ep]
    return events
