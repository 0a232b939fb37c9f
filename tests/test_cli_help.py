"""`vxflow --help` and `vxflow COMMAND --help` for every command; the version of both executables."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from vxflow.cli import cli

VXFLOW = str(Path(sys.executable).with_name("vxflow"))


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def test_every_command_has_a_help_page() -> None:
    """`vxflow --help` and `vxflow COMMAND --help` as typed, through the console script (each
    in a fresh process: a command's module is imported only when it is used, so each import
    is checked to say nothing on stderr); the pages of the subcommands below them in-process,
    by the same click group (a subprocess each would cost ~0.3 CPU-s for the same code)."""
    paths = command_paths(cli)
    assert ("controller",) in paths and ("leases", "list") in paths
    runner = CliRunner()
    for path in paths:
        if len(path) <= 1:
            res = subprocess.run([VXFLOW, *path, "--help"], capture_output=True, text=True,
                                 timeout=30)  # fmt: skip
            code = res.returncode
        else:
            res = runner.invoke(cli, [*path, "--help"], prog_name="vxflow")
            code = res.exit_code
        assert code == 0, (path, res.stderr)
        assert res.stdout.startswith(f"Usage: vxflow {' '.join(path)}".rstrip()), res.stdout
        assert res.stderr == "", (path, res.stderr)


def test_metrics_port_values() -> None:
    """`--metrics-port`: a port, 0 or '' (off); the controller's default is its own choice
    (None: an ephemeral port), an environment variable set empty leaves the default."""
    from daemons.options import metrics_options

    @click.command()
    @metrics_options("T", None, "ephemeral")
    def show(metrics_port: int | None, metrics_listen: str) -> None:
        click.echo(repr(metrics_port))

    runner = CliRunner()
    for args, env, out in ((["--metrics-port", "9100"], {}, "9100"),
                           (["--metrics-port", "0"], {}, "0"), (["--metrics-port", ""], {}, "0"),
                           ([], {}, "None"), ([], {"T_METRICS_PORT": "0"}, "0"),
                           ([], {"T_METRICS_PORT": ""}, "None")):  # fmt: skip
        res = runner.invoke(show, args, env=env)
        assert (res.exit_code, res.output) == (0, out + "\n"), (args, env, res.output)
    res = runner.invoke(show, ["--metrics-port", "70000"])
    assert res.exit_code == 2 and "70000 is not a port number (0-65535)" in res.output
    res = runner.invoke(show, ["--metrics-port", "auto"])
    assert res.exit_code == 2 and "'auto' is not a port number (0 or '' turns it off)" in res.output


def test_sysconfig_is_taken_where_the_readme_says() -> None:
    """README (Configuration): `--sysconfig` and its FLANNEL_OPTIONS are read by `vxflow agent`,
    `vxflow bootstrap` and `vxflow migrate` only; every other command takes the flags and
    FLANNELD_* alone."""
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "for `vxflow agent`, `vxflow bootstrap` and `vxflow migrate` only (the commands " \
        "that take `--sysconfig`)" in readme  # fmt: skip
    ctx = click.Context(cli)
    taking = set()
    for path in command_paths(cli)[1:]:
        command = cli
        for name in path:
            command = command.get_command(ctx, name)
        if any(p.name == "sysconfig" for p in command.params):
            taking.add(path)
    assert taking == {("agent",), ("bootstrap",), ("migrate",)}


def test_version_of_both_executables_as_typed() -> None:
    """`vxflow --version` and `vxflow-cni --version` name the installed package's version."""
    version = importlib.metadata.version("vxflow")
    res = subprocess.run([VXFLOW, "--version"], capture_output=True, text=True, timeout=30)
    assert (res.returncode, res.stdout) == (0, f"vxflow, version {version}\n"), res.stderr
    cni = subprocess.run([f"{VXFLOW}-cni", "--version"], capture_output=True, text=True, timeout=30)
    assert cni.returncode == 0 and cni.stdout.startswith(f"vxflow-cni {version}: CNI spec")


def test_log_policy_drops_takes_an_optional_rate_as_its_help_says(monkeypatch) -> None:
    """`vxflow controller --log-policy-drops [RATE]`: off by default, the flag alone is the
    rate its help names, a rate given or from VXFLOW_LOG_POLICY_DROPS is taken, a negative
    one or one past DROP_LOG_MAX_RATE (the meter's rate is 32 bits) refused."""
    from controller.cli import controller
    from flows.policy import DROP_LOG_RATE

    def parsed(*args: str) -> int:
        return controller.make_context("controller", list(args)).params["log_policy_drops"]

    assert parsed() == 0
    assert parsed("--log-policy-drops") == DROP_LOG_RATE
    assert parsed("--log-policy-drops", "--port", "6654") == DROP_LOG_RATE
    assert parsed("--log-policy-drops", "20") == 20
    monkeypatch.setenv("VXFLOW_LOG_POLICY_DROPS", "30")
    assert parsed() == 30
    for bad, says in (("-1", "-1 is not in the range 0<=x<=1000000"),
                      (str(2**32), f"{2**32} is not in the range 0<=x<=1000000"),
                      ("fast", "'fast' is not a valid integer")):  # fmt: skip
        res = CliRunner().invoke(cli, ["controller"], env={"VXFLOW_LOG_POLICY_DROPS": bad})
        assert res.exit_code == 2 and says in res.output, res.output
    page = " ".join(CliRunner().invoke(cli, ["controller", "--help"]).output.split())
    assert "--log-policy-drops [RATE] Log every packet network policy drops" in page
    assert f"(without RATE: {DROP_LOG_RATE})" in page and "[default: 0, off]" in page
    assert "0<=x<=1000000]" in page
    # what the meter lets through: RATE a second, its bucket of RATE starting full (the
    # controller's guard holds two seconds' worth, for a switch without the meter)
    assert ("a second per switch on average, in bursts of up to RATE (2 x RATE while its "
            "meter is missing)") in page, page  # fmt: skip
