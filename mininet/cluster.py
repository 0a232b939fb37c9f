#!/usr/bin/env python3
"""An emulated vxflow cluster on Mininet (as root).

As a script (`.venv/bin/python mininet/cluster.py --nodes 3 --pods 2
[--flannel-nodes 1] [--cli]`): builds the cluster with etcd, the controller
and one agent per node, pings every pod from every pod, then either opens the
Mininet CLI (`--cli`) or tears everything down; exit status 0 when all pairs
answered. Ctrl-C or SIGTERM tear down too.

As a Mininet custom file:
    mn --custom mininet/cluster.py --topo vxflow,3,2,1 --test vxflow
(`vxflow,NODES,PODS,FLANNEL_NODES`) builds the same topology with `mn`; the
`vxflow` test starts etcd, the controller, agents and flannel-style daemons
on it and opens the CLI; leaving the CLI stops them. Prefer the script: on an
error `mn` runs its own global cleanup, which is not safe beside other
Mininet users.
"""

import argparse
import inspect
import signal
import sys
from pathlib import Path

# mn exec()s this file without __file__; the code object still knows where it lives
sys.path.insert(0, str(Path(inspect.currentframe().f_code.co_filename).resolve().parent))

import vxcluster
from mininet.cli import CLI


def _interrupt(*_args) -> None:
    raise KeyboardInterrupt


def _report_pairs(cluster: vxcluster.Cluster) -> bool:
    failed = [f"{a.name}->{b.name}" for a, b in cluster.pairs() if not cluster.reachable(a, b.addr)]
    total = len(list(cluster.pairs()))
    print(f"pod pairs answering: {total - len(failed)}/{total}")
    if failed:
        print("no answer: " + ", ".join(failed))
    return not failed


def _vxflow_test(net) -> None:
    """`mn --test vxflow`: the services on mn's already started net, then the CLI."""
    tag = next(s.name for s in net.switches if isinstance(s, vxcluster.UnderlayBridge))
    spec = vxcluster.ClusterSpec(
        nodes=sum(isinstance(h, vxcluster.VxflowNode) for h in net.hosts),
        flannel_nodes=sum(isinstance(h, vxcluster.FlannelNode) for h in net.hosts),
        tag=tag,
    )
    cluster = vxcluster.Cluster(spec=spec, progress=print, net=net)
    try:
        cluster.start_services()
        _report_pairs(cluster)
        print(cluster.cli_banner())
        CLI(net)
    finally:
        cluster.stop_services()  # mn stops the hosts (their agents and OVS) itself


topos = {"vxflow": vxcluster.VxflowTopo}
tests = {"vxflow": _vxflow_test}


def _main() -> int:
    parser = argparse.ArgumentParser(description="An emulated vxflow cluster on Mininet.")
    parser.add_argument("--nodes", type=int, default=3, help="vxflow nodes (default 3)")
    parser.add_argument("--pods", type=int, default=2, help="pods per node (default 2)")
    parser.add_argument("--flannel-nodes", type=int, default=0,
                        help="flannel-style nodes (kernel VXLAN) sharing the prefix")  # fmt: skip
    parser.add_argument("--vni", type=int, default=1)
    parser.add_argument("--port", type=int, default=8472, help="VXLAN UDP port")
    parser.add_argument("--prefix", default="/coreos.com/network", help="etcd prefix")
    parser.add_argument("--cli", action="store_true", help="open the Mininet CLI when up")
    args = parser.parse_args()
    spec = vxcluster.ClusterSpec(
        nodes=args.nodes, pods=args.pods, flannel_nodes=args.flannel_nodes,
        vni=args.vni, port=args.port, prefix=args.prefix,
    )  # fmt: skip
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored (`&`)
        signal.signal(sig, _interrupt)
    cluster = vxcluster.Cluster(spec=spec, progress=print)
    try:
        cluster.start()
        print(f"etcd {cluster.etcd_endpoint}, controller {cluster.controller_target}, "
              f"work dir {cluster.workdir}")  # fmt: skip
        ok = _report_pairs(cluster)
        if args.cli:
            print(cluster.cli_banner())
            CLI(cluster.net)
        return 0 if ok else 1
    except KeyboardInterrupt:
        print("interrupted; tearing down")
        return 130
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(_main())
