"""The flannel-compatible subnet registry in etcd: config, leases, endpoints, watch.

Writes exactly what flannel writes (key names, value JSON, one etcd lease with
flannel's TTL per subnet) and creates subnets with an etcd transaction that
only succeeds if the key does not exist, so any mix of vxflow and flannel
nodes on one prefix never hands a subnet out twice.
"""

from __future__ import annotations

import json
import logging
import random
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from urllib.parse import urlsplit

from leases.config import leasable, parse_config, subnet_range
from leases.controllers import claim_to_json, member_to_json
from leases.errors import (
    ConfigMissing,
    LeaseLost,
    NetworkExhausted,
    RegistryError,
    ServiceRejected,
    ServicesNotWritten,
    SubnetTaken,
)
from leases.etcd_client import DEFAULT_ENDPOINTS, NO_ACCESS, RANGE_PAGE, EtcdAccess, EtcdClient
from leases.etcd_v2 import config_note
from leases.events import Event
from leases.keys import KV, Keys
from leases.liveness import liveness_to_json
from leases.metrics import RejectionReporter
from leases.model import (
    FLANNEL_DEFAULT_PREFIX,
    LEASE_TTL_SECONDS,
    RENEW_MARGIN_SECONDS,
    Claim,
    Endpoint,
    Lease,
    Liveness,
    Member,
    NetworkConfig,
    Service,
    VxflowConfig,
)
from leases.services import (
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
    parse_subnet_name,
    public_ip_of,
    public_ip_problem,
)
from leases.watch import Watch

log = logging.getLogger(__name__)

