"""The harness of the controller's integration tests: real etcd, one private ovs-vswitchd
holding one br-int-like bridge per emulated node, and `vxflow controller` processes.

Every check compares what a switch holds (`ovs-ofctl dump-flows`, `dump-groups`)
with the compiler's desired table, both rendered by OVS itself: the desired
groups and flows are loaded with `ovs-ofctl add-groups` and `add-flows` into a
scratch bridge and dumped the same way. Flows the switch learned itself (client-IP
affinity entries) are its own and left out of the comparison.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from daemons.processes import stop_process
from flows.compiler import compile_table
from flows.flow import to_ofctl
from flows.groups import group_to_ofctl
from flows.ports import TUNNEL_OFPORT, vtep_mac_for
from flows.services import service_plan
from leases.etcd_server import EtcdServer, free_loopback_port
from leases.liveness import MAX_TTL as MAX_LIVENESS_TTL
from leases.model import Endpoint, Lease, datapath_id_for
from leases.registry import Registry
from ovsdb.instance import OvsInstance
from tests.emulation import run_tag

PREFIX = "/vxflow-test/network"
# how long a test waits for something that must happen, where how soon is not the claim
# (timing goals are the benchmarks'): a deadline only ends a wait that has failed, and a
# loaded machine (parallel workers on 2 cores) starts a controller in seconds, not 0.5 s
FUNCTIONAL_WAIT = 60.0
CONFIG = '{"Network": "198.19.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}'
TAG = run_tag()  # the run's tag: the leftover check finds what these tests leave
VXFLOW = str(Path(sys.executable).with_name("vxflow"))
OSKEN_MANAGER = str(Path(sys.executable).with_name("osken-manager"))


def node_ip(i: int) -> IPv4Address:
    return IPv4Address(f"198.18.0.{i}")


@dataclass
class Controller:
    """`vxflow controller` as a child process, stopped by its PID."""

    etcd: str
    port: int = field(default_factory=free_loopback_port)
    metrics_port: int = field(default_factory=free_loopback_port)
    audit_interval: float = 0
    osken_manager: bool = False  # run it as `vxflow controller --help` says it is equivalent to
    prefix: str = PREFIX
    member_id: str | None = None  # None: the default (hostname:port)
    member_ttl: int | None = None  # None: the default
    extra: tuple[str, ...] = ()  # more `vxflow controller` options (TLS)
    log_format: str = "text"
    env: dict[str, str] = field(default_factory=dict)  # more environment (VXFLOW_* settings)
    log_path: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def target(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> Controller:
        self.log_path = log_dir / f"controller-{time.monotonic_ns()}.log"
        env = {**os.environ, **self.env}
        if self.osken_manager:
            cmd = [
                OSKEN_MANAGER, "--ofp-listen-host", "127.0.0.1",
                "--ofp-tcp-listen-port", str(self.port), "controller.app",
            ]  # fmt: skip
            env = {
                **env, "FLANNELD_ETCD_ENDPOINTS": self.etcd,
                "FLANNELD_ETCD_PREFIX": self.prefix,
                "VXFLOW_METRICS_PORT": str(self.metrics_port),
                "VXFLOW_AUDIT_INTERVAL": str(self.audit_interval),
            }  # fmt: skip
        else:
            cmd = [
                VXFLOW, "--log-level", "debug", "--log-format", self.log_format, "controller",
                "--listen", "127.0.0.1", "--port", str(self.port),
                "--etcd-endpoints", self.etcd, "--etcd-prefix", self.prefix,
                "--metrics-port", str(self.metrics_port),
                "--audit-interval", str(self.audit_interval),
                *(["--id", self.member_id] if self.member_id else []),
                *(["--member-ttl", str(self.member_ttl)] if self.member_ttl else []),
                *self.extra,
            ]  # fmt: skip
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)
        self.proc = None

    def metric(self, name: str, **labels: str) -> float:
        """A counter/gauge from the controller's /metrics (0 if absent)."""
        return metric(f"http://127.0.0.1:{self.metrics_port}/metrics", name, **labels)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""


