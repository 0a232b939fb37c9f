"""The vxflow os-ken application: etcd registry in, flow tables of every node's br-int out.

Run it as `osken-manager controller.app` (options from a config file or the
environment, see `controller.options`) or as `vxflow controller`.

A switch is a vxflow node if its datapath-id carries the node's PublicIP
(`leases.model.datapath_id_for`, set by bootstrap); other switches are left
alone. Nothing is programmed until a valid network config has been read, so a
controller pointed at the wrong etcd or prefix never wipes a working table.

The controller is one replica of a cluster (`controller.replica`): it writes
to a switch only while the switch has confirmed it as MASTER with the
generation of its etcd claim, and while its own membership is in good
standing. Alone, it is the designated master of every switch.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import resource
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (
    DEAD_DISPATCHER,
    HANDSHAKE_DISPATCHER,
    MAIN_DISPATCHER,
    set_ev_cls,
)
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_4

from controller import groups, guard, identity, metrics, monitor, ofwire, reader, status
from controller.droplog import DropLog
from controller.loglimit import LogLimit
from controller.model import ClusterModel, Impact
from controller.options import CONF, etcd_access
from controller.replica import Coordinator, Membership, default_member_id
from controller.role import SwitchRole
from controller.switch import SwitchSync, audit_spacing
from daemons.build import VERSION
from daemons.httpd import wsgi_app
from daemons.notify import Notifier
from leases.controllers import advertised_target, member_id_problem, target_problem
from leases.errors import RegistryError
from leases.events import LivenessRemoved, ReplicaEvent
from leases.model import public_ip_for_datapath_id
from leases.registry import Registry

log = logging.getLogger("controller")

OFPET_BAD_REQUEST, OFPBRC_IS_SLAVE = 1, 10
INBOX = 128  # messages waiting to be handled (os-ken's app event queue holds as many)
AUDIT_POLL = 0.005  # seconds between looks at whether an audit's comparison is done
AUDIT_TIMEOUT = 30.0  # an audit not done by then no longer holds the next one back
# seconds a switch has to answer the echo sent when its node's liveness record goes: a
# switch whose node died without closing the connection (the node's own datapath carried
# it) would otherwise hold the node UP until the periodic echo's timeout (controller.guard)
PROBE_TIMEOUT = 0.3
MAX_BACKLOG = 64 << 20  # bytes one switch may have waiting to be sent (a cold start: ~10 MB)
# the multipart replies the controller asked for: readbacks and its flow monitor
_MULTIPARTS = frozenset((ofwire.OFPMP_FLOW, groups.OFPMP_GROUP_DESC, monitor.OFPMP_FLOW_MONITOR))


def _yield() -> None:
    """Let the hub run (echo replies, other switches) inside a long CPU-bound step:
    OVS drops a controller that leaves its inactivity probe unanswered."""
    hub.sleep(0)


# large bundles (more than switch.CHUNK flow-mods) encoded and sent at once; the others wait
STREAMS = 4
# The collector's work is done while the controller is idle: no registry change being applied
# and no switch's message handled for IDLE_GC_QUIET seconds (looked at every IDLE_GC_POLL
# while something is due, else every IDLE_GC_DOZE), once IDLE_GC_YOUNG objects are new since
# the last time (`idle_collection`, `IdleCollector`).
IDLE_GC_QUIET = 0.01
IDLE_GC_POLL = 0.01
IDLE_GC_DOZE = 0.1
IDLE_GC_YOUNG = 10_000
IDLE_GC_FULL_AFTER = 200  # freezes of the young objects before a full collection is due
IDLE_GC_FULL_SHARE = 0.01  # at most this share of the time in full collections


def bounded_spawn(limit: int) -> Callable[[Callable[[], None]], object]:
    """`hub.spawn` that runs at most `limit` of what it is given at once, the rest waiting
    their turn in order (off the hub's run queue). A large bundle's encoding yields between
    chunks: a thousand switches' bundles streamed together each took a turn between any two
    steps of another switch's handshake, which then missed its deadline (B3 at 1,000
    stand-ins with dual-stack leases, 4,032 flows each: 163 dropped and connected again)."""
    gate = hub.BoundedSemaphore(limit)

    def run(fn: Callable[[], None]) -> None:
        with gate:
            fn()

    return lambda fn: hub.spawn(run, fn)


MAX_OPEN_FILES = 1 << 20  # the soft limit asked for where the hard one is unlimited


def idle_collection(counts: tuple[int, int, int], thresholds: tuple[int, int, int],
                    full: bool = True, frozen: int = 0, young: int = IDLE_GC_YOUNG,
                    full_after: int = IDLE_GC_FULL_AFTER) -> int | None:  # fmt: skip
    """What to do while idle, from `gc.get_count()`, `gc.get_threshold()` and the young
    objects' freezes since the last full collection (`frozen`): 2, a full collection, once
    the oldest generation's threshold is reached or `full_after` freezes are behind it, if
    a `full` collection may run now; 0, the young objects frozen (`IdleCollector`), from
    `young` new objects on; else nothing."""
    if full and (counts[2] >= thresholds[2] or frozen >= full_after):
        return 2
    if counts[0] >= young:
        return 0
    return None


class IdleCollector:
    """Garbage collected between changes rather than in them: the collector otherwise runs
    whenever enough objects are new, often in the middle of a change to every switch,
    which it then holds up for as long as it scans (tens of ms for a policy change's
    survivors: B10's p99). `run` (a green thread) acts once nothing is `busy` and nothing
    was done (`done`) for IDLE_GC_QUIET seconds.

    The young objects are frozen (gc.freeze: out of every collection but a full one)
    rather than collected: a change's objects are its results (the tables, the flows),
    which a young collection only scans to find alive; the controller makes next to no
    cyclic garbage, and that scanning was ~30% of its CPU in B10's policy changes (perf).
    A full collection unfreezes and scans the whole heap (seconds for a large cluster's
    tables), and finds what cycles died meanwhile: due after IDLE_GC_FULL_AFTER freezes,
    and run for at most IDLE_GC_FULL_SHARE of the time (the next may run once that share
    of the time since the last is longer than it took). Past its thresholds with no idle
    moment (a long sync), the collector still runs on its own, as before."""

    def __init__(self) -> None:
        self.busy = False  # a registry change is being applied
        self.active = time.monotonic()  # when the controller last did anything
        self.frozen = 0  # freezes since the last full collection
        self._full_at, self._full_took = self.active, 0.0  # the last full collection's

    def done(self) -> None:
        self.active = time.monotonic()

    def due(self, now: float) -> int | None:
        """What is due now (`idle_collection`)."""
        full = (now - self._full_at) * IDLE_GC_FULL_SHARE >= self._full_took
        return idle_collection(gc.get_count(), gc.get_threshold(), full, self.frozen)

    def collect(self, generation: int, now: float) -> None:
        """Do what `due` said: freeze the young objects (0), or collect everything (2)."""
        if generation != 2:
            gc.freeze()
            self.frozen += 1
            return
        gc.unfreeze()
        gc.collect(2)
        self._full_at, self._full_took, self.frozen = now, time.monotonic() - now, 0

    def run(self) -> None:
        due: int | None = None
        while True:
            # (looked at often only while something is due: an idle controller wakes
            # IDLE_GC_DOZE apart)
            hub.sleep(IDLE_GC_POLL if due is not None else IDLE_GC_DOZE)
            now = time.monotonic()
            due = self.due(now)
            if due is None or self.busy or now - self.active < IDLE_GC_QUIET:
                continue
            self.collect(due, now)


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft limit of open files to the hard one: a plain-TCP switch holds 3
    descriptors, so a default soft limit of 1,024 fits about 330 switches. (before, after)"""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return soft, target
    return soft, soft


def _each(syncs: list[SwitchSync], step: Callable[[SwitchSync], None], what: str) -> None:
    """`step` for every switch: one that fails is logged, and the others still get theirs."""
    for sync in syncs:
        try:
            step(sync)
        except Exception:
            log.exception("switch %s: %s failed", sync.node, what)


@dataclass
class Backlogs:
    """The bytes waiting in every switch's backlog (see DatapathChannel), bounded as a
    whole: many slow switches, each under its own bound, could still fill the memory.
    Past `limit`, the switch with the most waiting (the slowest reader) is disconnected,
    and the next, until the rest fit: each resyncs from a readback when it reconnects."""

    limit: int
    total: int = 0
    waiting: set[DatapathChannel] = field(default_factory=set)  # channels with a backlog

    def shed(self) -> None:
        while self.total > self.limit and self.waiting:
            max(self.waiting, key=lambda c: c.backlog_bytes).overflow(
                f"all switches' backlogs hold more than {self.limit / (1 << 20):g} MiB and it "
                "has the most"
            )


class DatapathChannel:
    """Raw bytes to one switch, with xids from its os-ken counter; sending never waits.

    Written straight to a plain TCP socket whenever os-ken's send loop for it is
    idle (nothing queued, waiting for the next buffer): a lease event then reaches
    each switch as soon as its flow-mods are packed, while the next switch's are,
    instead of after all of them, one send-loop wake-up per switch later. What the
    socket does not take at once, TLS, and everything while os-ken's loop is busy
    go through its queue, behind whatever is there: the stream stays in order.

    os-ken's queue holds 16 buffers and its `send` waits while they are full: the
    threads that send (the inbox, the registry follower, the coordinator) serve
    every switch, so one switch that reads slowly would hold up all of them. What
    does not fit waits in this switch's own backlog instead, fed to os-ken's queue
    by a green thread of its own; past MAX_BACKLOG bytes the switch is disconnected
    (logged, counted): it resyncs from a readback when it reconnects. The backlogs of
    all switches together are bounded too (`Backlogs`).
    """

    def __init__(self, datapath, tls: bool = False, backlogs: Backlogs | None = None) -> None:
        self.datapath = datapath
        # eventlet's green socket over a real, non-blocking one (`fd`)
        self._raw = None if tls else getattr(datapath.socket, "fd", None)
        self._backlog: deque[bytes] = deque()
        self.backlog_bytes = 0
        self._backlogs = backlogs if backlogs is not None else Backlogs(MAX_BACKLOG)
        self._feeding = False

    def send(self, data: bytes) -> None:
        """Never waits: straight to the socket, into os-ken's queue while it has room,
        else into the backlog (behind which everything later goes)."""
        queue = self.datapath.send_q
        if queue is None:
            return  # closing: os-ken discards it too
        if not self._backlog:
            if self._raw is not None and not queue.qsize() and queue.getting():
                # would block (all of it queued), or broken (os-ken's loops find out and close)
                with contextlib.suppress(OSError):
                    data = data[self._raw.send(data) :]
                if not data:
                    return
            if self.datapath._send_q_sem.balance > 0:
                self.datapath.send(data)  # (room for it: does not wait)
                return
        self._backlog.append(data)
        self._count(len(data))
        if self.backlog_bytes > MAX_BACKLOG:
            self.overflow(f"more than {MAX_BACKLOG >> 20} MiB waits to be sent to it")
        elif self._backlogs.total > self._backlogs.limit:
            self._backlogs.shed()
        if self._backlog and not self._feeding:
            self._feeding = True
            hub.spawn(self._feed)

    def _count(self, change: int) -> None:
        self.backlog_bytes += change
        self._backlogs.total += change
        if self.backlog_bytes:
            self._backlogs.waiting.add(self)
        else:
            self._backlogs.waiting.discard(self)

    def _drop_backlog(self) -> None:
        self._backlog.clear()
        self._count(-self.backlog_bytes)

    def _feed(self) -> None:
        """os-ken's queue, from the backlog, as the switch takes it (this thread waits)."""
        try:
            while self._backlog:
                data = self._backlog[0]  # left in place while waiting: later sends queue behind
                if not self.datapath.send(data):
                    self._drop_backlog()  # the connection is closing: no one will send it
                    break
                if self._backlog and self._backlog[0] is data:
                    self._backlog.popleft()
                    self._count(-len(data))
        finally:
            self._feeding = False

    def overflow(self, why: str) -> None:
        """Disconnect this switch, which reads too slowly (`why`), and drop its backlog."""
        metrics.SLOW_SWITCHES.inc()
        log.warning(
            "switch %016x at %s reads too slowly: %s (%.1f MiB waiting); disconnected (it "
            "resyncs when it reconnects)", self.datapath.id or 0, self.datapath.address, why,
            self.backlog_bytes / (1 << 20),
        )  # fmt: skip
        self._drop_backlog()
        self.datapath.close()

    def xids(self, count: int) -> int:
        first = self.datapath.xid + 1
        if first + count > ofproto_v1_4.MAX_XID:
            first = 1
        self.datapath.xid = first + count - 1
        return first


class VxflowController(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_4.OFP_VERSION]  # bundles need OpenFlow 1.4

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Flow tables are many small immutable objects; the default thresholds make
        # the collector rescan them thousands of times during a large sync.
        gc.set_threshold(50_000, 20, 100)
        self.idle_gc = IdleCollector()
        before, after = raise_open_files_limit()
        log.info("open files: soft limit %d (was %d)", after, before)
        rate = CONF.vxflow_log_policy_drops  # packets/s per switch; 0: drops not logged
        self.model = ClusterModel(log_drops=rate > 0)
        # (the model is replaced at each reload: looked up at each drop)
        self.droplog = DropLog(rate, lambda *drop: self.model.isolation(*drop)) if rate else None
        self._down: set[IPv4Address] = set()  # the nodes last logged DOWN
        self._silent: set[IPv4Address] = set()  # nodes whose switch left a probe unanswered
        self.switches: dict[int, SwitchSync] = {}
        self.backlogs = Backlogs(int(CONF.vxflow_send_backlog_total * (1 << 20)))
        self._stream = bounded_spawn(STREAMS)  # a large bundle's encoding (SwitchSync.spawn)
        self._monitor_xids: dict[int, int] = {}  # the flow monitor request's, per switch
        self.roles: dict[int, SwitchRole] = {}
        self.endpoints = CONF.vxflow_etcd_endpoints
        self.prefix = CONF.vxflow_etcd_prefix
        self.access = etcd_access()
        self._handlers = {
            ofwire.OFPT_BARRIER_REPLY: self._barrier,
            ofwire.OFPT_MULTIPART_REPLY: self._multipart,
            ofwire.OFPT_ROLE_REPLY: self._role_reply,
            ofwire.OFPT_ROLE_STATUS: self._role_status,
            ofwire.OFPT_ERROR: self._error,
        }
        self._inbox = hub.Queue(INBOX)  # (datapath, type, xid, message) for _handle_inbox
        self._packet_ins, self._stray_errors = LogLimit(), LogLimit()  # lines a peer causes
        guard.install(CONF, self._receive)
        self.tls = bool(CONF.ctl_privkey and CONF.ctl_cert)
        # over plain TCP one thread reads every switch (controller/reader.py)
        self._reader = None if self.tls else reader.install()
        if not self.tls:
            log.warning("OpenFlow over plain TCP: switches are not authenticated (demo only; "
                        "give a key, certificate and CA for TLS)")  # fmt: skip
        port = (CONF.ofp_ssl_listen_port if self.tls else CONF.ofp_tcp_listen_port) or 6653
        member_id = CONF.vxflow_controller_id or default_member_id(port)
        address = CONF.vxflow_advertise or advertised_target(
            CONF.ofp_listen_host or "", port, "ssl" if self.tls else "tcp"
        )
        if not address:
            raise ValueError("listening on every address: set vxflow-advertise (tcp:IP:PORT), "
                             "the target the nodes' switches reach this replica on")  # fmt: skip
        for problem in (member_id_problem(member_id), target_problem(address)):
            if problem:
                raise ValueError(problem)
        ttl = CONF.vxflow_member_ttl
        self._http = self._bind_http()
        http_port = self._http.server.getsockname()[1] if self._http else 0
        # each green thread talks to etcd through its own client (Registry is not shared)
        self.membership = Membership(
            Registry(self.endpoints, self.prefix, timeout=max(1.0, ttl / 3), access=self.access),
            member_id, address, ttl, on_change=self._membership_changed,
            status=status.status_url(CONF.vxflow_metrics_listen, http_port, address),
        )  # fmt: skip
        self.notifier = Notifier.from_environ()  # systemd's Type=notify and watchdog
        self.coordinator = Coordinator(
            self.membership, Registry(self.endpoints, self.prefix, access=self.access), self.roles,
            ready=lambda: self.model.config is not None,
        )  # fmt: skip
        log.info(
            "vxflow %s controller %s (%s): etcd %s prefix %s (%s), member TTL %ds, audit every "
            "%ss%s", VERSION, member_id, address,
            self.endpoints, self.prefix, self.access, ttl, CONF.vxflow_audit_interval,
            f", policy drops logged (at most {rate} packets/s per switch)" if rate else "",
        )  # fmt: skip

    def _membership_changed(self) -> None:
        """Lapsed or renewed: decide mastership again; once renewed, every switch sends what
        it held back meanwhile."""
        self.coordinator.request()
        if self.membership.valid():
            # joined: the registry is loaded (a replica joins only once it knows the config)
            self.notifier.ready(f"member {self.membership.id} of the controller cluster")
            _each(list(self.switches.values()), SwitchSync.resume, "resuming")

    def start(self):
        thread = super().start()
        metrics.POLICY_DENIED.source = self._policy_denied
        self.threads.append(hub.spawn(self._handle_inbox))
        if self.droplog is not None:
            self.threads.append(hub.spawn(self.droplog.run))
        if self._reader is not None:
            self.threads += [hub.spawn(self._reader.run), hub.spawn(self._reader.reap)]
        self.threads.append(hub.spawn(self.membership.run))
        self.threads.append(hub.spawn(self.coordinator.run))
        self.threads.append(hub.spawn(self._follow_registry))
        self.threads.append(hub.spawn(self.idle_gc.run))
        if CONF.vxflow_audit_interval > 0:
            self.threads.append(hub.spawn(self._audit_loop))
        if self._http is not None:
            self.threads.append(hub.spawn(self._http.serve_forever))
        if self.notifier.watchdog_interval:
            self.threads.append(hub.spawn(self._watchdog))
            logging.getLogger("os_ken.lib.hub").setLevel(logging.WARNING)  # one line per scrape
        return thread

    def _bind_http(self) -> hub.WSGIServer | None:
        """The metrics and status endpoint, bound now so that the etcd entry can name its
        port: by default an ephemeral one (replicas sharing a host never collide); None
        with --metrics-port 0."""
        port = CONF.vxflow_metrics_port
        if port == 0:
            log.info("metrics and status page off (--metrics-port 0)")
            return None
        # prometheus_client's own server thread blocks under eventlet: serve it green
        server = hub.WSGIServer(
            (CONF.vxflow_metrics_listen, port or 0),
            wsgi_app({"/status": lambda: status.page(
                self.membership, self.model, self.switches, self.roles),
                "/threads": status.threads}),
        )  # fmt: skip
        host, bound = server.server.getsockname()[:2]
        log.info("serving metrics on http://%s:%d/metrics and the status page on /status",
                 host, bound)  # fmt: skip
        return server

    def _policy_denied(self):
        """Every connected switch's policy drop counts, for the metric."""
        for sync in list(self.switches.values()):
            yield from self.model.denied(sync.node, sync.policy_drops)

    def stop(self):
        """A clean stop (Ctrl-C, SIGTERM under `vxflow controller`): leave the cluster first,
        so this replica's switches move to the others now rather than after its TTL."""
        self.notifier.stopping()
        self.membership.leave()
        for thread in self.threads:  # they loop forever: os-ken's stop() would wait on them
            hub.kill(thread)
        self.threads = []
        super().stop()

    def _watchdog(self) -> None:
        """WATCHDOG=1 while the hub runs and this replica's membership is in good standing
        (lapsed for the whole WatchdogSec, it is restarted and registers anew)."""
        while True:
            if self.membership.valid():
                self.notifier.watchdog()
            hub.sleep(self.notifier.watchdog_interval / 4)

    # -- etcd -----------------------------------------------------------------

    def _follow_registry(self) -> None:
        delay = 0.5
        while True:
            try:
                registry = Registry(self.endpoints, self.prefix, access=self.access)
                started = time.perf_counter()
                snapshot = registry.snapshot(pause=_yield)
                log.debug("registry snapshot read in %.1f ms", (time.perf_counter() - started) * 1e3)
                if note := registry.missing_config_note(snapshot):  # only etcd's v2 store has it
                    log.warning("no network config at %s%s", registry.keys.config, note)
                # loaded aside and swapped in whole: switches syncing while it loads
                # (it yields) must never see a half-loaded cluster
                model = ClusterModel(self.model.log_drops)
                model.connected = {sync.node for sync in self.switches.values()}
                impact = model.load(snapshot.config, snapshot.leases, snapshot.endpoints, _yield,
                                    snapshot.vxflow, snapshot.services, snapshot.alive(),
                                    snapshot.readiness, snapshot.policies,
                                    snapshot.namespaces, snapshot.direct())  # fmt: skip
                self.model = model
                now = {sync.node for sync in self.switches.values()}
                for node in now ^ model.connected:  # switches that came or went while it loaded
                    impact.flushes += model.set_connected(node, node in now).flushes
                self._apply(impact)
                self.coordinator.load(snapshot.members, snapshot.claims)
                log.info(
                    "registry loaded at revision %d: %d leases, %d endpoints",
                    snapshot.revision, len(snapshot.leases), len(snapshot.endpoints),
                )
                delay = 0.5
                with registry.watch(since=snapshot, pause=_yield) as watch:
                    while (event := watch.get()) is not None:
                        batch = [event]
                        while (more := watch.get(timeout=0)) is not None:
                            batch.append(more)
                        self.idle_gc.busy = True
                        try:
                            self._apply(self.model.apply(batch))
                            self.coordinator.apply(e for e in batch if isinstance(e, ReplicaEvent))
                            for e in batch:
                                if isinstance(e, LivenessRemoved):
                                    self._probe(e.record.public_ip)
                        finally:
                            self.idle_gc.busy = False
                            self.idle_gc.done()
            except (RegistryError, OSError) as exc:
                log.warning("etcd %s: %s; retrying in %.1fs", self.endpoints, exc, delay)
            except Exception:
                log.exception("registry follower failed; retrying in %.1fs", delay)
            hub.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _apply(self, impact: Impact) -> None:
        self._note_liveness()
        if self.model.config is None:
            log.warning(
                "no valid network config under %s yet: switches are left as they are, and "
                "this replica does not join the controller cluster", self.prefix,
            )  # fmt: skip
            return
        self.membership.begin()
        metrics.REJECTED.set(len(self.model.rejected))
        # every switch notes what changed before any sends: sending yields, and a readback
        # compared meanwhile must know the change is pending (not drift)
        asked = []

        def note(sync: SwitchSync) -> None:
            own = self.model.own_lease(sync.node)
            scope = impact.scope_for(sync.node, own.subnet if own else None)
            if scope and sync.note(scope, impact.flushes):
                asked.append(sync)

        _each(list(self.switches.values()), note, "noting a registry change")
        _each(asked, SwitchSync.kick, "sending a registry change")

    def _note_liveness(self) -> None:
        """One log line and one count per node going DOWN or coming UP."""
        down = self.model.down_nodes()
        for ip in sorted(down.keys() - self._down):
            metrics.NODE_TRANSITIONS.labels("down").inc()
            log.warning("node %s (%s) is DOWN: no liveness record and its switch is not "
                        "connected; its backends leave every service", ip, down[ip],
                        extra={"event": "node_down", "node": str(ip)})  # fmt: skip
        for ip in sorted(self._down - down.keys()):
            metrics.NODE_TRANSITIONS.labels("up").inc()
            log.info("node %s is UP again: its backends are back in service", ip,
                     extra={"event": "node_up", "node": str(ip)})  # fmt: skip
        self._down = set(down)
        metrics.NODES_DOWN.set(len(down))

    def _probe(self, node: IPv4Address) -> None:
        """`node`'s liveness record went while its switch may still be connected: ask the
        switch for an echo now. One that has not answered within PROBE_TIMEOUT no longer
        counts as connected (its node is DOWN) and is disconnected: alive, it connects
        again within a second (OVS's max_backoff, set by the agent), and is UP again."""
        for sync in list(self.switches.values()):
            if sync.node == node and not sync.closed:
                dp = sync.channel.datapath
                xid = sync.channel.xids(1)
                dp.unreplied_echo_requests.append(xid)  # os-ken's echo reply handling takes it
                sync.channel.send(ofwire.encode_echo_request(xid))
                hub.spawn_after(PROBE_TIMEOUT, self._probe_due, sync, xid)

    def _probe_due(self, sync: SwitchSync, xid: int) -> None:
        dp = sync.channel.datapath
        if not sync.closed and xid in dp.unreplied_echo_requests:
            hub.sleep(0.05)  # a reply read in the same turn of the hub (it was busy) counts
        if sync.closed or xid not in dp.unreplied_echo_requests:
            return  # answered, or gone meanwhile
        log.warning("switch of %s left an echo unanswered for %.1fs after its node's liveness "
                    "record went: disconnected", sync.node, PROBE_TIMEOUT)  # fmt: skip
        self._silent.add(sync.node)
        dp.close()
        self._switch_seen(sync.node)

    def _switch_seen(self, node: IPv4Address) -> None:
        """A switch of `node` connected or went: one of the two signals of its liveness."""
        connected = node not in self._silent and any(
            sync.node == node for sync in self.switches.values())  # fmt: skip
        impact = self.model.set_connected(node, connected)
        if impact.service_cookies or impact.flushes:
            self._apply(impact)
        else:
            self._note_liveness()

    def _audit_loop(self) -> None:
        """Every switch this replica masters read back and compared once per interval, one
        at a time, spread over it: a thousand readbacks at once would queue every lease
        event behind seconds of comparisons. Where the tables are too large for the
        interval, a round takes longer (`audit_spacing`). A switch already reading back
        (a retry waiting out its delay) is left to it."""
        interval = CONF.vxflow_audit_interval
        while True:
            syncs = [sync for sync in self.switches.values() if sync.master]
            if not syncs:
                hub.sleep(interval)
            for sync in syncs:
                try:
                    took = self._audit(sync)
                except Exception:  # one switch's audit must not end them all
                    log.exception("switch %s: the audit failed", sync.node)
                    took = 0.0
                hub.sleep(audit_spacing(interval, len(syncs), took))

    def _audit(self, sync: SwitchSync) -> float:
        """Audit one switch and wait until its comparison is done: how long that took
        (0 if there was nothing to audit, or it did not finish in AUDIT_TIMEOUT)."""
        if sync.closed or not sync.master or sync.reading_back:
            return 0.0
        started = time.monotonic()
        sync.audit()
        while sync.reading_back and sync.master and not sync.closed:
            if time.monotonic() - started >= AUDIT_TIMEOUT:
                return 0.0
            hub.sleep(AUDIT_POLL)
        return time.monotonic() - started

    # -- switches -------------------------------------------------------------

    def _synced(self, sync: SwitchSync) -> None:
        own = self.model.own_lease(sync.node)
        if own is None:
            log.warning(
                "switch of %s is in sync with no valid lease: only the table-miss drops", sync.node
            )
        else:
            log.info("switch of %s (%s) in sync: %d flows", sync.node, own.subnet, len(sync.installed))

    @set_ev_cls(ofp_event.EventOFPStateChange, HANDSHAKE_DISPATCHER)
    def _connected(self, ev) -> None:
        guard.enforce_handshake_deadline(
            ev.datapath, hub.spawn_after, MAIN_DISPATCHER, DEAD_DISPATCHER,
            guard.handshake_deadline(CONF.vxflow_echo_interval),
        )  # fmt: skip

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _state_change(self, ev) -> None:
        dp = ev.datapath
        if dp.id is None:
            return
        if ev.state == DEAD_DISPATCHER:
            sync = self.switches.get(dp.id)
            if sync is not None and sync.channel.datapath is dp:
                sync.close()
                del self.switches[dp.id]
                del self.roles[dp.id]
                self._monitor_xids.pop(dp.id, None)
                if self.droplog is not None:
                    self.droplog.forget(sync.node)
                self._count_switches()
                log.info("switch of %s disconnected", sync.node)
                self.coordinator.request()
                self._switch_seen(sync.node)
            return
        node = public_ip_for_datapath_id(dp.id)
        if node is None:
            log.warning(
                "switch %016x at %s is not a vxflow node (datapath-id not derived from a "
                "PublicIP); leaving it alone", dp.id, dp.address,
            )
            return
        if self.tls and not identity.admit(dp, node):
            return  # refused before it could displace the switch that holds this datapath-id
        old = self.switches.get(dp.id)
        if old is not None:
            old.close()
        parser, ofp = dp.ofproto_parser, dp.ofproto
        # packet-ins: none, or to the master only those of the logged policy drops' output
        logged = 1 << ofp.OFPR_APPLY_ACTION if self.droplog is not None else 0
        packet_ins = [
            parser.OFPAsyncConfigPropReasons(ofp.OFPACPT_PACKET_IN_SLAVE, mask=0),
            parser.OFPAsyncConfigPropReasons(ofp.OFPACPT_PACKET_IN_MASTER, mask=logged),
        ]
        dp.send_msg(parser.OFPSetAsync(dp, packet_ins))
        channel = DatapathChannel(dp, self.tls, self.backlogs)
        sync = SwitchSync(
            node=node,
            channel=channel,
            desired=lambda scope: self.model.desired(node, scope),
            later=lambda delay, fn: hub.spawn_after(delay, fn),
            spawn=self._stream,
            on_synced=self._synced,
            pause=_yield,
            may_write=self.membership.valid,
            meter_rate=CONF.vxflow_log_policy_drops,
        )
        self.switches[dp.id] = sync
        self.roles[dp.id] = SwitchRole(node, channel, on_master=sync.promote, on_lost=sync.suspend)
        self._monitor_xids[dp.id] = xid = channel.xids(1)
        channel.send(monitor.encode_request(xid))  # drift reported at once (controller/monitor.py)
        self._count_switches()
        log.info("switch of %s connected from %s", node, dp.address)
        self.coordinator.request()  # its master (we or another replica) takes it from here
        self._silent.discard(node)
        self._switch_seen(node)

    def _count_switches(self) -> None:
        metrics.SWITCHES.set(len(self.switches))
        metrics.MASTERED.set(sum(role.master for role in self.roles.values()))

    # -- what switches send: taken as they are read, handled from the inbox ----------

    def _receive(self, dp, msg_type: int, xid: int, data: bytes) -> bool:
        """A message from a switch, once `controller.wirecheck` passed it (where it is read:
        `controller.reader`, or os-ken's receive loop over TLS). The replies and errors
        SwitchSync and SwitchRole act on go to the inbox as raw bytes: os-ken makes no
        message object or event of them (at 1,000 switches those cost more than the
        handling itself). An echo reply is acknowledged here, as os-ken's handler would:
        a thousand switches answer os-ken's echo requests within the same moment. A logged
        policy drop's packet-in goes to `controller.droplog`, which only counts or queues it
        here. A bundle's open and commit replies are dropped here: the barrier behind each
        says what they do (a bundle that fails is refused with an error before it), and
        os-ken made a message object and an event of each (two per switch per change) for
        no handler. False: os-ken's usual path (its handshake; other packet-ins)."""
        if msg_type == ofwire.OFPT_ECHO_REPLY:
            dp.acknowledge_echo_reply(xid)
            return True
        if msg_type == ofwire.OFPT_BUNDLE_CONTROL:
            return True
        if msg_type == ofwire.OFPT_PACKET_IN and self.droplog is not None:
            sync = self._sync_for(dp)  # (a logged drop's: counted or queued, never waited on)
            if sync is not None and self.droplog.receive(sync.node, data):
                return True
        if msg_type not in self._handlers or dp.state not in (MAIN_DISPATCHER, DEAD_DISPATCHER):
            return False
        multipart = msg_type == ofwire.OFPT_MULTIPART_REPLY
        if multipart and ofwire.decode_multipart_reply(data)[0] not in _MULTIPARTS:
            return False  # (os-ken's handshake asks for others)
        self._inbox.put((dp, msg_type, xid, data))
        return True

    def _handle_inbox(self) -> None:
        """One green thread handles every switch's messages, in the order they arrived
        (each switch's in the order it sent them: errors before their barrier): as os-ken's
        event loop would, so one switch's large sync never shares the hub with a thousand
        others' at once, and handshakes, echoes and the membership renewal keep their turn.
        Bounded as os-ken's event queue is: reading waits while it is full, so a
        switch that floods the controller (a burst of flow monitor updates) is held back
        by TCP and pauses its monitor rather than the controller buffering it all."""
        while True:
            dp, msg_type, xid, data = self._inbox.get()
            try:
                self._handlers[msg_type](dp, xid, data)
            except Exception:
                log.exception("switch %016x: handling a message of type %d (xid %#x) failed",
                              dp.id or 0, msg_type, xid)  # fmt: skip
            self.idle_gc.done()

    def _sync_for(self, dp) -> SwitchSync | None:
        sync = self.switches.get(dp.id)
        return sync if sync is not None and sync.channel.datapath is dp else None

    def _role_for(self, dp) -> SwitchRole | None:
        return self.roles.get(dp.id) if self._sync_for(dp) is not None else None

    def _barrier(self, dp, xid: int, data: bytes) -> None:
        sync = self._sync_for(dp)
        if sync is not None:
            sync.on_barrier(xid)

    def _multipart(self, dp, xid: int, data: bytes) -> None:
        """Readback replies (flows, groups) and flow monitor updates: their raw bodies to
        the switch's sync."""
        sync = self._sync_for(dp)
        if sync is None:
            return
        kind, more, body = ofwire.decode_multipart_reply(data)
        if kind == monitor.OFPMP_FLOW_MONITOR:
            # the monitor's first reply has its request's xid, its later updates xid 0 (as
            # OVS sends them): replies to anything else are not taken in
            if xid not in (0, self._monitor_xids.get(dp.id)):
                metrics.UNEXPECTED_REPLIES.inc()
                return
            monitor.deliver(body, sync)
        elif kind == ofwire.OFPMP_FLOW:
            sync.on_flow_stats(xid, body, more)
        else:
            sync.on_group_desc(xid, body, more)

    def _role_reply(self, dp, xid: int, data: bytes) -> None:
        role = self._role_for(dp)
        if role is not None and role.on_reply(xid, *ofwire.decode_role(data)):
            self._count_switches()

    def _role_status(self, dp, xid: int, data: bytes) -> None:
        role = self._role_for(dp)
        if role is not None:
            role.on_status(*ofwire.decode_role(data))
            self._count_switches()
            self.coordinator.request()

    def _error(self, dp, xid: int, data: bytes) -> None:
        err_type, code, refused = ofwire.decode_error(data)
        sync, role = self._sync_for(dp), self._role_for(dp)
        if role is not None and (err_type, code) == (OFPET_BAD_REQUEST, OFPBRC_IS_SLAVE):
            metrics.WRITES_REFUSED.inc()
            log.warning("switch %s refused a write (xid %#x): this replica is not its master",
                        role.node, xid)  # fmt: skip
            role.refused_write()
            self._count_switches()
            self.coordinator.request()
            return
        if role is not None and role.on_error(xid, err_type, code):
            return
        if sync is not None and xid == self._monitor_xids.get(dp.id):
            metrics.of_error(err_type, code).inc()
            log.error("switch %s refused the flow monitor (error type %d code %d): drift is "
                      "found by the periodic audit only", sync.node, err_type, code)  # fmt: skip
            return
        if sync is None or not sync.on_error(xid, err_type, code, refused):
            metrics.of_error(err_type, code).inc()
            if (held := self._stray_errors.admit()) is not None:
                log.error(
                    "switch %016x: OpenFlow error type %d code %d for xid %#x (not a vxflow "
                    "message; %d more such errors since the last line)",
                    dp.id or 0, err_type, code, xid, held,
                )  # fmt: skip

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev) -> None:
        metrics.PACKET_INS.inc()
        if (held := self._packet_ins.admit()) is not None:
            log.warning(
                "switch %016x sent a packet-in (reason %d, table %d, cookie %#x): no vxflow "
                "flow asks for one; the table has drifted (%d more packet-ins since the last "
                "line)", ev.msg.datapath.id, ev.msg.reason, ev.msg.table_id, ev.msg.cookie, held,
            )  # fmt: skip
