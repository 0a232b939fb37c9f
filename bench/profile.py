"""Where the time goes, before anyone optimises: pyinstrument profiles of the hot paths.

`python -m bench.profile compile|encode|sync|coldstart|event|policy [--remote-leases N]`
profiles, in process, one node's table being compiled (flows/), encoded
(controller/ofwire.py), or produced by the controller's own sync path: the
ClusterModel and SwitchSync the os-ken app drives, from "switch connected,
table read back empty" to the whole bundle handed to the channel (no os-ken,
no socket). `coldstart` is B3's path: S empty switches (`--switches`) on L
leases (`--leases`), each through its readback, bundle and both barriers, with
the memory the installed tables took. `event` is B2's path: one LeaseAdded
folded into the model and fanned out to S synced switches, through both
barriers of each switch's change, with the garbage collector's pauses (in the events, and
between them, where the controller collects while idle: controller/app.py). `policy`
is B10's: one new policy (as bench.b10_policy writes them) the same way, with
`--pods` pods and `--policies` policies in place. The text report goes to
bench/results/profile_<what>[_<tag>].txt.

Profiling the whole controller process under pyinstrument was tried: its
per-call hook under eventlet slowed a 65,536-lease sync by more than 100x (no
report after 10 minutes), so these in-process profiles are the ones to read.
"""

from __future__ import annotations

import contextlib
import gc
import time
from pathlib import Path

import click
from pyinstrument import Profiler

from bench.b1_flow_rate import compile_table, encode_time
from bench.leasegen import cluster
from bench.ofwire import BARRIER_REQUEST
from bench.report import RESULTS_DIR, source_state
from controller.app import IdleCollector
from controller.model import ClusterModel
from controller.switch import SwitchSync
from leases.events import LeaseAdded, PolicyAdded


class _Sink:
    """A Channel that keeps byte counts and hands out xids like os-ken's datapath."""

    def __init__(self) -> None:
        self.xid = 0
        self.bytes = 0
        self.first_xids: list[int] = []
        self.barrier_xid = -1  # of the last barrier request sent (always last in a send)

    def send(self, data: bytes) -> None:
        self.bytes += len(data)
        if len(data) >= 8 and data[-7] == BARRIER_REQUEST:
            self.barrier_xid = int.from_bytes(data[-4:], "big")

    def xids(self, count: int) -> int:
        self.first_xids.append(self.xid + 1)
        self.xid += count
        return self.first_xids[-1]


def _read_back_empty(sync: SwitchSync, sink: _Sink) -> None:
    """Answer the readback (flow stats, then group desc, one xid after) with empty tables."""
    sync.on_flow_stats(sink.first_xids[0], b"", False)
    sync.on_group_desc(sink.first_xids[0] + 1, b"", False)


def sync_path(remote_leases: int, profiler: Profiler | None = None) -> tuple[float, int]:
    """Seconds of the controller's sync path for one empty switch of node 0, and bytes sent."""

    c = cluster(remote_leases + 1)
    model = ClusterModel()
    model.load(c.config, c.leases, ())
    node = c.leases[0].public_ip
    sink = _Sink()
    sync = SwitchSync(node=node, channel=sink, desired=lambda scope: model.desired(node, scope),
                      later=lambda _delay, _fn: None, master=True)  # fmt: skip
    with profiler or contextlib.nullcontext():
        t0 = time.perf_counter()
        sync.start()
        _read_back_empty(sync, sink)
        took = time.perf_counter() - t0
    if len(sink.first_xids) != 2:
        raise RuntimeError("the sync path did not send a bundle for an empty table")
    return took, sink.bytes


def _synced_switch(model, node, leases: int) -> tuple[SwitchSync, _Sink]:
    """A SwitchSync that read back an empty table and whose full bundle landed."""
    sink = _Sink()
    sync = SwitchSync(node=node, channel=sink, desired=lambda scope: model.desired(node, scope),
                      later=lambda _delay, _fn: None, master=True)  # fmt: skip
    sync.start()
    _read_back_empty(sync, sink)
    sync.on_barrier(sink.barrier_xid)  # adds taken -> commit
    sync.on_barrier(sink.barrier_xid)  # committed
    if len(sync.installed) < leases:
        raise RuntimeError(f"switch of {node} holds {len(sync.installed)} flows after its sync")
    return sync, sink


