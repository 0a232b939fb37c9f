"""The registry's view of etcd: raw key-values in, a validated `Snapshot` out, and diffs.

Pure. The watch keeps a `View` of the prefix, updates it key by key with each
batch of etcd events, and delivers the resulting changes of the valid state;
after a full re-list it delivers `diff(old, new)`. Because events are derived
from states, a re-list after an etcd restart or a compaction yields exactly the
changes the consumer missed, and a replayed etcd event yields nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address
from operator import attrgetter
from typing import TypeVar

from leases.config import ConfigError, parse_config
from leases.controllers import check_claim, check_member
from leases.events import (
    ClaimAdded,
    ClaimRemoved,
    ConfigChanged,
    EndpointAdded,
    EndpointRemoved,
    Event,
    LeaseAdded,
    LeaseChanged,
    LeaseRemoved,
    LivenessAdded,
    LivenessRemoved,
    MemberAdded,
    MemberRemoved,
    NamespaceAdded,
    NamespaceRemoved,
    PolicyAdded,
    PolicyRemoved,
    ReadinessAdded,
    ReadinessRemoved,
    ServiceAdded,
    ServiceRemoved,
    VxflowConfigChanged,
)
from leases.health import check_readiness, unready_by_service
from leases.keys import KV, KeyKind, Keys
from leases.liveness import check_liveness
from leases.model import (
    Claim,
    Endpoint,
    Lease,
    Liveness,
    Member,
    NetworkConfig,
    Readiness,
    Service,
    VxflowConfig,
    subnet_key,
)
from leases.policy import Namespace, NetworkPolicy, check_namespace, check_policy
from leases.services import check_service, check_vxflow_config, resolve_services, underlay_of
from leases.validate import (
    Reason,
    Rejection,
    check_endpoint,
    check_lease,
    claims_of,
    resolve_conflicts,
)


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
    members: tuple[Member, ...] = ()  # controller replicas, sorted by id
    claims: tuple[Claim, ...] = ()  # switch masterships, sorted by datapath-id
    vxflow: VxflowConfig = field(default_factory=VxflowConfig)  # the last valid `<prefix>/vxflow/config`
    services: tuple[Service, ...] = ()  # accepted services, sorted by name
    policies: tuple[NetworkPolicy, ...] = ()  # valid NetworkPolicies, sorted by namespace/name
    namespaces: tuple[Namespace, ...] = ()  # labelled namespaces, sorted by name
    liveness: tuple[Liveness, ...] = ()  # the nodes' liveness records, sorted by PublicIP
    readiness: tuple[Readiness, ...] = ()  # backends' health-check verdicts, by key name
    kvs: Mapping[str, KV] = field(default_factory=dict, repr=False, compare=False)
    # The View it was built from, when nothing else holds that View (build_snapshot's):
    # a watch starts from a copy of it instead of validating every entry again.
    view: View | None = field(default=None, repr=False, compare=False)

    def rejected_of(self, *kinds: KeyKind) -> list[Rejection]:
        """The rejected entries of `kinds`: what a listing of those reports."""
        return [r for r in self.rejected if r.kind in kinds]

    def lease_for_subnet(self, subnet: IPv4Network) -> Lease | None:
        return next((lease for lease in self.leases if lease.subnet == subnet), None)

    def lease_for_public_ip(self, public_ip: IPv4Address) -> Lease | None:
        return next((lease for lease in self.leases if lease.public_ip == public_ip), None)

    def endpoints_of(self, node_subnet: IPv4Network) -> tuple[Endpoint, ...]:
        return tuple(ep for ep in self.endpoints if ep.node_subnet == node_subnet)

    def alive(self) -> frozenset[IPv4Address]:
        """The PublicIPs of the nodes whose liveness record is in etcd."""
        return frozenset(r.public_ip for r in self.liveness)

    def unready(self) -> dict[str, frozenset[IPv4Address | IPv6Address]]:
        """The backends health checks call unready, by service name (leases.health)."""
        return unready_by_service(self.readiness, {lease.subnet: lease for lease in self.leases})

    def direct(self) -> dict[IPv4Address, frozenset[IPv4Address | IPv6Address]]:
        """DirectRouting: the peers each node's agent reaches directly (leases/direct.py),
        for the nodes whose record says."""
        return {r.public_ip: r.direct for r in self.liveness if r.direct is not None}


EMPTY = Snapshot(config=None, leases=(), endpoints=(), revision=0)


def _lease_order(lease: Lease) -> tuple[int, int]:
    return int(lease.subnet.network_address), lease.subnet.prefixlen


T = TypeVar("T")


def _sorted(entries: Iterable[object], kind: type[T], by: str) -> tuple[T, ...]:
    """The entries of `kind` among `entries`, sorted by their attribute `by`."""
    return tuple(sorted((e for e in entries if isinstance(e, kind)), key=attrgetter(by)))


# Entries judged on their own, config or not: (check, added event, removed event).
_STANDALONE = {
    KeyKind.MEMBER: (check_member, MemberAdded, MemberRemoved),
    KeyKind.CLAIM: (check_claim, ClaimAdded, ClaimRemoved),
    KeyKind.POLICY: (check_policy, PolicyAdded, PolicyRemoved),
    KeyKind.NAMESPACE: (check_namespace, NamespaceAdded, NamespaceRemoved),
    KeyKind.NODE: (check_liveness, LivenessAdded, LivenessRemoved),
    KeyKind.HEALTH: (check_readiness, ReadinessAdded, ReadinessRemoved),
}
Standalone = Member | Claim | NetworkPolicy | Namespace | Liveness | Readiness

PAUSE_EVERY = 1024  # keys validated between two calls of a View's `pause`


class View:
    """The validated view of one prefix, kept up to date key by key.

    A change costs work proportional to the keys it touches (plus the leases
    sharing a PublicIP with them and the endpoints of a lease that comes or
    goes), not to the size of the cluster; only a config change re-validates
    everything. `apply` returns the events and the rejections it caused.

    `pause` is called every PAUSE_EVERY keys validated: a (re)load of a large
    prefix is seconds of CPU, and a caller on a cooperative scheduler (the
    controller's eventlet hub) yields there so its connections stay answered.
    """

    def __init__(
        self,
        keys: Keys,
        fallback_config: NetworkConfig | None = None,
        pause: Callable[[], None] = lambda: None,
    ) -> None:
        self.keys = keys
        self.pause = pause
        self.revision = 0
        self.config = fallback_config
        self.kvs: dict[str, KV] = {}
        self._config_rejection: Rejection | None = None
        self._leases: dict[str, Lease | Rejection] = {}  # each lease key, validated on its own
        # each claim (PublicIP, PublicIPv6, IPv6 subnet: validate.claims_of) -> valid leases
        self._holders: dict[object, dict[str, Lease]] = {}
        self._live: dict[str, Lease] = {}  # the leases in force (one per PublicIP)
        self._by_subnet: dict[IPv4Network, Lease] = {}
        self._conflicts: dict[str, Rejection] = {}
        self._groups: dict[str, set[str]] = {}  # subnet key name -> endpoint keys under it
        self._endpoints: dict[str, Endpoint | Rejection] = {}
        self._live_eps: dict[str, Endpoint] = {}
        # controller replicas, their claims, policies, namespaces, the nodes' liveness
        # records: each judged on its own
        self._standalone: dict[str, Standalone | Rejection] = {}
        # services: judged against config and vxflow config, then one holder per VIP
        self.vxflow = VxflowConfig()
        self._vxflow_rejection: Rejection | None = None
        self._services: dict[str, Service | Rejection] = {}
        self._live_services: dict[str, Service] = {}
        self._service_conflicts: dict[str, Rejection] = {}

    def load(self, kvs: Iterable[KV], revision: int) -> View:
        """(Re)build from the complete contents of the prefix."""
        # only the keys vxflow reads: the raw values of any others under the prefix (flannel's
        # own, anyone's) are not kept
        self.kvs = {kv.key: kv for kv in kvs if self.keys.classify(kv.key) is not None}
        self.revision = revision
        self._parse_config()
        self._reset()
        self._update(set(self.kvs), report=False)
        return self

    def copy(self, pause: Callable[[], None] | None = None) -> View:
        """An independent View in the same state (tables copied, values shared)."""
        new = View(self.keys, self.config, pause or self.pause)
        new.revision, new.kvs = self.revision, dict(self.kvs)
        new._config_rejection = self._config_rejection
        new._leases, new._live = dict(self._leases), dict(self._live)
        new._holders = {ip: dict(holders) for ip, holders in self._holders.items()}
        new._by_subnet, new._conflicts = dict(self._by_subnet), dict(self._conflicts)
        new._groups = {name: set(keys) for name, keys in self._groups.items()}
        new._endpoints, new._live_eps = dict(self._endpoints), dict(self._live_eps)
        new._standalone = dict(self._standalone)
        new.vxflow, new._vxflow_rejection = self.vxflow, self._vxflow_rejection
        new._services, new._live_services = dict(self._services), dict(self._live_services)
        new._service_conflicts = dict(self._service_conflicts)
        return new

    def apply(
        self, changes: Mapping[str, KV | None], revision: int
    ) -> tuple[list[Event], list[Rejection], set[str]]:
        """Apply put (KV) and delete (None) changes; (events, rejections, keys re-judged)."""
        config_touched = self.keys.config in changes
        before = self.snapshot() if config_touched else None  # config writes are rare
        for key, kv in changes.items():
            if kv is None:
                self.kvs.pop(key, None)
            elif self.keys.classify(key) is not None:
                self.kvs[key] = kv
        self.revision = revision
        if before is not None:
            self._parse_config()
            if self.config != before.config:
                self._reset()
                self._update(set(self.kvs), report=False)
                after = self.snapshot()
                return diff(before, after), list(after.rejected), set(self.kvs)
        rejections = [self._config_rejection] if config_touched and self._config_rejection else []
        events, touched = self._update(set(changes))
        rejections += [r for k in touched if (r := self.rejection(k)) is not None]
        return events, rejections, touched | {self.keys.config}

    def rejection(self, key: str) -> Rejection | None:
        for result in (
            self._leases.get(key),
            self._endpoints.get(key),
            self._standalone.get(key),
            self._services.get(key),
        ):
            if isinstance(result, Rejection):
                return result
        if key == self.keys.vxflow_config:
            return self._vxflow_rejection
        return self._conflicts.get(key) or self._service_conflicts.get(key)

    def snapshot(self) -> Snapshot:
        rejected = [self._config_rejection] if self._config_rejection else []
        rejected += [r for r in self._leases.values() if isinstance(r, Rejection)]
        rejected += self._conflicts.values()
        rejected += [r for r in self._endpoints.values() if isinstance(r, Rejection)]
        rejected += [r for r in self._standalone.values() if isinstance(r, Rejection)]
        rejected += [r for r in self._services.values() if isinstance(r, Rejection)]
        rejected += self._service_conflicts.values()
        if self._vxflow_rejection:
            rejected.append(self._vxflow_rejection)
        own = self._standalone.values()
        return Snapshot(
            config=self.config,
            leases=tuple(sorted(self._live.values(), key=_lease_order)),
            endpoints=tuple(
                sorted(self._live_eps.values(), key=lambda ep: (ep.node_subnet, ep.ip))
            ),
            revision=self.revision,
            rejected=tuple(sorted(rejected, key=lambda r: r.key)),
            members=_sorted(own, Member, "id"),
            claims=_sorted(own, Claim, "datapath_id"),
            liveness=_sorted(own, Liveness, "public_ip"),
            readiness=_sorted(own, Readiness, "key_name"),
            vxflow=self.vxflow,
            services=tuple(sorted(self._live_services.values(), key=attrgetter("name"))),
            policies=_sorted(own, NetworkPolicy, "key_name"),
            namespaces=_sorted(own, Namespace, "name"),
            kvs=dict(self.kvs),
        )

    def _parse_config(self) -> None:
        kv = self.kvs.get(self.keys.config)
        if kv is None:
            self._config_rejection = Rejection(
                KeyKind.CONFIG, self.keys.config, Reason.NO_CONFIG, "network config is missing"
            )
            return
        try:
            self.config, self._config_rejection = parse_config(kv.value), None
        except ConfigError as exc:  # keep the last valid config
            self._config_rejection = Rejection(
                KeyKind.CONFIG, self.keys.config, Reason.BAD_CONFIG, str(exc), kv.mod_revision
            )

    def _reset(self) -> None:
        for table in (
            self._leases,
            self._holders,
            self._live,
            self._by_subnet,
            self._conflicts,
            self._groups,
            self._endpoints,
            self._live_eps,
            self._standalone,
            self._services,
            self._live_services,
            self._service_conflicts,
        ):
            table.clear()

    def _update(self, dirty: set[str], report: bool = True) -> tuple[list[Event], set[str]]:
        """Re-judge the `dirty` keys; the events are only built if `report` (a full
        (re)load is compared as snapshots instead, or not at all)."""
        lease_keys: set[str] = set()
        ep_keys: set[str] = set()
        svc_keys: set[str] = set()
        standalone_keys: set[str] = set()
        standalone_events: list[Event] = []
        for key in dirty:
            kind = self.keys.classify(key)
            if kind is None or kind[0] is KeyKind.CONFIG:
                continue
            if kind[0] in (KeyKind.SERVICE, KeyKind.VXFLOW_CONFIG):
                svc_keys.add(key)
            elif kind[0] is KeyKind.LEASE:
                lease_keys.add(key)
            elif kind[0] is KeyKind.ENDPOINT:
                ep_keys.add(key)
                name = kind[1].split("/", 1)[0]
                group = self._groups.setdefault(name, set())
                (group.add if key in self.kvs else group.discard)(key)
                if not group:  # a deleted node's endpoints leave no empty group behind
                    del self._groups[name]
            else:
                standalone_keys.add(key)
                standalone_events += self._update_standalone(key, kind[0], kind[1])
        if report:
            lease_events, toggled, judged = self._update_leases(lease_keys)
        else:  # a full (re)load of a reset view: every endpoint key is dirty already
            lease_events, toggled, judged = [], set(), self._load_leases(lease_keys)
        for name in toggled:
            ep_keys |= self._groups.get(name, set())
        removed_eps, added_eps = self._update_endpoints(ep_keys)
        if not report:  # a full (re)load judges vxflow's config too, present or not
            svc_keys.add(self.keys.vxflow_config)
        service_events = self._update_services(svc_keys) if svc_keys else []
        if not report:
            return [], judged | ep_keys | svc_keys | standalone_keys
        events: list[Event] = [
            *standalone_events,
            *removed_eps,
            *(e for e in lease_events if isinstance(e, LeaseRemoved)),
        ]
        events += sorted(
            (e for e in lease_events if not isinstance(e, LeaseRemoved)),
            key=lambda e: _lease_order(e.lease),
        )
        events += added_eps
        events += service_events
        return events, judged | ep_keys | svc_keys | standalone_keys

    def _update_standalone(self, key: str, kind: KeyKind, name: str) -> list[Event]:
        """Re-judge one key of a kind judged on its own (`_STANDALONE`); its events
        (a change: removed, then added)."""
        check, added, removed = _STANDALONE[kind]
        kv = self.kvs.get(key)
        old = self._standalone.pop(key, None)
        new: Standalone | Rejection | None = None
        if kv is not None:
            new = self._standalone[key] = check(kv, name)  # type: ignore[operator]
        if old == new:
            return []
        events: list[Event] = []
        if old is not None and not isinstance(old, Rejection):
            events.append(removed(old, self.revision))  # type: ignore[operator]
        if new is not None and not isinstance(new, Rejection):
            events.append(added(new, self.revision))  # type: ignore[operator]
        return events

    def _update_services(self, dirty: set[str]) -> list[Event]:
        """Re-judge the dirty service keys (every one if vxflow's config changed), then
        which service holds each VIP; the events of what changed."""
        events: list[Event] = []
        if self.keys.vxflow_config in dirty:
            old = self.vxflow
            self._parse_vxflow()
            if self.vxflow != old:
                events.append(VxflowConfigChanged(old, self.vxflow, self.revision))
                dirty = {k for k in self.kvs if k.startswith(self.keys.services)} | set(self._services)
        for key in dirty - {self.keys.vxflow_config}:
            self._services.pop(key, None)
            kv = self.kvs.get(key)
            if kv is not None and self.config is not None:
                name = key[len(self.keys.services) :]
                self._services[key] = check_service(kv, name, self.config, self.vxflow)
        valid = {k: s for k, s in self._services.items() if isinstance(s, Service)}
        revisions = {k: self.kvs[k].mod_revision for k in valid}
        live, conflicts = resolve_services(valid, revisions)
        self._service_conflicts = {r.key: r for r in conflicts}
        old_live, self._live_services = self._live_services, live
        for key, svc in sorted(old_live.items()):
            if live.get(key) != svc:
                events.append(ServiceRemoved(svc, self.revision))
        for key, svc in sorted(live.items()):
            if old_live.get(key) != svc:
                events.append(ServiceAdded(svc, self.revision))
        return events

    def _parse_vxflow(self) -> None:
        kv = self.kvs.get(self.keys.vxflow_config)
        if kv is None:
            self.vxflow, self._vxflow_rejection = VxflowConfig(), None
            return
        members = (m for m in self._standalone.values() if isinstance(m, Member))
        result = check_vxflow_config(kv, self.config, underlay_of(self._live.values(), members))
        if isinstance(result, Rejection):  # keep the last valid one
            self._vxflow_rejection = result
        else:
            self.vxflow, self._vxflow_rejection = result, None

    def _judge(self, key: str, kv: KV, config: NetworkConfig) -> Lease | Rejection:
        result = self._leases[key] = check_lease(
            key, kv.value, config, etcd_lease_id=kv.lease or None, mod_revision=kv.mod_revision
        )
        return result

    def _load_leases(self, keys: set[str]) -> set[str]:
        """`_update_leases` for every lease key of a reset view, in bulk: no previous
        state to undo and no events, so a large prefix loads in fewer steps per key."""
        if self.config is None:
            return keys
        holders = self._holders
        valid: list[tuple[str, Lease, tuple[object, ...]]] = []
        for i, key in enumerate(keys, 1):
            if not i % PAUSE_EVERY:
                self.pause()
            result = self._judge(key, self.kvs[key], self.config)
            if isinstance(result, Lease):
                claims = claims_of(result)
                valid.append((key, result, claims))
                for claim in claims:
                    held = holders.get(claim)
                    if held is None:
                        holders[claim] = {key: result}
                    else:
                        held[key] = result
        contested: list[object] = []  # the claims of leases with a rival: judged as groups
        for key, lease, claims in valid:
            if all(len(holders[claim]) == 1 for claim in claims):
                self._live[key] = lease
            else:
                contested += claims
        for held in self._rivals(contested):
            kept, conflicts = resolve_conflicts(held)
            self._live.update(kept)
            self._conflicts.update((r.key, r) for r in conflicts)
        self._by_subnet = {lease.subnet: lease for lease in self._live.values()}
        return keys

    def _rivals(self, claims: Iterable[object]) -> list[dict[str, Lease]]:
        """The valid leases holding `claims`, grouped into sets of rivals: leases linked
        by a shared claim, directly or through others, are judged together (one group
        for nearly every lease), so the outcome does not depend on what changed first."""
        groups: list[dict[str, Lease]] = []
        seen: set[object] = set()
        for start in claims:
            if start in seen or start not in self._holders:
                continue
            group: dict[str, Lease] = {}
            todo, seen_here = [start], {start}
            while todo:
                for key, lease in self._holders.get(todo.pop(), {}).items():
                    if key not in group:
                        group[key] = lease
                        fresh = [c for c in claims_of(lease) if c not in seen_here]
                        seen_here.update(fresh)
                        todo += fresh
            seen |= seen_here
            groups.append(group)
        return groups

    def _update_leases(self, dirty: set[str]) -> tuple[list[Event], set[str], set[str]]:
        """Re-judge `dirty` lease keys and their PublicIP rivals.

        Returns the events, the subnet key names whose lease came or went, and
        every lease key judged.
        """
        claims: set[object] = set()
        for key in dirty:
            old = self._leases.pop(key, None)
            if isinstance(old, Lease):
                for claim in claims_of(old):
                    self._holders[claim].pop(key, None)
                    if not self._holders[claim]:
                        del self._holders[claim]
                    claims.add(claim)
            kv = self.kvs.get(key)
            if kv is None or self.config is None:
                continue
            result = self._judge(key, kv, self.config)
            if isinstance(result, Lease):
                for claim in claims_of(result):
                    self._holders.setdefault(claim, {})[key] = result
                    claims.add(claim)
        winners: dict[str, Lease] = {}
        candidates = set(dirty)
        for holders in self._rivals(claims):
            candidates.update(holders)
            kept, conflicts = resolve_conflicts(holders)
            winners.update(kept)
            for key in holders:
                self._conflicts.pop(key, None)
            self._conflicts.update((r.key, r) for r in conflicts)
        for key in dirty:
            if not isinstance(self._leases.get(key), Lease):
                self._conflicts.pop(key, None)
        events: list[Event] = []
        toggled: set[str] = set()
        for key in candidates:
            old, new = self._live.get(key), winners.get(key)
            if new is not None:
                self._live[key] = self._by_subnet[new.subnet] = new
            elif old is not None:
                del self._live[key]
                if self._by_subnet.get(old.subnet) is old:  # (another key may hold it now)
                    del self._by_subnet[old.subnet]
            if (old is None) != (new is None):  # endpoint keys name the IPv4 subnet only
                toggled.add(subnet_key((new or old).subnet))
            if old is None and new is not None:
                events.append(LeaseAdded(new, self.revision))
            elif old is not None and new is None:
                events.append(LeaseRemoved(old, self.revision))
            elif old is not None and new is not None and not _same(old, new):
                events.append(LeaseChanged(old, new, self.revision))
        return events, toggled, candidates

    def _update_endpoints(self, dirty: set[str]) -> tuple[list[Event], list[Event]]:
        removed: list[Event] = []
        added: list[Event] = []
        for key in sorted(dirty):
            self._endpoints.pop(key, None)
            kv = self.kvs.get(key)
            if kv is not None and self.config is not None:
                name = key[len(self.keys.endpoints) :]
                self._endpoints[key] = check_endpoint(
                    key, name, kv.value, self._by_subnet, mod_revision=kv.mod_revision
                )
            old, new = self._live_eps.pop(key, None), self._endpoints.get(key)
            new = new if isinstance(new, Endpoint) else None
            if new is not None:
                self._live_eps[key] = new
            if old is not None and old != new:
                removed.append(EndpointRemoved(old, self.revision))
            if new is not None and old != new:
                added.append(EndpointAdded(new, self.revision))
        return removed, added


def build_snapshot(
    keys: Keys,
    kvs: Iterable[KV],
    revision: int,
    *,
    fallback_config: NetworkConfig | None = None,
    pause: Callable[[], None] = lambda: None,
) -> Snapshot:
    """Validate everything under `keys.root` and keep what is usable (`pause`: see View).

    Never raises on bad data: each unusable entry becomes a Rejection.
    """
    view = View(keys, fallback_config, pause).load(kvs, revision)
    return replace(view.snapshot(), view=view)


def _routing(lease: Lease) -> tuple[object, ...]:
    """Everything of a lease except its revision: what a consumer acts on."""
    return (
        lease.subnet,
        lease.public_ip,
        lease.vni,
        lease.vtep_mac,
        lease.backend_type,
        lease.backend_data_extra,
        lease.etcd_lease_id,
        lease.ipv6_subnet,
        lease.public_ipv6,
        lease.vtep_mac_v6,
    )


def _same(a: Lease, b: Lease) -> bool:
    """Equal for routing purposes: a rewrite that changes only the revision is no event."""
    return a is b or _routing(a) == _routing(b)


def diff(old: Snapshot, new: Snapshot) -> list[Event]:
    """The events that turn `old` into `new`, in an order safe to apply one by one.

    Config first, removals before additions; endpoints go before their lease
    is removed and come after their lease is added.
    """
    rev = new.revision
    events: list[Event] = []
    if new.config is not None and new.config != old.config:
        events.append(ConfigChanged(old.config, new.config, rev))
    for removed, added, before, after in (
        (MemberRemoved, MemberAdded, old.members, new.members),
        (ClaimRemoved, ClaimAdded, old.claims, new.claims),
        (PolicyRemoved, PolicyAdded, old.policies, new.policies),
        (NamespaceRemoved, NamespaceAdded, old.namespaces, new.namespaces),
        (LivenessRemoved, LivenessAdded, old.liveness, new.liveness),
        (ReadinessRemoved, ReadinessAdded, old.readiness, new.readiness),
    ):
        kept = set(before) & set(after)
        events += [removed(x, rev) for x in before if x not in kept]
        events += [added(x, rev) for x in after if x not in kept]
    if new.vxflow != old.vxflow:
        events.append(VxflowConfigChanged(old.vxflow, new.vxflow, rev))
    old_svcs = {s.name: s for s in old.services}
    new_svcs = {s.name: s for s in new.services}
    events += [ServiceRemoved(s, rev) for n, s in old_svcs.items() if new_svcs.get(n) != s]
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
    events += [ServiceAdded(s, rev) for n, s in new_svcs.items() if old_svcs.get(n) != s]
    return events
