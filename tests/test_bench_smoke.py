"""Every benchmark, run as documented but at tiny sizes, completes and reports sane figures.

Not timing goals (those live in bench/ and BENCHMARKS.md): these keep the
benchmarks from rotting. Each runs its real command as a subprocess (B1-B3
then isolate themselves in a private network namespace) and the test reads
the JSON it wrote.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench import summary
from tests.ofharness import wait_for

REPO = Path(__file__).resolve().parents[1]


def run_bench(tmp_path: Path, module: str, *args: str, timeout: float = 280,
              name: str = "") -> dict:  # fmt: skip
    """`module` run with `args`; its results file, `name` (default: the module's).json."""
    res = subprocess.run(
        [sys.executable, "-m", module, *args, "--results-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert res.returncode == 0, f"{module} failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    name = name or module.rsplit(".", 1)[1]
    record = json.loads((tmp_path / f"{name}.json").read_text())
    assert record["benchmark"] == name
    assert module in record["command"] and record["environment"]["ovs"].startswith("ovs-vswitchd")
    return record


def positive(x: float) -> bool:
    return isinstance(x, float) and x > 0 and math.isfinite(x)


@pytest.mark.integration
def test_b1_flow_rate_tiny(tmp_path: Path) -> None:
    r = run_bench(tmp_path, "bench.b1_flow_rate", "--remote-leases", "200", "--repeat", "2")
    assert r["remote_leases"] == 200 and r["flows_per_table"] > 200
    assert len(r["ofctl"]) == len(r["controller"]) == 2
    assert r["tables_identical"] is True
    s = r["summary"]
    for key in ("compile_s_median", "encode_s_median", "ofctl_landed_s_median",
                "controller_landed_s_median", "rate_ratio_controller_over_ofctl"):  # fmt: skip
        assert positive(s[key]), key
    assert r["controller_memory_kib"]["VmRSS"] > 0
    assert len(r["controller_tls"]) == 2  # (c): the controller's rounds over TLS
    assert positive(s["controller_tls_landed_s_median"]) and positive(s["time_ratio_tls_over_tcp"])


@pytest.mark.integration
def test_b2_convergence_tiny(tmp_path: Path) -> None:
    r = run_bench(tmp_path, "bench.b2_convergence", "-s", "3", "--leases", "20", "--repeat", "5",
                  "--gap", "0", "--standin-procs", "2")  # fmt: skip
    assert [(run["kind"], run["transport"]) for run in r["runs"]] == [
        ("real", "tcp"), ("real", "tls"), ("stand-in", "tcp")]  # fmt: skip
    assert r["runs"][-1]["standin_procs"] == 2
    for run in r["runs"]:
        assert run["switches"] == 3 and run["final_tables_ok"] is True
        lat, heard = run["latency_s"], run["etcd_watch_s"]
        assert lat["n"] == heard["n"] == 5 and len(run["samples_s"]) == 5
        assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"] < 30
        assert 0 < heard["p50"] < 30


@pytest.mark.integration
def test_b3_cold_start_tiny(tmp_path: Path) -> None:
    r = run_bench(tmp_path, "bench.b3_cold_start", "--run", "real:40x3", "--run", "stand-in:40x5",
                  "--repeat", "2", "--standin-procs", "2")  # fmt: skip
    real, stand_in = r["runs"]
    assert (real["kind"], real["switches"], stand_in["kind"], stand_in["switches"]) == (
        "real", 3, "stand-in", 5)
    assert "not OVS" in stand_in["switch"]
    for run in (real, stand_in):
        assert run["flows_total"] == run["flows_per_switch"] * run["switches"]
        assert run["flows_per_switch"] > 39
        assert positive(run["converged_s"]) and positive(run["flow_mods_per_s"])
        assert run["controller_rss_peak_kib"] > 0 and len(run["reps"]) == 2
    assert real["switch_cpu_s"] >= 0
    assert stand_in["standin_procs"] == 2  # the 5 stand-ins dealt over two processes
    for rep in stand_in["reps"]:
        assert rep["standin_unsupported"] == {}
        assert rep["flow_mods_received"] >= stand_in["flows_total"]
        assert len(rep["standin_cpu_s_each"]) == 2 and min(rep["standin_cpu_s_each"]) >= 0
        assert rep["standin_cpu_s"] == pytest.approx(sum(rep["standin_cpu_s_each"]))


CHILD_NETNS = re.compile(r"vxb[0-9a-f]{4}n\d+")  # bench/bridges.py: f"{tag}n{i}"


def child_namespaces() -> set[str]:
    return {p.name for p in Path("/run/netns").glob("vxb*") if CHILD_NETNS.fullmatch(p.name)}


def second_instances() -> set[Path]:
    """Work dirs of farms' second ovs-vswitchd (OvsInstance f"{tag}v1"), gone when stopped."""
    return set(Path("/tmp").glob("vxflow-ovs-vxb*v1-*"))


def serving(known: set[Path]) -> list[int]:
    """PIDs of the live ovs-vswitchd of second instances not in `known`."""
    pids = []
    for d in second_instances() - known:
        try:
            pid = int((d / "ovs-vswitchd.pid").read_text())
            if Path(f"/proc/{pid}/comm").read_text().strip() == "ovs-vswitchd":
                pids.append(pid)
        except (OSError, ValueError):  # not started yet, or gone
            continue
    return pids


@pytest.mark.integration
def test_b3_cold_start_over_two_vswitchds_tiny(tmp_path: Path) -> None:
    """--vswitchds 2: the bridges dealt over two ovs-vswitchd (the second in a child
    namespace, reaching the controller over a veth pair), every table full, each
    instance's CPU recorded and summed; no namespace or daemon left behind, also after a
    Ctrl-C."""
    before = child_namespaces()
    r = run_bench(tmp_path, "bench.b3_cold_start", "--run", "real:20x4", "--vswitchds", "2",
                  "--repeat", "1")  # fmt: skip
    (run,) = r["runs"]
    assert run["vswitchds"] == 2 and "2 ovs-vswitchd" in run["switch"]
    assert positive(run["converged_s"]) and run["flows_total"] == 4 * run["flows_per_switch"]
    (rep,) = run["reps"]
    assert len(rep["switch_cpu_s_each"]) == 2 and min(rep["switch_cpu_s_each"]) >= 0
    assert rep["switch_cpu_s"] == pytest.approx(sum(rep["switch_cpu_s_each"]))
    each = " + ".join(f"{c:.2f}" for c in rep["switch_cpu_s_each"])
    table = "\n".join(summary.b3(r))
    assert f"{rep['switch_cpu_s']:.2f} s ({each})" in table, table
    assert child_namespaces() <= before
    # a run interrupted (Ctrl-C: SIGINT to its process group) once the second instance
    # serves leaves nothing either
    instances = second_instances()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.b3_cold_start", "--run", "real:2000x8", "--vswitchds", "2",
         "--repeat", "2", "--results-dir", str(tmp_path / "interrupted")],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_for("the second ovs-vswitchd", lambda: bool(serving(instances)), timeout=120)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "Aborted!" in err, err[-2000:]  # click: Ctrl-C
    assert child_namespaces() <= before and serving(instances) == []
    for d in second_instances() - instances:  # kept, with its logs, if interrupted starting
        shutil.rmtree(d)
    res = subprocess.run(
        [sys.executable, "-m", "bench.b3_cold_start", "--run", "real:20x2", "--vswitchds", "3",
         "--results-dir", str(tmp_path / "refused")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 2 and "at most one per switch" in res.stderr, res.stderr
    assert not (tmp_path / "refused").exists()


@pytest.mark.integration
def test_b2_and_b3_with_dual_stack_leases_tiny(tmp_path: Path) -> None:
    """--dual-stack: every lease with an IPv6 half, 4 flows per remote lease, all landed."""
    r = run_bench(tmp_path, "bench.b2_convergence", "-s", "2", "--leases", "10", "--repeat", "3",
                  "--gap", "0", "--kind", "real", "--transport", "tcp", "--dual-stack",
                  name="b2_convergence_dualstack")  # fmt: skip
    (run,) = r["runs"]
    assert run["dual_stack"] is True and run["flows_per_lease"] == 4
    assert run["final_tables_ok"] is True and run["latency_s"]["n"] == 3
    r = run_bench(tmp_path, "bench.b3_cold_start", "--run", "real:20x2", "--run", "stand-in:20x3",
                  "--repeat", "1", "--dual-stack", name="b3_cold_start_dualstack")  # fmt: skip
    plain = summary_flows_per_switch(20)
    for run in r["runs"]:
        assert run["dual_stack"] is True and run["flows_per_lease"] == 4
        assert run["flows_per_switch"] > plain + 2 * 19  # each remote lease's IPv6 pair too
        assert positive(run["converged_s"])
        for rep in run["reps"]:
            assert rep.get("standin_unsupported", {}) == {}


def summary_flows_per_switch(leases: int) -> int:
    """What a switch of an IPv4-only cluster of `leases` leases holds (B3's table size)."""
    from bench.leasegen import cluster
    from flows.compiler import compile_node

    c = cluster(leases)
    return len(compile_node(c.config, c.leases, (), c.leases[0].public_ip))


@pytest.mark.integration
def test_b8_drift_repair_tiny(tmp_path: Path) -> None:
    r = run_bench(tmp_path, "bench.b8_drift_repair", "--leases", "10", "--tries", "8",
                  "--gap", "0")  # fmt: skip
    assert r["flows"] > 10 and r["repair_s"]["n"] == 8
    assert set(r["by_kind"]) == {"route deleted", "stray flow added", "route modified",
                                 "whole table deleted"}  # fmt: skip
    for kind in r["by_kind"].values():
        assert kind["n"] == 2 and 0 < kind["min"] <= kind["max"] < 10


@pytest.mark.e2e
def test_b9_switch_restart_tiny(tmp_path: Path) -> None:
    r = run_bench(tmp_path, "bench.b9_switch_restart", "--tries", "1", "--settle", "2",
                  timeout=290)  # fmt: skip
    for kind in ("crash", "planned"):
        resumed = r[kind]["resumed_after_ready_s"]
        assert resumed["n"] == 1 and 0 < resumed["max"] < 2, kind
        assert r[kind]["lost"]["max"] >= 0 and r[kind]["outage_s"]["max"] > 0


@pytest.mark.e2e
def test_b4_dataplane_tiny(tmp_path: Path) -> None:
    r = run_bench(tmp_path, "bench.b4_dataplane", "--rounds", "1", "--pings", "20",
                  "--seconds", "1", timeout=290)  # fmt: skip
    s = r["summary"]
    for kind in ("vxflow", "flannel"):
        assert s[kind]["lost_pings"] <= 2, kind
        assert positive(s[kind]["rtt_avg_s_median"]) and s[kind]["tcp_bps_median"] > 1e6, kind
    assert positive(s["tcp_ratio_vxflow_over_flannel"])


@pytest.mark.e2e
def test_b4_dataplane_direct_tiny(tmp_path: Path) -> None:
    r = run_bench(tmp_path, "bench.b4_dataplane", "--direct", "--rounds", "1", "--pings", "20",
                  "--seconds", "1", timeout=290, name="b4_dataplane_direct")  # fmt: skip
    s = r["summary"]
    for kind in ("vxflow_direct", "flannel_direct", "vxflow_vxlan"):
        assert s[kind]["lost_pings"] <= 2, kind
        assert positive(s[kind]["rtt_avg_s_median"]) and s[kind]["tcp_bps_median"] > 1e6, kind
    assert positive(s["tcp_ratio_vxflow_direct_over_flannel_direct"])
    assert positive(s["tcp_ratio_vxflow_direct_over_vxflow_vxlan"])


@pytest.mark.integration
def test_b5_failover_tiny(tmp_path: Path) -> None:
    r = run_bench(tmp_path, "bench.b5_failover", "--switches", "4", "--leases", "10",
                  "--kills", "2", "--member-ttl", "3", "--cold", "20x3")  # fmt: skip
    f = r["failover"]
    assert f["kill_to_flow_s"]["n"] == 2 and f["goal_s"] == 4
    # the victim's switches are taken over only once its lease has run out
    assert all(1.0 < x < 30 for x in f["samples_s"]), f["samples_s"]
    assert [c["replicas"] for c in r["cold_start"]] == [1, 2]
    assert all(positive(c["converged_s"]) and sum(c["mastered"]) == 3 for c in r["cold_start"])


@pytest.mark.e2e
def test_b6_attach_tiny(tmp_path: Path) -> None:
    r = run_bench(tmp_path, "bench.b6_attach", "--containers", "3", timeout=290)
    st = r["stats"]
    steps = ("add", "reachable", "del", "version", "ovsdb", "ipam", "veth", "port", "container",
             "ofport")  # fmt: skip
    keys = [f"{path}_{step}_s" for path in ("fast", "inproc") for step in steps]
    for key in (*keys, "fast_served_s", "bridge_add_s", "bridge_del_s", "python_floor_s",
                "nsenter_floor_s"):  # fmt: skip
        assert st[key]["n"] == 3 and 0 <= st[key]["p50"] < 10, key  # a step may round to 0.0 ms
    assert all(positive(st[f"{path}_add_s"]["p50"]) for path in ("fast", "inproc", "bridge"))
    # reachable is measured from the start of ADD: never before the address existed
    assert all(x >= 0.002 for x in r["samples"]["fast_reachable_s"])
    assert positive(r["summary"]["add_ratio_p50_fast_over_bridge"])
    e = r["environment"]  # the load when the benchmark started, and when it ended
    assert len(e["loadavg_at_start"]) == len(e["loadavg_at_end"]) == 3
    assert "load average at start" in summary.b6(r)[2] and ", at end " in summary.b6(r)[2]


@pytest.mark.e2e
def test_b7_services_tiny(tmp_path: Path) -> None:
    r = run_bench(tmp_path, "bench.b7_services", "--rounds", "1", "--seconds", "1",
                  "--connections", "20", "-s", "3", "--leases", "20", "--backends", "3",
                  "--repeat", "4", "--gap", "0", timeout=290)  # fmt: skip
    s = r["dataplane"]["summary"]
    for kind in ("vip", "pod"):
        assert s[kind]["tcp_bps_median"] > 1e6 and positive(s[kind]["connections_per_s_median"])
    assert positive(s["throughput_ratio_vip_over_pod"])
    c = r["control"]
    for key in ("lease_latency_s", "group_latency_s"):
        assert c[key]["n"] == 4 and 0 < c[key]["min"] <= c[key]["p99"] < 30, key
    assert isinstance(c["goal_met"], bool)


@pytest.mark.e2e
def test_b11_failover_tiny(tmp_path: Path) -> None:
    r = run_bench(tmp_path, "bench.b11_failover", "--crashes", "1", "--checks", "1",
                  "--settle", "4", timeout=400)  # fmt: skip
    assert (r["crashes"], r["checks"], r["rate_per_s"]) == (1, 1, 5)
    (crash,), (check,) = r["samples"]["crash"], r["samples"]["check"]
    assert 0 < crash["gone_s"] < 30 and crash["failed"] >= 0
    assert 0 < check["gone_s"] < 30 and 0 < check["back_s"] < 30
    assert r["crash"]["gone_s"]["n"] == r["check"]["back_s"]["n"] == 1
    assert r["reference"]["kubernetes_node_grace_s"] == 40
    assert "B11 data-path failover" in "\n".join(summary.b11(r))


@pytest.mark.e2e
def test_b12_migrate_tiny(tmp_path: Path) -> None:
    r = run_bench(tmp_path, "bench.b12_migrate", "--migrations", "1", timeout=400)
    assert r["migrations"] == 1 and len(r["streams"]) == 4
    assert [(row["round"], row["what"]) for row in r["rounds"][::4]] == [(1, "migrate"),
                                                                          (1, "rollback")]
    assert len(r["rounds"]) == 8 and isinstance(r["resets"], dict)
    for what in ("migrate", "rollback"):
        assert 0 < r["runs_s"][what]["p50"] < 180
        for kind in ("tcp_s", "ping_s"):
            x = r[what][kind]
            assert x["n"] + r[what][f"{kind}_no_sample"] == 4
            assert 0 < x["p50"] <= x["p99"] <= x["max"], (what, kind)
    assert isinstance(r["goal_met"], bool)
    assert "B12 live migration" in "\n".join(summary.b12(r))
@pytest.mark.integration
def test_soak_tiny(tmp_path: Path) -> None:
    """The soak, 40 s instead of 30 min: every kind of churn and hostile peer happened, the
    samples were taken and judged. A file descriptor or a metric series per change or per
    hostile connection would show within 40 s; memory and green threads need the long run
    to tell growth from warming up, so here only their figures are required (a figure that
    is not flat makes the command exit 1: its verdict is read from the JSON instead)."""
    res = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--duration", "40", "--interval", "2", "--warmup",
         "10", "--period", "0.1", "--pool", "10", "--results-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    assert res.returncode in (0, 1), res.stderr[-4000:]
    r = json.loads((tmp_path / "soak.json").read_text())
    assert r["benchmark"] == "soak" and r["controller_alive_at_end"] is True
    assert {"lease_added", "lease_removed", "endpoint_added", "service_written"} <= set(r["churn"])
    assert {"garbage", "silent", "malformed"} <= set(r["hostile"]) and "refused" not in r["hostile"]
    assert len(r["samples"]) >= 15 and all(s["green_threads"] > 0 for s in r["samples"])
    assert all(s["switches"] == 2 for s in r["samples"] if s["t"] >= 10)
    figures = r["figures"]
    assert set(figures) == {"rss_kib", "fds", "series", "green_threads"}
    assert figures["fds"]["flat"] and figures["series"]["flat"], figures
    assert ("NOT flat" in res.stdout) == (res.returncode == 1), res.stdout
    table = "\n".join(summary.soak(r))
    assert "| open file descriptors |" in table and "load average at start" in table


def test_profile_compile_tiny(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "bench.profile", "compile", "--remote-leases", "300",
         "--results-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    report = (tmp_path / "profile_compile.txt").read_text()
    assert "compile_node" in report


@pytest.mark.parametrize("dual", [(), ("--dual-stack",)], ids=["ipv4", "dual-stack"])
def test_profile_coldstart_and_event_tiny(tmp_path: Path, dual: tuple[str, ...]) -> None:
    for what in ("coldstart", "event"):
        res = subprocess.run(
            [sys.executable, "-m", "bench.profile", what, "--switches", "4", "--leases", "30",
             "--events", "5", "--tag", "4x30", "--results-dir", str(tmp_path), *dual],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-2000:]
        head = (tmp_path / f"profile_{what}_4x30.txt").read_text().splitlines()[1]
        assert head.startswith(f"# {what}: 4 switches, 30 leases")
    coldstart = (tmp_path / "profile_coldstart_4x30.txt").read_text()
    assert "bytes per installed flow" in coldstart
    # 4 switches x (29 remote leases x 2 or 4 flows + the base pipeline)
    installed = int(coldstart.split(" flows installed")[0].split()[-1].replace(",", ""))
    assert installed > 4 * 29 * (4 if dual else 2)
    assert "full; longest" in (tmp_path / "profile_event_4x30.txt").read_text()


def test_profile_policy_tiny(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "bench.profile", "policy", "--switches", "3", "--pods", "30",
         "--policies", "5", "--events", "3", "--tag", "3x30", "--results-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    report = (tmp_path / "profile_policy_3x30.txt").read_text()
    assert report.splitlines()[1].startswith("# policy: 3 switches, 30 pods, 5 policies, 3 new policies")
    assert "NodeStage.update" in report  # each new policy updates the switches' policy stages


@pytest.mark.integration
def test_b10_policy_tiny(tmp_path: Path) -> None:
    r = run_bench(tmp_path, "bench.b10_policy", "-s", "3", "--pods", "30", "--policies", "5",
                  "--repeat", "3", "--gap", "0", "--rule", "10x10x5")  # fmt: skip
    rule, run = r["rule"], r["run"]
    assert rule["rule_flows"] == 1 + 10 + 5 + 1 and rule["cross_product"] == 500  # one group
    assert rule["stage_flows"] > rule["rule_flows"]
    assert run["switches"] == 3 and run["pods"] == 30 and positive(run["initial_sync_s"])
    for key in ("policy_to_every_switch_s", "label_to_every_switch_s"):
        lat = run[key]
        assert lat["n"] == 3 and 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"] < 30, key
    cpu = run["cpu_ms_per_policy"]  # each process's CPU per new policy: /proc counts it in
    # 10 ms ticks, and three tiny policies may take the controller less than one (0.0 then)
    assert set(cpu) == {"controller", "switches", "etcd", "bench"}
    assert all(v >= 0 for v in cpu.values()), cpu


@pytest.mark.e2e
def test_b4_dataplane_ipv6_tiny(tmp_path: Path) -> None:
    r = run_bench(tmp_path, "bench.b4_dataplane", "--ipv6", "--rounds", "1", "--pings", "20",
                  "--seconds", "1", timeout=290, name="b4_dataplane_ipv6")  # fmt: skip
    s = r["summary"]
    for kind in ("vxflow", "flannel", "vxflow_v6", "flannel_v6"):
        assert s[kind]["lost_pings"] <= 2, kind
        assert positive(s[kind]["rtt_avg_s_median"]) and s[kind]["tcp_bps_median"] > 1e6, kind
    assert positive(s["tcp_ratio_vxflow_v6_over_flannel_v6"])
    assert positive(s["tcp_ratio_vxflow_v6_over_vxflow"])
