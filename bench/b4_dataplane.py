"""B4 data plane: pod-to-pod RTT and TCP throughput, vxflow (OVS userspace) vs flannel-style
(kernel VXLAN) nodes, in one emulated cluster, same underlay, same run.

The cluster is mininet/vxcluster.py's (2 vxflow nodes with agent + controller,
2 flannel-style nodes; one pod each). Rounds alternate vxflow pair / flannel
pair; per round: `ping -q -c N -i 0.01` (RTT) then `iperf3 -J -t T` (TCP).
All traffic is pod to pod, inside the cluster's namespaces. This describes the
environment (userspace vs kernel datapath, no kernel OVS module here) as much
as vxflow, so it is reported, not gated. Mininet builds in the root namespace
(per-run underlay /27 and tag), so this one is not run in bench/isolation.py's
namespace. Run: `python -m bench.b4_dataplane` (root).

With `--direct` the cluster runs with the config's Backend.DirectRouting (its
nodes share one link) and each round measures three pairs: the vxflow pair
routed directly, the flannel-style pair routed directly (flannel's own
DirectRouting, kernel routes only), and the vxflow pair over VXLAN (the option
turned off for that measurement and on again, through etcd, each round: the
flannel-style nodes read it once, at start, and stay direct). Results go to
b4_dataplane_direct.json.

With `--ipv6` the cluster is dual stack (IPv6Network fd00:198:19::/48 over the
underlay's IPv6 addresses, both node kinds) and each round measures both pairs over
IPv4 and over IPv6 (VXLAN over the IPv6 underlay). Results go to b4_dataplane_ipv6.json.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from ipaddress import IPv6Network
from pathlib import Path
from typing import Any

import click

from bench import report
from bench.stats import median
from flows.flow import Owner, cookie_for
from vxflow.demo import cluster_module

MODULE = "bench.b4_dataplane"
log = logging.getLogger(MODULE)
RTT = re.compile(r"rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")
LOSS = re.compile(r"(\d+) packets transmitted, (\d+) received")
IPERF_PORT = 5201
KINDS = ("vxflow", "flannel")
KINDS_DIRECT = ("vxflow_direct", "flannel_direct", "vxflow_vxlan")
RATIOS = {"vxflow_over_flannel": ("vxflow", "flannel")}
RATIOS_DIRECT = {"vxflow_direct_over_flannel_direct": ("vxflow_direct", "flannel_direct"),
                 "vxflow_direct_over_vxflow_vxlan": ("vxflow_direct", "vxflow_vxlan")}  # fmt: skip
KINDS_IPV6 = ("vxflow", "flannel", "vxflow_v6", "flannel_v6")
RATIOS_IPV6 = {**RATIOS, "vxflow_v6_over_flannel_v6": ("vxflow_v6", "flannel_v6"),
               "vxflow_v6_over_vxflow": ("vxflow_v6", "vxflow")}  # fmt: skip
OVERLAY6 = IPv6Network("fd00:198:19::/48")  # the e2e dual-stack cluster's


def ping(src, dst, count: int, address: str | None = None) -> dict[str, float]:
    """`count` pings from `src` to `dst`, at `address` (default: its IPv4 one)."""
    out = src.cmd(f"ping -n -q -c {count} -i 0.01 -W 1 {address or dst.addr}")
    rtt, loss = RTT.search(out), LOSS.search(out)
    if rtt is None or loss is None:
        raise RuntimeError(f"{src.name} -> {dst.name}: ping failed: {out.strip()[-300:]}")
    sent, received = map(int, loss.groups())
    mn, avg, mx, mdev = (float(v) / 1e3 for v in rtt.groups())
    return {"sent": sent, "received": received, "min_s": mn, "avg_s": avg, "max_s": mx, "mdev_s": mdev}


def iperf(src, dst, seconds: int, address: str | None = None) -> dict[str, float]:
    """iperf3 from `src` to the server it starts on `dst`, reached at `address` (default:
    dst's own; B7 goes through a VIP)."""
    server = dst.popen(["iperf3", "-s", "-1", "-p", str(IPERF_PORT)])
    try:
        deadline = time.monotonic() + 10  # a client faster than the server's listen() fails
        while not dst.cmd(f"ss -Hltn sport = :{IPERF_PORT}").strip():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{dst.name}: iperf3 server did not start listening")
            time.sleep(0.05)
        out = src.cmd(f"iperf3 -c {address or dst.addr} -p {IPERF_PORT} -t {seconds} -J "
                      "--connect-timeout 3000")
        try:
            end = json.loads(out)["end"]
            return {"received_bps": end["sum_received"]["bits_per_second"],
                    "sent_bps": end["sum_sent"]["bits_per_second"],
                    "retransmits": end["sum_sent"].get("retransmits", 0)}  # fmt: skip
        except (ValueError, KeyError) as e:
            raise RuntimeError(f"{src.name} -> {dst.name}: iperf3 failed: {out.strip()[-300:]}") from e
    finally:
        if server.poll() is None:
            server.terminate()
        server.wait(10)


def direct_flows(node) -> int:
    """The direct routes (flows/direct.py) on a vxflow node's br-int."""
    mask = 0xFFFF << 48  # the cookie's magic byte and owner kind
    out = node.ovs.ofctl("dump-flows", "br-int", f"cookie={cookie_for(Owner.DIRECT):#x}/{mask:#x}")
    return out.count("actions=")


def set_direct(cluster, on: bool, timeout: float = 30) -> None:
    """DirectRouting on or off in etcd; back once every vxflow node's flows follow."""
    cluster.spec = dataclasses.replace(cluster.spec, direct_routing=on)
    cluster.write_config()
    deadline = time.monotonic() + timeout
    while any(bool(direct_flows(n)) is not on for n in cluster.vxflow_nodes):
        if time.monotonic() > deadline:
            raise RuntimeError(f"DirectRouting {'on' if on else 'off'}: flows not there in {timeout}s")
        time.sleep(0.2)


def measure(rounds: int, pings: int, seconds: int, direct: bool = False,
            ipv6: bool = False) -> dict[str, Any]:  # fmt: skip
    vx = cluster_module()  # mininet/vxcluster.py, loaded as the demo and e2e tests load it
    spec = vx.ClusterSpec(nodes=2, pods=1, flannel_nodes=2, direct_routing=direct,
                          ipv6_network=OVERLAY6 if ipv6 else None)  # fmt: skip
    kinds = KINDS_DIRECT if direct else KINDS_IPV6 if ipv6 else KINDS
    samples: dict[str, dict[str, list]] = {k: {"ping": [], "iperf": []} for k in kinds}
    with vx.Cluster(spec, progress=log.info) as cluster:
        vxflow = [cluster.pods_of(n)[0] for n in cluster.vxflow_nodes]
        flannel = [cluster.pods_of(n)[0] for n in cluster.flannel_nodes]
        pairs = dict(zip(kinds, (vxflow, flannel, vxflow, flannel), strict=False))

        def address(kind: str, b) -> str:
            return str(b.addr6 if kind.endswith("_v6") else b.addr)

        if direct:
            set_direct(cluster, True)
        for kind, (a, b) in pairs.items():
            ping(a, b, 5, address(kind, b))  # warm ARP/neighbour and tunnel state first
        for i in range(rounds):
            for kind, (a, b) in pairs.items():
                if direct and kind.startswith("vxflow"):
                    set_direct(cluster, kind == "vxflow_direct")
                    ping(a, b, 5)
                samples[kind]["ping"].append(ping(a, b, pings, address(kind, b)))
                samples[kind]["iperf"].append(iperf(a, b, seconds, address(kind, b)))
                log.info("round %d %s: rtt avg %.3f ms, %.0f Mbit/s", i + 1, kind,
                         samples[kind]["ping"][-1]["avg_s"] * 1e3,
                         samples[kind]["iperf"][-1]["received_bps"] / 1e6)  # fmt: skip
    summary: dict[str, Any] = {}
    for kind, s in samples.items():
        summary[kind] = {
            "rtt_avg_s_median": median([p["avg_s"] for p in s["ping"]]),
            "rtt_min_s_median": median([p["min_s"] for p in s["ping"]]),
            "tcp_bps_median": median([r["received_bps"] for r in s["iperf"]]),
            "lost_pings": sum(p["sent"] - p["received"] for p in s["ping"]),
        }
    for name, (x, y) in (RATIOS_DIRECT if direct else RATIOS_IPV6 if ipv6 else RATIOS).items():
        summary[f"rtt_ratio_{name}"] = summary[x]["rtt_avg_s_median"] / summary[y]["rtt_avg_s_median"]
        summary[f"tcp_ratio_{name}"] = summary[x]["tcp_bps_median"] / summary[y]["tcp_bps_median"]
    return {"rounds": rounds, "pings_per_round": pings, "iperf_seconds": seconds,
            "samples": samples, "summary": summary}  # fmt: skip


@click.command()
@click.option("--rounds", default=3, show_default=True, help="Alternating vxflow/flannel rounds.")
@click.option("--pings", default=200, show_default=True, help="Pings per round.")
@click.option("--seconds", default=5, show_default=True, help="iperf3 duration per round.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the JSON (default bench/results).")
@click.option("--direct", is_flag=True,
              help="DirectRouting: vxflow direct vs flannel-style direct vs vxflow VXLAN.")
@click.option("--ipv6", is_flag=True,
              help="A dual-stack cluster: each pair over IPv4 and over IPv6.")
def main(rounds: int, pings: int, seconds: int, results_dir: Path | None, direct: bool,
         ipv6: bool) -> None:  # fmt: skip
    """B4: pod-to-pod RTT and TCP throughput, vxflow vs flannel-style nodes.

    Needs root; builds a Mininet cluster (2 vxflow + 2 flannel-style nodes, one pod
    each). Writes b4_dataplane.json (with --direct: b4_dataplane_direct.json; with
    --ipv6: b4_dataplane_ipv6.json)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if direct and ipv6:
        raise click.UsageError("--direct and --ipv6 are measured apart (no IPv6 direct routes)")
    result = measure(rounds, pings, seconds, direct, ipv6)
    name = "b4_dataplane_direct" if direct else "b4_dataplane_ipv6" if ipv6 else "b4_dataplane"
    path = report.save(name, MODULE, result, results_dir)
    s = result["summary"]
    for kind in KINDS_DIRECT if direct else KINDS_IPV6 if ipv6 else KINDS:
        click.echo(f"{kind:14s} rtt avg {report.ms(s[kind]['rtt_avg_s_median'])}"
                   f"  tcp {s[kind]['tcp_bps_median'] / 1e6:,.0f} Mbit/s")  # fmt: skip
    for name in RATIOS_DIRECT if direct else RATIOS_IPV6 if ipv6 else RATIOS:
        click.echo(f"ratio {name.replace('_over_', '/')}: rtt {s[f'rtt_ratio_{name}']:.2f}"
                   f"  tcp {s[f'tcp_ratio_{name}']:.2f}")  # fmt: skip
    click.echo(f"results: {path}")


if __name__ == "__main__":
    main()
