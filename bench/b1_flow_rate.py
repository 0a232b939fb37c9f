"""B1 flow programming rate: one node's table of N remote-subnet flows, one real bridge.

(a) `ovs-ofctl --bundle add-flows` from a file — what the switch itself accepts;
(b) the vxflow controller, holding the same leases, programming the same table.
Both write exactly the flows `flows.compiler.compile_node` yields for the node
(N remote-lease flows + its base pipeline), into the same netdev bridge,
alternating a/b, repeated; medians are reported. Also timed alone: compiling
the table (flows/) and encoding it as bundle messages (controller/ofwire.py).

After the first round, the table the controller left is compared line by
line (`dump-flows --no-stats`) with the one ovs-ofctl left. Landing is
observed from the switch side (bench/observer.py): a bundle commits
at once, so the table is complete when a flow-count poll (every 5 ms) first
shows all N flows. With `--tls` (the default) every round also has (c): the
same as (b) over OpenFlow over TLS, from a second etcd and controller, the
bridge presenting a certificate from that run's CA; a, b, c alternate.
Run: `python -m bench.b1_flow_rate` (root; own namespace).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from bench import report
from bench.bridges import Bridge, BridgeFarm
from bench.cluster_env import Env, environment
from bench.isolation import isolate
from bench.leasegen import cluster
from bench.observer import FlowObserver
from bench.stats import median
from flows.compiler import compile_node
from flows.flow import Flow, to_ofctl

MODULE = "bench.b1_flow_rate"
log = logging.getLogger(MODULE)


def compile_table(n_remote: int) -> tuple[Any, list[Flow], float]:
    """The cluster (node 0 + n_remote others), node 0's flows, and the compile time."""
    c = cluster(n_remote + 1)
    t0 = time.perf_counter()
    table = compile_node(c.config, c.leases, (), c.leases[0].public_ip)
    elapsed = time.perf_counter() - t0
    return c, sorted(table, key=lambda f: (f.table, -f.priority, f.cookie)), elapsed


def encode_time(flows: list[Flow]) -> float:
    """Seconds to encode the table as one bundle (open, adds, commit, barrier), as the
    controller's hot path does (controller.ofwire.encode_bundle_adds)."""
    from controller import ofwire

    t0 = time.perf_counter()
    n = len(flows)
    b"".join([
        ofwire.encode_bundle_control(1, ofwire.OFPBCT_OPEN_REQUEST, 1),
        ofwire.encode_bundle_adds(1, flows, ofwire.OFPFC_ADD, 2),
        ofwire.encode_bundle_control(1, ofwire.OFPBCT_COMMIT_REQUEST, n + 2),
        ofwire.encode_barrier(n + 3),
    ])  # fmt: skip
    return time.perf_counter() - t0


def clear_table(bridge: Bridge, observer: FlowObserver) -> None:
    bridge.ovs.ofctl("del-flows", f"unix:{bridge.mgmt_socket}")
    if observer.flow_counts()[bridge.name] != 0:
        raise RuntimeError(f"{bridge.name}: flows left after del-flows")


def run_ofctl(bridge: Bridge, observer: FlowObserver, flow_file: Path, n: int) -> dict:
    """(a): one `ovs-ofctl --bundle add-flows`; its wall time and when the table landed."""
    clear_table(bridge, observer)
    t0 = time.monotonic()
    bridge.ovs.ofctl("--bundle", "add-flows", f"unix:{bridge.mgmt_socket}", str(flow_file),
                     timeout=300)  # fmt: skip
    wall = time.monotonic() - t0
    landed = observer.wait_flow_count({bridge.name: n}, timeout=300)[bridge.name] - t0
    return {"wall_s": wall, "landed_s": landed}


def table_text(bridge: Bridge) -> list[str]:
    """The bridge's table as `ovs-ofctl dump-flows --no-stats` prints it, sorted."""
    out = bridge.ovs.ofctl("--no-stats", "dump-flows", f"unix:{bridge.mgmt_socket}", timeout=120)
    return sorted(line.strip() for line in out.splitlines() if "actions=" in line)


def run_controller(farm: BridgeFarm, env: Env, observer: FlowObserver, n: int,
                   reference: list[str] | None = None) -> dict:  # fmt: skip
    """(b): the bridge, emptied, connects to the controller that already holds the leases;
    from set-controller until the flow count shows the whole table. With `reference`,
    the table is then compared with it (before detaching: OVS flushes a bridge's flows
    when its last controller is removed)."""
    bridge = farm.bridges[0]
    clear_table(bridge, observer)
    cpu0 = env.controller.cpu_seconds()
    t0 = time.monotonic()
    farm.set_controller(env.controller.target, [bridge])
    landed = observer.wait_flow_count({bridge.name: n}, timeout=300)[bridge.name] - t0
    cpu = env.controller.cpu_seconds() - cpu0
    out = {"landed_s": landed, "controller_cpu_s": cpu}
    if reference is not None:
        out["identical_to_ofctl"] = table_text(bridge) == reference
    farm.set_controller(None, [bridge])
    return out


def warm_up_controller(farm: BridgeFarm, env: Env, observer: FlowObserver, n: int) -> float:
    """Seconds until the probe bridge (node 1) holds its full table: from then on the
    controller has every lease. The probe is detached again before measuring (which
    also empties it: OVS flushes a bridge's flows when its last controller goes)."""
    probe = farm.bridges[1]
    t0 = time.monotonic()
    farm.set_controller(env.controller.target, [probe])
    took = observer.wait_flow_count({probe.name: n}, timeout=900, interval=0.05)[probe.name] - t0
    farm.set_controller(None, [probe])
    return took


