"""B10 network policy: a policy written in etcd -> its flows on every switch; flows per rule.

- Flows per node for one rule of `--rule` P pods x Q peers x R ports (pure: the
  compiler's own count, flows/policy.py): the rule's flows (conjunctive clauses
  and its conj_id flow) and the node's whole policy stage.
- Convergence: S real switches (netdev bridges in one ovs-vswitchd, as B2's)
  hold the full tables of a cluster of S nodes with `--pods` pods (spread over
  the nodes; namespaces ns0.. and labels app=a0.. spread over them too) and
  `--policies` policies in place. Then, `--repeat` times, one more policy is
  written to etcd (its namespace's pods, on every node, isolated for ingress);
  the time until every switch's flow monitor reports the flow of its rule
  (cookie POLICY|conj_id) is its latency. The CPU each process spent per new policy
  (the controller, ovs-vswitchd, etcd and this one, which reads the flow monitors) is
  recorded beside it: on a shared machine it varies less than the latency it bounds.
  This process shares the cores with what it times, so it keeps its own part small:
  each rule's cookie is compiled before the first policy is written, and the
  observer reads each bridge's monitor updates as they come, one read per wake-up,
  without parsing more of an update than its event and cookie (bench/observer.py),
  and what it set up is frozen out of its garbage collections (a full one scanned it
  for ~50 ms, the observer's timestamps waiting behind it).
- Labels (first, on the same cluster): `--repeat` times, one pod no policy selects gets the labels that a
  policy of its namespace selects. The switches that must change are those whose
  policy stage, compiled from scratch (flows/policy.py), differs before and after;
  the time until the last of them reports its change (its first update of a
  policy flow: a change lands in one bundle or one batch of flow-mods) is the
  latency of a label change to enforcement on every switch. Its labels are put back after
  each, and the same switches seen to change back, before the next.

Run: `python -m bench.b10_policy` (root; own namespace).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import click

from bench import report
from bench.bridges import BridgeFarm
from bench.cluster_env import environment
from bench.controller_proc import cpu_seconds
from bench.isolation import isolate
from bench.leasegen import cluster
from bench.observer import FlowObserver
from bench.stats import summary
from flows.compiler import compile_table
from flows.flow import Owner, cookie_for, owner_of
from flows.policy import PRIO_CLAUSE, PRIO_RULE_ID, PolicyTable, policy_table
from leases.model import Endpoint, Lease
from leases.pods import PodIdentity
from leases.policy import parse_policy

MODULE = "bench.b10_policy"
log = logging.getLogger(MODULE)
NAMESPACES, APPS = 10, 50


def manifest(namespace: str, name: str, selector: dict, ingress: list) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"podSelector": selector, "ingress": ingress}}  # fmt: skip


def rule_flows(pods: int, peers: int, ports: int) -> dict[str, int]:
    """One rule selecting `pods` pods of one node, from `peers` pods, on `ports` ports."""
    node = IPv4Network("10.0.0.0/16")
    selected = [_pod(node, node.network_address + 2 + i, "srv", i) for i in range(pods)]
    other = IPv4Network("10.1.0.0/16")
    clients = [_pod(other, other.network_address + 2 + i, "cli", i) for i in range(peers)]
    policy = parse_policy(manifest("ns", "rule", {"matchLabels": {"app": "srv"}}, [{
        "from": [{"podSelector": {"matchLabels": {"app": "cli"}}}],
        "ports": [{"port": 8000 + i} for i in range(ports)]}]))  # fmt: skip
    table = policy_table([policy], [], selected + clients, selected, node)
    rule = [f for f in table.flows if f.priority in (PRIO_CLAUSE, PRIO_RULE_ID)]
    return {"rule_flows": len(rule), "stage_flows": len(table.flows),
            "cross_product": pods * peers * ports}  # fmt: skip


def _pod(subnet: IPv4Network, ip: IPv4Address, app: str, i: int, namespace: str = "ns") -> Endpoint:
    mac = "0a:58:" + ":".join(f"{b:02x}" for b in ip.packed)
    return Endpoint(subnet, ip, mac, 10 + i, f"veth{i}", PodIdentity(namespace, f"{app}{i}", (("app", app),)))


def pods_of(leases: list[Lease], count: int, namespaces: int) -> list[Endpoint]:
    """`count` pods round-robin over the nodes; namespace and app label spread over them."""
    out = []
    for i in range(count):
        node, j = leases[i % len(leases)], i // len(leases)
        out.append(_pod(node.subnet, node.subnet.network_address + 10 + j, f"a{i % APPS}", j,
                        f"ns{j % namespaces}"))  # fmt: skip
    return out


def background(count: int, namespaces: int) -> list[dict]:
    return [manifest(f"ns{k % namespaces}", f"bg{k}", {"matchLabels": {"app": f"a{k % APPS}"}},
                     [{"from": [{"podSelector": {"matchLabels": {"app": f"a{(k + 1) % APPS}"}}}],
                       "ports": [{"port": 8080}]}]) for k in range(count)]  # fmt: skip


def new_policy(i: int, namespaces: int) -> dict:
    """The i-th policy written during the run: every pod of its namespace isolated for
    ingress, from the pods of one app label in any namespace, on one port."""
    return manifest(f"ns{i % namespaces}", f"new{i}", {}, [{"from": [{"namespaceSelector": {},
                    "podSelector": {"matchLabels": {"app": f"a{i % APPS}"}}}],
                    "ports": [{"port": 9000 + i % 5}]}])  # fmt: skip


def measure(switches: int, pods: int, policies: int, repeat: int, gap: float) -> dict[str, Any]:
    c = cluster(switches)
    leases = list(c.leases[:switches])
    spaces = max(1, min(NAMESPACES, policies))
    endpoints = pods_of(leases, pods, spaces)
    out: dict[str, Any] = {"switches": switches, "pods": pods, "policies": policies, "repetitions": repeat}
    with environment(c) as env, contextlib.ExitStack() as stack:
        by_subnet = {lease.subnet: lease for lease in leases}
        for e in endpoints:
            env.registry.put_endpoint(e, by_subnet[e.node_subnet])
        manifests = background(policies, spaces)
        for start in range(0, len(manifests), 100):
            env.registry.put_policies(manifests[start : start + 100])
        farm = stack.enter_context(BridgeFarm(leases))
        obs = stack.enter_context(FlowObserver({b.name: b.mgmt_socket for b in farm.bridges}, monitor=True))
        snap = env.registry.snapshot()
        name_of = {lease.public_ip: b.name for lease, b in zip(leases, farm.bridges, strict=True)}
        want = {name_of[lease.public_ip]: len(compile_table(snap.config, snap.leases, snap.endpoints,
                lease.public_ip, None, snap.policies, snap.namespaces)) for lease in leases}  # fmt: skip
        t0 = time.monotonic()
        farm.set_controller(env.controller.target)
        reached = obs.wait_flow_count(want, timeout=300, interval=0.05)
        out["initial_sync_s"] = max(reached.values()) - t0
        out["stage_flows_per_node"] = summary([float(n) for n in want.values()])
        latencies, relabels = [], []
        gc.collect()
        gc.freeze()  # (what is set up is out of this process's collections while it times)
        # a pod no policy selects gets the labels of one that its namespace's policy selects
        base = stages(snap, leases, endpoints)
        isolated = {ip for table in base.values() for (_, ip) in table.isolated}
        free = [e for e in endpoints if e.ip not in isolated]
        for i in range(min(repeat, len(free)) if policies else 0):
            e = free[i * 7 % len(free)]
            k = int(e.pod.namespace[2:])  # bg{k} is in ns{k} and selects app=a{k}
            relabelled = Endpoint(e.node_subnet, e.ip, e.mac, e.ofport, e.port_name,
                                  PodIdentity(e.pod.namespace, e.pod.name, (("app", f"a{k % APPS}"),)))  # fmt: skip
            after = stages(snap, leases, [relabelled if x.ip == e.ip else x for x in endpoints])
            must = [name_of[lease.public_ip] for lease in leases
                    if set(after[lease.subnet].flows) != set(base[lease.subnet].flows)]  # fmt: skip
            lease = by_subnet[e.node_subnet]
            start = {name: obs.event_count(name) for name in must}
            t0 = time.monotonic()
            env.registry.put_endpoint(relabelled, lease)
            relabels.append(max(_policy_updates(obs, start).values()) - t0)
            start = {name: obs.event_count(name) for name in must}
            env.registry.put_endpoint(e, lease)
            _policy_updates(obs, start)  # back as before, everywhere, before the next
            time.sleep(gap)
        pids = {"controller": env.controller.pid, "switches": farm.switch_pids()[0],
                "etcd": env.etcd.pid, "bench": os.getpid()}  # fmt: skip
        news = [new_policy(i, spaces) for i in range(repeat)]
        cookies = [_rule_cookie(snap, leases[0], parse_policy(new)) for new in news]
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        for new, cookie in zip(news, cookies, strict=True):
            start = {name: obs.event_count(name) for name in want}
            t0 = time.monotonic()
            env.registry.put_policies([new])
            landed = obs.wait_events(start, lambda _e, k, c=cookie: k == c, 30)
            latencies.append(max(landed.values()) - t0)
            time.sleep(gap)
        out["cpu_ms_per_policy"] = {name: (cpu_seconds(pid) - cpu0[name]) * 1e3 / max(1, repeat)
                                    for name, pid in pids.items()}  # fmt: skip
    out["policy_to_every_switch_s"] = summary(latencies)
    out["label_to_every_switch_s"] = summary(relabels)
    return out


def stages(snap, leases: list[Lease], endpoints: list[Endpoint]) -> dict[IPv4Network, PolicyTable]:
    """Each node's policy stage with `endpoints` for pods, compiled from scratch."""
    peers: dict = {}
    return {lease.subnet: policy_table(snap.policies, snap.namespaces, endpoints,
                                       [e for e in endpoints if e.node_subnet == lease.subnet],
                                       lease.subnet, peers=peers) for lease in leases}  # fmt: skip