MAX_TXN_OPS = 128  # etcd's --max-txn-ops default: the most puts one transaction may hold
CLAIMS_PER_TXN = 100  # below etcd's default --max-txn-ops (128)


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

    def _subnet_kvs(self) -> list[KV]:
        kvs, _ = self.etcd.range(self.keys.subnets, prefix=True)
        return kvs

    def acquire(
        self,
        public_ip: IPv4Address | str,
        vtep_mac: str,
        *,
        previous_subnet: IPv4Network | None = None,
        ttl: int = LEASE_TTL_SECONDS,
        backend_data_extra: Iterable[tuple[str, object]] = (),
    ) -> Lease:
        """Get this node's subnet lease, as flannel's LocalManager.AcquireLease does.

        Reuses the lease (or reservation) that already carries `public_ip`,
        else `previous_subnet` if it is free and fits the config, else a random
        free subnet in [SubnetMin, SubnetMax]. Creation is an etcd transaction
        that succeeds only if the key does not exist; a lost race is retried.
        Raises NetworkExhausted when no subnet is free.
        """
        cfg = self.get_config()
        public_ip = IPv4Address(public_ip)
        problem = public_ip_problem(public_ip, cfg)
        if problem:
            raise ValueError(problem)
        template = Lease(
            subnet=cfg.subnet_min or cfg.network,
            public_ip=public_ip,
            vni=cfg.backend.vni,
            vtep_mac=normalize_mac(vtep_mac),
            backend_data_extra=tuple(sorted(backend_data_extra)),
        )
        _, _, size = subnet_range(cfg)
        for _ in range(size + 16):  # each lost race means another node got a subnet
            kvs = self._subnet_kvs()
            lease = self._reuse(cfg, kvs, template, ttl)
            if lease is None:
                subnet = self._pick(cfg, kvs, public_ip, previous_subnet)
                lease = self._create(replace(template, subnet=subnet), ttl)
            if lease is not None:
                log.info(
                    "lease %s for %s (etcd lease %s)", lease.subnet, public_ip, lease.etcd_lease_id
                )
                return lease
        raise RegistryError(
            f"gave up acquiring a subnet for {public_ip} after {size + 16} lost races"
        )

    def _reuse(self, cfg: NetworkConfig, kvs: list[KV], template: Lease, ttl: int) -> Lease | None:
        """Claim the entry that already carries our PublicIP, if it fits the config."""
        mine = []
        for kv in kvs:
            if public_ip_of(kv.value) != template.public_ip:
                continue
            try:
                subnet = parse_subnet_name(kv.key.rsplit("/", 1)[-1])
            except ValueError:
                continue
            if leasable(cfg, subnet) or (kv.lease == 0 and subnet.subnet_of(cfg.network)):
                mine.append((subnet, kv))
            elif kv.lease:
                log.info(
                    "deleting %s: lease of %s no longer fits the config", kv.key, template.public_ip
                )
                self.etcd.delete_if(kv.key, mod_revision=kv.mod_revision)
        if not mine:
            return None
        subnet, kv = min(mine, key=lambda item: item[0])
        lease = replace(template, subnet=subnet)
        value = lease_to_json(lease)
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

    def _pick(
        self,
        cfg: NetworkConfig,
        kvs: list[KV],
        public_ip: IPv4Address,
        previous: IPv4Network | None,
    ) -> IPv4Network:
        first, step, count = subnet_range(cfg)
        taken: set[int] = set()  # indexes of [SubnetMin, SubnetMax] blocked by any subnet key
        for kv in kvs:
            try:
                subnet = parse_subnet_name(kv.key.rsplit("/", 1)[-1])
            except ValueError:
                continue
            lo = (int(subnet.network_address) - first) // step
            hi = (int(subnet.broadcast_address) - first) // step
            taken.update(range(max(lo, 0), min(hi, count - 1) + 1))
        if previous is not None:
            idx = (int(previous.network_address) - first) // step
            if leasable(cfg, previous) and idx not in taken:
                log.info("reusing previous subnet %s for %s", previous, public_ip)
                return previous
            log.info(
                "previous subnet %s is taken or does not fit the config; picking another", previous
            )
        if len(taken) >= count:
            raise NetworkExhausted(
                f"no free /{cfg.subnet_len} in {cfg.subnet_min}..{cfg.subnet_max}: all {count} are leased"
            )
        start = random.randrange(count)  # random, as flannel, so racing nodes rarely collide
        idx = next((start + i) % count for i in range(count) if (start + i) % count not in taken)
        return IPv4Network((first + idx * step, cfg.subnet_len))

    def _create(self, lease: Lease, ttl: int) -> Lease | None:
        etcd_lease = self.etcd.grant(ttl)
        key = self.keys.lease(lease.subnet)
        if not self.etcd.put_if(key, lease_to_json(lease), mod_revision=0, lease=etcd_lease):
            self.etcd.revoke(etcd_lease)
            log.debug("lost the race for %s; retrying", lease.subnet)
            return None
        return replace(lease, etcd_lease_id=etcd_lease, mod_revision=self._mod_revision(key))

    def renew(self, lease: Lease, *, ttl: int = LEASE_TTL_SECONDS) -> Lease:
        """Refresh the lease's TTL; if it expired or vanished, take the subnet back.

        Raises LeaseLost if another node holds the subnet now. If the returned
        lease has another etcd_lease_id, the node's endpoints expired with the
        old one and must be published again.
        """
        key = self.keys.lease(lease.subnet)
        if lease.etcd_lease_id is not None and self.etcd.keepalive(lease.etcd_lease_id) > 0:
            kv = self.etcd.get(key)
            if kv is not None and kv.lease == lease.etcd_lease_id:
                return replace(lease, mod_revision=kv.mod_revision)
        kv = self.etcd.get(key)
        if kv is None:
            renewed = self._create(lease, ttl)
            if renewed is None:
                raise LeaseLost(
                    f"{lease.subnet} was taken by another node while our lease had expired"
                )
            log.warning("lease %s had expired; re-created it", lease.subnet)
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
        self, subnet: IPv4Network, public_ip: IPv4Address | str, vtep_mac: str | None = None
    ) -> None:
        """Pin `subnet` to `public_ip` without a TTL, as flannel's reservations.

        The node with that PublicIP gets this subnet from `acquire` and fills in
        its VtepMAC. Raises SubnetTaken if another PublicIP holds it.
        """
        cfg = self.get_config()
        public_ip = IPv4Address(public_ip)
        if not (subnet.subnet_of(cfg.network) and subnet.prefixlen == cfg.subnet_len):
            raise ValueError(f"{subnet} is not a /{cfg.subnet_len} of {cfg.network}")
        problem = public_ip_problem(public_ip, cfg)
        if problem:
            raise ValueError(problem)
        key = self.keys.lease(subnet)
        if vtep_mac is None:
            value = f'{{"PublicIP":"{public_ip}","PublicIPv6":null}}'
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
        log.info("reserved %s for %s", subnet, public_ip)

    def unreserve(self, subnet: IPv4Network) -> bool:
        """Delete a reservation (a subnet key without TTL); False if there was none."""
        kv = self.etcd.get(self.keys.lease(subnet))
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

    # --- node liveness ----------------------------------------------------------

    def put_liveness(self, public_ip: IPv4Address, ttl: int) -> int:
        """(Re)write this node's liveness record on a new etcd lease of `ttl` seconds; the
        lease's id, to keep alive (`etcd.keepalive`) and revoke on a clean stop."""
        lease = self.etcd.grant(ttl)
        self.etcd.put(self.keys.node(public_ip), liveness_to_json(Liveness(public_ip, ttl)),
                      lease=lease)  # fmt: skip
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
        `<prefix>/vxflow/config`, keeping the key's other fields."""
        config = self.get_config()
        snap = self.snapshot()
        underlay = [*self.etcd_addresses(), *underlay_of(snap.leases, snap.members)]
        kv = self.etcd.get(self.keys.vxflow_config)
        obj = json.loads(kv.value) if kv is not None else {}
        if not isinstance(obj, dict):  # an invalid value is replaced, not merged
            obj = {}
        obj["ServiceNetwork"] = network
        raw = json.dumps(obj, separators=(",", ":"))
        vx = parse_vxflow_config(raw, config, underlay)
        self.etcd.put(self.keys.vxflow_config, raw)
        log.info("vxflow config written to %s: ServiceNetwork %s", self.keys.vxflow_config, network)
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
        """The entry at `subnet` validated on its own (no cross-lease rules); None if absent."""
        kv = self.etcd.get(self.keys.lease(subnet))
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