def measure(n_remote: int, repeat: int, with_controller: bool, tls: bool = False) -> dict:
    tls = tls and with_controller
    c, flows, compile_s = compile_table(n_remote)
    n = len(flows)
    result: dict[str, Any] = {
        "remote_leases": n_remote,
        "flows_per_table": n,
        "compile_s": [compile_s],
        "encode_s": [],
        "ofctl": [],
        "controller": [],
        **({"controller_tls": []} if tls else {}),
    }
    for _ in range(repeat - 1):
        result["compile_s"].append(compile_table(n_remote)[2])
    for _ in range(repeat):
        result["encode_s"].append(encode_time(flows))
    if with_controller:
        from bench.profile import sync_path

        result["controller_sync_path_s"] = [sync_path(n_remote)[0] for _ in range(repeat)]
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vxflow-b1-")))
        flow_file = tmp / "flows.txt"
        flow_file.write_text("".join(to_ofctl(f) + "\n" for f in flows))
        env = stack.enter_context(environment(c)) if with_controller else None
        env_tls = stack.enter_context(environment(c, tls=True)) if tls else None
        farm = stack.enter_context(BridgeFarm(list(c.leases[:2])))
        observer = stack.enter_context(FlowObserver({b.name: b.mgmt_socket for b in farm.bridges}))
        if env is not None:
            result["controller_warm_up_s"] = warm_up_controller(farm, env, observer, n)
        if env_tls is not None:
            assert env_tls.controller.pki is not None
            farm.use_tls(env_tls.controller.pki)
            result["controller_tls_warm_up_s"] = warm_up_controller(farm, env_tls, observer, n)
        for i in range(repeat):
            result["ofctl"].append(run_ofctl(farm.bridges[0], observer, flow_file, n))
            log.info("rep %d ofctl: %s", i + 1, result["ofctl"][-1])
            if env is not None:
                # first round: same flows, not just as many (compared outside the timing)
                reference = table_text(farm.bridges[0]) if i == 0 else None
                result["controller"].append(run_controller(farm, env, observer, n, reference))
                log.info("rep %d controller: %s", i + 1, result["controller"][-1])
                if reference is not None:
                    result["tables_identical"] = result["controller"][-1]["identical_to_ofctl"]
                    if not result["tables_identical"]:
                        raise RuntimeError("the controller's table differs from ovs-ofctl's")
            if env_tls is not None:
                result["controller_tls"].append(run_controller(farm, env_tls, observer, n))
                log.info("rep %d controller over TLS: %s", i + 1, result["controller_tls"][-1])
        if env is not None:
            result["controller_memory_kib"] = env.controller.memory_kib()
    return result


def summarise(result: dict) -> dict:
    s: dict[str, Any] = {
        "compile_s_median": median(result["compile_s"]),
        "encode_s_median": median(result["encode_s"]),
        "ofctl_wall_s_median": median([r["wall_s"] for r in result["ofctl"]]),
        "ofctl_landed_s_median": median([r["landed_s"] for r in result["ofctl"]]),
    }
    s["ofctl_flows_per_s"] = result["flows_per_table"] / s["ofctl_landed_s_median"]
    if result.get("controller_sync_path_s"):
        s["controller_sync_path_s_median"] = median(result["controller_sync_path_s"])
    if result["controller"]:
        landed = median([r["landed_s"] for r in result["controller"]])
        s["controller_landed_s_median"] = landed
        s["controller_flows_per_s"] = result["flows_per_table"] / landed
        s["time_ratio_controller_over_ofctl"] = landed / s["ofctl_landed_s_median"]
        s["rate_ratio_controller_over_ofctl"] = s["ofctl_landed_s_median"] / landed
        s["pairwise_rate_ratio_median"] = median([
            a["landed_s"] / b["landed_s"] for a, b in zip(result["ofctl"], result["controller"], strict=True)
        ])  # fmt: skip
        s["goal_rate_ratio_0_8_met"] = float(s["rate_ratio_controller_over_ofctl"] >= 0.8)
    if result.get("controller_tls"):
        tls = median([r["landed_s"] for r in result["controller_tls"]])
        s["controller_tls_landed_s_median"] = tls
        s["controller_tls_flows_per_s"] = result["flows_per_table"] / tls
        s["time_ratio_tls_over_tcp"] = tls / s["controller_landed_s_median"]
    return s


@click.command()
@click.option("--remote-leases", default=65536, show_default=True,
              help="Remote leases, i.e. remote-subnet flows in the table.")
@click.option("--repeat", default=5, show_default=True, help="Alternating a/b rounds.")
@click.option("--controller/--no-controller", default=True, show_default=True,
              help="Also measure the vxflow controller (b).")
@click.option("--tls/--no-tls", default=True, show_default=True,
              help="Also measure (c): (b) over OpenFlow over TLS.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write b1_flow_rate.json (default bench/results).")
def main(remote_leases: int, repeat: int, controller: bool, tls: bool,
         results_dir: Path | None) -> None:  # fmt: skip
    """B1: flow programming rate, ovs-ofctl --bundle vs the vxflow controller.

    Needs root; runs in a network namespace of its own. Writes b1_flow_rate.json."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = measure(remote_leases, repeat, controller, tls)
    result["summary"] = summarise(result)
    path = report.save("b1_flow_rate", MODULE, result, results_dir)
    for k, v in result["summary"].items():
        click.echo(f"{k:40s} {v:,.4f}")
    click.echo(f"results: {path}")


if __name__ == "__main__":
    rc = isolate(MODULE)
    sys.exit(main() if rc is None else rc)