def _policy_updates(obs: FlowObserver, starts: dict[str, int]) -> dict[str, float]:
    """When each bridge `name` of `starts` first reported a policy flow's update from its
    event `starts[name]` on."""
    policy = {Owner.POLICY, Owner.POLICY_DROP}
    return obs.wait_events(starts, lambda _e, k: (o := owner_of(k)) is not None and o[0] in policy,
                           30)  # fmt: skip


def _rule_cookie(snap, lease: Lease, policy) -> int:
    """The cookie of the new policy's rule (its conj_id flow), as any switch computes it."""
    table = policy_table([*snap.policies, policy], snap.namespaces, snap.endpoints,
                         snap.endpoints_of(lease.subnet), lease.subnet)  # fmt: skip
    ids = [k for k, ref in table.rules.items() if ref.policy == policy.key_name]
    if not ids:
        raise RuntimeError(f"{policy.key_name} selects no pod of {lease.subnet}")
    return cookie_for(Owner.POLICY, ids[0])


@click.command()
@click.option("--switches", "-s", default=50, show_default=True, help="Switches (nodes).")
@click.option("--pods", default=1000, show_default=True, help="Pods, spread over the nodes.")
@click.option("--policies", default=100, show_default=True, help="Policies in place before.")
@click.option("--repeat", default=50, show_default=True, help="New policies (and relabels).")
@click.option("--gap", default=0.05, show_default=True, help="Seconds between changes.")
@click.option("--rule", default="100x100x5", show_default=True, metavar="PODSxPEERSxPORTS",
              help="The one rule whose flows per node are counted.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the JSON (default bench/results).")