def _rss_kib() -> int:
    """This process's resident set now (VmRSS), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def cold_start(switches: int, leases: int, profiler: Profiler | None = None,
               dual: bool = False) -> dict[str, float]:  # fmt: skip
    """B3's controller path for S empty switches on L leases (`dual`: dual-stack ones):
    seconds, and the resident memory the switches' installed tables added, per installed flow."""
    if switches > leases:
        raise ValueError(f"{switches} switches need at least as many leases, not {leases}")
    c = cluster(leases, dual=dual)
    model = ClusterModel()
    model.load(c.config, c.leases[:leases], ())
    gc.collect()
    before = _rss_kib()
    with profiler or contextlib.nullcontext():
        t0 = time.perf_counter()
        syncs = [_synced_switch(model, x.public_ip, leases)[0] for x in c.leases[:switches]]
        took = time.perf_counter() - t0
    gc.collect()
    flows = sum(len(sync.installed) for sync in syncs)
    return {"seconds": took, "flows": flows,
            "bytes_per_flow": (_rss_kib() - before) * 1024 / flows}  # fmt: skip


class _GcPauses:
    """The collector's pauses (gc.callbacks), by generation, while in the `with` block: those
    inside the events, and those `idle` between them."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []  # inside the events
        self.idle_pauses: list[tuple[int, float]] = []
        self.idle = False  # collecting between events, as the controller does while idle
        self._start = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            pause = (info["generation"], time.perf_counter() - self._start)
            (self.idle_pauses if self.idle else self.pauses).append(pause)

    def __enter__(self) -> _GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def text(self) -> str:
        full = [t for g, t in self.pauses if g == 2]
        return (f"{len(self.pauses)} collections in the events, {len(full)} full; longest "
                f"{max((t for _, t in self.pauses), default=0) * 1e3:.1f} ms, longest full "
                f"{max(full, default=0) * 1e3:.1f} ms; {len(self.idle_pauses)} between them "
                f"(idle), longest {max((t for _, t in self.idle_pauses), default=0) * 1e3:.1f} "
                f"ms")  # fmt: skip


def event_path(switches: int, leases: int, events: int,
               profiler: Profiler | None = None,
               pauses: _GcPauses | None = None, dual: bool = False) -> list[float]:  # fmt: skip
    """Seconds per new lease (`dual`: dual-stack leases) for the controller's own code to
    bring S switches up to date (model.apply, scope, request, both barriers per switch),
    as app.py does."""
    c = cluster(leases + events, dual=dual)
    model = ClusterModel()
    model.load(c.config, c.leases[:leases], ())
    syncs = [_synced_switch(model, x.public_ip, leases) for x in c.leases[:switches]]
    news = [LeaseAdded(new, 10 + i) for i, new in enumerate(c.leases[leases:])]
    took = _fan_out(model, syncs, news, profiler, pauses)
    if any(len(sync.installed) != len(syncs[0][0].installed) for sync, _ in syncs):
        raise RuntimeError("switches disagree on their table size after the events")
    return took


def policy_path(switches: int, pods: int, policies: int, events: int,
                profiler: Profiler | None = None,
                pauses: _GcPauses | None = None) -> list[float]:  # fmt: skip
    """B10's controller path: seconds per new policy written (as bench.b10_policy writes
    them) for the controller's own code to bring S synced switches (one per node) with
    `pods` pods and `policies` policies in place up to date."""
    from bench.b10_policy import NAMESPACES, background, new_policy, pods_of
    from leases.policy import parse_policy

    c = cluster(switches)
    spaces = max(1, min(NAMESPACES, policies))
    model = ClusterModel()
    model.load(c.config, c.leases[:switches], pods_of(list(c.leases[:switches]), pods, spaces),
               policies=[parse_policy(m) for m in background(policies, spaces)])  # fmt: skip
    syncs = [_synced_switch(model, x.public_ip, switches) for x in c.leases[:switches]]
    news = [PolicyAdded(parse_policy(new_policy(i, spaces)), 10 + i) for i in range(events)]
    return _fan_out(model, syncs, news, profiler, pauses)


def _fan_out(model: ClusterModel, syncs: list[tuple[SwitchSync, _Sink]], events: list,
             profiler: Profiler | None, pauses: _GcPauses | None) -> list[float]:  # fmt: skip
    """Each event, one by one, folded into `model` and fanned out to the synced switches
    through both barriers of each switch's change: seconds per event. Between two events
    the collector runs as the controller's does while idle (`IdleCollector`)."""
    took = []
    idle = IdleCollector()
    with profiler or contextlib.nullcontext(), pauses or contextlib.nullcontext():
        for event in events:
            t0 = time.perf_counter()
            impact = model.apply([event])
            for sync, _ in syncs:
                own = model.own_lease(sync.node)
                sync.request(impact.scope_for(sync.node, own.subnet if own else None))
            for sync, sink in syncs:
                sync.on_barrier(sink.barrier_xid)
                sync.on_barrier(sink.barrier_xid)
            took.append(time.perf_counter() - t0)
            if (generation := idle.due(time.monotonic())) is not None:
                if pauses is not None:
                    pauses.idle = True
                idle.collect(generation, time.monotonic())
                if pauses is not None:
                    pauses.idle = False
    return took


