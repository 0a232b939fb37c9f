"""Run a benchmark on a clean `git archive` of a commit, not on the shared working tree.

Other sessions edit the tree while benchmarks run; a benchmark that imports a
half-edited module measures nothing meaningful. This exports COMMIT (default
HEAD) to /tmp/vxflow-snapshot-<sha>, links the venv into it, and runs
`python ARGS...` there with PYTHONPATH pointing at the snapshot (so every
child process, the controller and Mininet's daemons included, imports it) and
results written to this tree's bench/results/. The results record the commit.

    python -m bench.snapshot [--commit REV] -- -m bench.b1_flow_rate --repeat 5
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from bench.report import RESULTS_DIR

REPO = Path(__file__).resolve().parents[1]


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--commit", default="HEAD", show_default=True, help="The commit to export.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, required=True)
def main(commit: str, args: tuple[str, ...]) -> None:
    """Run `python ARGS` from a clean export of COMMIT (results to bench/results/)."""
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", commit],
                         check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    dest = Path(f"/tmp/vxflow-snapshot-{sha}")
    if not dest.exists():
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha], check=True,
                                 capture_output=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        (dest / ".venv").symlink_to(REPO / ".venv")
    argv = list(args)
    if "--results-dir" not in argv and argv[:1] == ["-m"] and argv[1].startswith("bench.b"):
        argv += ["--results-dir", str(RESULTS_DIR)]
    env = {**os.environ, "PYTHONPATH": str(dest), "VXFLOW_BENCH_SNAPSHOT": sha}
    click.echo(f"snapshot {sha} at {dest}: python {' '.join(argv)}", err=True)
    sys.exit(subprocess.run([sys.executable, *argv], cwd=dest, env=env).returncode)


if __name__ == "__main__":
    main()
