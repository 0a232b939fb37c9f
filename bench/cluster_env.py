"""The controller-side setup B1-B3 share: etcd loaded with a synthetic cluster, the
controller reading it, real bridges pointed at it, all inside the benchmark's namespace."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.bridges import BridgeFarm
from bench.controller_proc import ControllerProcess, make_pki
from bench.etcdload import PREFIX, load
from bench.leasegen import Cluster
from flows.compiler import compile_node
from leases.etcd_server import EtcdServer
from leases.registry import Registry

log = logging.getLogger(__name__)


@dataclass
class Env:
    cluster: Cluster
    etcd: EtcdServer
    registry: Registry
    etcd_lease: int
    controller: ControllerProcess
    workdir: Path

    def table_size(self, extra_leases: int = 0) -> int:
        """Flows of any node's full table (every node's is the same size), with
        `extra_leases` more remote leases than the cluster has now."""
        c = self.cluster
        base = len(compile_node(c.config, c.leases[:2], (), c.leases[0].public_ip))
        return base + c.flows_per_lease * (len(c.leases) - 2 + extra_leases)


@contextlib.contextmanager
def environment(cluster: Cluster, keep_logs: Path | None = None, tls: bool = False,
                audit_interval: float = 0, listen: str = "127.0.0.1") -> Iterator[Env]:  # fmt: skip
    """etcd with `cluster` loaded, and a running controller reading it, listening on
    `listen` (with `tls`: OpenFlow over TLS, certificates in the work dir; see
    `BridgeFarm.use_tls`; periodic audits off unless `audit_interval` is given)."""
    with tempfile.TemporaryDirectory(prefix="vxflow-bench-") as tmp:
        workdir = Path(tmp)
        etcd = EtcdServer(data_dir=workdir / "etcd").start()
        try:
            registry = Registry(etcd.endpoint, PREFIX)
            t0 = time.monotonic()
            etcd_lease = load(registry, cluster.config, cluster.leases)
            log.info("etcd: %d leases loaded in %.1fs", len(cluster.leases), time.monotonic() - t0)
            log_path = (keep_logs or workdir) / "controller.log"
            controller = ControllerProcess(etcd.endpoint, PREFIX, log_path,
                                           audit_interval=audit_interval, listen=listen,
                                           pki=make_pki(workdir / "pki") if tls else None)  # fmt: skip
            with controller:
                yield Env(cluster, etcd, registry, etcd_lease, controller, workdir)
            registry.close()
        finally:
            etcd.stop()


def connect_and_converge(env: Env, farm: BridgeFarm, observer, timeout: float) -> float:
    """Point every bridge at the controller; seconds until all hold their full table."""
    want = env.table_size()
    t0 = time.monotonic()
    farm.set_controller(env.controller.target)
    reached = observer.wait_flow_count({b.name: want for b in farm.bridges}, timeout=timeout,
                                       interval=0.01)  # fmt: skip
    return max(reached.values()) - t0