def _write(name: str, profiler: Profiler, out_dir: Path, note: str = "") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"profile_{name}.txt"
    state = source_state()
    head = f"# code at {state['git_head']}" + (
        f" plus uncommitted edits to {', '.join(state['modified_files'])}"
        if state["modified_files"] else "")
    if note:
        head += "\n# " + note
    path.write_text(head + "\n" + profiler.output_text(unicode=False, color=False, show_all=False))
    return path


@click.command()
@click.argument("what", type=click.Choice(["compile", "encode", "sync", "coldstart", "event", "policy"]))
@click.option("--remote-leases", default=65536, show_default=True,
              help="compile/encode/sync: remote leases of the one table.")
@click.option("--switches", default=50, show_default=True,
              help="coldstart: empty switches; event, policy: synced switches.")
@click.option("--leases", default=1000, show_default=True,
              help="coldstart: leases; event: leases before the events.")
@click.option("--events", default=200, show_default=True,
              help="event: new leases, one by one; policy: new policies, one by one.")
@click.option("--pods", default=1000, show_default=True, help="policy: pods, spread over the nodes.")
@click.option("--policies", default=100, show_default=True, help="policy: policies in place before.")
@click.option("--dual-stack", "dual", is_flag=True,
              help="coldstart, event: dual-stack leases (each with an IPv6 half).")
@click.option("--results-dir", type=click.Path(path_type=Path), default=RESULTS_DIR,
              show_default=True, help="Where the text report goes.")
@click.option("--tag", default="", help="Report name suffix (e.g. the size): profile_WHAT_TAG.txt.")
def main(what: str, remote_leases: int, switches: int, leases: int, events: int, pods: int,
         policies: int, dual: bool, results_dir: Path, tag: str) -> None:  # fmt: skip
    """Profile a hot path in process with pyinstrument: compile (flows/ for one table),
    encode (controller/ofwire.py for one table), sync (the controller's cold sync of one
    empty switch), coldstart (--switches empty switches on --leases leases, to their
    tables landed), event (one new lease fanned out to --switches synced switches), policy
    (B10's: one new policy fanned out to --switches synced switches, one per node, with
    --pods pods and --policies policies in place). The report goes to RESULTS_DIR/profile_WHAT[_TAG].txt."""
    profiler = Profiler(interval=0.0005)
    gc.set_threshold(50_000, 20, 100)  # as the controller (controller/app.py) runs
    note = ""
    if what == "compile":
        with profiler:
            compile_table(remote_leases)
    elif what == "encode":
        _, flows, _ = compile_table(remote_leases)
        with profiler:
            encode_time(flows)
    elif what == "sync":
        sync_path(remote_leases, profiler)
    elif what == "coldstart":
        r = cold_start(switches, leases, profiler, dual)
        note = (f"coldstart: {switches} switches, {leases} leases: {r['flows']:,} flows installed "
                f"in {r['seconds']:.2f} s; resident memory {r['bytes_per_flow']:.0f} bytes per "
                f"installed flow (controller code only, no os-ken, no sockets)")  # fmt: skip
    else:
        pauses = _GcPauses()
        if what == "event":
            took = event_path(switches, leases, events, profiler, pauses, dual)
            size, each = f"{leases} leases, {events} new leases", "lease"
        else:
            took = policy_path(switches, pods, policies, events, profiler, pauses)
            size, each = f"{pods} pods, {policies} policies, {events} new policies", "policy"
        took.sort()
        note = (f"{what}: {switches} switches, {size}: per new {each} p50 "
                f"{took[len(took) // 2] * 1e3:.2f} ms, max {took[-1] * 1e3:.2f} ms; "
                f"gc: {pauses.text()} (controller code only, no os-ken, no sockets)")  # fmt: skip
    if note:
        click.echo(note)
    name = f"{what}_{tag}" if tag else what
    click.echo(f"{what}: report {_write(name, profiler, results_dir, note)}")


if __name__ == "__main__":
    main()
