"""`make bench`: every benchmark at its documented size, one after another, then the
tables in BENCHMARKS.md regenerated from the results.

Each runs as its own process exactly as BENCHMARKS.md documents it (B1-B3 put
themselves into a private network namespace); a failing benchmark is reported
and the rest still run. Exit status: the number of steps that failed.
"""

from __future__ import annotations

import subprocess
import sys
import time

import click

BENCHMARKS = (
    ("B1 flow programming rate", ["bench.b1_flow_rate"]),
    ("B2 convergence", ["bench.b2_convergence"]),
    ("B3 cold start", ["bench.b3_cold_start"]),
    ("B4 data plane", ["bench.b4_dataplane"]),
    ("B5 failover", ["bench.b5_failover"]),
    ("B6 pod attach", ["bench.b6_attach"]),
    ("B7 services", ["bench.b7_services"]),
    ("B8 drift repair", ["bench.b8_drift_repair"]),
    ("B9 switch restart", ["bench.b9_switch_restart"]),
    ("B11 data-path failover", ["bench.b11_failover"]),
    ("B12 live migration", ["bench.b12_migrate"]),
    ("profile: compile", ["bench.profile", "compile"]),
    ("profile: encode", ["bench.profile", "encode"]),
    ("profile: sync", ["bench.profile", "sync"]),
    ("profile: event", ["bench.profile", "event"]),
    ("tables in BENCHMARKS.md", ["bench.summary", "--write"]),
)


@click.command()
@click.option("--only", multiple=True, help="Run only benchmarks whose name starts with this (B1, B4, ...).")
def main(only: tuple[str, ...]) -> None:
    """Run all benchmarks (results in bench/results/, summarised in BENCHMARKS.md)."""
    failed = []
    for name, args in BENCHMARKS:
        if only and not any(name.startswith(o) for o in only):
            continue
        click.echo(f"== {name}: python -m {' '.join(args)}", err=True)
        t0 = time.monotonic()
        rc = subprocess.run([sys.executable, "-m", *args]).returncode
        click.echo(f"== {name}: exit {rc} after {time.monotonic() - t0:.0f}s", err=True)
        if rc:
            failed.append(name)
    if failed:
        click.echo(f"failed: {', '.join(failed)}", err=True)
    sys.exit(len(failed))


if __name__ == "__main__":
    main()
