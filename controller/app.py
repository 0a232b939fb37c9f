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

import gc
import logging
import time

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (
    DEAD_DISPATCHER,
    HANDSHAKE_DISPATCHER,
    MAIN_DISPATCHER,
    set_ev_cls,
)
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_4, ofproto_v1_4_parser

from controller import guard, identity, metrics, monitor, ofwire, status
from controller.model import ClusterModel, Impact
from controller.options import CONF, etcd_access
from controller.replica import Coordinator, Membership, advertised_target, default_member_id
from controller.role import SwitchRole
from controller.switch import SwitchSync
from leases.controllers import member_id_problem, target_problem
from leases.errors import RegistryError
from leases.events import ReplicaEvent
from leases.model import public_ip_for_datapath_id
from leases.registry import Registry
from vxflow.httpd import wsgi_app

log = logging.getLogger("controller")

_MULTIPART_HEADER = 16  # ofp_header + type, flags, pad
OFPET_BAD_REQUEST, OFPBRC_IS_SLAVE = 1, 10


def _yield() -> None:
    """Let the hub run (echo replies, other switches) inside a long CPU-bound step:
    OVS drops a controller that leaves its inactivity probe unanswered."""
    hub.sleep(0)


class _RawUpdates:
    """A flow monitor reply's whole body, left as bytes for `controller.monitor` to decode.

    os-ken 3.1 registers one parser class for four update events and asserts
    the event is the last one registered (OFPFME_INITIAL), so it drops every
    reply that reports a change, with a logged traceback.
    """

    def __init__(self, length: int) -> None:
        self.length = length

    @classmethod
    def parser(cls, buf, offset: int) -> _RawUpdates:
        return cls(len(buf) - offset)


ofproto_v1_4_parser.OFPFlowMonitorReply.cls_stats_body_cls = _RawUpdates


