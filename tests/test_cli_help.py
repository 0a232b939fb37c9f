"""`vxflow --help` and `vxflow COMMAND --help` for every command, through the console script."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import click

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
    paths = command_paths(cli)
    assert ("controller",) in paths and ("leases", "list") in paths
    for path in paths:
        res = subprocess.run([VXFLOW, *path, "--help"], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, (path, res.stderr)
        assert res.stdout.startswith(f"Usage: vxflow {' '.join(path)}".rstrip()), res.stdout
        assert res.stderr == "", (path, res.stderr)


def test_version_of_both_executables_as_typed() -> None:
    """`vxflow --version` and `vxflow-cni --version` name the installed package's version."""
    version = importlib.metadata.version("vxflow")
    res = subprocess.run([VXFLOW, "--version"], capture_output=True, text=True, timeout=30)
    assert (res.returncode, res.stdout) == (0, f"vxflow, version {version}\n"), res.stderr
    cni = subprocess.run([f"{VXFLOW}-cni", "--version"], capture_output=True, text=True, timeout=30)
    assert cni.returncode == 0 and cni.stdout.startswith(f"vxflow-cni {version}: CNI spec")
