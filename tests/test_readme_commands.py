"""Every shell line of README.md's code blocks, and every command line a `--help` text shows,
is run here as typed (by `sh -c`, with the venv's commands on PATH) or listed in COVERED with
the test that runs it as typed and why it is not run here. A line the docs show that is
neither fails: a command that drifts from the docs fails this test.

Blocks fenced as ```text (the README's diagram) hold no commands.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from leases.etcd_server import EtcdServer
from leases.registry import Registry
from tests.test_cli_help import command_paths
from vxflow.cli import cli

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# line (as shown, without its trailing comment) -> the test that runs it as typed, and why here not
COVERED: dict[str, tuple[str, str]] = {
    "make demo": ("tests/test_e2e_demo.py::test_make_demo_exits_0_and_leaves_nothing_running",
                  "the whole demo with its teardown checks (minutes, e2e)"),
    "make test": (".ci/run", "the whole suite, which this test is part of"),
    "make integration": (".ci/run", "the root-only part of `make test`: the same tests"),
    "make bench": ("tests/test_bench_smoke.py::test_b8_drift_repair_tiny",
                   "full-size benchmarks take ~15 minutes and must not run on a shared "
                   "machine; their reduced-size runs are test_bench_smoke.py"),
    "make setup": ("tests/test_make_targets.py::test_make_setup_again_only_checks",
                   "run as typed there (a second run only checks)"),
    "make lint": ("tests/test_make_targets.py::test_make_lint_is_clean", "run as typed there"),
    "make unit": ("tests/test_make_targets.py::test_make_unit_runs_the_pure_tests_without_the_rest",
                  "runs the unit suite: as typed there"),
    "vxflow policies set netpol.yaml": ("tests/test_leases_policy.py::test_the_readme_commands_as_typed",
                                        "run there in the README's order against a real etcd"),
    "vxflow policies list": ("tests/test_leases_policy.py::test_the_readme_commands_as_typed",
                             "run there in the README's order"),
    "vxflow namespaces label shop team=front": (
        "tests/test_leases_policy.py::test_the_readme_commands_as_typed", "run there in the README's order"),
    "vxflow policies rm shop/allow-web": ("tests/test_leases_policy.py::test_the_readme_commands_as_typed",
                                          "run there in the README's order"),
    **{line: ("tests/test_ovsdb_agent.py::test_the_readme_pod_commands_as_typed",
              "run there in the README's order, on a node whose agent published the pod")
       for line in ("vxflow pods list", "vxflow pods label shop/web tier=front",
                    "vxflow pods ports shop/web http=8080/TCP",
                    "vxflow policies explain shop/web")},
    "make repeat REPEAT=N": ("tests/test_make_targets.py::"
                             "test_make_repeat_runs_each_random_leases_test_that_many_times",
                             "run there with N = 1; 200 times each takes an hour"),
    "vxflow controller --port 6653": (
        "tests/test_readme_daemons.py::test_two_replicas_on_one_machine_are_healthy_and_never_collide",
        "a daemon: started as typed there, with switches, until `vxflow status` exits 0"),
    "vxflow services network fd00:96::/108": (
        "tests/test_leases_services.py::test_the_readme_ipv6_service_network_command_as_typed",
        "needs a dual-stack network config in etcd"),
    "vxflow controller --port 6654": (
        "tests/test_readme_daemons.py::test_two_replicas_on_one_machine_are_healthy_and_never_collide",
        "the second replica of the same example"),
}


# lines run by the tests below, as typed
RUN_HERE = (
    'vxflow-cni install "$CNI_BIN_DIR"',
    "vxflow services network 10.96.0.0/16", "vxflow services set web.json",
    "vxflow services list", "vxflow services rm web",
    "vxflow pki init /etc/vxflow/pki", "vxflow pki node /etc/vxflow/pki 10.140.0.4",
    "vxflow pki server /etc/vxflow/pki controller --ip 10.140.0.2",
    "vxflow pki server /etc/vxflow/pki etcd --ip 10.140.0.2",
    "vxflow pki client /etc/vxflow/pki operator",
)  # fmt: skip


def code_lines(text: str) -> list[str]:
    """The non-blank lines of every fenced block not marked ```text."""
    blocks = re.findall(r"^```([^\n]*)\n(.*?)^```", text, re.S | re.M)
    return [line.strip() for lang, body in blocks if lang.strip() != "text"
            for line in body.splitlines() if line.strip()]  # fmt: skip


def help_lines() -> list[str]:
    """Command lines `--help` texts show: the lines of their verbatim (\\b) paragraphs that
    start with a command, and vxflow-cni's indented ones."""
    lines = []
    ctx = click.Context(cli)
    for path in command_paths(cli):
        command = cli
        for name in path:
            command = command.get_command(ctx, name)
        for paragraph in re.split(r"\n\s*\n", f"{command.help or ''}\n\n{command.epilog or ''}"):
            body = paragraph.strip()
            if body.startswith("\b"):
                lines += [line.strip() for line in body.splitlines()[1:]
                          if line.strip().startswith("vxflow ")]  # fmt: skip
    cni = subprocess.run([BIN / "vxflow-cni", "--help"], capture_output=True, text=True,
                         timeout=30).stdout  # fmt: skip
    lines += [line.strip() for line in cni.splitlines() if line.startswith("    vxflow-cni ")]
    return lines


def command(line: str) -> str:
    return line.split(" #")[0].strip()


def sh(line: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", line], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **env})  # fmt: skip


def test_every_line_is_run_here_or_covered_by_a_named_test() -> None:
    shown = {command(line) for line in code_lines((REPO / "README.md").read_text())}
    shown |= {command(line) for line in help_lines()}
    ran = set(RUN_HERE)
    assert shown - ran - set(COVERED) == set(), "shown but neither run here nor in COVERED"
    assert (ran | set(COVERED)) - shown == set(), "run or covered, but no longer shown"
    for where, _why in COVERED.values():
        if "::" in where:
            path, name = where.split("::")
            assert f"def {name}(" in (REPO / path).read_text(), where


def test_the_cni_install_line(tmp_path: Path) -> None:
    res = sh(RUN_HERE[0], tmp_path, CNI_BIN_DIR=str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "vxflow").is_file() and os.access(tmp_path / "vxflow", os.X_OK)


@pytest.mark.integration
def test_the_services_lines(etcd: EtcdServer, tmp_path: Path) -> None:
    """In order, with web.json the example `vxflow services set --help` shows."""
    with Registry(etcd.endpoint, "/coreos.com/network") as reg:
        reg.set_config('{"Network": "198.19.0.0/16", "Backend": {"Type": "vxlan"}}')
    example = sh("vxflow services set --help", tmp_path).stdout
    (tmp_path / "web.json").write_text(example.split("(one object, or a list of them):")[1])
    for line in RUN_HERE[1:5]:
        res = sh(line, tmp_path, FLANNELD_ETCD_ENDPOINTS=etcd.endpoint)
        assert res.returncode == 0 and res.stdout, (line, res.stdout, res.stderr)
        assert "warning" not in res.stderr, (line, res.stderr)


@pytest.mark.integration
def test_the_pki_help_lines(tmp_path: Path) -> None:
    """As typed, /etc/vxflow/pki included: /etc is an overlay in a private mount namespace
    (writes land in tmp_path), so the host's /etc is never touched."""
    (tmp_path / "upper").mkdir()
    (tmp_path / "work").mkdir()
    script = " && ".join([
        "mount --make-rprivate /",
        f"mount -t overlay overlay -o lowerdir=/etc,upperdir={tmp_path}/upper,"
        f"workdir={tmp_path}/work /etc",
        *RUN_HERE[5:],
    ])  # fmt: skip
    res = subprocess.run(["unshare", "--mount", "sh", "-c", script], capture_output=True,
                         text=True, timeout=120,
                         env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    written = {p.name for p in (tmp_path / "upper" / "vxflow" / "pki").iterdir()}
    assert {"ca.pem", "ca-key.pem", "node-10.140.0.4.pem", "controller.pem", "etcd.pem",
            "operator.pem", "operator-key.pem"} <= written  # fmt: skip
    assert not Path("/etc/vxflow").exists() or "pki" not in os.listdir("/etc/vxflow")
