"""End to end: Kubernetes' network policy conformance matrix on an emulated vxflow cluster.

Upstream's layout (kubernetes test/e2e/network/netpol): namespaces x, y, z with
pods a, b, c each, over 3 nodes (node 1 holds x/a, y/a and z/a, ...), every pod
serving ports 80 and 81 over TCP and UDP (mininet/namesrv.py) and publishing
them as `serve-<port>-<protocol>`; a pod's identity is set on its OVS Interface
(external_ids vxflow-namespace/-pod/-labels/-ports) as vxflow-cni sets it. One
cluster serves the module. Each case (its steps, policies and expected tables
are tests/test_flows_policy_eval.py's, addresses translated to the leased ones)
is written to etcd, then the 72 pairs x 4 ports are probed with new connections,
each pod's probes at once, until the observed table is the expected one (the
controller applies a change within a moment) or 10 s have passed: then the
expected and observed tables and their difference are the failure. Before each
round of probes the policy conntrack zone is flushed, so a probe never rides on
an entry a probe of an earlier step left.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flows.flow import Table
from flows.policy import POLICY_ZONE, drop_cookie
from leases.policy import NAME_LABEL, policy_to_json
from leases.registry import Registry
from tests.emulation import emulated_cluster
from tests.ofharness import FUNCTIONAL_WAIT, VXFLOW
from tests.test_e2e_cluster import in_host
from tests.test_e2e_services import SERVICE_NETWORK, wait_programmed, wait_routed
from tests.test_e2e_trace import trace, walk
from tests.test_flows_policy_eval import CASES, COMBOS, IPS, PODS, SERVED, R, Step, report, table
from tests.test_flows_policy_eval import netpol as make_policy

pytestmark = pytest.mark.e2e

NAMESRV = str(Path(__file__).resolve().parents[1] / "mininet" / "namesrv.py")
PROBE_TIMEOUT = 1.0  # s: a denied probe costs this much
# s: how long a step may take to be enforced everywhere: the suite's bound for a loaded
# machine (each wait ends as soon as it holds; 10 s was crossed at load 12: 2 of 72 pairs)
SETTLE = FUNCTIONAL_WAIT
VIP = "198.20.0.80"


class Netpol:
    """The layout on a running cluster: servers, a prober per pod, and what is applied."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.pods = {}  # "x/a" -> mininet Pod
        self.node_of = {}
        for n, node in enumerate(cluster.vxflow_nodes):
            for ns, pod in zip("xyz", cluster.pods_of(node), strict=True):
                self.pods[f"{ns}/{'abc'[n]}"] = pod
                self.node_of[f"{ns}/{'abc'[n]}"] = node
        self.ips = {name: str(pod.addr) for name, pod in self.pods.items()}
        self.procs: list[subprocess.Popen] = []
        self.probers: dict[str, subprocess.Popen] = {}
        self.labels: dict[str, dict[str, str]] = {}
        self.ns_labels = {ns: {NAME_LABEL: ns} for ns in "xyz"}
        self.applied: set[str] = set()
        self.registry = Registry(cluster.etcd_endpoint, cluster.spec.prefix)

    def start(self) -> Netpol:
        for name, pod in self.pods.items():
            for port in (80, 81):
                server = in_host(pod, sys.executable, NAMESRV, "serve", name, str(port),
                                 stdout=subprocess.PIPE)  # fmt: skip
                self.procs.append(server)
                assert server.stdout.readline().strip() == "listening"
            prober = in_host(pod, sys.executable, NAMESRV, "probe", str(PROBE_TIMEOUT),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
            self.procs.append(prober)
            self.probers[name] = prober
            self.set_pod_labels(name, {"pod": name.split("/")[1]}, ports=True)
        for ns in "xyz":
            self.set_ns_labels(ns, {"ns": ns})
        deadline = time.monotonic() + 20
        while sum(e.pod is not None for e in self.registry.list_endpoints()) < len(self.pods):
            assert time.monotonic() < deadline, self.registry.list_endpoints()
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        self.registry.close()

    # -- what is applied ----------------------------------------------------------

    def set_pod_labels(self, name: str, labels: dict[str, str], ports: bool = False) -> None:
        if self.labels.get(name) == labels and not ports:
            return
        ns, pod = name.split("/")
        ids = [f"external_ids:vxflow-labels={json.dumps(json.dumps(labels))}"]
        if ports:
            ids += [f"external_ids:vxflow-namespace={ns}", f"external_ids:vxflow-pod={pod}",
                    "external_ids:vxflow-ports="
                    + json.dumps(json.dumps([p.to_dict() for p in SERVED]))]  # fmt: skip
        self.node_of[name].ovs.vsctl("set", "Interface", self.pods[name].name, *ids)
        self.labels[name] = labels

    def set_ns_labels(self, ns: str, labels: dict[str, str]) -> None:
        want = {NAME_LABEL: ns, **labels}
        if self.ns_labels[ns] == want:
            return
        gone = [f"{k}-" for k in self.ns_labels[ns] if k not in want]
        self.registry.label_namespace(ns, [*gone, *(f"{k}={v}" for k, v in labels.items())])
        self.ns_labels[ns] = want

    def translated(self, policy) -> dict:
        """The manifest with the table's literal pod addresses replaced by the leased ones."""
        by_literal = {str(ip): self.ips[name] for name, ip in IPS.items()}
        text = re.sub(r"198\.19\.\d+\.\d+(?=/32)", lambda m: by_literal[m.group(0)],
                      policy_to_json(policy))  # fmt: skip
        return json.loads(text)

    def apply(self, step: Step) -> None:
        for ns in "xyz":
            self.set_ns_labels(ns, {"ns": ns, **step.namespace_labels.get(ns, {})})
        for name in PODS:
            self.set_pod_labels(name, {"pod": name.split("/")[1], **step.pod_labels.get(name, {})})
        wanted = {p.key_name for p in step.policies}
        for key in sorted(self.applied - wanted):
            self.registry.delete_policy(*key.split("/"))
        if step.policies:
            self.registry.put_policies([self.translated(p) for p in step.policies])
        self.applied = wanted

    # -- what is observed ---------------------------------------------------------

    def flush(self) -> None:
        for node in self.cluster.vxflow_nodes:
            node.ovs.appctl("dpctl/flush-conntrack", f"zone={POLICY_ZONE}")

    def observe(self) -> dict[tuple[str, str, int, str], bool]:
        """Every pair and port probed with a new connection, each pod's probes at once."""

        def from_pod(src: str) -> dict:
            targets = [(dst, port, proto) for dst in PODS if dst != src for port, proto in COMBOS]
            line = " ".join(f"{self.ips[d]}:{port}/{proto.lower()}" for d, port, proto in targets)
            prober = self.probers[src]
            prober.stdin.write(line + "\n")
            prober.stdin.flush()
            answers = json.loads(prober.stdout.readline())
            return {(src, *t): ok for t, ok in zip(targets, answers, strict=True)}

        observed: dict = {}
        with ThreadPoolExecutor(len(PODS)) as pool:
            for part in pool.map(from_pod, PODS):
                observed.update(part)
        return observed

    def check(self, step: Step) -> str:
        """Apply `step`, probe until its tables hold; what still differs ('' when none)."""
        self.apply(step)
        deadline = time.monotonic() + SETTLE
        while True:
            self.flush()
            observed = self.observe()

            problems = report(step, _judge(observed))
            if not problems:
                return problems
            if time.monotonic() > deadline:
                return problems + self.diagnosis(step, observed)

    def diagnosis(self, step: Step, observed: dict) -> str:
        """For the first pair that differs: how the destination's switch differs from the
        flows etcd says it must hold (`vxflow flows diff`), and its policy stage as held."""
        for (src, dst, port, proto), ok in sorted(observed.items()):
            if ok == step.expect[port, proto].m[src, dst]:
                continue
            node = self.node_of[dst]
            diff = subprocess.run(
                [VXFLOW, "flows", "diff", "--node", str(node.underlay_ip), "--switch",
                 f"unix:{node.ovs.mgmt_socket('br-int')}", *self.cluster.etcd_flags()],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            return (f"\n\n{src} -> {dst} {port}/{proto}: {node.name}'s switch against etcd "
                    f"(exit {diff.returncode}):\n{diff.stdout}{diff.stderr}\n" + _stage(node))
        return ""


def _judge(observed: dict):
    def judge(src, dst, port: int, proto: str) -> bool:
        key = (f"{src.namespace}/{src.name}", f"{dst.namespace}/{dst.name}", port, proto)
        return observed.get(key, True)  # loopback is not probed

    return judge


@pytest.fixture(scope="module")
def netpol() -> Iterator[Netpol]:
    with emulated_cluster("np", nodes=3, pods=3) as cluster:
        layout = Netpol(cluster)
        try:
            yield layout.start()
        finally:
            layout.stop()


E2E_CASES = (
    "default-deny-ingress",
    "default-deny-all",
    "podSelector: allow traffic from pods within server namespace",
    "namespaceSelector: allow traffic only from a different namespace",
    "podSelector with matchExpressions",
    "podSelector OR namespaceSelector",
    "podSelector AND namespaceSelector",
    "ports",
    "ingress on one named port",
    "egress on one named port",
    "stacked policies with overlapping podSelectors",
    "ingress allow-all takes precedence",
    "egress allow-all takes precedence",
    "deny egress by podSelector",
    "egress denied on the client side even if the server allows it",
    "ingress and egress together",
    "ingress and egress controlled independently",
    "except clause of a CIDR block",
    "an IP in both a CIDR and its except",
    "UDP only: no access by TCP",
    "updated policy",
    "ingress from an updated namespace",
    "ingress from an updated pod",
    "policies deleted",
)


@pytest.mark.parametrize("case", E2E_CASES)
def test_upstream_netpol_case_on_the_cluster(netpol: Netpol, case: str) -> None:
    for i, step in enumerate(CASES[case], 1):
        problems = netpol.check(step)
        assert not problems, f"step {i} of {len(CASES[case])} of {case!r}:\n{problems}"


def test_a_node_reaches_its_isolated_pods(netpol: Netpol) -> None:
    """Kubelet's probes: traffic from a pod's own node is always allowed."""
    netpol.apply(CASES["default-deny-all"][0])
    node = netpol.node_of["x/a"]
    prober = in_host(node, sys.executable, NAMESRV, "probe", str(PROBE_TIMEOUT),
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + SETTLE
        while netpol.observe()[("y/a", "x/a", 80, "TCP")]:  # enforced: y/a is denied
            assert time.monotonic() < deadline
        out, _ = prober.communicate(f"{netpol.ips['x/a']}:80/tcp {netpol.ips['x/a']}:81/udp\n",
                                    timeout=10)  # fmt: skip
        assert json.loads(out) == [True, True]
    finally:
        if prober.poll() is None:
            prober.kill()
            prober.wait()


def test_a_service_is_judged_after_dnat(netpol: Netpol) -> None:
    """y/b behind a VIP: a client its policy allows reaches it through the VIP (and sees
    the VIP answer), one it denies does not."""
    netpol.registry.set_service_network(str(SERVICE_NETWORK))
    wait_routed(netpol.cluster)
    service = netpol.registry.put_service({
        "Name": "web", "VIP": VIP, "Ports": [{"Port": 8080, "Protocol": "TCP", "TargetPort": 80}],
        "Backends": [{"IP": netpol.ips["y/b"], "Weight": 1}]})  # fmt: skip
    wait_programmed(netpol.cluster, service)
    allow_x_a = make_policy("y", "b-from-x-a", {"matchLabels": {"pod": "b"}}, ingress=[{"from": [
        {"namespaceSelector": {"matchLabels": {NAME_LABEL: "x"}}, "podSelector": {"matchLabels": {"pod": "a"}}}]}])  # fmt: skip
    netpol.apply(Step([allow_x_a], {}))
    try:
        deadline = time.monotonic() + SETTLE
        while True:
            netpol.flush()
            seen = {src: _via_vip(netpol, src) for src in ("x/a", "z/c", "x/b")}
            if seen == {"x/a": f"y/b {netpol.ips['x/a']}", "z/c": None, "x/b": None}:
                break
            assert time.monotonic() < deadline, seen
    finally:
        netpol.registry.delete_service("web")


def _via_vip(netpol: Netpol, src: str) -> str | None:
    """The first line y/b answers `src` with through the VIP, or None (no answer)."""
    out = subprocess.run(
        ["mnexec", "-a", str(netpol.pods[src].pid), sys.executable, NAMESRV, "connect", VIP, "8080", "1"],
        capture_output=True, text=True, timeout=10,
    ).stdout  # fmt: skip
    answers = json.loads(out)["answers"]
    return next(iter(answers), None)


def test_an_allowed_connection_survives_an_unrelated_policy_change(netpol: Netpol) -> None:
    """A long-lived connection x/a -> y/b (allowed by y's policy) keeps echoing while an
    unrelated policy lands; and, as documented, also after a change that no longer allows
    it (only new connections are judged)."""
    allow = make_policy("y", "b-from-x", {"matchLabels": {"pod": "b"}}, ingress=[{"from": [
        {"namespaceSelector": {"matchLabels": {NAME_LABEL: "x"}}}]}])  # fmt: skip
    problems = netpol.check(Step([allow], _expect_only_x_to_yb()))
    assert not problems, problems
    hold = in_host(netpol.pods["x/a"], sys.executable, NAMESRV, "hold", netpol.ips["y/b"], "80",
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert hold.stdout.readline().strip() == f"y/b {netpol.ips['x/a']}"
        unrelated = make_policy("z", "deny-all", {}, ingress=[], egress=[])
        problems = netpol.check(Step([allow, unrelated], _expect_only_x_to_yb(z_isolated=True)))
        assert not problems, problems
        hold.stdin.write("still here\n")
        hold.stdin.flush()
        assert hold.stdout.readline().strip() == "still here"
        deny = make_policy("y", "b-from-x", {"matchLabels": {"pod": "b"}}, ingress=[])
        netpol.apply(Step([deny], {}))
        deadline = time.monotonic() + SETTLE
        while netpol.observe()[("x/c", "y/b", 80, "TCP")]:  # a new connection is denied now
            assert time.monotonic() < deadline
        hold.stdin.write("and after\n")
        hold.stdin.flush()
        assert hold.stdout.readline().strip() == "and after"
    finally:
        hold.kill()
        hold.wait()


def _expect_only_x_to_yb(z_isolated: bool = False) -> dict:
    r = R().deny("*", "y/b").allow("x/*", "y/b")
    if z_isolated:
        r = r.deny("*", "z/*").deny("z/*", "*")
    return table(r)


def test_trace_names_the_rule_that_allows_and_the_isolation_that_drops(netpol: Netpol) -> None:
    step = CASES["podSelector: allow traffic from pods within server namespace"][0]
    problems = netpol.check(step)
    assert not problems, problems
    cluster, ips = netpol.cluster, netpol.ips
    tcp80 = ("--protocol", "tcp", "--dport", "80")
    rc, doc = walk(cluster, ips["x/b"], ips["x/a"], *tcp80)
    assert rc == 0, doc
    assert "allowed by ingress rule 0 of policy x/x-a-allows-x-b" in doc["hops"][-1]["detail"]
    rc, doc = walk(cluster, ips["y/b"], ips["x/a"], *tcp80)
    assert rc == 1 and doc["hops"][-1]["result"] == "dropped", doc
    assert doc["hops"][-1]["detail"] == ("network policy: ingress of pod x/a is isolated by "
                                         "x/x-a-allows-x-b, and no rule of them allows this "
                                         "connection")  # fmt: skip
    text = trace(cluster, ips["y/b"], ips["x/a"], *tcp80).stdout
    assert "(network policy: ingress of pod x/a is isolated by x/x-a-allows-x-b" in text


def test_a_policy_written_behind_vxflows_back_is_rejected_listed_and_yields_no_flow(netpol: Netpol) -> None:
    """Labels that are not strings, in a value put straight into etcd: `vxflow status` lists
    the rejection, and no switch holds a policy flow for it."""
    netpol.apply(Step([], {}))
    bad = make_policy("x", "bad", {"matchLabels": {"pod": "a"}}, ingress=[])
    value = json.loads(policy_to_json(bad))
    value["spec"]["podSelector"]["matchLabels"]["pod"] = 7
    key = netpol.registry.keys.policy("x", "bad")
    netpol.registry.etcd.put(key, json.dumps(value))
    try:
        res = subprocess.run([VXFLOW, "status", "-o", "json", *netpol.cluster.etcd_flags()],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        rejected = [r for r in json.loads(res.stdout)["rejected"] if r["key"] == key]
        assert res.returncode == 1 and len(rejected) == 1, res.stdout
        assert "is not a string" in rejected[0]["detail"]
        # a valid policy written after it (z's pods isolated) marks when the bad one would
        # have been applied: once z/a's drop is on its switch, x/a must have none
        netpol.apply(Step([make_policy("z", "deny", {}, ingress=[])], {}))
        node = netpol.node_of["z/a"]
        deadline = time.monotonic() + SETTLE
        while f"cookie={drop_cookie(netpol.pods['z/a'].addr):#x}," not in (held := _stage(node)):
            assert time.monotonic() < deadline, held
        assert f"cookie={drop_cookie(netpol.pods['x/a'].addr):#x}," not in held
        assert f"cookie={drop_cookie(netpol.pods['x/b'].addr):#x}," not in _stage(netpol.node_of["x/b"])
    finally:
        netpol.registry.etcd.delete(key)


def _stage(node) -> str:
    return "".join(node.ovs.ofctl("-O", "OpenFlow14", "dump-flows", "br-int", f"table={t}")
                   for t in (Table.POL_EGRESS, Table.POL_INGRESS))  # fmt: skip
