"""README.md's metrics table is the list of every vxflow metric: names, types and labels."""

from __future__ import annotations

import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

import controller.metrics
import daemons.build
import leases.metrics
import ovsdb.metrics
from daemons.build import VERSION
from daemons.processes import stop_process
from leases.etcd_server import EtcdServer, free_loopback_port
from leases.registry import Registry
from tests.emulation import ROOT_UNDERLAY_IP
from tests.ofharness import VXFLOW, metric, wait_for
from tests.test_ovsdb_agent import CONFIG, PREFIX, AgentProc, add_internal_pod

README = Path(__file__).resolve().parents[1] / "README.md"
MODULES = (("controller", controller.metrics), ("agent", ovsdb.metrics),
           ("both", leases.metrics), ("both", daemons.build))  # fmt: skip


def documented() -> dict[str, tuple[str, tuple[str, ...], str]]:
    """metric -> (type, label names, served by), from the table after the marker."""
    text = README.read_text()
    table = text[text.index("<!-- metrics table") :].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[3:]:
        name, kind, labels, served, _meaning = (c.strip() for c in line.strip("|").split("|"))
        rows[name.strip("`")] = (kind, tuple(re.findall(r"`(\w+)`", labels)), served)
    assert rows, "no metrics table in README.md"
    return rows


def defined() -> dict[str, tuple[str, tuple[str, ...], str]]:
    rows = {}
    for served, module in MODULES:
        for m in vars(module).values():
            if isinstance(m, MetricWrapperBase) and not m._labelvalues:
                suffix = "_total" if m._type == "counter" else ""
                rows[m._name + suffix] = (m._type, tuple(m._labelnames), served)
            if isinstance(m, (controller.metrics.PolicyDenied, ovsdb.metrics.DirectIngressDropped)):  # collectors
                family = next(m.collect())
                rows[family.name + "_total"] = (family.type, tuple(family._labelnames), served)
    return rows


def test_every_metric_is_documented_with_its_type_labels_and_daemon():
    assert len(defined()) >= 30
    assert documented() == defined()


def names_served_by(daemon: str) -> set[str]:
    return {name for name, (_, _, served) in documented().items() if served in (daemon, "both")}


def families(url: str) -> set[str]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return set(re.findall(r"^# HELP (\w+) ", text, re.M))


@pytest.mark.integration
def test_both_daemons_serve_every_documented_metric_and_they_move(underlay, tmp_path) -> None:
    """A controller (root namespace, on the underlay's .254) and a node's agent: every metric
    the table gives each one is served, and the core ones move with real work."""
    node = underlay.add_node()
    etcd = EtcdServer(host=str(ROOT_UNDERLAY_IP)).start()
    registry = Registry(f"http://127.0.0.1:{etcd.client_port}", PREFIX)
    ctl_metrics, agent_port = free_loopback_port(), free_loopback_port()
    agent = AgentProc(node, tmp_path, etcd, extra=(
        "--metrics-port", str(agent_port), "--metrics-listen", str(node.underlay_ip)))
    ctl = f"http://127.0.0.1:{ctl_metrics}/metrics"
    agent_url = f"http://{node.underlay_ip}:{agent_port}/metrics"
    controller = None
    try:
        registry.set_config(CONFIG)
        with open(tmp_path / "controller.log", "wb") as out:
            controller = subprocess.Popen(
                [VXFLOW, "controller", "--listen", str(ROOT_UNDERLAY_IP),
                 "--port", str(free_loopback_port()), "--metrics-port", str(ctl_metrics),
                 "--etcd-endpoints", f"http://127.0.0.1:{etcd.client_port}", "--etcd-prefix",
                 PREFIX], stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        wait_for("the controller's member", lambda: metric(ctl, "vxflow_controller_member") == 1)
        agent.start()
        subnet = agent.subnet()
        wait_for("the switch", lambda: metric(ctl, "vxflow_controller_mastered_switches") == 1)
        for url, daemon in ((ctl, "controller"), (agent_url, "agent")):
            missing = names_served_by(daemon) - families(url)
            assert not missing, f"{daemon} does not serve {sorted(missing)}"
        assert metric(agent_url, "vxflow_agent_lease_ttl_seconds") > 80_000
        for url, log in ((ctl, tmp_path / "controller.log"), (agent_url, agent.log)):
            assert metric(url, "vxflow_build_info", version=VERSION) == 1
            first = next(x for x in log.read_text().splitlines() if not x.startswith("---"))
            assert f"vxflow {VERSION} " in first, first  # the version in the first log line

        adds = metric(ctl, "vxflow_controller_flow_mods_total", command="add")
        add_internal_pod(node, "pod5", str(subnet.network_address + 5), "0a:58:00:00:00:05")
        wait_for("the agent publishing the pod", lambda: metric(
            agent_url, "vxflow_agent_endpoint_changes_total", op="put") == 1)  # fmt: skip
        wait_for("the controller programming it", lambda: metric(
            ctl, "vxflow_controller_flow_mods_total", command="add") > adds)  # fmt: skip
        node.ovs.ofctl("del-flows", "br-int")
        wait_for("the repair", lambda: metric(
            ctl, "vxflow_controller_drift_repairs_total", found_by="monitor") == 1)  # fmt: skip
        assert metric(ctl, "vxflow_controller_foreign_flow_changes_total", change="removed") > 0
        assert metric(agent_url, "vxflow_agent_bootstrap_changes_total") > 0
    finally:
        agent.stop()
        stop_process(controller)
        registry.close()
        etcd.stop()
