"""vxflow-cni driven with exactly what runtimes send: libcni 1.1/1.2.x, containerd's go-cni, podman.

Each shape below is recorded with where it comes from; `tests.cni_node.Libcni`
builds the stdin and environment the way libcni does (see its docstring), and
the runtimes differ in what they hand libcni: versions, CNI_ARGS, capability
arguments, the netns path, chained plugins, and whether DEL still has a netns.
Every flow ends with nothing of the attachment left on the node.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cni.attachments import host_ifname
from tests.cni_node import CniNode, Libcni, bootstrapped
from tests.emulation import Underlay

pytestmark = pytest.mark.integration

# libcni invoke.GetVersionInfo (pkg/invoke/exec.go, v1.1.2 and v1.2.x): stdin
# {"cniVersion": version.Current()}, env from &Args{Command: "VERSION", NetNS: "dummy",
# IfName: "dummy", Path: "dummy"} ("fake values required by plugins built against an
# older version of skel"): a relative CNI_NETNS that must not be refused.
LIBCNI_VERSION_ENV = {"CNI_COMMAND": "VERSION", "CNI_CONTAINERID": "", "CNI_NETNS": "dummy",
                      "CNI_ARGS": "", "CNI_IFNAME": "dummy", "CNI_PATH": "dummy"}  # fmt: skip

# containerd's CRI plugin labels every sandbox's CNI call (toCNILabels) and go-cni turns
# the labels into libcni's RuntimeConf.Args (namespace.go, config(): a map, in no fixed
# order); its netns is /var/run/netns/cni-<uuid>, its interface go-cni's "eth" + index.
CONTAINERD_ARGS = ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;IgnoreUnknown=1;"
                   "K8S_POD_INFRA_CONTAINER_ID={cid};K8S_POD_UID=5c1e9f0a-1b2c-4d3e-8f90-a1b2c3d4e5f6")  # fmt: skip
# go-cni's WithCapabilityPortMap, WithCapabilityBandWidth, WithCapabilityDNS and
# WithCapabilityCgroupPath, as containerd's CRI sets them for a pod: libcni passes a
# plugin (in runtimeConfig) only those its conflist entry declares in "capabilities".
CONTAINERD_CAPABILITIES = {
    "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}],
    "bandwidth": {"ingressRate": 0, "ingressBurst": 0, "egressRate": 0, "egressBurst": 0},
    "dns": {"servers": ["198.19.0.10"], "searches": ["default.svc.cluster.local"],
            "options": ["ndots:5"]},
    "cgroupPath": "/kubepods/besteffort/pod5c1e9f0a",
}  # fmt: skip

# podman 4's CNI backend (containers/common libnetwork/cni/run.go, getRuntimeConfig):
# Args IgnoreUnknown=1 and K8S_POD_NAME=<container name> (no other K8S_ variables,
# containers/podman#12083), its networks are written with cniVersion 0.4.0, its netns is
# /run/netns/netns-<uuid>, and its teardown may DEL with an empty netns path ("some
# plugins still need teardown, for example ipam should remove used ip allocations").
PODMAN_ARGS = "IgnoreUnknown=1;K8S_POD_NAME={name}"


@pytest.fixture
def cni(underlay: Underlay, tmp_path: Path) -> CniNode:
    return bootstrapped(underlay, tmp_path)


def run_with(cni: CniNode, env: dict[str, str], stdin: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", cni.node.netns, cni.exe], input=stdin,
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip


def test_libcni_version_probe(cni: CniNode) -> None:
    for asked in ("1.0.0", "1.1.0"):  # version.Current() of libcni 1.1.x, 1.2.x
        res = run_with(cni, LIBCNI_VERSION_ENV, json.dumps({"cniVersion": asked}))
        assert res.returncode == 0, res.stdout + res.stderr
        answer = json.loads(res.stdout)
        assert answer["cniVersion"] == asked and asked in answer["supportedVersions"]


def test_containerd_go_cni_chained_add_check_del(cni: CniNode) -> None:
    """containerd 1.6/1.7 (go-cni on libcni 1.1.x, spec 1.0.0): a conflist of vxflow and
    tuning, vxflow declaring portMappings so that it gets a runtimeConfig it ignores;
    StopPodSandbox's DEL may come twice."""
    before = cni.state()
    netns = cni.container("cni-5c1e9f0a")
    vxflow = {**cni.conf(), "capabilities": {"portMappings": True}}
    runtime = Libcni(cni, [vxflow, {"type": "tuning", "sysctl": {}}], "1.0.0", (1, 1, 2),
                     capability_args=CONTAINERD_CAPABILITIES)  # fmt: skip
    cid = "3f2b7c9d1e0a"
    args = CONTAINERD_ARGS.format(cid=cid)
    code, result, err = runtime.add(cid, netns, "eth0", args)
    assert code == 0, (result, err)
    host = host_ifname(cid, "eth0")
    address = result["ips"][0]["address"]
    assert result == {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": host, "mac": result["interfaces"][0]["mac"]},
            {"name": "eth0", "mac": result["interfaces"][1]["mac"], "sandbox": netns},
        ],
        "ips": [{"address": address, "gateway": "198.19.7.1", "interface": 1}],
        "routes": [{"dst": "198.19.0.0/16"}],
        "dns": {},  # Debian's tuning (the last plugin) renders the empty DNS object
    }
    assert cni.pod_ports() == [host]
    ids = cni.external_ids(host)  # the pod, named
    assert (ids["vxflow-namespace"], ids["vxflow-pod"]) == ("default", "web-0"), ids
    assert runtime.check(cid, netns, "eth0", args)[:2] == (0, None)
    assert runtime.delete(cid, netns, "eth0", args)[:2] == (0, None)
    runtime.cached[cid, "eth0"] = result  # a retried StopPodSandbox: DEL again, same shape
    assert runtime.delete(cid, netns, "eth0", args)[:2] == (0, None)
    assert cni.state() == before and cni.links(netns) == {"lo"}