class DatapathChannel:
    """Raw bytes to one switch through os-ken's send queue, with xids from its counter."""

    def __init__(self, datapath) -> None:
        self.datapath = datapath

    def send(self, data: bytes) -> None:
        """Queue without yielding: a lease event queues its flow-mod to every switch
        before any send loop runs (SwitchSync pauses between a bundle's chunks)."""
        self.datapath.send(data)

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
        self.model = ClusterModel()
        self.switches: dict[int, SwitchSync] = {}
        self._monitor_xids: dict[int, int] = {}  # the flow monitor request's, per switch
        self.roles: dict[int, SwitchRole] = {}
        self.endpoints = CONF.vxflow_etcd_endpoints
        self.prefix = CONF.vxflow_etcd_prefix
        self.access = etcd_access()
        guard.install(CONF)
        self.tls = bool(CONF.ctl_privkey and CONF.ctl_cert)
        if not self.tls:
            log.warning("OpenFlow over plain TCP: switches are not authenticated (demo only; "
                        "give a key, certificate and CA for TLS)")  # fmt: skip
        port = (CONF.ofp_ssl_listen_port if self.tls else CONF.ofp_tcp_listen_port) or 6653
        member_id = CONF.vxflow_controller_id or default_member_id(port)
        address = CONF.vxflow_advertise or advertised_target(
            CONF.ofp_listen_host or "", port, "ssl" if self.tls else "tcp"
        )
        for problem in (member_id_problem(member_id), address and target_problem(address)):
            if problem:
                raise ValueError(problem)
        ttl = CONF.vxflow_member_ttl
        # each green thread talks to etcd through its own client (Registry is not shared)
        self.membership = Membership(
            Registry(self.endpoints, self.prefix, timeout=max(1.0, ttl / 3), access=self.access),
            member_id, address, ttl, on_change=self._membership_changed,
            status=status.status_url(CONF.vxflow_metrics_listen, CONF.vxflow_metrics_port, address),
        )  # fmt: skip
        self.coordinator = Coordinator(
            self.membership, Registry(self.endpoints, self.prefix, access=self.access), self.roles,
            ready=lambda: self.model.config is not None,
        )  # fmt: skip
        log.info(
            "vxflow controller %s (%s): etcd %s prefix %s (%s), member TTL %ds, audit every %ss",
            member_id, address or "address not advertised: switches must be given it",
            self.endpoints, self.prefix, self.access, ttl, CONF.vxflow_audit_interval,
        )  # fmt: skip

    def _membership_changed(self) -> None:
        """Lapsed or renewed: decide mastership again; once renewed, every switch sends what
        it held back meanwhile."""
        self.coordinator.request()
        if self.membership.valid():
            for sync in list(self.switches.values()):
                sync.resume()

    def start(self):
        thread = super().start()
        self.threads.append(hub.spawn(self.membership.run))
        self.threads.append(hub.spawn(self.coordinator.run))
        self.threads.append(hub.spawn(self._follow_registry))
        if CONF.vxflow_audit_interval > 0:
            self.threads.append(hub.spawn(self._audit_loop))
        if CONF.vxflow_metrics_port:
            # prometheus_client's own server thread blocks under eventlet: serve it green
            server = hub.WSGIServer(
                (CONF.vxflow_metrics_listen, CONF.vxflow_metrics_port),
                wsgi_app({"/status": lambda: status.page(
                    self.membership, self.model, self.switches, self.roles)}),
            )  # fmt: skip
            self.threads.append(hub.spawn(server.serve_forever))
            logging.getLogger("os_ken.lib.hub").setLevel(logging.WARNING)  # one line per scrape
        return thread

    def stop(self):
        """A clean stop (Ctrl-C, SIGTERM under `vxflow controller`): leave the cluster first,
        so this replica's switches move to the others now rather than after its TTL."""
        self.membership.leave()
        for thread in self.threads:  # they loop forever: os-ken's stop() would wait on them
            hub.kill(thread)
        self.threads = []
        super().stop()

    # -- etcd -----------------------------------------------------------------

    def _follow_registry(self) -> None:
        delay = 0.5
        while True:
            try:
                registry = Registry(self.endpoints, self.prefix, access=self.access)
                started = time.perf_counter()
                snapshot = registry.snapshot(pause=_yield)
                log.debug("registry snapshot read in %.1f ms", (time.perf_counter() - started) * 1e3)
                # loaded aside and swapped in whole: switches syncing while it loads
                # (it yields) must never see a half-loaded cluster
                model = ClusterModel()
                impact = model.load(snapshot.config, snapshot.leases, snapshot.endpoints, _yield,
                                    snapshot.vxflow, snapshot.services)  # fmt: skip
                self.model = model
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
                        self._apply(self.model.apply(batch))
                        self.coordinator.apply(e for e in batch if isinstance(e, ReplicaEvent))
            except (RegistryError, OSError) as exc:
                log.warning("etcd %s: %s; retrying in %.1fs", self.endpoints, exc, delay)
            except Exception:
                log.exception("registry follower failed; retrying in %.1fs", delay)
            hub.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _apply(self, impact: Impact) -> None:
        if self.model.config is None:
            log.warning(
                "no valid network config under %s yet: switches are left as they are, and "
                "this replica does not join the controller cluster", self.prefix,
            )  # fmt: skip
            return
        self.membership.begin()
        metrics.REJECTED.set(len(self.model.rejected))
        for sync in list(self.switches.values()):
            own = self.model.own_lease(sync.node)
            scope = impact.scope_for(sync.node, own.subnet if own else None)
            if scope:
                sync.request(scope, impact.flushes)

    def _audit_loop(self) -> None:
        while True:
            hub.sleep(CONF.vxflow_audit_interval)
            for sync in list(self.switches.values()):
                sync.audit()

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
            ev.datapath, hub.spawn_after, MAIN_DISPATCHER, DEAD_DISPATCHER
        )

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
                self._count_switches()
                log.info("switch of %s disconnected", sync.node)
                self.coordinator.request()
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
        no_packet_in = [
            parser.OFPAsyncConfigPropReasons(ofp.OFPACPT_PACKET_IN_SLAVE, mask=0),
            parser.OFPAsyncConfigPropReasons(ofp.OFPACPT_PACKET_IN_MASTER, mask=0),
        ]
        dp.send_msg(parser.OFPSetAsync(dp, no_packet_in))
        channel = DatapathChannel(dp)
        sync = SwitchSync(
            node=node,
            channel=channel,
            desired=lambda scope: self.model.desired(node, scope),
            later=lambda delay, fn: hub.spawn_after(delay, fn),
            on_synced=self._synced,
            pause=_yield,
            may_write=self.membership.valid,
        )
        self.switches[dp.id] = sync
        self.roles[dp.id] = SwitchRole(node, channel, on_master=sync.promote, on_lost=sync.suspend)
        self._monitor_xids[dp.id] = xid = channel.xids(1)
        channel.send(monitor.encode_request(xid))  # drift reported at once (controller/monitor.py)
        self._count_switches()
        log.info("switch of %s connected from %s", node, dp.address)
        self.coordinator.request()  # its master (we or another replica) takes it from here

    def _count_switches(self) -> None:
        metrics.SWITCHES.set(len(self.switches))
        metrics.MASTERED.set(sum(role.master for role in self.roles.values()))

    def _sync_of(self, msg) -> SwitchSync | None:
        sync = self.switches.get(msg.datapath.id)
        return sync if sync is not None and sync.channel.datapath is msg.datapath else None

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def _flow_stats(self, ev) -> None:
        self._multipart(ev.msg, SwitchSync.on_flow_stats)

    @set_ev_cls(ofp_event.EventOFPGroupDescStatsReply, MAIN_DISPATCHER)
    def _group_desc(self, ev) -> None:
        self._multipart(ev.msg, SwitchSync.on_group_desc)

    def _multipart(self, msg, handle) -> None:
        """A readback reply's raw body to its switch's sync (`handle(sync, xid, body, more)`)."""
        sync = self._sync_of(msg)
        if sync is not None:
            more = bool(msg.flags & ofwire.OFPMPF_REPLY_MORE)
            handle(sync, msg.xid, bytes(msg.buf[_MULTIPART_HEADER:]), more)

    @set_ev_cls(ofp_event.EventOFPFlowMonitorReply, MAIN_DISPATCHER)
    def _flow_monitor(self, ev) -> None:
        sync = self._sync_of(ev.msg)
        if sync is not None:
            monitor.deliver(bytes(ev.msg.buf[_MULTIPART_HEADER:]), sync)

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier(self, ev) -> None:
        sync = self._sync_of(ev.msg)
        if sync is not None:
            sync.on_barrier(ev.msg.xid)

    def _role_of(self, msg) -> SwitchRole | None:
        return self.roles.get(msg.datapath.id) if self._sync_of(msg) is not None else None

    @set_ev_cls(ofp_event.EventOFPRoleReply, MAIN_DISPATCHER)
    def _role_reply(self, ev) -> None:
        role = self._role_of(ev.msg)
        if role is not None and role.on_reply(ev.msg.xid, ev.msg.role, ev.msg.generation_id):
            self._count_switches()

    @set_ev_cls(ofp_event.EventOFPRoleStatus, MAIN_DISPATCHER)
    def _role_status(self, ev) -> None:
        role = self._role_of(ev.msg)
        if role is not None:
            role.on_status(ev.msg.role, ev.msg.generation_id)
            self._count_switches()
            self.coordinator.request()

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev) -> None:
        metrics.PACKET_INS.inc()
        log.warning(
            "switch %016x sent a packet-in (reason %d, table %d, cookie %#x): no vxflow flow "
            "asks for one; the table has drifted", ev.msg.datapath.id, ev.msg.reason,
            ev.msg.table_id, ev.msg.cookie,
        )

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    def _error(self, ev) -> None:
        msg = ev.msg
        sync, role = self._sync_of(msg), self._role_of(msg)
        if role is not None and (msg.type, msg.code) == (OFPET_BAD_REQUEST, OFPBRC_IS_SLAVE):
            metrics.WRITES_REFUSED.inc()
            log.warning("switch %s refused a write (xid %#x): this replica is not its master",
                        role.node, msg.xid)  # fmt: skip
            role.refused_write()
            self._count_switches()
            self.coordinator.request()
            return
        if role is not None and role.on_error(msg.xid, msg.type, msg.code):
            return
        if sync is not None and msg.xid == self._monitor_xids.get(msg.datapath.id):
            metrics.OF_ERRORS.labels(str(msg.type), str(msg.code)).inc()
            log.error("switch %s refused the flow monitor (error type %d code %d): drift is "
                      "found by the periodic audit only", sync.node, msg.type, msg.code)  # fmt: skip
            return
        if sync is None or not sync.on_error(msg.xid, msg.type, msg.code, bytes(msg.data)):
            metrics.OF_ERRORS.labels(str(msg.type), str(msg.code)).inc()
            log.error(
                "switch %016x: OpenFlow error type %d code %d for xid %#x (not a vxflow message)",
                msg.datapath.id, msg.type, msg.code, msg.xid,
            )
