"""Where the time goes, before anyone optimises: pyinstrument profiles of the hot paths.

`python -m bench.profile compile|encode|sync [--remote-leases N]` profiles, in
process, one node's table being compiled (flows/), encoded
(controller/ofwire.py), or produced by the controller's own sync path: the
ClusterModel and SwitchSync the os-ken app drives, from "switch connected,
table read back empty" to the whole bundle handed to the channel (no os-ken,
no socket). The text report goes to bench/results/profile_<what>.txt.

The whole controller process can also run under pyinstrument
(`bench.b1_flow_rate --profile-controller`), but pyinstrument's per-call hook
under eventlet slowed a 65,536-lease sync by more than 100x here, so the
in-process `sync` profile is the one to read.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import click
from pyinstrument import Profiler

from bench.b1_flow_rate import compile_table, encode_time
from bench.leasegen import cluster
from bench.report import RESULTS_DIR


class _Sink:
    """A Channel that keeps byte counts and hands out xids like os-ken's datapath."""

    def __init__(self) -> None:
        self.xid = 0
        self.bytes = 0
        self.first_xids: list[int] = []

    def send(self, data: bytes) -> None:
        self.bytes += len(data)

    def xids(self, count: int) -> int:
        self.first_xids.append(self.xid + 1)
        self.xid += count
        return self.first_xids[-1]


def sync_path(remote_leases: int, profiler: Profiler | None = None) -> tuple[float, int]:
    """Seconds of the controller's sync path for one empty switch of node 0, and bytes sent."""
    from controller.model import ClusterModel
    from controller.switch import SwitchSync

    c = cluster(remote_leases + 1)
    model = ClusterModel()
    model.load(c.config, c.leases, ())
    node = c.leases[0].public_ip
    sink = _Sink()
    sync = SwitchSync(node=node, channel=sink, desired=lambda scope: model.desired(node, scope),
                      later=lambda _delay, _fn: None)  # fmt: skip
    with profiler or contextlib.nullcontext():
        t0 = time.perf_counter()
        sync.start()
        sync.on_flow_stats(sink.first_xids[0], b"", False)
        took = time.perf_counter() - t0
    if len(sink.first_xids) != 2:
        raise RuntimeError("the sync path did not send a bundle for an empty table")
    return took, sink.bytes


def _write(name: str, profiler: Profiler, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"profile_{name}.txt"
    path.write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    return path


@click.command()
@click.argument("what", type=click.Choice(["compile", "encode", "sync"]))
@click.option("--remote-leases", default=65536, show_default=True)
@click.option("--results-dir", type=click.Path(path_type=Path), default=RESULTS_DIR)
def main(what: str, remote_leases: int, results_dir: Path) -> None:
    """Profile compiling or encoding one node's table of REMOTE_LEASES remote flows."""
    profiler = Profiler(interval=0.0005)
    if what == "compile":
        with profiler:
            compile_table(remote_leases)
    elif what == "encode":
        _, flows, _ = compile_table(remote_leases)
        with profiler:
            encode_time(flows)
    else:
        sync_path(remote_leases, profiler)
    click.echo(f"{what}: {remote_leases} remote leases; report {_write(what, profiler, results_dir)}")


if __name__ == "__main__":
    main()