def test_podman_4_add_check_and_del_after_the_container_stopped(cni: CniNode) -> None:
    """podman 4 (libcni 1.1.x, conflist cniVersion 0.4.0, chained with tuning as its
    default networks are): DEL after the container stopped comes with CNI_NETNS empty."""
    cni.cni_version = "0.4.0"
    before = cni.state()
    netns = cni.container("netns-8d2f0c4e")
    runtime = Libcni(cni, [cni.conf(), {"type": "tuning"}], "0.4.0", (1, 1, 2))
    cid = "9a8b7c6d5e4f3a2b1c0d"
    args = PODMAN_ARGS.format(name="web")
    code, result, err = runtime.add(cid, netns, "eth0", args)
    assert code == 0, (result, err)
    assert result["cniVersion"] == "0.4.0" and result["ips"][0]["version"] == "4", result
    assert result["interfaces"][1] == {"name": "eth0", "mac": result["interfaces"][1]["mac"],
                                       "sandbox": netns}  # fmt: skip
    ids = cni.external_ids(host_ifname(cid, "eth0"))
    assert (ids["vxflow-namespace"], ids["vxflow-pod"]) == ("default", "web"), ids  # none given
    assert runtime.check(cid, netns, "eth0", args)[:2] == (0, None)
    cni.underlay.del_netns(Path(netns).name)  # the container stopped
    assert runtime.delete(cid, "", "eth0", args)[:2] == (0, None)
    assert cni.state() == before


def test_libcni_1_2_status_and_gc(cni: CniNode) -> None:
    """libcni 1.2.x at spec 1.1.0 (containerd 2.x, podman 5's CNI users): STATUS and GC
    with every CNI_* but CNI_COMMAND and CNI_PATH empty; GC's list under the key each
    release uses, and with nil GCArgs (no list: nothing may be collected)."""
    cni.cni_version = "1.1.0"
    before = cni.state()
    old = Libcni(cni, [cni.conf()], "1.1.0", (1, 2, 0))
    new = Libcni(cni, [cni.conf()], "1.1.0", (1, 2, 3))
    assert new.status()[:2] == (0, None)
    live_ns = cni.container("g-live")
    code, live, err = new.add("live", live_ns)
    assert code == 0, err
    assert live["interfaces"][1]["mtu"] == 1450  # 1.1.0 results carry the MTU
    for n, (runtime, nil_args) in enumerate(((old, False), (new, True), (new, False))):
        stale_ns = cni.container(f"g-stale{n}")
        assert runtime.add(f"stale{n}", stale_ns)[0] == 0
        code, out, err = runtime.gc([("live", "eth0")], nil_args=nil_args)
        assert (code, out) == (0, None), err
        kept = {host_ifname("live", "eth0")} | ({host_ifname(f"stale{n}", "eth0")}
                                                if nil_args else set())  # fmt: skip
        assert set(cni.pod_ports()) == kept, (runtime.release, nil_args)
        assert new.check("live", live_ns)[:2] == (0, None)
        if nil_args:
            assert "deleting nothing" in err
            assert new.delete(f"stale{n}", stale_ns)[:2] == (0, None)
    assert new.gc(None)[:2] == (0, None)  # a nil list: none is in use
    assert cni.state() == before