def metric(url: str, name: str, **labels: str) -> float:
    """A counter/gauge served at `url` with exactly `labels` (0 if absent)."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", re.M)
    return sum(
        float(m.group(2))
        for m in pattern.finditer(text)
        if dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")) == labels
    )


@dataclass
class Cluster:
    """Real etcd + one private OVS with one br-int-like bridge per emulated node."""

    etcd: EtcdServer
    ovs: OvsInstance
    registry: Registry
    controller: Controller
    bridges: dict[IPv4Address, str] = field(default_factory=dict)
    replicas: list[Controller] = field(default_factory=list)  # beyond `controller`

    @property
    def controllers(self) -> list[Controller]:
        return [self.controller, *self.replicas]

    def add_replica(self, **options) -> Controller:
        """Another controller on the same etcd prefix (started by the test)."""
        self.replicas.append(Controller(self.etcd.endpoint, **options))
        return self.replicas[-1]

    def point_switches_at(self, controllers: list[Controller]) -> None:
        """Every bridge connects to every one of `controllers` (what the agents do from etcd)."""
        for bridge in self.bridges.values():
            self.ovs.vsctl("set-controller", bridge, *(c.target for c in controllers))

    def roles(self, bridge: str) -> dict[str, str]:
        """target -> role (master, slave or other) of each connected controller of `bridge`,
        as ovs-vswitchd reports it (it refreshes that status lazily: poll it)."""
        mine = set(
            re.findall(r"[0-9a-f-]{36}", self.ovs.vsctl("get", "bridge", bridge, "controller"))
        )
        out = self.ovs.vsctl(
            "--format=csv", "--data=bare", "--no-headings",
            "--columns=_uuid,target,role,is_connected", "list", "controller",
        )  # fmt: skip
        rows = [line.split(",") for line in out.splitlines() if line]
        return {t: role for uuid, t, role, up in rows if uuid in mine and up == "true"}

    def add_switch(self, i: int) -> str:
        name = f"{TAG}c{i}"
        ip = node_ip(i)
        self.ovs.vsctl(
            "add-br", name,
            "--", "set", "bridge", name, "datapath_type=netdev", "fail_mode=secure",
            "protocols=OpenFlow13,OpenFlow14",
            f"other_config:datapath-id={datapath_id_for(ip):016x}",
            "--", "add-port", name, f"{TAG}t{i}",
            "--", "set", "interface", f"{TAG}t{i}", "type=vxlan",
            f"ofport_request={TUNNEL_OFPORT}", "options:remote_ip=flow", "options:key=flow",
            f"options:local_ip={ip}", "options:dst_port=8472",
            "--", "set-controller", name, f"tcp:127.0.0.1:{self.controller.port}",
        )  # fmt: skip
        self.bridges[ip] = name
        return name

    def desired_lines(self, ip: IPv4Address) -> set[str]:
        """The desired flows and groups of node `ip`, as OVS renders them."""
        snap = self.registry.snapshot()
        plan = service_plan(snap.vxflow, snap.services)
        table = compile_table(snap.config, snap.leases, snap.endpoints, ip, plan)
        scratch = f"{TAG}x"
        self.ovs.vsctl(
            "--may-exist", "add-br", scratch, "--", "set", "bridge", scratch,
            "datapath_type=netdev", "fail_mode=secure", "protocols=OpenFlow13,OpenFlow14",
        )  # fmt: skip
        self.ovs.ofctl("del-flows", scratch)
        self.ovs.ofctl("del-groups", scratch)
        if table.groups:  # before the flows that point at them
            groups = "\n".join(map(group_to_ofctl, table.groups)) + "\n"
            self.ovs.ofctl("add-groups", scratch, "-", input=groups)
        self.ovs.ofctl("add-flows", scratch, "-", input="\n".join(map(to_ofctl, table)) + "\n")
        return self.dump(scratch)

    def dump(self, bridge: str) -> set[str]:
        """Flows (but the learned ones) and groups of `bridge`, as lines."""
        out = self.ovs.ofctl("dump-flows", "--no-stats", bridge)
        flows = {line.strip() for line in out.splitlines() if "actions=" in line}
        groups = self.ovs.ofctl("dump-groups", bridge).splitlines()[1:]
        return {f for f in flows if "cookie=0x7606" not in f} | {g.strip() for g in groups}

    def wait_converged(self, timeout: float = FUNCTIONAL_WAIT) -> None:
        """Every switch holds exactly its desired table (compared as sets)."""
        deadline = time.monotonic() + timeout
        while True:
            diffs = {}
            for ip, bridge in self.bridges.items():
                want, have = self.desired_lines(ip), self.dump(bridge)
                if want != have:
                    diffs[ip] = (sorted(want - have), sorted(have - want))
            if not diffs:
                return
            if time.monotonic() > deadline:
                pytest.fail(
                    f"not converged (missing, unexpected): {diffs}\n{self.controller.log()}"
                )
            time.sleep(0.2)

    def lease(self, i: int, ttl: int = 3600) -> Lease:
        """Node i's lease, and its liveness record (for the longest TTL one may have; no
        test runs that long), as its agent would keep it: the node is UP whether its switch
        is connected or not."""
        self.registry.put_liveness(node_ip(i), MAX_LIVENESS_TTL)
        return self.registry.acquire(node_ip(i), vtep_mac_for(node_ip(i)), ttl=ttl)


@contextmanager
def running(
    etcd: EtcdServer, ovs: OvsInstance, controller: Controller | None = None
) -> Iterator[Cluster]:
    """A Cluster on a configured prefix; its controllers stopped and bridges deleted after."""
    registry = Registry(etcd.endpoint, PREFIX)
    registry.set_config(CONFIG)
    c = Cluster(etcd, ovs, registry, controller or Controller(etcd.endpoint))
    try:
        yield c
    finally:
        for controller in c.controllers:
            controller.stop()
        for bridge in [*c.bridges.values(), f"{TAG}x"]:
            ovs.vsctl("--if-exists", "del-br", bridge)
        registry.close()


def wait_for(what: str, check: Callable[[], bool], timeout: float = FUNCTIONAL_WAIT) -> None:
    """Poll `check`; an OSError counts as not yet (a controller not serving metrics yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def pod(lease: Lease, host: int, ofport: int) -> Endpoint:
    ip = lease.subnet.network_address + host
    return Endpoint(lease.subnet, ip, f"02:00:{ip.packed.hex(':')}", ofport, f"pod{host}")


@contextmanager
def standin_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An asyncio loop in a thread, for stand-in switches (bench/standin.py) a test drives."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def connect_standin(loop: asyncio.AbstractEventLoop, make: Callable[[], asyncio.Protocol],
                    port: int, rcvbuf: int | None = None) -> asyncio.Protocol:  # fmt: skip
    """A stand-in connected to the controller on `port` (retried until it listens), with a
    receive buffer of `rcvbuf` bytes if given; its protocol object."""
    made: list[asyncio.Protocol] = []

    def connected() -> bool:  # (refused until the controller listens: an OSError)
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        made.append(asyncio.run_coroutine_threadsafe(
            loop.create_connection(make, sock=sock), loop).result(10)[1])  # fmt: skip
        return True

    wait_for("the stand-in connected", connected)
    return made[0]
