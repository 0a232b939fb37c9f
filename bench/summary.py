"""Render bench/results/*.json as the figures section of BENCHMARKS.md.

`python -m bench.summary` prints it; `--write` replaces the text between the
`<!-- results:begin -->` and `<!-- results:end -->` markers in BENCHMARKS.md,
so the tables there are always exactly what the last runs wrote.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from bench.report import RESULTS_DIR
from bench.stats import median

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _ms(s: float) -> str:
    return f"{s * 1e3:.2f} ms"


def _s(s: float) -> str:
    return f"{s:.3f} s"


def _load(name: str, results_dir: Path) -> dict[str, Any] | None:
    path = results_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _head(r: dict[str, Any]) -> list[str]:
    e = r["environment"]
    if "git_head" in e:
        dirty = [f for f in e["modified_files"] if not f.startswith("bench/")]
        code = f"code at {e['git_head']}" + (
            f" plus uncommitted edits to {', '.join(dirty)}" if dirty else "")
    else:
        code = "code state not recorded"
    end = f", at end {e['loadavg_at_end'][0]:.2f}" if "loadavg_at_end" in e else ""
    return [f"Run {r['finished_utc']}: `{r['command']}` (load average at start "
            f"{e['loadavg_at_start'][0]:.2f}{end}; {code}).", ""]  # fmt: skip


def b1(r: dict[str, Any]) -> list[str]:
    s = r["summary"]
    n = r["flows_per_table"]
    lines = ["### B1 flow programming rate", "", *_head(r),
             f"{r['remote_leases']:,} remote leases -> {n:,} flows in one table "
             f"(per remote lease its route and tunnel-ingress check, + base pipeline), "
             f"{len(r['ofctl'])} alternating rounds.", "",
             "| what | median | all runs |", "|---|---|---|",
             f"| (a) `ovs-ofctl --bundle add-flows`, until the table is complete | "
             f"{_s(s['ofctl_landed_s_median'])} ({s['ofctl_flows_per_s']:,.0f} flows/s) | "
             + ", ".join(f"{x['landed_s']:.3f}" for x in r["ofctl"]) + " |"]  # fmt: skip
    if "controller_landed_s_median" in s:
        lines += [
            f"| (b) vxflow controller, set-controller until the table is complete | "
            f"{_s(s['controller_landed_s_median'])} ({s['controller_flows_per_s']:,.0f} flows/s) | "
            + ", ".join(f"{x['landed_s']:.3f}" for x in r["controller"]) + " |",
            f"| controller CPU per table (from /proc) | "
            f"{sorted(x['controller_cpu_s'] for x in r['controller'])[len(r['controller']) // 2]:.2f} s | "
            + ", ".join(f"{x['controller_cpu_s']:.2f}" for x in r["controller"]) + " |",
        ]  # fmt: skip
    if "controller_tls_landed_s_median" in s:
        tls = r["controller_tls"]
        lines += [
            f"| (c) as (b), over OpenFlow over TLS | "
            f"{_s(s['controller_tls_landed_s_median'])} ({s['controller_tls_flows_per_s']:,.0f} "
            f"flows/s; x{s['time_ratio_tls_over_tcp']:.2f} of TCP) | "
            + ", ".join(f"{x['landed_s']:.3f}" for x in tls) + " |",
            f"| controller CPU per table over TLS | "
            f"{sorted(x['controller_cpu_s'] for x in tls)[len(tls) // 2]:.2f} s | "
            + ", ".join(f"{x['controller_cpu_s']:.2f}" for x in tls) + " |",
        ]  # fmt: skip
    lines += [
        f"| compile alone (`flows.compiler.compile_node`, incl. validation) | "
        f"{_s(s['compile_s_median'])} | " + ", ".join(f"{x:.3f}" for x in r["compile_s"]) + " |",
        f"| encode alone (`controller.ofwire.encode_bundle_adds`, one bundle) | "
        f"{_s(s['encode_s_median'])} | " + ", ".join(f"{x:.3f}" for x in r["encode_s"]) + " |",
    ]  # fmt: skip
    if "controller_sync_path_s_median" in s:
        lines.append(
            f"| controller sync path in process (model + SwitchSync, empty table -> bundle) | "
            f"{_s(s['controller_sync_path_s_median'])} | "
            + ", ".join(f"{x:.3f}" for x in r["controller_sync_path_s"]) + " |"
        )  # fmt: skip
    if "rate_ratio_controller_over_ofctl" in s:
        met = "met" if s["rate_ratio_controller_over_ofctl"] >= 0.8 else "NOT met"
        lines += ["", f"Rate ratio controller/ovs-ofctl = (a)/(b) of the medians: "
                  f"**{s['rate_ratio_controller_over_ofctl']:.2f}** (goal >= 0.8: {met}); "
                  f"time ratio (b)/(a) = {s['time_ratio_controller_over_ofctl']:.2f}; "
                  + (f"median of the per-round ratios (a)/(b) = {s['pairwise_rate_ratio_median']:.2f}. "
                     if "pairwise_rate_ratio_median" in s else "")
                  + ("Both sides left identical tables (dump-flows, first round). "
                     if r.get("tables_identical") else "")
                  + f"Controller peak RSS {r['controller_memory_kib']['VmHWM'] / 1024:.0f} MiB."]  # fmt: skip
    return lines


def _dual(r: dict[str, Any]) -> str:
    """The title's note for a --dual-stack run."""
    return ", dual-stack leases" if "--dual-stack" in r["command"] else ""


