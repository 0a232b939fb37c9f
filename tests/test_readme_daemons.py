"""The README's ways to run the controller, started exactly as typed (the literal line, with
FLANNELD_ETCD_* in the environment as the README says), give a cluster that `vxflow status`
calls healthy once it has settled: the single controller, two replicas on one machine
(whose default status pages never collide), and `osken-manager ... controller.app`.

The switches are real ovs-vswitchd bridges connected to every replica, as the node agents
connect them from etcd (the agent's own case: tests/test_ovsdb_agent.py).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from daemons.processes import stop_process
from leases.etcd_server import EtcdServer
from ovsdb.instance import OvsInstance
from tests.ofharness import PREFIX, Cluster, running, wait_for

pytestmark = pytest.mark.integration

README = (Path(__file__).parents[1] / "README.md").read_text()
BIN = str(Path(sys.executable).parent)


def readme_env(etcd: EtcdServer) -> dict[str, str]:
    """The environment the README's lines assume: vxflow's commands on PATH, etcd from
    FLANNELD_ETCD_*; nothing else vxflow reads (no VXFLOW_METRICS_PORT)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VXFLOW_", "FLANNELD_"))}
    return {**env, "PATH": f"{BIN}:{env.get('PATH', '')}", "FLANNELD_ETCD_ENDPOINTS":
            etcd.endpoint, "FLANNELD_ETCD_PREFIX": PREFIX}  # fmt: skip


@contextmanager
def started(lines: list[str], env: dict[str, str], log_dir: Path,
            readme: bool = True) -> Iterator[None]:  # fmt: skip
    """Each line (a README line as typed, unless not `readme`) run as split by a shell,
    stopped by its PID after."""
    with ExitStack() as stack:
        for i, line in enumerate(lines):
            assert line in README or not readme, f"not in the README as typed: {line}"
            with open(log_dir / f"daemon{i}.log", "wb") as log:
                proc = subprocess.Popen(shlex.split(line), env=env, stdout=log, stderr=log)
            stack.callback(stop_process, proc)
        yield


def status(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["vxflow", "status", *args], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def settled(cluster: Cluster, env: dict[str, str], replicas: int) -> dict:
    """`vxflow status -o json` once every node's switch is connected to all `replicas` and
    mastered in sync (polled, with a deadline); the report."""
    doc: dict = {}

    def check() -> bool:
        nonlocal doc
        doc = json.loads(status(env, "-o", "json").stdout)
        return len(doc["controllers"]) == replicas and len(doc["nodes"]) == len(
            cluster.bridges) and all(len(n["connected_to"]) == replicas and n["in_sync"]
                                     for n in doc["nodes"])  # fmt: skip

    wait_for(f"{replicas} replica(s) and every switch settled", check, timeout=30)
    return doc


def assert_healthy(cluster: Cluster, env: dict[str, str], replicas: int) -> dict:
    doc = settled(cluster, env, replicas)
    assert doc["healthy"] and doc["problems"] == [] and doc["unknown"] == [], doc
    text = status(env)  # `vxflow status`, as typed
    assert text.returncode == 0, text.stdout + text.stderr
    assert text.stdout.splitlines()[-1] == "healthy"
    assert sum(c["masters"] for c in doc["controllers"]) == len(cluster.bridges)
    for ctl in doc["controllers"]:
        assert ctl["connected"] == len(cluster.bridges) and ctl["error"] == ""
        assert urlsplit(ctl["status"]).hostname == "127.0.0.1"  # loopback by default
    return doc


@pytest.fixture
def cluster(etcd: EtcdServer, ovs: OvsInstance) -> Iterator[Cluster]:
    with running(etcd, ovs) as c:
        for i in (1, 2, 3):
            c.lease(i)
            c.add_switch(i)
        yield c


def connect(cluster: Cluster, *ports: int) -> None:
    for bridge in cluster.bridges.values():
        cluster.ovs.vsctl("set-controller", bridge, *(f"tcp:127.0.0.1:{p}" for p in ports))


def test_the_single_controller(cluster: Cluster, tmp_path: Path) -> None:
    env = readme_env(cluster.etcd)
    connect(cluster, 6653)
    with started(["vxflow controller"], env, tmp_path):
        assert_healthy(cluster, env, 1)
    log = (tmp_path / "daemon0.log").read_text()
    assert "were not greened" not in log and "EtcdAccess" not in log, log[:2000]
    assert f"prefix {PREFIX} (no CA file, no client certificate, no user)" in log


def test_two_replicas_on_one_machine_are_healthy_and_never_collide(
    cluster: Cluster, tmp_path: Path
) -> None:
    env = readme_env(cluster.etcd)
    connect(cluster, 6653, 6654)
    with started(["vxflow controller --port 6653", "vxflow controller --port 6654"], env,
                 tmp_path):  # fmt: skip
        doc = assert_healthy(cluster, env, 2)
    ports = {urlsplit(c["status"]).port for c in doc["controllers"]}
    assert len(ports) == 2 and not ports & {6653, 6654}, doc["controllers"]


def test_osken_manager_runs_the_app_as_the_readme_shows(cluster: Cluster, tmp_path: Path) -> None:
    env = readme_env(cluster.etcd)
    connect(cluster, 6653)
    line = "osken-manager --ofp-listen-host 127.0.0.1 --ofp-tcp-listen-port 6653 controller.app"
    with started([line], env, tmp_path):
        assert_healthy(cluster, env, 1)


def test_a_replica_with_its_page_off_is_unknown_not_a_problem(
    cluster: Cluster, tmp_path: Path
) -> None:
    env = readme_env(cluster.etcd)
    connect(cluster, 6653)
    with started(["vxflow controller --metrics-port 0"], env, tmp_path, readme=False):
        wait_for("the claims", lambda: len(cluster.registry.snapshot().claims) == 3, 30)
        res = status(env, "-o", "json")
        doc = json.loads(res.stdout)
        assert res.returncode == 0 and doc["healthy"] and doc["problems"] == [], doc
        assert [c["status"] for c in doc["controllers"]] == [""]
        assert doc["controllers"][0]["masters"] == 3 and doc["controllers"][0]["connected"] is None
        assert len(doc["unknown"]) == 2 and "--metrics-port 0" in doc["unknown"][0]
        assert status(env).returncode == 0
