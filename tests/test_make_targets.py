"""The README's development commands, run as typed: `make setup` (a second run only checks),
`make lint`, `make unit` and `make repeat REPEAT=N` (with N = 1).

`make test` is what CI runs (.ci/run); `make integration` is its root-only
part and `make bench` the full-size benchmarks (about 15 minutes; their
reduced-size runs are tests/test_bench_smoke.py). tests/README.md lists every
user-facing command with the test that runs it.

Under `make test` these two runs are the only runs of the pure tier and of the
`random_leases` tests (the Makefile's ONCE leaves them out of the outer run), so each
test runs once; each is a group of its own, handed out first (one takes about a minute).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.integration  # setup installs Debian packages: root


def make(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    # as typed at a shell: not as a sub-make of `make test` (which would print its directory)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(
        ["make", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )


def test_make_setup_again_only_checks() -> None:
    res = make("setup")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1] == "setup: ready (.venv/bin/vxflow)", res.stdout
    assert "installing" not in res.stdout, res.stdout


def test_make_lint_is_clean() -> None:
    res = make("lint")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "All checks passed!" in res.stdout, res.stdout


@pytest.mark.xdist_group("make unit")
@pytest.mark.timeout(660)
def test_make_unit_runs_the_pure_tests_without_the_rest() -> None:
    # the pure tier on one worker: ~1 min on a quiet machine, over 4 beside the suite at load 8
    res = make("unit", timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = res.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "deselected" in summary and "failed" not in summary, summary


@pytest.mark.xdist_group("make repeat")
def test_make_repeat_runs_each_random_leases_test_that_many_times() -> None:
    res = make("repeat", "REPEAT=1")
    assert res.returncode == 0, res.stdout + res.stderr

    def listed(selection: str) -> int:
        out = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "pytest", "--co", "-q", "-m",
                              selection], cwd=REPO, capture_output=True, text=True).stdout  # fmt: skip
        return sum(1 for line in out.splitlines() if "::" in line)

    pure, e2e = listed("random_leases and not e2e"), listed("random_leases and e2e")
    assert pure >= 4 and e2e >= 2, (pure, e2e)
    # one summary line per pytest run: pytest-repeat's, then each e2e repetition's own
    summaries = re.findall(r"^(\d+) passed\b(.*)$", res.stdout, re.M)
    assert [int(n) for n, _ in summaries] == [pure, e2e], res.stdout
    assert not any("failed" in rest or "error" in rest for _, rest in summaries), res.stdout