def b2(r: dict[str, Any]) -> list[str]:
    lines = [f"### B2 convergence (one new lease -> every switch{_dual(r)})", "", *_head(r),
             "| switches | OpenFlow | S | leases before | n | p50 | p99 | max | spread p50 "
             "(first->last switch) | etcd put -> watch p50 |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for x in r["runs"]:
        lat = x["latency_s"]
        lines.append(
            f"| {x['switch']} | {x.get('transport', 'tcp')} | {x['switches']} | {x['leases']:,} | "
            f"{lat['n']} | {_ms(lat['p50'])} | "
            f"{_ms(lat['p99'])} | {_ms(lat['max'])} | {_ms(x['spread_s']['p50'])} | "
            f"{_ms(x['etcd_watch_s']['p50'])} |"
        )  # fmt: skip
    return lines


def b3(r: dict[str, Any]) -> list[str]:
    lines = [f"### B3 cold start{_dual(r).replace(', ', ' (').rstrip() + (')' if _dual(r) else '')}", "",
             *_head(r),
             "| switches | L leases | S | flows total | converged (median) | all runs | flow-mods/s "
             "| controller CPU | ovs-vswitchd CPU | controller peak RSS | bytes per installed flow (peak - ready RSS) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for x in r["runs"]:
        switch_cpu = f"{x['switch_cpu_s']:.2f} s" if "switch_cpu_s" in x else "n/a (stand-in)"
        if x.get("vswitchds", 1) > 1:  # the sum; each instance's (median over the runs)
            each = zip(*(y["switch_cpu_s_each"] for y in x["reps"]), strict=True)
            switch_cpu += " (" + " + ".join(f"{median(list(c)):.2f}" for c in each) + ")"
        lines.append(
            f"| {x['switch']} | {x['leases']:,} | {x['switches']} | {x['flows_total']:,} | "
            f"{_s(x['converged_s'])} | " + ", ".join(f"{y['converged_s']:.3f}" for y in x["reps"])
            + f" | {x['flow_mods_per_s']:,.0f} | {x['controller_cpu_s']:.2f} s | {switch_cpu} | "
            f"{x['controller_rss_peak_kib'] / 1024:.0f} MiB | "
            + (f"{x['controller_bytes_per_flow']:.0f} |" if "controller_bytes_per_flow" in x
               else "not recorded |")
        )  # fmt: skip
    return lines


B4_LABELS = {
    "vxflow": "vxflow nodes (OVS userspace datapath)",
    "flannel": "flannel-style nodes (kernel VXLAN)",
    "vxflow_direct": "vxflow nodes, DirectRouting (gateway port + kernel route)",
    "flannel_direct": "flannel-style nodes, DirectRouting (kernel routes)",
    "vxflow_vxlan": "vxflow nodes, VXLAN (the option off for the round)",
    "vxflow_v6": "vxflow nodes over IPv6 (IPv6 underlay)",
    "flannel_v6": "flannel-style nodes over IPv6 (flannel-v6.<VNI>)",
}


def b4(r: dict[str, Any]) -> list[str]:
    """B4, or its --direct or --ipv6 run (b4_dataplane_direct, b4_dataplane_ipv6): the same
    table over the pairs it has."""
    s = r["summary"]
    kind = " with DirectRouting" if "vxflow_direct" in s else " over IPv6 and IPv4" if "vxflow_v6" in s else ""
    lines = [f"### B4 data plane{kind} (pod to pod, one "
             "cluster, same underlay)", "", *_head(r),
             f"{r['rounds']} alternating rounds; per round {r['pings_per_round']} pings "
             f"(`ping -i 0.01`) and `iperf3 -t {r['iperf_seconds']}`; medians over rounds.", "",
             "| pair | RTT avg | RTT min | TCP throughput | lost pings |", "|---|---|---|---|---|"]  # fmt: skip
    for kind, label in B4_LABELS.items():
        if kind not in s:
            continue
        k = s[kind]
        lines.append(f"| {label} | {_ms(k['rtt_avg_s_median'])} | {_ms(k['rtt_min_s_median'])} | "
                     f"{k['tcp_bps_median'] / 1e6:,.0f} Mbit/s | {k['lost_pings']} |")  # fmt: skip
    ratios = [n[len("rtt_ratio_"):] for n in s if n.startswith("rtt_ratio_")]
    lines.append("")
    lines += [f"Ratio {n.replace('_over_', '/')}: RTT {s[f'rtt_ratio_{n}']:.2f}, TCP throughput "
              f"{s[f'tcp_ratio_{n}']:.2f} (reported, not gated)." for n in ratios]  # fmt: skip
    return lines


def b5(r: dict[str, Any]) -> list[str]:
    f, lat = r["failover"], r["failover"]["kill_to_flow_s"]
    met = "met" if lat["p99"] <= f["goal_s"] else "NOT met"
    lines = ["### B5 controller failover (SIGKILL of a replica -> a new lease on its switches)", "",
             *_head(r),
             f"{f['replicas']} replicas, member TTL {f['member_ttl_s']} s, {f['switches']} bridges "
             f"(real, one ovs-vswitchd), {f['leases']} leases; {f['kills']} kills, each replica "
             "in turn; the new lease is put right after the kill.", "",
             "| what | n | p50 | p99 | max |", "|---|---|---|---|---|",
             f"| kill -> new lease's flow on every bridge the victim mastered | {lat['n']} | "
             f"{_s(lat['p50'])} | {_s(lat['p99'])} | {_s(lat['max'])} |", "",
             f"Goal p99 <= member TTL + 1 s = {f['goal_s']} s: **{met}**.", ""]  # fmt: skip
    if r.get("cold_start"):
        lines += ["| cold start | replicas | converged | controller CPU | switches mastered |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for c in r["cold_start"]:
            lines.append(f"| {c['leases']:,} leases x {c['switches']} bridges | {c['replicas']} | "
                         f"{_s(c['converged_s'])} | "
                         f"{' + '.join(f'{x:.2f}' for x in c['controller_cpu_s'])} s | "
                         f"{' + '.join(map(str, c['mastered']))} |")  # fmt: skip
    return lines


def b6(r: dict[str, Any]) -> list[str]:
    st, s = r["stats"], r["summary"]
    lines = ["### B6 pod attach (CNI ADD, and ADD -> answered from another node)", "", *_head(r),
             f"{r['containers']} attachments per path, in turn; each in a fresh netns on node n1, "
             "pinged every 2 ms from the pod on n2 right after ADD. Fast: the `vxflow` client "
             "that `vxflow-cni install` writes, served by n1's agent; in-process: `vxflow-cni` "
             "itself.", "",
             "| what | n | p50 | p99 | max |", "|---|---|---|---|---|"]  # fmt: skip
    for key, label in (
        ("fast_add_s", "fast ADD (client process wall time)"),
        ("fast_reachable_s", "fast ADD start -> first reply from n2's pod"),
        ("inproc_add_s", "in-process ADD (`vxflow-cni`)"),
        ("inproc_reachable_s", "in-process ADD start -> first reply from n2's pod"),
        ("bridge_add_s", "`bridge` + `host-local` ADD (flannel's delegate)"),
        ("fast_del_s", "fast DEL"),
        ("inproc_del_s", "in-process DEL"),
        ("bridge_del_s", "`bridge` DEL"),
        ("fast_version_s", "fast VERSION (client start, round trip to the agent)"),
        ("inproc_version_s", "in-process VERSION (interpreter start, spec module)"),
        ("python_floor_s", "bare `python -IS` exiting at once (a Python client's least)"),
        ("nsenter_floor_s", "`nsenter` of `/bin/true` (every call above includes one)"),
        ("fast_served_s", "fast ADD: the agent's own time for the call"),
        ("fast_ovsdb_s", "in the agent's ADD: subnet.env, OVSDB checks (kept replica), record"),
        ("fast_veth_s", "in the agent's ADD: veth pair (netlink), host-local started meanwhile"),
        ("fast_ipam_s", "in the agent's ADD: then until host-local answered"),
        ("fast_container_s", "in the agent's ADD: container end configured (netlink)"),
        ("fast_port_s", "in the agent's ADD: OVSDB port inserted"),
        ("fast_ofport_s", "in the agent's ADD: then until the port's ofport"),
        ("inproc_ovsdb_s", "in-process ADD: subnet.env, OVSDB connect, checks, record"),
        ("inproc_veth_s", "in-process ADD: veth pair (1 ip, 1 ethtool), host-local started meanwhile"),
        ("inproc_ipam_s", "in-process ADD: then until host-local answered"),
        ("inproc_container_s", "in-process ADD: container end configured (nsenter ip, nsenter ethtool)"),
        ("inproc_port_s", "in-process ADD: OVSDB port inserted"),
        ("inproc_ofport_s", "in-process ADD: then until the port's ofport"),
    ):  # fmt: skip
        if key in st:
            x = st[key]
            lines.append(f"| {label} | {x['n']} | {_ms(x['p50'])} | {_ms(x['p99'])} | "
                         f"{_ms(x['max'])} |")  # fmt: skip
    met = {True: "met", False: "NOT met"}
    lines += ["", f"ADD p50 ratio fast/bridge **{s['add_ratio_p50_fast_over_bridge']:.2f}** "
              f"(goal <= 2: {met[s['add_goal_met']]}; in-process/bridge "
              f"{s['add_ratio_p50_inproc_over_bridge']:.2f}); fast ADD -> reachable p99 "
              f"**{_ms(s['reachable_p99_s'])}** (goal <= 150 ms: {met[s['reachable_goal_met']]})."]  # fmt: skip
    return lines


def b7(r: dict[str, Any]) -> list[str]:
    lines = ["### B7 services (through a VIP vs to the pod; a backend change vs a new lease)", "",
             *_head(r)]  # fmt: skip
    met = {True: "met", False: "NOT met"}
    if "dataplane" in r:
        d, s = r["dataplane"], r["dataplane"]["summary"]
        lines += [f"Data plane: 2 vxflow nodes, client pod on n1, backend pod on n2; "
                  f"{d['rounds']} alternating rounds of `iperf3 -t {d['iperf_seconds']}` and "
                  f"{d['connections_per_round']} sequential TCP connections; medians.", "",
                  "| path | TCP throughput | connections/s |", "|---|---|---|"]  # fmt: skip
        for kind, label in (("vip", "client -> VIP (conntrack, select group, DNAT)"),
                            ("pod", "client -> the backend's pod IP")):  # fmt: skip
            k = s[kind]
            lines.append(f"| {label} | {k['tcp_bps_median'] / 1e6:,.0f} Mbit/s | "
                         f"{k['connections_per_s_median']:,.0f} |")  # fmt: skip
        lines += ["", f"Throughput ratio VIP/pod **{s['throughput_ratio_vip_over_pod']:.2f}** "
                  f"(goal >= 0.8: {met[s['throughput_goal_met']]}); connection rate ratio "
                  f"{s['connection_rate_ratio_vip_over_pod']:.2f}.", ""]  # fmt: skip
    if "control" in r:
        c = r["control"]
        lines += [f"Control: {c['switch']}, S = {c['switches']}, {c['leases']:,} leases, a "
                  f"service of {c['backends']} backends; {c['repetitions']} new leases and as many "
                  "backend changes, alternating, from the etcd put to the last switch.", "",
                  "| event | n | p50 | p99 | max |", "|---|---|---|---|---|"]  # fmt: skip
        for key, label in (("lease_latency_s", "new lease -> its flow on every switch (B2's event)"),
                           ("group_latency_s", "backend added/removed -> the group-mod on every switch")):  # fmt: skip
            x = c[key]
            lines.append(f"| {label} | {x['n']} | {_ms(x['p50'])} | {_ms(x['p99'])} | {_ms(x['max'])} |")
        lines += ["", f"p99 backend change minus p99 new lease: **{_ms(c['p99_group_minus_lease_s'])}** "
                  f"(goal <= 5 ms: {met[c['goal_met']]})."]  # fmt: skip
    return lines


def b8(r: dict[str, Any]) -> list[str]:
    lines = ["### B8 drift repair (hand-made change -> repair landed)", "", *_head(r),
             f"One real bridge with {r['flows']} flows ({r['leases']} leases); {r['tries']} "
             "hand-made flow-mods on its management socket, cycling four kinds; from sending "
             "the change to the bridge's own flow monitor reporting the repair; audits off.", "",
             "| change | n | p50 | p99 | max |", "|---|---|---|---|---|"]  # fmt: skip
    for label, x in [("all", r["repair_s"]), *r["by_kind"].items()]:
        lines.append(f"| {label} | {x['n']} | {_ms(x['p50'])} | {_ms(x['p99'])} | {_ms(x['max'])} |")
    met = "met" if r["goal_met"] else "NOT met"
    lines += ["", f"p99 **{_ms(r['repair_s']['p99'])}** (goal <= 1 s: {met})."]
    return lines


def b9(r: dict[str, Any]) -> list[str]:
    lines = ["### B9 switch restart (ovs-vswitchd back -> pod traffic across nodes)", "",
             *_head(r),
             f"Two-node cluster; a pod pings one on the other node every "
             f"{r['interval_s'] * 1e3:.0f} ms while n1's ovs-vswitchd restarts, {r['tries']} times "
             "each way, alternating.", "",
             "| restart | n | traffic again after the process is back p50 | max | outage p50 "
             "| pings lost p50 | process down p50 |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind, label in (("crash", "kill -9, start"),
                        ("planned", "`ovs-ctl restart`'s sequence (flow-restore-wait)")):  # fmt: skip
        x = r[kind]
        lines.append(
            f"| {label} | {x['resumed_after_ready_s']['n']} | "
            f"{_ms(x['resumed_after_ready_s']['p50'])} | {_ms(x['resumed_after_ready_s']['max'])} | "
            f"{_ms(x['outage_s']['p50'])} | {x['lost']['p50']:.0f} | {_ms(x['down_s']['p50'])} |"
        )  # fmt: skip
    met = "met" if r["goal_met"] else "NOT met"
    lines += ["", f"Goal: traffic again <= 1 s after ovs-vswitchd is back: {met}."]
    return lines


def b11(r: dict[str, Any]) -> list[str]:
    ref = r["reference"]
    check = r["health_check"]
    lines = ["### B11 data-path failover (node crash, failed health check -> backend out of "
             "every group)", "", *_head(r),
             f"Three-node cluster; a service with a backend on n2 and on n3 and a TCP health "
             f"check (PeriodSeconds {check['PeriodSeconds']}, FailureThreshold "
             f"{check['FailureThreshold']}). {r['crashes']} crashes of n3 (agent and "
             f"ovs-vswitchd killed -9) under {r['rate_per_s']} new connections/s from n1's pod; "
             f"{r['checks']} kills of n3's server process.", "",
             "| what | n | p50 | p99 | max | Kubernetes |", "|---|---|---|---|---|---|"]  # fmt: skip
    def row(what: str, x: dict[str, float], kubernetes: str, fmt=_ms) -> str:
        return (f"| {what} | {x['n']} | {fmt(x['p50'])} | {fmt(x['p99'])} | {fmt(x['max'])} | "
                f"{kubernetes} |")  # fmt: skip

    if r["crashes"]:
        lines += [row("crash -> backend gone from every switch still up", r["crash"]["gone_s"],
                      f"~{ref['kubernetes_node_grace_s']:.0f} s"),
                  row("new connections failed per crash", r["crash"]["failed"],
                      f"~{ref['kubernetes_failed_per_crash']:.0f}", lambda n: f"{n:.0f}")]  # fmt: skip
    if r["checks"]:
        lines += [row("server killed -> backend gone from every switch", r["check"]["gone_s"],
                      f"{ref['kubernetes_check_s']} s + kube-proxy"),
                  row("server restarted -> backend back on every switch", r["check"]["back_s"],
                      "")]  # fmt: skip
    return lines


def b12(r: dict[str, Any]) -> list[str]:
    lines = ["### B12 live migration (flannel -> vxflow and back, pods running)", "", *_head(r),
             f"A flannel-style node with two pods between two vxflow nodes and another "
             f"flannel-style node; a TCP stream (a line every 10 ms) and a 100 pps ping to each "
             f"of its pods from a pod of each kind of node. {r['migrations']} rounds of "
             f"`vxflow migrate` then `--rollback` on it under that traffic; per run and per "
             f"stream the longest gap.", "",
             "| run | longest gap | n | p50 | p99 | max | run took p50 |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for what in ("migrate", "rollback"):
        for kind, label in (("tcp_s", "TCP stream"), ("ping_s", "ping")):
            x = r[what][kind]
            cells = (f"{x['n']} | {_ms(x['p50'])} | {_ms(x['p99'])} | {_ms(x['max'])}" if x
                     else "0 | - | - | -")  # fmt: skip
            lines.append(f"| {what} | {label} | {cells} | {_s(r['runs_s'][what]['p50'])} |")
    met = "met" if r["goal_met"] else "NOT met"
    lines += ["", f"Stream resets: {len(r['resets'])}. Goal (no reset, every gap <= "
                  f"{r['goal_s']:.0f} s): {met}."]  # fmt: skip
    return lines


SOAK_FIGURES = {"rss_kib": ("RSS", " KiB"), "fds": ("open file descriptors", ""),
                "series": ("metric series", ""), "green_threads": ("green threads", "")}


def soak(r: dict[str, Any]) -> list[str]:
    churn, hostile = r["churn"], r["hostile"]
    lines = ["### Soak: churn and a hostile peer", "", *_head(r),
             f"{r['duration_s'] / 60:.0f} min; one etcd change every {r['period_s']:g} s: "
             f"{churn.get('lease_added', 0):,} leases written and {churn.get('lease_removed', 0):,} "
             f"removed (a pool of {r['pool']} nodes), {churn.get('endpoint_added', 0):,} pod "
             f"endpoints added and {churn.get('endpoint_removed', 0):,} removed, "
             f"{churn.get('service_written', 0):,} services written and "
             f"{churn.get('service_removed', 0):,} removed; a hostile peer connected "
             f"{sum(hostile.values()):,} times ("
             + ", ".join(f"{n:,} {kind}" for kind, n in hostile.items())
             + f"). Samples every {r['interval_s']:g} s, the first {r['warmup_s']:g} s left out; "
             "first and last quarter's medians:", "",
             "| figure | first | last | max | slope | verdict |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, (label, unit) in SOAK_FIGURES.items():
        f = r["figures"][name]
        slope = (f"{f['slope_per_hour'] / 1024:+.1f} MiB/h" if name == "rss_kib"
                 else f"{f['slope_per_hour']:+.1f}/h")  # fmt: skip
        lines.append(f"| {label} | {f['first']:,g}{unit} | {f['last']:,g}{unit} | "
                     f"{f['max']:,g}{unit} | {slope} | {'flat' if f['flat'] else '**not flat**'} |")
    held = all(x["switches"] == 2 for x in r["samples"] if x["t"] >= r["warmup_s"])
    lines += ["", f"Controller alive at the end: {'yes' if r['controller_alive_at_end'] else 'NO'}; "
                  f"both switches connected at every sample after the warm-up: "
                  f"{'yes' if held else 'NO'}."]  # fmt: skip
    return lines


def render(results_dir: Path) -> str:
    out: list[str] = []
    for name, fn in (("b1_flow_rate", b1), ("b2_convergence", b2), ("b3_cold_start", b3),
                     ("b2_convergence_dualstack", b2), ("b3_cold_start_dualstack", b3),
                     ("b4_dataplane", b4), ("b4_dataplane_direct", b4), ("b4_dataplane_ipv6", b4),
                     ("b5_failover", b5), ("b6_attach", b6),
                     ("b7_services", b7), ("b8_drift_repair", b8),
                     ("b9_switch_restart", b9), ("b11_failover", b11),
                     ("b12_migrate", b12), ("soak", soak)):  # fmt: skip
        r = _load(name, results_dir)
        out += (fn(r) if r else [f"### {name}", "", "_no results yet_"]) + [""]
    return "\n".join(out)


@click.command()
@click.option("--write", is_flag=True, help="Update BENCHMARKS.md between the result markers.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=RESULTS_DIR,
              show_default=True, help="Where the result JSON files are.")
def main(write: bool, results_dir: Path) -> None:
    """Print (or write into BENCHMARKS.md) the tables of the latest results."""
    text = render(results_dir)
    if not write:
        click.echo(text)
        return
    doc = BENCHMARKS_MD.read_text()
    if BEGIN not in doc or END not in doc:
        raise click.ClickException(f"{BENCHMARKS_MD} lacks the {BEGIN} / {END} markers")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    BENCHMARKS_MD.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    click.echo(f"updated {BENCHMARKS_MD}")


if __name__ == "__main__":
    main()
