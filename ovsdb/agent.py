"""The node agent: holds this node's lease, keeps br-int bootstrapped, publishes pod endpoints.

Pod-port convention (what a CNI plugin must do): add the pod's veth to br-int
and set on its Interface `external_ids:attached-mac=<pod MAC>` and
`external_ids:vxflow-ip=<pod IPv4>` (see ovsdb/pods.py). The agent publishes
`<prefix>/vxflow/endpoints/<subnet-key>/<ip>` = {IP, MAC, OFPort, Port},
bound to the node's etcd lease, and deletes it when the port goes. Malformed
values, or an IP outside this node's subnet, are logged once and not published.

Shape: one thread, one loop. It owns the IDL (python-ovs is not thread-safe),
waits at most a second for OVSDB updates, and on each change (or every
`resync_interval`) re-scans pod ports and publishes their endpoints first (a
new pod is reachable without waiting for anything else), then re-converges
the bridge. With `ip_masq` it keeps flannel's masquerade rules in place
(ovsdb/ipmasq.py), checking them every `masq_interval`. subnet.env
is written after the first successful converge of a lease, so its appearance
means the node's gateway is ready for pods. etcd work
(endpoint reconciliation, lease renewal) is done in the same loop with its own
backoff, so an etcd outage delays only etcd work: the bridge and the lease we
hold stay as they are, and on recovery the agent re-reads what etcd has and
reconciles (no duplicate keys: an endpoint's key is its IP). The IDL reconnects
to a restarted ovsdb-server by itself and the reload triggers a converge.
SIGTERM/SIGINT stop the loop within a second; the lease is kept (as flanneld
does) unless `release_on_exit`.

A registry watch (its own thread) hands the loop the controller replicas as
they register and leave: the bridge's controllers are the `--controller`
targets plus every replica's advertised address, so a replica added to the
cluster needs no node restart. A config change seen there is acted on at once
(the watch wakes the loop from its wait for OVSDB) rather than at the periodic
resync; so is a change of vxflow's config: its ServiceNetwork is routed into
the gateway port (the node reaches service VIPs through the switch).

Health checks: the agent follows the services (from its watch) and hands the prober
(ovsdb/prober.py, a thread of its own with one selector for every probe) the backends of
services with a `HealthCheck` that are pods on this node (by either of their addresses:
an IPv6 service's backends are its pods' IPv6 ones); the prober wakes the loop when a
verdict changes, and the loop publishes the verdicts (`<prefix>/vxflow/health/...`,
leases/health.py) bound to the node's lease, as its endpoints, deleting those of backends
or checks that went.

The node's liveness record (`<prefix>/vxflow/nodes/<PublicIP>`, leases/liveness.py) is
kept alive by a thread of its own (ovsdb/liveness.py says why) from the moment the agent
holds a lease and OVSDB answers, and revoked on a clean stop.

With the config's Backend.DirectRouting on, the agent decides which peers are direct
(flannel's rule, ovsdb/direct.py) when the leases change (from the same watch), when the
kernel's routes, addresses or links change (a netlink watch), and at each resync; it
installs their routes and the ingress filter, then names them in its liveness record,
from which the controller compiles the direct flows. Off, it removes its routes and
filter and the record names none.

A flow-restore-wait that a restart of ovs-vswitchd left set is cleared here
(`_flow_restore_wait`, checked first on every turn). With a metrics port the
agent serves its Prometheus metrics (ovsdb/metrics.py) from a thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import TypeVar

from etcd3gw.exceptions import Etcd3Exception
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_when_event_set
from tenacity import wait_exponential as wait_exp

from daemons.httpd import serve_in_thread, wsgi_app
from daemons.notify import Notifier
from flows.ipv6 import dual_stack
from flows.ports import GATEWAY_PORT, vtep_mac_for, vtep_mac_v6_for
from leases.config import ConfigError, ipv6_notice
from leases.controllers import target_ip
from leases.errors import ConfigMissing, EtcdUnavailable, LeaseLost, RegistryError
from leases.events import (
    ConfigChanged,
    Event,
    LeaseAdded,
    LeaseChanged,
    LeaseRemoved,
    MemberAdded,
    MemberRemoved,
    ServiceAdded,
    ServiceRemoved,
    VxflowConfigChanged,
)
from leases.health import holds
from leases.liveness import DEFAULT_TTL as DEFAULT_LIVENESS_TTL
from leases.model import (
    LEASE_TTL_SECONDS,
    RENEW_MARGIN_SECONDS,
    Endpoint,
    Lease,
    Member,
    NetworkConfig,
    Readiness,
    Service,
    VxflowConfig,
)
from leases.registry import Registry, renew_interval
from leases.services import underlay_problem
from leases.subnet_env import (
    overlay_mtu,
    previous_ipv6_subnet,
    previous_subnet,
    subnet_env_for,
    write_subnet_env,
)
from ovsdb import idl as ovsidl
from ovsdb import metrics
from ovsdb.bootstrap import (
    BootstrapError,
    BootstrapOptions,
    bootstrap,
    clear_flow_restore_wait,
    controller_connected,
    controller_targets,
    flow_count,
    flow_restore_wait_set,
    with_underlay_mtu,
)
from ovsdb.direct import DirectError, DirectRouting, DroppedCount, RouteWatch, candidates
from ovsdb.ipmasq import IpMasq, IpMasqError
from ovsdb.iproute import IprouteError, gateway_to
from ovsdb.liveness import LivenessKeeper
from ovsdb.plug import foreign_ports
from ovsdb.pods import PodPort, PodRejection, endpoints_from_ports
from ovsdb.prober import Prober, Target

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class AgentSettings:
    public_ip: IPv4Address
    subnet_file: Path
    ovsdb: str
    controllers: tuple[str, ...]  # given on the command line; the replicas' are added
    options: BootstrapOptions = field(default_factory=BootstrapOptions)
    ip_masq: bool = False
    release_on_exit: bool = False
    resync_interval: float = 30.0
    masq_interval: float = 5.0  # how often the masquerade rules are checked (flannel: 5 s)
    max_backoff: float = 30.0
    flow_restore_timeout: float = 10.0  # clear a flow-restore-wait nothing was restored under
    lease_ttl: int = LEASE_TTL_SECONDS
    renew_margin: int = RENEW_MARGIN_SECONDS
    metrics_port: int = 0  # serve Prometheus metrics on metrics_listen:PORT; 0 = off
    metrics_listen: str = "127.0.0.1"
    public_ipv6: IPv6Address | None = None  # the lease's PublicIPv6 under EnableIPv6
    liveness_ttl: int = DEFAULT_LIVENESS_TTL  # seconds this node's liveness record outlives its agent


@dataclass
class _Backoff:
    """When an etcd task may run again: now, or after an exponentially growing pause."""

    max_delay: float
    failures: int = 0
    not_before: float = 0.0

    def due(self, now: float) -> bool:
        return now >= self.not_before

    def failed(self, now: float) -> float:
        self.failures += 1
        delay = min(self.max_delay, 0.5 * 2 ** (self.failures - 1))
        self.not_before = now + delay
        return delay

    def succeeded(self) -> None:
        self.failures, self.not_before = 0, 0.0


def pod_ports(idl, bridge: str) -> list[PodPort]:
    """Every Interface on `bridge` that vxflow did not create, as plain values."""
    ports = []
    for port in foreign_ports(idl, bridge):
        for iface in port.interfaces:
            ofport = iface.ofport[0] if iface.ofport else None
            ports.append(PodPort(iface.name, ofport, tuple(sorted(iface.external_ids.items()))))
    return ports


class Agent:
    """Run with `run()`; stop with `stop()` (signal handlers call it)."""

    def __init__(self, settings: AgentSettings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self._stop = threading.Event()
        self.config: NetworkConfig | None = None
        self._ipv6_noted = False  # the one warning that IPv6 is not routed yet was logged
        # the ServiceNetwork and IPv6ServiceNetwork, if any
        self.service_routes: tuple[IPv4Network | IPv6Network, ...] = ()
        self._refused: tuple[IPv4Network | IPv6Network, ...] | None = None  # the ranges last refused
        self.lease: Lease | None = None
        self._desired: dict[IPv4Address, Endpoint] = {}
        self._published: dict[IPv4Address, Endpoint] | None = None  # None: re-read from etcd
        self._reported: set[PodRejection] = set()
        self._etcd = _Backoff(settings.max_backoff)
        self._renew_at = 0.0
        self._lease_expires = 0.0  # monotonic: the last acquisition or renewal + its TTL
        self._dirty = True  # re-converge and re-scan on the next loop turn
        self._env_pending = False  # a (new) lease whose subnet.env is not written yet
        self._members: dict[str, Member] = {}  # controller replicas, from the watch
        self._services: dict[str, Service] = {}  # from the watch: what the prober checks
        self._health_published: dict[tuple[str, IPv4Address], Readiness] | None = None
        self.prober = Prober(on_change=self._wake)
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._wake_r = self._wake_w = -1  # run(): a pipe through which the watch wakes the loop
        self._wake_lock = threading.Lock()  # (a watch outliving its stop must not write on)
        self._masq: IpMasq | None = None
        self._masq_at = 0.0  # next check of the masquerade rules
        self._masq_settled = False  # without --ip-masq: our table is gone, nothing more to do
        self._restore_wait_since: float | None = None  # flow-restore-wait seen, no controller
        self.notifier = Notifier.from_environ()  # systemd's Type=notify and watchdog
        # DirectRouting (ovsdb/direct.py): every node's lease, from the watch; whether the
        # decision is due (a lease or a kernel route changed); the node side, made when used
        self._leases: dict[IPv4Network, Lease] = {}
        self._direct_due = threading.Event()
        self._direct: DirectRouting | None = None
        metrics.DIRECT_INGRESS_DROPPED.source = DroppedCount().read  # read when scraped
        self._direct_clean = False  # DirectRouting off and nothing of ours left: done
        self._keeper: LivenessKeeper | None = None

    def stop(self, *_: object) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    # -- startup ---------------------------------------------------------------
    def _retry(self, what: str, fn: Callable[[], T], errors: tuple[type[Exception], ...]) -> T:
        """Call `fn` until it succeeds or the agent is stopped (then raise RetryError)."""

        def before_sleep(state) -> None:
            log.warning("%s failed: %s; retrying in %.1fs", what, state.outcome.exception(),
                        state.next_action.sleep)  # fmt: skip

        retrying = Retrying(
            retry=retry_if_exception_type(errors),
            wait=wait_exp(multiplier=0.5, max=self.settings.max_backoff),
            stop=stop_when_event_set(self._stop),
            sleep=self._stop.wait,
            before_sleep=before_sleep,
        )
        return retrying(fn)

    def run(self) -> int:
        """The agent's life; returns the exit status (0 after a requested stop)."""
        self._serve_metrics()
        try:
            self.config = self._retry("reading the network config", self.registry.get_config,
                                      (EtcdUnavailable, ConfigMissing))  # fmt: skip
            self._acquire()
            idl = self._retry(f"connecting to OVSDB {self.settings.ovsdb}",
                              lambda: ovsidl.connect(self.settings.ovsdb),
                              (ovsidl.OvsdbUnavailable,))  # fmt: skip
        except RetryError:
            log.info("stopped before the agent was up")
            return 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        watch = self.registry.watch(callback=self._note_event)
        keeper = LivenessKeeper(self.registry, self.settings.public_ip, self.settings.liveness_ttl)
        self._keeper = keeper
        keeper.start()
        self.prober.start()
        routes = RouteWatch(self._routes_changed)
        try:
            self._loop(idl)
        except RetryError:
            log.info("stopped while acquiring the lease again")
        finally:
            self.prober.stop()
            routes.stop()
            if self._direct is not None:
                self._direct.close()
            keeper.stop()
            self.notifier.stopping()
            watch.stop()
            idl.close()
            self._exit()
            with self._wake_lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1
        return 0

    def _serve_metrics(self) -> None:
        if not self.settings.metrics_port:
            return
        metrics.LEASE_TTL.set_function(self.lease_ttl_left)
        server = serve_in_thread(wsgi_app(), self.settings.metrics_listen, self.settings.metrics_port)
        log.info("serving metrics on http://%s:%d/metrics", *server.server_address[:2])

    def lease_ttl_left(self) -> float:
        """Seconds the lease lives unrenewed (infinite for a reservation, 0 without a lease)."""
        if self.lease is None:
            return 0.0
        if self.lease.etcd_lease_id is None:
            return float("inf")
        return max(self._lease_expires - time.monotonic(), 0.0)

    def _note_event(self, event: Event) -> None:
        """(The watch's thread.) Hand the loop what it acts on."""
        if isinstance(event, MemberAdded | MemberRemoved | ConfigChanged | VxflowConfigChanged
                      | ServiceAdded | ServiceRemoved | LeaseAdded | LeaseChanged
                      | LeaseRemoved):  # fmt: skip
            self._events.put(event)
            self._wake()

    def _wake(self) -> None:
        """(Any thread.) Wake the loop from its wait for OVSDB."""
        with self._wake_lock, contextlib.suppress(BlockingIOError):  # full: it is awake
            if self._wake_w >= 0:
                os.write(self._wake_w, b"\0")

    def _routes_changed(self) -> None:
        """(The route watch's thread.) The kernel's routes changed: decide again."""
        if self.config is not None and self.config.backend.direct_routing:
            self._direct_due.set()
            self._wake()

    def _take_events(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            if isinstance(event, MemberAdded):
                self._members[event.member.id] = event.member
            elif isinstance(event, MemberRemoved):
                self._members.pop(event.member.id, None)
            elif isinstance(event, VxflowConfigChanged):
                self._set_service_routes(event.config)
            elif isinstance(event, ServiceAdded | ServiceRemoved):
                svc = event.service
                if isinstance(event, ServiceAdded):
                    self._services[svc.name] = svc
                elif self._services.get(svc.name) == svc:
                    del self._services[svc.name]
                self._set_probe_targets()
                continue
            elif isinstance(event, LeaseAdded | LeaseChanged | LeaseRemoved):
                if isinstance(event, LeaseRemoved):
                    self._leases.pop(event.lease.subnet, None)
                else:
                    self._leases[event.lease.subnet] = event.lease
                self._direct_due.set()
                continue
            else:  # ConfigChanged: the next etcd turn re-reads it (and re-takes the lease)
                self._published = None
                continue
            self._dirty = True

    def controller_targets(self) -> tuple[str, ...]:
        targets = controller_targets(self.settings.controllers, self._members.values())
        metrics.CONTROLLERS.set(len(targets))
        return targets

    def _acquire(self) -> None:
        """Get (or get back) this node's lease; subnet.env follows the next converge."""
        if not self._ipv6_noted and (notice := ipv6_notice(self.config)):
            log.warning("%s", notice)
            self._ipv6_noted = True
        hint = self.lease.subnet if self.lease else previous_subnet(self.settings.subnet_file)
        hint6 = self.lease.ipv6_subnet if self.lease else previous_ipv6_subnet(
            self.settings.subnet_file)  # fmt: skip
        public_ip, public_ipv6 = self.settings.public_ip, self.settings.public_ipv6
        self.lease = self._retry(
            "acquiring a subnet lease",
            lambda: self.registry.acquire(
                public_ip, vtep_mac_for(public_ip), previous_subnet=hint,
                ttl=self.settings.lease_ttl, public_ipv6=public_ipv6,
                vtep_mac_v6=vtep_mac_v6_for(public_ip), previous_ipv6_subnet=hint6,
            ),
            (EtcdUnavailable,),
        )  # fmt: skip
        log.info("holding lease %s for %s (etcd lease %s)", self.lease.label, public_ip,
                 self.lease.etcd_lease_id)  # fmt: skip
        metrics.ACQUISITIONS.inc()
        metrics.LEASE.clear()
        metrics.LEASE.labels(str(self.lease.subnet), str(public_ip)).set(1)
        self._schedule_renewal()
        self._env_pending = True
        self._published = None

    def _write_subnet_env(self) -> None:
        """subnet.env tells CNI the node is ready: written once the bridge has converged."""
        mtu = overlay_mtu(
            self.config, with_underlay_mtu(self.settings.options, self.lease).underlay_mtu,
            dual_stack(self.config, self.lease),
        )
        env = subnet_env_for(self.config, self.lease, mtu, self.settings.ip_masq)
        try:
            write_subnet_env(self.settings.subnet_file, env)
        except OSError as exc:
            log.error("cannot write %s: %s (retrying at the next resync)",
                      self.settings.subnet_file, exc)  # fmt: skip
            return
        log.info("wrote %s: FLANNEL_SUBNET=%s FLANNEL_MTU=%d", self.settings.subnet_file,
                 env.subnet, mtu)  # fmt: skip
        self._env_pending = False
        # lease held, bridge converged, subnet.env written: what CNI and the runtime wait for
        self.notifier.ready(f"holding lease {self.lease.subnet} for {self.settings.public_ip}")

    def _exit(self) -> None:
        if self.settings.release_on_exit and self.lease is not None:
            try:
                self.registry.release(self.lease)
                log.info("released lease %s", self.lease.subnet)
            except EtcdUnavailable as exc:
                log.error(
                    "could not release lease %s: %s (it expires by TTL)", self.lease.subnet, exc
                )
        elif self.lease is not None:
            log.info("keeping lease %s (use --release-on-exit to give it up)", self.lease.subnet)

    # -- the loop ------------------------------------------------------------------
    def _loop(self, idl) -> None:
        next_resync, was_connected, was_session = 0.0, True, ovsidl.session_seqno(idl)
        while not self._stop.is_set():
            busy = self._dirty or not next_resync  # work left over: do not wait for OVSDB
            self._dirty |= ovsidl.run_once(idl, timeout=0.0 if busy else 1.0, wake=self._wake_r)
            self._take_events()
            now = time.monotonic()
            self.notifier.watchdog(now)  # the loop turns: neither OVSDB nor etcd holds it up
            connected, session = ovsidl.is_connected(idl), ovsidl.session_seqno(idl)
            # lost and back between two turns (the loop held up by etcd): up at both looks,
            # but the session's number moved: a reconnect all the same
            if connected != was_connected or (connected and session != was_session):
                log.warning("OVSDB %s %s", self.settings.ovsdb,
                            "reconnected" if connected else "connection lost; reconnecting")  # fmt: skip
                metrics.OVSDB_RECONNECTS.inc(connected)
            was_connected, was_session = connected, session
            metrics.OVSDB_CONNECTED.set(connected)
            if connected:  # before any etcd work, which may wait out its timeout
                self._flow_restore_wait(idl, now)
            published = False
            if connected and (self._dirty or now >= next_resync):
                if now >= next_resync:
                    self._published = None  # periodically re-read etcd: repairs deleted keys
                # Pod ports first: a new pod's endpoint must not wait for the bridge's
                # converge (whose refresh waits for OVSDB to go quiet).
                seen = idl.change_seqno
                self._scan(idl)
                if published := self._etcd.due(now):
                    self._etcd_work(now)
                converged = self._converge(idl)
                # what the converge's refresh took in (a port added meanwhile) is scanned next turn
                self._dirty = not converged or idl.change_seqno != seen
                if now >= next_resync:
                    self._direct_due.set()  # periodically: repairs a route or rule removed
                next_resync = now + self.settings.resync_interval
            if connected and self._direct_due.is_set() and not self._env_pending:
                self._direct_due.clear()  # (a change from here on sets it again)
                self._direct_routing()
            if not published and self._etcd.due(now):
                self._etcd_work(now)
            if now >= self._masq_at:
                self._masq_at = now + self.settings.masq_interval
                self._ip_masq()

    def _converge(self, idl) -> bool:
        try:
            changes = bootstrap(idl, self.config, self.lease, self.controller_targets(),
                                self.settings.options, fresh=True,
                                service_routes=self.service_routes)  # fmt: skip
        except (BootstrapError, IprouteError) as exc:
            metrics.BOOTSTRAP_FAILURES.inc()
            log.error("bootstrap of %s failed: %s (retrying)", self.settings.options.bridge, exc)
            return False
        metrics.BOOTSTRAP_CHANGES.inc(len(changes))
        if changes:
            log.info("converged %s: %d change(s)", self.settings.options.bridge, len(changes))
        if self._env_pending:
            self._write_subnet_env()
        return True

    def _direct_routing(self) -> None:
        """Decide which peers are direct, install their routes and the filter, publish the
        decision (in this order: the controller's flows never run ahead of the routes).
        Called once the gateway port is up (it is the filter's exception)."""
        on = self.config.backend.direct_routing
        try:
            if self._direct is None:  # (also when off: a previous run's routes are cleared)
                self._direct = DirectRouting()
            if not on:
                if not self._direct_clean and (removed := self._direct.clear()):
                    log.info("DirectRouting off: removed %d direct route(s)", removed)
                self._direct_clean = True  # (an earlier run's are gone: checked once)
                self._keeper.set_direct(None)
                return
            self._direct_clean = False
            own = self.lease
            peers = candidates(self.config, own, self._leases.values())
            reachable = self._direct.decide(peers, six=own.ipv6_subnet is not None)
            direct = [le for le in peers if le.public_ip in reachable or le.public_ipv6 in reachable]
            if changes := self._direct.apply(own, GATEWAY_PORT, direct, reachable):
                metrics.DIRECT_ROUTE_CHANGES.inc(changes)
                log.info("DirectRouting: %d direct peer(s) %s; %d route change(s)", len(direct),
                         sorted(str(le.public_ip) for le in direct), changes)  # fmt: skip
            metrics.DIRECT_PEERS.set(len(direct))
            self._keeper.set_direct(reachable)
        except (DirectError, IprouteError, OSError, ImportError) as exc:
            metrics.DIRECT_ERRORS.inc()
            log.error("DirectRouting: %s (retrying at the next change or resync)", exc)

    def _ip_masq(self) -> None:
        """With --ip-masq, keep flannel's rules in place; without, remove ours (once)."""
        if self._masq_settled:
            return
        try:
            if self._masq is None:
                self._masq = IpMasq()
            if not self.settings.ip_masq:
                if self._masq.remove():
                    log.info("removed the masquerade rules of an earlier --ip-masq run")
                self._masq_settled = True
            elif self._masq.ensure(self.config.network, self.lease.subnet, self._ipv6_masq()):
                metrics.MASQ_INSTALLS.inc()
                if self._masq.installs == 1:
                    log.info("installed the masquerade rules for %s (this node %s)",
                             self.config.network, self.lease.label)  # fmt: skip
                else:
                    log.warning("the masquerade rules were changed or deleted; restored them")
        except ImportError as exc:  # no python3-nftables: nothing of ours can be there either
            self._masq_settled = not self.settings.ip_masq
            if self.settings.ip_masq:
                metrics.MASQ_ERRORS.inc()
                log.error("ip-masq: python3-nftables is not importable (%s)", exc)
        except (IpMasqError, OSError) as exc:
            metrics.MASQ_ERRORS.inc()
            log.error("ip-masq: %s (retrying in %.0fs)", exc, self.settings.masq_interval)

    def _ipv6_masq(self) -> tuple[IPv6Network, IPv6Network] | None:
        """The IPv6Network and subnet flannel's IPv6 rules are for (a dual-stack node)."""
        if not dual_stack(self.config, self.lease):
            return None
        return self.config.ipv6.network, self.lease.ipv6_subnet

    def _scan(self, idl) -> None:
        self._desired, rejected = endpoints_from_ports(
            pod_ports(idl, self.settings.options.bridge), self.lease
        )
        for rejection in set(rejected) - self._reported:
            log.warning("%s; not published", rejection)
            metrics.POD_REJECTIONS.labels(reason=rejection.reason.split(" ")[0]).inc()
        self._reported = set(rejected)
        self._set_probe_targets()

    def _set_probe_targets(self) -> None:
        """The backends the prober checks: those of services with a HealthCheck that are
        pods on this node."""
        local = {*self._desired, *(ep.ipv6 for ep in self._desired.values() if ep.ipv6)}
        self.prober.set_targets(
            Target(svc.name, b.ip, svc.health_check)
            for svc in self._services.values() if svc.health_check is not None
            for b in svc.backends if b.ip in local
        )  # fmt: skip

    def _etcd_work(self, now: float) -> None:
        try:
            if self._published is None:  # startup, periodic resync, or after an etcd error
                self._reload_config()
            if now >= self._renew_at:
                self._renew()
            self._sync_endpoints()
            self._sync_health()
        except (RegistryError, Etcd3Exception) as exc:
            metrics.ETCD_ERRORS.inc()
            self._published = None
            delay = self._etcd.failed(now)
            log.warning("etcd: %s; retrying in %.1fs (lease and bridge kept)", exc, delay)
            return
        self._etcd.succeeded()

    def _underlay(self) -> list[tuple[IPv4Address | IPv6Address, str]]:
        """What this node must keep reaching outside its gateway port: its PublicIP (and
        PublicIPv6), etcd, the controllers, and the next hops of its routes to them."""
        peers = [*self.registry.etcd_addresses()]
        peers += [(ip, f"controller {t}") for t in self.controller_targets() if (ip := target_ip(t))]
        out: list[tuple[IPv4Address | IPv6Address, str]] = [
            (self.settings.public_ip, "this node's PublicIP"), *peers]
        if self.settings.public_ipv6 is not None:
            out.append((self.settings.public_ipv6, "this node's PublicIPv6"))
        for ip, what in peers:
            if (gateway := gateway_to(ip)) is not None:
                out.append((gateway, f"this node's next hop to {what}"))
        return out

    def _set_service_routes(self, vx: VxflowConfig) -> None:
        """Both families' ranges (bootstrap routes IPv6's on a dual-stack node only)."""
        routes = tuple(n for n in (vx.service_network, vx.service_network6) if n)
        if routes == self.service_routes:
            return  # (checked when it came: `ip route get` per peer is not run per resync)
        underlay = self._underlay() if routes else []
        problem = next((p for n in routes if (p := underlay_problem(n, underlay))), None)
        if problem:
            if routes != self._refused:  # once per value, not per resync
                self._refused = routes
                metrics.SERVICE_NETWORK_REFUSED.inc()
                log.error("ServiceNetwork refused: %s; keeping the previous one", problem)
            return
        self._refused = None
        log.info("ServiceNetwork %s: routed into the gateway port",
                 " and ".join(map(str, routes)) or "removed")  # fmt: skip
        self.service_routes = routes
        self._dirty = True

    def _reload_config(self) -> None:
        """Follow a changed network config: take the lease again (it may no longer fit);
        and vxflow's own (the ServiceNetwork the gateway port routes)."""
        try:
            config = self.registry.get_config()
        except ConfigError as exc:
            log.error("network config in etcd is invalid now: %s; keeping the previous one", exc)
            return
        try:
            self._set_service_routes(self.registry.get_vxflow_config(config))
        except ConfigError as exc:
            log.error("vxflow config in etcd is invalid: %s; keeping the previous one", exc)
        if config != self.config:
            log.warning("network config changed: %s -> %s", self.config, config)
            metrics.CONFIG_CHANGES.inc()
            self.config = config
            self._acquire()
            self._dirty = True
            self._direct_due.set()  # DirectRouting may have been turned on or off

    def _renew(self) -> None:
        try:
            renewed = self.registry.renew(self.lease, ttl=self.settings.lease_ttl)
        except LeaseLost as exc:
            metrics.LOST.inc()
            log.error("lease %s lost: %s; acquiring a new one", self.lease.subnet, exc,
                      extra={"event": "lease_lost", "subnet": str(self.lease.subnet)})  # fmt: skip
            self._acquire()  # a new subnet: the next loop turn re-bootstraps the gateway
            self._dirty = True
            return
        if renewed.etcd_lease_id != self.lease.etcd_lease_id:
            log.warning("lease %s is bound to a new etcd lease; re-publishing endpoints",
                        renewed.subnet)  # fmt: skip
            self._published = {}  # the old etcd lease took our endpoints with it
            self._health_published = {}  # and the verdicts
        self.lease = renewed
        metrics.RENEWED.inc()
        self._schedule_renewal()

    def _schedule_renewal(self) -> None:
        ttl, margin = self.settings.lease_ttl, self.settings.renew_margin
        now = time.monotonic()
        self._lease_expires = now + ttl
        self._renew_at = now + renew_interval(ttl, margin)

    def _sync_endpoints(self) -> None:
        subnet = self.lease.subnet
        if self._published is None:
            self._published = {ep.ip: ep for ep in self.registry.list_endpoints(subnet)}
            self._health_published = None  # re-read with them
        for ip, ep in sorted(self._desired.items()):
            if self._published.get(ip) != ep:
                try:
                    self.registry.put_endpoint(ep, self.lease)
                except ValueError as exc:  # the registry's own validation: never publish it
                    log.warning("pod port %s rejected by the registry: %s", ep.port_name, exc)
                    continue
                self._published[ip] = ep
                metrics.ENDPOINT_PUTS.inc()
                log.info("published endpoint %s %s on %s (ofport %d)", ip, ep.mac, ep.port_name,
                         ep.ofport)  # fmt: skip
        for ip in sorted(set(self._published) - set(self._desired)):
            self.registry.delete_endpoint(self._published.pop(ip))
            metrics.ENDPOINT_DELETES.inc()
            log.info("removed endpoint %s", ip)
        metrics.ENDPOINTS.set(len(self._published))

    def _sync_health(self) -> None:
        """Publish the prober's verdicts of this node's backends; delete the rest of ours
        (a backend or a check gone, or left from before a restart: not judged yet)."""
        lease = self.lease
        published = self._health_published
        if published is None:
            published = {(r.service, r.ip): r for r in self.registry.list_readiness(lease.subnet)}
            self._health_published = published
        desired = {(t.service, t.ip): Readiness(lease.subnet, t.ip, t.service, ready)
                   for t, ready in self.prober.verdicts().items() if holds(lease, t.ip)}  # fmt: skip
        for key, record in sorted(desired.items()):
            if (old := published.get(key)) is None or old.ready != record.ready:
                self.registry.put_readiness(record, lease)
                published[key] = record
                metrics.HEALTH_PUTS.inc()
        for key in sorted(published.keys() - desired.keys()):
            self.registry.delete_readiness(published.pop(key))
            metrics.HEALTH_DELETES.inc()

    def _flow_restore_wait(self, idl, now: float) -> None:
        """Clear flow-restore-wait where the restart that set it left it behind.

        An ovs-vswitchd that starts with it set connects to no controller until
        it is cleared (OVS 3.1), so leaving it set blackholes the node for good.
        The restart tooling (`ovs-ctl restart`, Debian's service restart) sets it,
        restores the saved flows through the management socket and clears it.
        The agent clears it when the waiting switch holds flows again (restored),
        or after `flow_restore_timeout` with none (nothing to restore: the
        controller syncs the bridge once it may connect). While a controller is
        connected, the running ovs-vswitchd is not waiting: the key was set
        ahead of a restart, for the restart to use, and stays.
        """
        bridge = self.settings.options.bridge
        if not flow_restore_wait_set(idl) or controller_connected(idl, bridge):
            self._restore_wait_since = None
            return
        if self._restore_wait_since is None:
            self._restore_wait_since = now
        waited = now - self._restore_wait_since
        if (flow_count(self.settings.ovsdb, bridge) or 0) > 0:
            why = "restored"
        elif waited >= self.settings.flow_restore_timeout:
            why = "timeout"
        else:
            return
        clear_flow_restore_wait(idl)
        metrics.FLOW_RESTORE_WAIT_CLEARED.labels(why).inc()
        self._restore_wait_since = None
        if why == "restored":
            log.info("%s holds its restored flows: cleared flow-restore-wait so ovs-vswitchd "
                     "connects to its controllers", bridge, extra={"event": "flow_restore_wait"})  # fmt: skip
        else:
            log.warning("flow-restore-wait was set and %s stayed empty for %.0fs: nothing was "
                        "restored; cleared it so the controller can program the bridge", bridge,
                        waited, extra={"event": "flow_restore_wait"})  # fmt: skip
