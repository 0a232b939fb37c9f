"""End to end: `vxflow demo` succeeds and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.leftovers import processes_of_this_run


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


@pytest.mark.e2e
def test_demo_exits_0_and_leaves_nothing_running() -> None:
    processes_before = set(processes_of_this_run())  # e.g. a session fixture's: not the demo's
    links_before = root_links()
    dirs_before = set(Path("/tmp").glob("vxflow-vxm*"))
    res = subprocess.run(
        [sys.executable, "-m", "vxflow", "demo"], capture_output=True, text=True, timeout=240
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "all checks passed" in res.stdout, res.stdout
    assert "FAIL" not in res.stdout, res.stdout
    assert set(processes_of_this_run()) - processes_before == set()
    assert {x for x in root_links() - links_before if x.startswith("vxm")} == set()
    assert set(Path("/tmp").glob("vxflow-vxm*")) - dirs_before == set()
