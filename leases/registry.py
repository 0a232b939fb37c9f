"""The flannel-compatible subnet registry in etcd: config, leases, endpoints, watch.

Writes exactly what flannel writes (key names, value JSON, one etcd lease with
flannel's TTL per subnet) and creates subnets with an etcd transaction that
only succeeds if the key does not exist, so any mix of vxflow and flannel
nodes on one prefix never hands a subnet out twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Any
from urllib.parse import urlsplit

from leases.config import leasable, parse_config, subnet_range
from leases.controllers import claim_to_json, member_to_json
from leases.errors import (
    ConfigMissing,
    LeaseLost,
    NetworkExhausted,
    PolicyRejected,
    RegistryError,
    ServiceRejected,
    ServicesNotWritten,
    SubnetTaken,
)
from leases.etcd_client import DEFAULT_ENDPOINTS, NO_ACCESS, RANGE_PAGE, EtcdAccess, EtcdClient
from leases.etcd_v2 import config_note
from leases.events import Event
from leases.health import check_readiness, holds, readiness_to_json
from leases.keys import KV, Keys
from leases.liveness import liveness_to_json
from leases.metrics import RejectionReporter
from leases.model import (
    FLANNEL_DEFAULT_PREFIX,
    LEASE_TTL_SECONDS,
    RENEW_MARGIN_SECONDS,
    Claim,
    Endpoint,
    FamilyConfig,
    Lease,
    Liveness,
    Member,
    NetworkConfig,
    Readiness,
    Service,
    VxflowConfig,
)
from leases.policy import (
    MAX_POLICY_BYTES,
    Namespace,
    NetworkPolicy,
    check_namespace,
    default_labels,
    namespace_to_json,
    parse_policies,
    policy_to_json,
    relabel,
)
from leases.services import (
    NETWORK_KEYS,
    check_service,
    parse_vxflow_config,
    resolve_services,
    service_to_json,
    underlay_of,
)
from leases.state import Snapshot, build_snapshot
from leases.validate import (
    Rejection,
    check_endpoint,
    check_lease,
    endpoint_to_json,
    lease_to_json,
    normalize_mac,
    parse_lease_name,
    parse_subnet_name,
    public_ip_of,
    public_ip_problem,
)
from leases.watch import Watch

log = logging.getLogger(__name__)

MAX_TXN_OPS = 128  # etcd's --max-txn-ops default: the most puts one transaction may hold
CLAIMS_PER_TXN = 100  # below etcd's default --max-txn-ops (128)
POLICIES_PER_TXN = 100  # `policies set` writes a file in one transaction: all or nothing
MAX_TXN_BYTES = 1024 * 1024  # below etcd's default --max-request-bytes (1.5 MiB)


def _subnets_named(name: str) -> list[IPv4Network | IPv6Network]:
    """The subnets a subnet key's name covers, as far as they can be read: an unreadable
    IPv6 part still leaves its IPv4 subnet taken."""
    try:
        subnets: list[IPv4Network | IPv6Network] = [parse_subnet_name(name.partition("&")[0])]
    except ValueError:
        return []
    with contextlib.suppress(ValueError):
        six = parse_lease_name(name)[1]
        subnets += [six] if six is not None else []
    return subnets


def renew_interval(ttl: int = LEASE_TTL_SECONDS, margin: int = RENEW_MARGIN_SECONDS) -> float:
    """Seconds until a lease of `ttl` should be renewed: flannel's `ttl - margin`.

    For TTLs not longer than the margin (tests, tiny TTLs) renew at a third of the TTL.
    """
    return float(ttl - margin) if ttl > margin else ttl / 3


class Registry:
    """One network prefix in etcd. Not thread-safe: give each thread its own Registry."""

    def __init__(
        self,
        endpoints: str | Sequence[str] = DEFAULT_ENDPOINTS,
        prefix: str = FLANNEL_DEFAULT_PREFIX,
        *,
        timeout: float = 5.0,
        access: EtcdAccess = NO_ACCESS,
    ) -> None:
        self.keys = Keys(prefix)
        self._endpoints = endpoints
        self._timeout = timeout
        self._access = access
        self.etcd = EtcdClient(endpoints, timeout=timeout, access=access)
        self._reporter = RejectionReporter()

    def close(self) -> None:
        self.etcd.close()

    def sibling(self, timeout: float) -> Registry:
        """The same etcd and prefix through a client of its own (for another thread), with
        its own request timeout."""
        return Registry(self._endpoints, self.keys.prefix, timeout=timeout, access=self._access)

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- config --------------------------------------------------------------

    def get_config_raw(self) -> bytes:
        kv = self.etcd.get(self.keys.config)
        if kv is None:
            advice = config_note(self) or ": write one with `vxflow config set FILE`"
            raise ConfigMissing(f"no network config at {self.keys.config}{advice}")
        return kv.value

    def missing_config_note(self, snap: Snapshot) -> str:
        """What to add to "no config" when `snap` (one of this registry's) has no config key
        at all and etcd's v2 store holds one (see leases.etcd_v2.config_note); else ""."""
        if snap.config is not None or self.keys.config in snap.kvs:
            return ""
        return config_note(self)

    def require_config(self, snap: Snapshot) -> NetworkConfig:
        """`snap`'s config; ConfigMissing if it has none."""
        if snap.config is None:
            raise ConfigMissing(
                f"no valid network config at {self.keys.config}{self.missing_config_note(snap)}"
            )
        return snap.config

    def get_config(self) -> NetworkConfig:
        """The validated config; ConfigMissing if absent, ConfigError if invalid."""
        return parse_config(self.get_config_raw())

    def set_config(self, raw: bytes | str) -> NetworkConfig:
        """Validate, then store `raw` as given (flannel's fields and any others it carries)."""
        cfg = parse_config(raw)
        self.etcd.put(self.keys.config, raw)
        log.info("network config written to %s: %s", self.keys.config, cfg.network)
        return cfg

    # --- leases --------------------------------------------------------------

    def _subnet_kvs(self) -> tuple[list[KV], int]:
        """Every subnet key, and the revision of that listing."""
        return self.etcd.range(self.keys.subnets, prefix=True)

    def acquire(
        self,
        public_ip: IPv4Address | str,
        vtep_mac: str,
        *,
        previous_subnet: IPv4Network | None = None,
        ttl: int = LEASE_TTL_SECONDS,
        backend_data_extra: Iterable[tuple[str, object]] = (),
        public_ipv6: IPv6Address | str | None = None,
        vtep_mac_v6: str | None = None,
        previous_ipv6_subnet: IPv6Network | None = None,
    ) -> Lease:
        """Get this node's subnet lease, as flannel's LocalManager.AcquireLease does.

        Reuses the lease (or reservation) that already carries `public_ip`,
        else `previous_subnet` if it is free and fits the config, else a random
        free subnet in [SubnetMin, SubnetMax]. With EnableIPv6 and a
        `public_ipv6` the lease is dual-stack: an IPv6 subnet is chosen the same
        way. Without EnableIPv6 they are not written, as flannel's; without a
        PublicIPv6 (flannel would stop) the node leases IPv4 only. An entry of ours whose IPv4 subnet fits but whose IPv6 half no
        longer does (IPv6 turned on or off) is moved to the right key, keeping
        its IPv4 subnet, reservation or etcd lease. Creation is an etcd
        transaction that succeeds only if the key does not exist; a lost race is
        retried. Raises NetworkExhausted when no subnet is free.
        """
        cfg = self.get_config()
        public_ip = IPv4Address(public_ip)
        template = Lease(
            subnet=cfg.network,
            public_ip=public_ip,
            vni=cfg.backend.vni,
            vtep_mac=normalize_mac(vtep_mac),
            backend_data_extra=tuple(sorted(backend_data_extra)),
        )
        if cfg.ipv6 is not None and (public_ipv6 is None or vtep_mac_v6 is None):
            log.warning("EnableIPv6 is set, but %s has no PublicIPv6: leasing IPv4 only",
                        public_ip)  # fmt: skip
        elif cfg.ipv6 is not None:
            template = replace(
                template,
                public_ipv6=IPv6Address(public_ipv6),
                vtep_mac_v6=normalize_mac(vtep_mac_v6),
            )
        for ip in (template.public_ip, template.public_ipv6):
            if ip is not None and (problem := public_ip_problem(ip, cfg)):
                raise ValueError(problem)
        _, _, size = subnet_range(cfg)
        for _ in range(size + 16):  # each lost race means another node got a subnet
            kvs, revision = self._subnet_kvs()
            lease = self._reuse(cfg, kvs, revision, template, ttl, previous_ipv6_subnet)
            if lease is None:
                subnet = self._pick(cfg.v4, kvs, previous_subnet)
                six = None
                if cfg.ipv6 is not None and template.public_ipv6 is not None:
                    six = self._pick(cfg.ipv6, kvs, previous_ipv6_subnet)
                new = replace(template, subnet=subnet, ipv6_subnet=six)
                lease = self._create(new, ttl, revision)
            if lease is not None:
                log.info(
                    "lease %s for %s (etcd lease %s)",
                    lease.label,
                    public_ip,
                    lease.etcd_lease_id,
                )
                return lease
        raise RegistryError(
            f"gave up acquiring a subnet for {public_ip} after {size + 16} lost races"
        )

    def _reuse(
        self,
        cfg: NetworkConfig,
        kvs: list[KV],
        revision: int,
        template: Lease,
        ttl: int,
        previous_ipv6: IPv6Network | None,
    ) -> Lease | None:
        """Claim the entry that already carries our PublicIP, if its IPv4 subnet fits the config
        (moving it to a new key if its IPv6 half does not)."""
        mine = []
        for kv in kvs:
            if public_ip_of(kv.value) != template.public_ip:
                continue
            try:
                subnet, six = parse_lease_name(kv.key.rsplit("/", 1)[-1])
            except ValueError:
                continue
            if leasable(cfg, subnet) or (kv.lease == 0 and subnet.subnet_of(cfg.network)):
                mine.append((subnet, six, kv))
            elif kv.lease:
                log.info(
                    "deleting %s: lease of %s no longer fits the config", kv.key, template.public_ip
                )
                self.etcd.delete_if(kv.key, mod_revision=kv.mod_revision)
        if not mine:
            return None
        subnet, six, kv = min(mine, key=lambda item: item[0])
        fam6 = cfg.ipv6 if template.public_ipv6 is not None else None  # IPv6 for this node
        if fam6 is None:
            fits, six = six is None, None
        else:
            fits = six is not None and (
                leasable(fam6, six) or (kv.lease == 0 and six.subnet_of(fam6.network))
            )
            six = six if fits else self._pick(fam6, kvs, previous_ipv6)
        lease = replace(template, subnet=subnet, ipv6_subnet=six)
        value = lease_to_json(lease)
        key = self.keys.lease(subnet, six)
        if not fits:  # same IPv4 subnet, reservation or etcd lease; the IPv6 half changes
            log.info("moving %s to %s: its IPv6 subnet does not fit the config", kv.key, key)
            if kv.lease and self.etcd.time_to_live(kv.lease)[0] <= 0:
                return None  # expired meanwhile: the next round creates it anew
            moved = (kv.key, kv.mod_revision)
            if not self._create_key(key, value, kv.lease or None, lease, revision, moved):
                return None
            if kv.lease and self.etcd.keepalive(kv.lease) <= 0:
                return None
            return replace(
                lease, etcd_lease_id=kv.lease or None, mod_revision=self._mod_revision(key)
            )
        if kv.lease == 0:  # a reservation stays one (no TTL)
            if kv.value != value.encode() and not self.etcd.put_if(
                kv.key, value, mod_revision=kv.mod_revision
            ):
                return None
            return replace(lease, etcd_lease_id=None, mod_revision=self._mod_revision(kv.key))
        remaining, granted = self.etcd.time_to_live(kv.lease)
        if remaining > 0 and granted == ttl:  # keep the etcd lease: endpoints bound to it survive
            unchanged = kv.value == value.encode()
            if not unchanged and not self.etcd.put_if(
                kv.key, value, mod_revision=kv.mod_revision, lease=kv.lease
            ):
                return None
            if self.etcd.keepalive(kv.lease) > 0:
                return replace(
                    lease, etcd_lease_id=kv.lease, mod_revision=self._mod_revision(kv.key)
                )
            return None
        etcd_lease = self.etcd.grant(ttl)
        if not self.etcd.put_if(kv.key, value, mod_revision=kv.mod_revision, lease=etcd_lease):
            self.etcd.revoke(etcd_lease)
            return None
        return replace(lease, etcd_lease_id=etcd_lease, mod_revision=self._mod_revision(kv.key))

    def _mod_revision(self, key: str) -> int:
        kv = self.etcd.get(key)
        return kv.mod_revision if kv else 0

    def _pick(self, fam: FamilyConfig, kvs: list[KV], previous: Any) -> Any:
        """A free subnet of one family: `previous` if it is free and fits, else a random one
        (random, as flannel, so racing nodes rarely collide). Every subnet key blocks what
        its part of that family covers, valid lease or not."""
        first, step, count = subnet_range(fam)
        blocked: list[tuple[int, int]] = []  # index ranges of [SubnetMin, SubnetMax] in use
        for kv in kvs:
            for subnet in _subnets_named(kv.key.rsplit("/", 1)[-1]):
                if subnet.version == fam.network.version:
                    lo = max((int(subnet.network_address) - first) // step, 0)
                    hi = min((int(subnet.broadcast_address) - first) // step, count - 1)
                    if lo <= hi:
                        blocked.append((lo, hi))
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(blocked):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
            else:
                merged.append((lo, hi))

        def next_free(idx: int) -> int:
            for lo, hi in merged:
                if lo <= idx <= hi:
                    idx = hi + 1
            return idx

        if previous is not None:
            idx = (int(previous.network_address) - first) // step
            if leasable(fam, previous) and next_free(idx) == idx:
                log.info("reusing previous subnet %s", previous)
                return previous
            log.info(
                "previous subnet %s is taken or does not fit the config; picking another", previous
            )
        if sum(hi - lo + 1 for lo, hi in merged) >= count:
            raise NetworkExhausted(
                f"no free /{fam.subnet_len} in {fam.subnet_min}..{fam.subnet_max}:"
                f" all {count} are leased"
            )
        idx = next_free(random.randrange(count))
        if idx >= count:
            idx = next_free(0)
        return ip_network((first + idx * step, fam.subnet_len))

    def _create(self, lease: Lease, ttl: int, revision: int) -> Lease | None:
        """Create the lease's key, only if no key names its IPv4 subnet and, dual-stack, no
        subnet key was written since the listing at `revision` its IPv6 subnet was picked
        from (a key only starts with its IPv4 subnet, so that is how etcd can tell)."""
        etcd_lease = self.etcd.grant(ttl)
        key = self.keys.lease(lease.subnet, lease.ipv6_subnet)
        if not self._create_key(key, lease_to_json(lease), etcd_lease, lease, revision):
            self.etcd.revoke(etcd_lease)
            log.debug("lost the race for %s; retrying", lease.label)
            return None
        return replace(lease, etcd_lease_id=etcd_lease, mod_revision=self._mod_revision(key))

    def _create_key(
        self,
        key: str,
        value: str,
        etcd_lease: int | None,
        lease: Lease,
        revision: int,
        replaces: tuple[str, int] | None = None,
    ) -> bool:
        unchanged = (self.keys.subnets, revision) if lease.ipv6_subnet or replaces else None
        return self.etcd.create_if_free(
            key,
            value,
            lease=etcd_lease,
            free_prefix=self.keys.lease(lease.subnet),
            replaces=replaces,
            unchanged=unchanged,
        )

    def renew(self, lease: Lease, *, ttl: int = LEASE_TTL_SECONDS) -> Lease:
        """Refresh the lease's TTL; if it expired or vanished, take the subnet back.

        Raises LeaseLost if another node holds the subnet now. If the returned
        lease has another etcd_lease_id, the node's endpoints expired with the
        old one and must be published again.
        """
        key = self.keys.lease(lease.subnet, lease.ipv6_subnet)
        if lease.etcd_lease_id is not None and self.etcd.keepalive(lease.etcd_lease_id) > 0:
            kv = self.etcd.get(key)
            if kv is not None and kv.lease == lease.etcd_lease_id:
                return replace(lease, mod_revision=kv.mod_revision)
        kv = self.etcd.get(key)
        if kv is None:
            kvs, revision = self._subnet_kvs()  # (a dual-stack key: its IPv6 subnet too)
            ours = {lease.subnet, lease.ipv6_subnet}
            names = (other.key.rsplit("/", 1)[-1] for other in kvs)
            taken = any(ours.intersection(_subnets_named(name)) for name in names)
            renewed = None if taken else self._create(lease, ttl, revision)
            if renewed is None:
                raise LeaseLost(
                    f"{lease.label} was taken by another node while our lease had expired"
                )
            log.warning("lease %s had expired; re-created it", lease.label)
            return renewed
        if public_ip_of(kv.value) != lease.public_ip:
            raise LeaseLost(f"{lease.subnet} now belongs to {public_ip_of(kv.value)}")
        if kv.lease == 0:  # an operator turned it into a reservation
            return replace(lease, etcd_lease_id=None, mod_revision=kv.mod_revision)
        etcd_lease = self.etcd.grant(ttl)
        if not self.etcd.put_if(
            key, lease_to_json(lease), mod_revision=kv.mod_revision, lease=etcd_lease
        ):
            self.etcd.revoke(etcd_lease)
            raise LeaseLost(f"{lease.subnet} changed while renewing; acquire again")
        return replace(lease, etcd_lease_id=etcd_lease, mod_revision=self._mod_revision(key))

    def time_to_live(self, lease: Lease) -> int:
        """Seconds left on the lease's etcd lease; -1 if expired (or a reservation)."""
        if lease.etcd_lease_id is None:
            return -1
        return self.etcd.time_to_live(lease.etcd_lease_id)[0]

    def release(self, lease: Lease) -> None:
        """Give the subnet back: revoking the etcd lease removes it and the node's endpoints.

        A reservation keeps its subnet key (remove it with `unreserve`); only
        its endpoints are deleted.
        """
        if lease.etcd_lease_id is not None:
            self.etcd.revoke(lease.etcd_lease_id)
        else:
            self.etcd.delete(self.keys.node_endpoints(lease.subnet), prefix=True)
        log.info("released %s", lease.subnet)

    def reserve(
        self,
        subnet: IPv4Network,
        public_ip: IPv4Address | str,
        vtep_mac: str | None = None,
        *,
        ipv6_subnet: IPv6Network | None = None,
        public_ipv6: IPv6Address | str | None = None,
    ) -> None:
        """Pin `subnet` (dual-stack: and `ipv6_subnet`) to `public_ip` without a TTL, as
        flannel's reservations.

        The node with that PublicIP gets this subnet from `acquire` and fills in
        its VtepMAC. Raises SubnetTaken if another PublicIP holds it.
        """
        cfg = self.get_config()
        public_ip = IPv4Address(public_ip)
        if not (subnet.subnet_of(cfg.network) and subnet.prefixlen == cfg.subnet_len):
            raise ValueError(f"{subnet} is not a /{cfg.subnet_len} of {cfg.network}")
        if ipv6_subnet is not None and not (
            cfg.ipv6 is not None
            and ipv6_subnet.subnet_of(cfg.ipv6.network)
            and ipv6_subnet.prefixlen == cfg.ipv6.subnet_len
        ):
            raise ValueError(f"{ipv6_subnet} is not an IPv6 subnet of this config")
        six_ip = None if public_ipv6 is None else IPv6Address(public_ipv6)
        for ip in (public_ip, six_ip):
            if ip is not None and (problem := public_ip_problem(ip, cfg)):
                raise ValueError(problem)
        key = self.keys.lease(subnet, ipv6_subnet)
        if vtep_mac is None:
            value = json.dumps(
                {"PublicIP": str(public_ip), "PublicIPv6": six_ip and str(six_ip)},
                separators=(",", ":"),
            )
        elif ipv6_subnet is not None:
            raise ValueError("a dual-stack reservation takes no VtepMAC: its node fills in both")
        else:
            lease = Lease(subnet, public_ip, cfg.backend.vni, normalize_mac(vtep_mac))
            value = lease_to_json(lease)
        kv = self.etcd.get(key)
        if kv is not None and public_ip_of(kv.value) != public_ip:
            raise SubnetTaken(
                f"{subnet} is held by {public_ip_of(kv.value) or 'an unreadable entry'}"
            )
        if not self.etcd.put_if(key, value, mod_revision=kv.mod_revision if kv else 0):
            raise SubnetTaken(f"{subnet} changed while reserving it; try again")
        log.info("reserved %s for %s", key, public_ip)

    def unreserve(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> bool:
        """Delete a reservation (a subnet key without TTL); False if there was none."""
        kv = self.etcd.get(self.keys.lease(subnet, ipv6_subnet))
        if kv is None or kv.lease:
            return False
        return self.etcd.delete_if(kv.key, mod_revision=kv.mod_revision)

    # --- endpoints -----------------------------------------------------------

    def put_endpoint(self, ep: Endpoint, lease: Lease) -> None:
        """Publish a pod port, bound to the node's etcd lease so it vanishes with it."""
        if ep.node_subnet != lease.subnet:
            raise ValueError(
                f"endpoint {ep.ip} belongs to {ep.node_subnet}, not to lease {lease.subnet}"
            )
        key = self.keys.endpoint(ep)
        value = endpoint_to_json(ep)
        checked = check_endpoint(key, key[len(self.keys.endpoints) :], value, {lease.subnet: lease})
        if isinstance(checked, Rejection):
            raise ValueError(checked.detail)
        self.etcd.put(key, value, lease=lease.etcd_lease_id)

    def delete_endpoint(self, ep: Endpoint) -> None:
        self.etcd.delete(self.keys.endpoint(ep))

    def list_endpoints(self, node_subnet: IPv4Network | None = None) -> list[Endpoint]:
        """Valid endpoints (of nodes with a valid lease), optionally of one node only."""
        snap = self.snapshot()
        return [ep for ep in snap.endpoints if node_subnet is None or ep.node_subnet == node_subnet]

    # --- health-check verdicts ----------------------------------------------------

    def readiness_key(self, record: Readiness) -> str:
        return self.keys.health + record.key_name

    def put_readiness(self, record: Readiness, lease: Lease) -> None:
        """Publish a backend's verdict, bound to its node's etcd lease (as its endpoints)."""
        if record.node_subnet != lease.subnet or not holds(lease, record.ip):
            raise ValueError(f"backend {record.ip} is not in lease {lease.subnet}")
        self.etcd.put(self.readiness_key(record), readiness_to_json(record),
                      lease=lease.etcd_lease_id)  # fmt: skip

    def delete_readiness(self, record: Readiness) -> None:
        self.etcd.delete(self.readiness_key(record))

    def list_readiness(self, node_subnet: IPv4Network) -> list[Readiness]:
        """The valid verdicts published for the backends of one node."""
        kvs, _ = self.etcd.range(self.keys.node_health(node_subnet), prefix=True)
        checked = (check_readiness(kv, kv.key[len(self.keys.health) :]) for kv in kvs)
        return [r for r in checked if isinstance(r, Readiness)]

    # --- node liveness ----------------------------------------------------------

    def put_liveness(
        self,
        public_ip: IPv4Address,
        ttl: int,
        direct: frozenset[IPv4Address | IPv6Address] | None = None,
        lease: int = 0,
    ) -> int:
        """(Re)write this node's liveness record on etcd lease `lease`, or on a new one of
        `ttl` seconds; the lease's id, to keep alive (`etcd.keepalive`) and revoke on a
        clean stop. `direct`: the peers it reaches directly (leases/direct.py)."""
        lease = lease or self.etcd.grant(ttl)
        record = Liveness(public_ip, ttl, direct=direct)
        self.etcd.put(self.keys.node(public_ip), liveness_to_json(record), lease=lease)
        return lease

    # --- controller replicas --------------------------------------------------

    def register_member(
        self, member_id: str, address: str, ttl: int, status: str = ""
    ) -> Member | None:
        """Register a controller replica under a new etcd lease of `ttl` seconds, only if
        no replica holds `member_id` now; None if one does (its key is left alone)."""
        lease = self.etcd.grant(ttl)
        member = Member(member_id, address, lease, status=status)
        key = self.keys.member(member_id)
        revision = self.etcd.put_all_if([(key, member_to_json(member), 0)], lease=lease)
        if revision is None:
            self.etcd.revoke(lease)
            return None
        log.info("registered controller %s (%s) with etcd lease %x", member_id, address, lease)
        return replace(member, create_revision=revision)

    def member_entry(self, member_id: str) -> KV | None:
        """The raw key of a replica id (to see who holds it and under which lease)."""
        return self.etcd.get(self.keys.member(member_id))

    def claim_switches(
        self, expected: dict[int, int], controller: str, lease: int
    ) -> dict[int, Claim]:
        """Claim mastership of switches for `controller`, bound to its membership `lease`.

        `expected` maps each datapath-id to the mod_revision its claim key must
        still have (0: absent); switches whose key moved on are left out of the
        result (the caller decides again from the newer state). Claims go in
        transactions of up to CLAIMS_PER_TXN; a batch that fails is retried key
        by key, so one stale expectation does not hold up the others.
        """
        value = claim_to_json(controller)
        claimed: dict[int, Claim] = {}

        def claim(group: list[int]) -> bool:
            items = [(self.keys.claim(d), value, expected[d]) for d in group]
            revision = self.etcd.put_all_if(items, lease=lease)
            if revision is not None:
                claimed.update((d, Claim(d, controller, revision, lease)) for d in group)
            return revision is not None

        dpids = sorted(expected)
        for i in range(0, len(dpids), CLAIMS_PER_TXN):
            batch = dpids[i : i + CLAIMS_PER_TXN]
            if not claim(batch) and len(batch) > 1:
                for dpid in batch:
                    claim([dpid])
        return claimed

    # --- services ------------------------------------------------------------

    def etcd_addresses(self) -> list[tuple[IPv4Address, str]]:
        """The IPv4 addresses of the etcd endpoints (names resolved; one that does not
        resolve now is left out), each named: no ServiceNetwork may hold them."""
        out = []
        for url in self.etcd.endpoints:
            host = urlsplit(url).hostname or ""
            try:
                infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
            except OSError:
                continue
            out += [(IPv4Address(info[4][0]), f"etcd endpoint {url}") for info in infos]
        return out

    def get_vxflow_config(self, config: NetworkConfig | None = None) -> VxflowConfig:
        """vxflow's own config (no key: no service range); ConfigError if invalid. (An
        agent checks the ServiceNetwork against its own underlay before routing it.)"""
        kv = self.etcd.get(self.keys.vxflow_config)
        return parse_vxflow_config(kv.value, config) if kv is not None else VxflowConfig()

    def set_service_network(self, network: str) -> VxflowConfig:
        """Validate `network` against the overlay and the underlay (the etcd endpoints, the
        nodes' PublicIPs, the controllers' addresses) and store it as the ServiceNetwork of
        `<prefix>/vxflow/config` (an IPv6 one, by its colons, as the IPv6ServiceNetwork),
        keeping the key's other fields."""
        config = self.get_config()
        snap = self.snapshot()
        underlay = [*self.etcd_addresses(), *underlay_of(snap.leases, snap.members)]
        kv = self.etcd.get(self.keys.vxflow_config)
        obj = json.loads(kv.value) if kv is not None else {}
        if not isinstance(obj, dict):  # an invalid value is replaced, not merged
            obj = {}
        name = NETWORK_KEYS[6 if ":" in network else 4]
        obj[name] = network
        raw = json.dumps(obj, separators=(",", ":"))
        vx = parse_vxflow_config(raw, config, underlay)
        self.etcd.put(self.keys.vxflow_config, raw)
        log.info("vxflow config written to %s: %s %s", self.keys.vxflow_config, name, network)
        return vx

    def put_service(self, obj: dict) -> Service:
        """Validate and store one service (see `put_services`)."""
        return self.put_services([obj])[0]

    def put_services(self, objs: Sequence[dict]) -> list[Service]:
        """Validate services (as `vxflow services set` reads them) against the network, the
        service range, the other services and each other, then store their canonical values
        in one etcd transaction: all of them or, if any is refused, none.

        Raises ServiceRejected naming every refused service and its reason (a VIP another
        service holds included) instead of writing what the controllers would reject.
        """
        if len(objs) > MAX_TXN_OPS:
            raise ServicesNotWritten(f"{len(objs)} services in one go: at most {MAX_TXN_OPS} "
                                     "(etcd's transaction limit); split the list")  # fmt: skip
        snap = self.snapshot()
        config = self.require_config(snap)
        problems: list[str] = []
        batch: dict[str, Service] = {}
        for obj in objs:
            name = obj.get("Name") if isinstance(obj, dict) else None
            key = self.keys.service(name if isinstance(name, str) else "")
            current = snap.kvs.get(key)
            revision = current.create_revision if current else snap.revision + 1
            kv = KV(key, json.dumps(obj).encode(), revision, revision)
            checked = check_service(kv, key[len(self.keys.services) :], config, snap.vxflow)
            if isinstance(checked, Rejection):
                problems.append(str(checked))
            elif key in batch:
                problems.append(f"{key}: service {checked.name} is given twice [duplicate_name]")
            else:
                batch[key] = checked
        others = {self.keys.service(s.name): s for s in snap.services}
        _, conflicts = resolve_services({**others, **batch})
        # snap.services were all accepted: a conflict of one of them is what this change
        # would push out (a VIP, the flow budget), and is refused as well
        problems += [str(c) if c.key in batch else f"it would push out {c}" for c in conflicts]
        if problems:
            raise ServiceRejected("\n".join(problems))
        items = [(key, service_to_json(svc), kv.mod_revision if (kv := snap.kvs.get(key)) else 0)
                 for key, svc in batch.items()]  # fmt: skip
        if self.etcd.put_all_if(items) is None:
            raise ServicesNotWritten("the services changed while these were checked: nothing "
                                     "written; run it again")  # fmt: skip
        for svc in batch.values():
            log.info("service %s written: VIP %s, %d ports, %d backends", svc.name,
                     svc.vip, len(svc.ports), len(svc.backends))  # fmt: skip
        return list(batch.values())

    def delete_service(self, name: str) -> bool:
        """Remove a service; False if there was none."""
        return self.etcd.delete(self.keys.service(name)) > 0

    # --- network policies ----------------------------------------------------

    def put_policies(self, objects: Sequence[object]) -> list[NetworkPolicy]:
        """Validate every manifest object, then store them all in one transaction.

        Raises PolicyRejected naming every refusal, and writes nothing, if any is refused.
        """
        policies, errors = parse_policies(list(objects))
        problems = [str(e) for e in errors]
        values = [(self.keys.policy(p.namespace, p.name), policy_to_json(p)) for p in policies]
        for (_, value), policy in zip(values, policies, strict=True):
            if len(value) > MAX_POLICY_BYTES:
                problems.append(f"NetworkPolicy {policy.key_name}: {len(value)} bytes stored "
                                f"exceed {MAX_POLICY_BYTES}")  # fmt: skip
        if len(values) > POLICIES_PER_TXN or sum(len(v) for _, v in values) > MAX_TXN_BYTES:
            problems.append(f"{len(values)} policies of {sum(len(v) for _, v in values)} bytes: "
                            f"one input holds at most {POLICIES_PER_TXN} policies and "
                            f"{MAX_TXN_BYTES} bytes (one etcd transaction); split it")  # fmt: skip
        if problems:
            raise PolicyRejected(problems, len(objects))
        self.etcd.put_all_if([(key, value, None) for key, value in values])
        log.info("%d network policies written: %s", len(policies),
                 ", ".join(p.key_name for p in policies))  # fmt: skip
        return policies

    def delete_policy(self, namespace: str, name: str) -> bool:
        """Remove a policy; False if there was none."""
        return self.etcd.delete(self.keys.policy(namespace, name)) > 0

    def label_namespace(self, name: str, changes: Sequence[str]) -> Namespace:
        """Apply `kubectl label`-style changes (`k=v`, `k-`) to a namespace's labels.

        PolicyInvalid for a bad change; RegistryError if another writer changed the
        labels meanwhile. A stored value that is invalid is replaced, not merged.
        """
        key = self.keys.namespace(name)
        kv = self.etcd.get(key)
        current = check_namespace(kv, name) if kv is not None else None
        labels = current.label_map if isinstance(current, Namespace) else default_labels(name)
        ns = relabel(name, labels, changes)
        if not self.etcd.put_if(key, namespace_to_json(ns), mod_revision=kv.mod_revision if kv else 0):
            raise RegistryError(f"{key} changed while it was being written: try again")
        log.info("namespace %s labelled: %s", name, dict(ns.labels))
        return ns

    # --- listing and watching ------------------------------------------------

    def snapshot(self, pause: Callable[[], None] = lambda: None, *,
                 report: bool = True) -> Snapshot:  # fmt: skip
        """Everything valid under the prefix, at one etcd revision; rejections logged once
        (`report=False`: not logged or counted, for a command that prints them itself).

        `pause` is called every `leases.state.PAUSE_EVERY` entries validated (see `View`).
        """
        kvs, revision = self.etcd.range(self.keys.root, prefix=True, page_size=RANGE_PAGE)
        snap = build_snapshot(self.keys, kvs, revision, pause=pause)
        if report:
            self._reporter.report(snap.rejected)
        return snap

    def list_leases(self) -> list[Lease]:
        return list(self.snapshot().leases)

    def lease_for(
        self, subnet: IPv4Network, config: NetworkConfig | None = None
    ) -> Lease | Rejection | None:
        """The entry of IPv4 `subnet` (the key `<subnet>` or, dual-stack, `<subnet>&...`)
        validated on its own (no cross-lease rules); None if absent."""
        name = self.keys.lease(subnet)
        kvs, _ = self.etcd.range(name, prefix=True)
        kv = next((kv for kv in sorted(kvs, key=lambda kv: kv.key)
                   if kv.key == name or kv.key.startswith(name + "&")), None)  # fmt: skip
        if kv is None:
            return None
        return check_lease(
            kv.key,
            kv.value,
            config or self.get_config(),
            etcd_lease_id=kv.lease or None,
            mod_revision=kv.mod_revision,
        )

    def watch(
        self,
        start_revision: int | None = None,
        *,
        since: Snapshot | None = None,
        callback: Callable[[Event], None] | None = None,
        idle_timeout: float = 30.0,
        max_backoff: float = 5.0,
        pause: Callable[[], None] = lambda: None,
    ) -> Watch:
        """Follow the prefix in a (green) thread; iterate the Watch or pass `callback`.

        - `since=snapshot`: deliver every change after that snapshot.
        - `start_revision=r`: deliver every change made at revision r or later.
        - neither: deliver the current state as added events, then changes.
        Always call `stop()` (or use it as a context manager) when done.
        `pause` is called inside long validations (see `leases.state.View`).
        """
        return Watch(
            EtcdClient(self._endpoints, timeout=self._timeout, access=self._access),
            self.keys,
            since=since,
            start_revision=start_revision,
            callback=callback,
            idle_timeout=idle_timeout,
            max_backoff=max_backoff,
            pause=pause,
        )