def main(switches: int, pods: int, policies: int, repeat: int, gap: float, rule: str,
         results_dir: Path | None) -> None:  # fmt: skip
    """B10: a policy in etcd to its flows on every switch; flows per node of one rule.

    Needs root; runs in a network namespace of its own. Writes b10_policy.json."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    p, q, r = (int(x) for x in rule.split("x"))
    result = {"rule": {"pods": p, "peers": q, "ports": r, **rule_flows(p, q, r)},
              "run": measure(switches, pods, policies, repeat, gap)}  # fmt: skip
    path = report.save("b10_policy", MODULE, result, results_dir)
    run, lat, lab = result["run"], result["run"]["policy_to_every_switch_s"], result["run"]["label_to_every_switch_s"]
    click.echo(f"one rule {rule}: {result['rule']['rule_flows']} rule flows, "
               f"{result['rule']['stage_flows']} policy flows on the node (cross-product "
               f"{result['rule']['cross_product']})")  # fmt: skip
    click.echo(f"S={run['switches']} pods={run['pods']} policies={run['policies']}: policy to every "
               f"switch p50 {report.ms(lat['p50'])} p99 {report.ms(lat['p99'])}; label change to "
               f"every switch p50 {report.ms(lab['p50'])} p99 {report.ms(lab['p99'])}")  # fmt: skip
    click.echo("CPU ms per new policy: " + "  ".join(
        f"{k} {v:.1f}" for k, v in run["cpu_ms_per_policy"].items()))  # fmt: skip
    click.echo(f"results: {path}")


if __name__ == "__main__":
    rc = isolate(MODULE)
    sys.exit(main() if rc is None else rc)

