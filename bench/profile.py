"""Where the time goes, before anyone optimises: pyinstrument profiles of the hot paths.

`python -m bench.profile compile|encode [--remote-leases N]` profiles one node's
table being compiled (flows/) or encoded (controller/ofwire.py) in-process and
writes the text report to bench/results/profile_<what>.txt. The controller as a
whole is profiled by running it under pyinstrument (see BENCHMARKS.md).
"""

from __future__ import annotations

from pathlib import Path

import click
from pyinstrument import Profiler

from bench.b1_flow_rate import compile_table, encode_time
from bench.report import RESULTS_DIR


def _write(name: str, profiler: Profiler, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"profile_{name}.txt"
    path.write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    return path


@click.command()
@click.argument("what", type=click.Choice(["compile", "encode"]))
@click.option("--remote-leases", default=65536, show_default=True)
@click.option("--results-dir", type=click.Path(path_type=Path), default=RESULTS_DIR)
def main(what: str, remote_leases: int, results_dir: Path) -> None:
    """Profile compiling or encoding one node's table of REMOTE_LEASES remote flows."""
    profiler = Profiler(interval=0.0005)
    if what == "compile":
        with profiler:
            _, flows, _ = compile_table(remote_leases)
    else:
        _, flows, _ = compile_table(remote_leases)
        with profiler:
            encode_time(flows)
    click.echo(f"{what}: {len(flows)} flows; report {_write(what, profiler, results_dir)}")


if __name__ == "__main__":
    main()
