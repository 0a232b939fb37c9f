"""packaging/systemd: the units pass `systemd-analyze verify`, their example environment
files set only what the daemons read, and the agent works with the unit's capabilities.

systemd does not run as PID 1 here: the units are verified, not started. What
starting them would change for the agent, the capability bounding set and
no_new_privs, is applied with setpriv(1) to a real agent, which must still
take its lease, bootstrap br-int, write subnet.env and serve a CNI ADD itself.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import ip_address
from pathlib import Path

import click
import pytest

from controller.cli import controller
from ovsdb.cli import agent
from tests.cni_node import VXFLOW_CNI, CniNode
from tests.emulation import Underlay
from tests.ofharness import VXFLOW
from tests.test_ovsdb_agent import make_cluster, wait_for
from vxflow.cli import cli

UNITS = Path(__file__).resolve().parents[1] / "packaging" / "systemd"
INSTALLED = "/opt/vxflow/bin/vxflow"  # where docs/deploy.md installs the venv
DAEMONS = {"agent": agent, "controller": controller}


def directives(unit: Path) -> dict[str, list[str]]:
    """`Key=value` lines of a unit (any section), each key's values in order."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def environment_file(path: Path) -> dict[str, str]:
    """systemd's EnvironmentFile syntax, as the examples use it (no quotes, no continuations)."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if line and not line.startswith("#"))  # fmt: skip


def verify(folder: Path, vxflow: str, edit=lambda text: text) -> subprocess.CompletedProcess:
    """`systemd-analyze verify` of both units, their ExecStart pointed at `vxflow`."""
    paths = []
    for name in ("vxflow-agent.service", "vxflow-controller.service"):
        text = (UNITS / name).read_text()
        assert text.count(INSTALLED) == 1, name
        (folder / name).write_text(edit(text.replace(INSTALLED, vxflow)))
        paths.append(str(folder / name))
    return subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_both_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    res = verify(tmp_path, VXFLOW)
    assert (res.returncode, res.stderr, res.stdout) == (0, "", "")


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above is not vacuous: a misspelt value or a missing binary is reported."""
    res = verify(tmp_path, VXFLOW, lambda text: text.replace("Type=notify", "Type=notifyy"))
    assert "Failed to parse service type" in res.stderr
    res = verify(tmp_path, str(tmp_path / "no-such-vxflow"))
    assert res.returncode != 0 and "is not executable" in res.stderr


@pytest.mark.parametrize("daemon", DAEMONS)
def test_units_run_the_daemon_as_the_guide_installs_it(daemon: str) -> None:
    unit = directives(UNITS / f"vxflow-{daemon}.service")
    args = f"VXFLOW_{daemon.upper()}_ARGS"
    assert unit["ExecStart"] == [f"{INSTALLED} {daemon} ${args}"]
    assert unit["EnvironmentFile"] == [f"-/etc/default/vxflow-{daemon}"]
    assert unit["Type"] == ["notify"] and unit["Restart"] == ["on-failure"]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["ProtectSystem"] == ["strict"]
    assert "network-online.target" in unit["After"][0].split()
    if daemon == "agent":
        assert set(unit["After"][0].split()) >= {"openvswitch-switch.service"}
        assert set(unit["Wants"][0].split()) >= {"openvswitch-switch.service"}


def envvars(command: click.Command) -> set[str]:
    return {p.envvar for p in command.params if isinstance(p, click.Option) and p.envvar}


@pytest.mark.parametrize("daemon", DAEMONS)
def test_example_environment_file_sets_only_what_the_daemon_reads(daemon: str) -> None:
    command = DAEMONS[daemon]
    env = environment_file(UNITS / f"vxflow-{daemon}.default")
    args = env.pop(f"VXFLOW_{daemon.upper()}_ARGS")
    unknown = set(env) - envvars(command) - envvars(cli)
    assert not unknown, f"vxflow {daemon} reads no {sorted(unknown)}"
    # the flags parse as the command's own options (an unknown one raises NoSuchOption)
    opts, rest, _ = command.make_parser(click.Context(command)).parse_args(shlex.split(args))
    assert rest == []
    if daemon == "controller":
        assert (opts["listen"], opts["port"]) == ("10.0.0.1", "6653")


def bounding_set(pid: int) -> set[str]:
    """A process's capability bounding set by name; it must also run with no_new_privs."""
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    assert status["NoNewPrivs"] == "1"
    decoded = subprocess.run(["capsh", f"--decode={status['CapBnd']}"], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    return {c.removeprefix("cap_") for c in decoded.strip().split("=", 1)[1].split(",") if c}


def capabilities(unit: Path) -> list[str]:
    (bounding,) = directives(unit)["CapabilityBoundingSet"]
    return [c.removeprefix("CAP_").lower() for c in bounding.split()]


def test_the_controller_needs_no_capability() -> None:
    assert capabilities(UNITS / "vxflow-controller.service") == []


@contextmanager
def unit_agent(underlay: Underlay, tmp_path: Path) -> Iterator[tuple]:
    """An agent run as the unit runs it: only its bounding set, no_new_privs."""
    caps = ",".join(f"+{c}" for c in capabilities(UNITS / "vxflow-agent.service"))
    wrap = ("setpriv", f"--bounding-set=-all,{caps}", "--no-new-privs")
    with contextmanager(make_cluster)(underlay, tmp_path, 1) as cluster:
        agent_proc = cluster.agents[0]
        agent_proc.wrap = wrap
        yield cluster, agent_proc.start()


@pytest.mark.integration
def test_the_agent_works_with_the_units_capabilities_alone(underlay: Underlay,
                                                            tmp_path: Path) -> None:  # fmt: skip
    with unit_agent(underlay, tmp_path) as (cluster, proc):
        subnet = proc.subnet()  # leased, br-int converged (gateway address), subnet.env written
        assert bounding_set(proc.proc.pid) == set(capabilities(UNITS / "vxflow-agent.service"))
        wait_for(proc.cni_socket.exists, "the agent's CNI socket")
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        subprocess.run([VXFLOW_CNI, "install", str(bin_dir)], check=True, capture_output=True)
        cni = CniNode(underlay, proc.node, proc.workdir, exe=str(bin_dir / "vxflow"),
                      conf_extra={"agentSocket": str(proc.cni_socket)})  # fmt: skip
        netns = cni.container("u1")
        code, result, err = cni.plugin("ADD", "u1", netns)
        assert code == 0, (result, err)
        assert "in-process" not in err and "CNI ADD u1/eth0: status 0" in proc.log_text(), err
        address = result["ips"][0]["address"].split("/")[0]
        assert ip_address(address) in subnet
        wait_for(lambda: sorted(cluster.endpoints(subnet)) == [address], "the endpoint in etcd")
        assert cni.plugin("DEL", "u1", netns, conf={**cni.conf(), "prevResult": result})[0] == 0
