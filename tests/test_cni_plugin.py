"""`vxflow-cni` driven directly, as the spec's test tools drive a plugin, on a real OVS and netns.

The node is an emulated one (tests/emulation.py) whose br-int `vxflow
bootstrap` made; the plugin runs inside the node's namespace with the
CNI_* environment and a conflist entry on stdin, delegating IPAM to
Debian's host-local. Each failure below is a real one (a missing file, an
exhausted range, a taken interface name, an unroutable gateway, a stopped
ovs-vswitchd), injected at one step of ADD; afterwards nothing of the
attachment may be left: no port, no veth, no address, no record.
"""

from __future__ import annotations

import json
import os
import subprocess
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from cni.attachments import host_ifname
from tests.cni_node import CNI_PATH, VXFLOW_CNI, CniNode, Libcni, bootstrapped
from tests.emulation import Underlay

pytestmark = pytest.mark.integration


@pytest.fixture
def cni(underlay: Underlay, tmp_path: Path) -> CniNode:
    return bootstrapped(underlay, tmp_path)


def test_add_check_del_del(cni: CniNode) -> None:
    before = cni.state()
    netns = cni.container("c1")
    code, result, err = cni.plugin("ADD", "c1", netns)
    assert code == 0, (result, err)
    host = host_ifname("c1", "eth0")
    assert result == {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": host, "mac": result["interfaces"][0]["mac"]},
            {"name": "eth0", "mac": "0a:58:c6:13:07:02", "sandbox": netns},
        ],
        "ips": [{"address": "198.19.7.2/24", "gateway": "198.19.7.1", "interface": 1}],
        "routes": [{"dst": "198.19.0.0/16"}],
    }
    # the port, as the agent reads it
    ids = cni.node.ovs.vsctl("get", "Interface", host, "external_ids")
    for pair in ('attached-mac="0a:58:c6:13:07:02"', 'vxflow-ip="198.19.7.2"',
                 "container_id=c1", "container_iface=eth0"):  # fmt: skip
        assert pair in ids, ids
    assert int(cni.node.ovs.vsctl("get", "Interface", host, "ofport")) >= 3
    # the container's end
    inside = subprocess.run(["nsenter", f"--net={netns}", "ip", "-d", "addr", "show", "eth0"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "link/ether 0a:58:c6:13:07:02" in inside and "mtu 1450" in inside
    assert "inet 198.19.7.2/24" in inside and "state UP" in inside
    routes = subprocess.run(["nsenter", f"--net={netns}", "ip", "route"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "198.19.0.0/16 via 198.19.7.1 dev eth0" in routes
    offload = subprocess.run(["nsenter", f"--net={netns}", "ethtool", "-k", "eth0"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "tx-checksumming: off" in offload  # netdev bridge: the userspace datapath needs it
    assert cni.allocations() == ["198.19.7.2"] and len(cni.records()) == 1

    conf = {**cni.conf(), "prevResult": result}
    code, out, err = cni.plugin("CHECK", "c1", netns, conf=conf)
    assert (code, out) == (0, None), err

    code, out, err = cni.plugin("DEL", "c1", netns, conf=conf)
    assert (code, out) == (0, None), err
    assert cni.state() == before
    assert cni.links(netns) == {"lo"}
    code, out, err = cni.plugin("DEL", "c1", netns, conf=conf)  # again: still success
    assert (code, out) == (0, None), err
    assert cni.state() == before


def test_check_reports_what_changed(cni: CniNode) -> None:
    netns = cni.container("c2")
    code, result, err = cni.plugin("ADD", "c2", netns)
    assert code == 0, err
    conf = {**cni.conf(), "prevResult": result}
    subprocess.run(["nsenter", f"--net={netns}", "ip", "route", "del", "198.19.0.0/16"],
                   check=True)  # fmt: skip
    code, out, _ = cni.plugin("CHECK", "c2", netns, conf=conf)
    assert code == 1 and out["code"] == 102, out
    assert f"{netns} lacks route 198.19.0.0/16" in out["details"]
    cni.node.ovs.vsctl("del-port", "br-int", host_ifname("c2", "eth0"))
    code, out, _ = cni.plugin("CHECK", "c2", netns, conf=conf)
    assert "is not on br-int" in out["details"], out
    old = {**conf, "cniVersion": "0.3.1", "prevResult": result}
    code, out, _ = cni.plugin("CHECK", "c2", netns, conf=old)
    assert (code, out["code"]) == (1, 1), out  # CHECK came with 0.4.0
    assert cni.plugin("DEL", "c2", netns)[0] == 0


def test_version_and_0_4_0_results(cni: CniNode) -> None:
    env = {**os.environ, "CNI_COMMAND": "VERSION"}
    res = subprocess.run([VXFLOW_CNI], input='{"cniVersion": "0.4.0"}', env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert json.loads(res.stdout)["supportedVersions"][-2:] == ["1.0.0", "1.1.0"]
    cni.cni_version = "0.4.0"  # what podman 4 writes
    netns = cni.container("c3")
    conf = cni.conf(isDefaultGateway=True)  # kube-flannel's setting: the default route too
    code, result, err = cni.plugin("ADD", "c3", netns, conf=conf)
    assert code == 0, err
    assert result["cniVersion"] == "0.4.0" and result["ips"][0]["version"] == "4"
    assert result["routes"] == [{"dst": "198.19.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "198.19.7.1"}]
    routes = subprocess.run(["nsenter", f"--net={netns}", "ip", "route"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "default via 198.19.7.1 dev eth0" in routes
    assert cni.plugin("CHECK", "c3", netns, conf={**conf, "prevResult": result})[0] == 0
    assert cni.plugin("DEL", "c3", netns, conf=conf)[0] == 0


def test_del_is_idempotent_for_gone_netns_port_and_container(cni: CniNode) -> None:
    before = cni.state()
    netns = cni.container("c4")
    assert cni.plugin("ADD", "c4", netns)[0] == 0
    cni.node.ovs.vsctl("del-port", "br-int", host_ifname("c4", "eth0"))  # the port went
    cni.underlay.del_netns(Path(netns).name)  # and the netns
    code, out, err = cni.plugin("DEL", "c4", netns)
    assert (code, out) == (0, None), err
    assert cni.state() == before
    code, out, err = cni.plugin("DEL", "never-added", "")  # no CNI_NETNS: allowed for DEL
    assert (code, out) == (0, None), err


def assert_failed_cleanly(cni: CniNode, before: dict, got: tuple, code: int, text: str) -> None:
    status, out, err = got
    assert status == 1 and out is not None, (out, err)
    assert out["code"] == code, out
    assert text in out["msg"] + out.get("details", ""), out
    assert cni.state() == before


def test_failures_leave_nothing_behind(cni: CniNode) -> None:
    first = cni.container("c5")
    code, kept, err = cni.plugin("ADD", "keep", first)  # the failures must not touch it
    assert code == 0, err
    before = cni.state()
    netns = cni.container("c6")

    # before anything: no subnet.env yet (the agent has not written it): try again later
    cni.subnet_file.rename(cni.workdir / "away")
    assert_failed_cleanly(cni, before, cni.plugin("ADD", "c6", netns), 11, "does not exist yet")
    (cni.workdir / "away").rename(cni.subnet_file)
    # OVSDB unreachable: try again later
    conf = {**cni.conf(), "ovsdb": f"unix:{cni.workdir}/nothing.sock"}
    assert_failed_cleanly(cni, before, cni.plugin("ADD", "c6", netns, conf=conf), 11,
                          "OVSDB is not reachable")  # fmt: skip
    # the attachment cannot be recorded (dataDir is a file)
    (cni.workdir / "a-file").write_text("")
    conf = {**cni.conf(), "dataDir": str(cni.workdir / "a-file")}
    assert_failed_cleanly(cni, before, cni.plugin("ADD", "c6", netns, conf=conf), 5,
                          "cannot record")  # fmt: skip
    # the IPAM plugin does not exist
    conf = cni.conf(ipam={"type": "no-such-ipam"})
    assert_failed_cleanly(cni, before, cni.plugin("ADD", "c6", netns, conf=conf), 7,
                          "not found")  # fmt: skip
    # the container has an eth0 already: the address is released again
    subprocess.run(["nsenter", f"--net={netns}", "ip", "link", "add", "eth0", "type", "veth",
                    "peer", "name", "eth0p"],
                   check=True)  # fmt: skip
    assert_failed_cleanly(cni, before, cni.plugin("ADD", "c6", netns), 100, "exists already")
    subprocess.run(["nsenter", f"--net={netns}", "ip", "link", "del", "eth0"], check=True)
    # a route the kernel refuses (its gateway is off-link): the veth goes, the address too
    conf = cni.conf(ipam={"routes": [{"dst": "203.0.113.0/24", "gw": "192.0.2.1"}]})
    assert_failed_cleanly(cni, before, cni.plugin("ADD", "c6", netns, conf=conf), 101,
                          "veth pair")  # fmt: skip
    assert cni.links(netns) == {"lo"}
    # ovs-vswitchd is down: the port never gets an ofport
    cni.node.ovs.stop_process("ovs-vswitchd")
    try:
        assert_failed_cleanly(cni, before, cni.plugin("ADD", "c6", netns), 101,
                              "assigned no ofport")  # fmt: skip
    finally:
        cni.node.ovs.start_vswitchd()
    assert cni.links(netns) == {"lo"}
    # the range is exhausted: a /30 holds one pod address besides the gateway
    cni.write_subnet_env(IPv4Network("198.19.7.4/30"))
    other = cni.container("c7")
    assert cni.plugin("ADD", "c7", other)[0] == 0
    taken = cni.state()
    status, out, _ = cni.plugin("ADD", "c6", netns)
    assert status == 1 and "no IP addresses available" in out["msg"] + out.get("details", ""), out
    assert cni.state() == taken
    assert cni.plugin("DEL", "c7", other)[0] == 0
    assert cni.state() == before
    # and the healthy attachment is intact
    cni.write_subnet_env()
    assert cni.plugin("CHECK", "keep", first, conf={**cni.conf(), "prevResult": kept})[0] == 0
    assert cni.plugin("DEL", "keep", first)[0] == 0


def test_status_and_gc(cni: CniNode) -> None:
    cni.cni_version = "1.1.0"  # STATUS and GC came with 1.1.0
    before = cni.state()
    env = {**os.environ, "CNI_PATH": CNI_PATH}

    def call(command: str, conf: dict) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", cni.node.netns, VXFLOW_CNI], input=json.dumps(conf),
            env={**env, "CNI_COMMAND": command}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    assert call("STATUS", cni.conf()).returncode == 0
    down = call("STATUS", {**cni.conf(), "subnetFile": str(cni.workdir / "none.env")})
    assert down.returncode == 1 and json.loads(down.stdout)["code"] == 50, down.stdout
    kept, stale = cni.container("c8"), cni.container("c9")
    assert cni.plugin("ADD", "kept", kept)[0] == 0
    assert cni.plugin("ADD", "stale", stale)[0] == 0
    valid = {"cni.dev/valid-attachments": [{"containerID": "kept", "ifname": "eth0"}]}
    res = call("GC", {**cni.conf(), **valid})
    assert (res.returncode, res.stdout) == (0, ""), res.stdout + res.stderr
    assert cni.pod_ports() == [host_ifname("kept", "eth0")]
    assert cni.allocations() == ["198.19.7.2"] and len(cni.records()) == 1
    assert cni.plugin("DEL", "kept", kept)[0] == 0
    assert cni.state() == before


def test_another_ipam_type_is_honoured(cni: CniNode) -> None:
    """The conflist's IPAM type is called (here Debian's `static`), completed as flannel does."""
    before = cni.state()
    netns = cni.container("c10")
    conf = cni.conf(ipam={"type": "static",
                          "addresses": [{"address": "198.19.7.50/24", "gateway": "198.19.7.1"}]})  # fmt: skip
    code, result, err = cni.plugin("ADD", "c10", netns, conf=conf)
    assert code == 0, err
    assert result["ips"] == [{"address": "198.19.7.50/24", "gateway": "198.19.7.1", "interface": 1}]
    assert result["routes"] == [{"dst": "198.19.0.0/16"}]  # flannel's route to the Network
    ids = cni.node.ovs.vsctl("get", "Interface", host_ifname("c10", "eth0"), "external_ids")
    assert 'vxflow-ip="198.19.7.50"' in ids and 'attached-mac="0a:58:c6:13:07:32"' in ids
    assert cni.plugin("CHECK", "c10", netns, conf={**conf, "prevResult": result})[0] == 0
    assert cni.plugin("DEL", "c10", netns, conf=conf)[0] == 0
    assert cni.state() == before
    # an address outside the node's subnet is refused: the agent would never publish it
    conf = cni.conf(ipam={"type": "static", "addresses": [{"address": "198.19.8.5/24"}]})
    status, out, _ = cni.plugin("ADD", "c10", netns, conf=conf)
    assert (status, out["code"]) == (1, 7) and "not a pod address" in out["msg"], out
    assert cni.state() == before


def test_gc_keeps_every_listed_attachment_whichever_key_names_the_list(cni: CniNode) -> None:
    """Finding 1. The runtime's list of attachments in use comes as `cni.dev/attachments`
    (the spec 1.1.0 tag), `cni.dev/valid-attachments` (libcni 1.2.0-1.2.2), both (libcni
    1.2.3+), or null (libcni's nil slice): a listed pod survives each; without either key
    GC deletes nothing at all."""
    cni.cni_version = "1.1.0"
    before = cni.state()
    kept_ns = cni.container("gk")
    code, kept, err = cni.plugin("ADD", "kept", kept_ns)
    assert code == 0, err
    kept_conf = {**cni.conf(), "prevResult": kept}
    listed = [{"containerID": "kept", "ifname": "eth0"}]
    forms = {
        "attachments": {"cni.dev/attachments": listed},
        "valid-attachments": {"cni.dev/valid-attachments": listed},
        "both": {"cni.dev/attachments": listed, "cni.dev/valid-attachments": listed},
        "null beside a list": {"cni.dev/valid-attachments": None, "cni.dev/attachments": listed},
    }
    for n, (what, lists) in enumerate(forms.items()):
        stale_ns = cni.container(f"gs{n}")
        code, _, err = cni.plugin("ADD", "stale", stale_ns)
        assert code == 0, err
        code, out, err = cni.plugin("GC", "", conf={**cni.conf(), **lists})
        assert (code, out) == (0, None), (what, out, err)
        assert cni.plugin("CHECK", "kept", kept_ns, conf=kept_conf)[:2] == (0, None), what
        assert cni.pod_ports() == [host_ifname("kept", "eth0")], what
        assert cni.allocations() == [kept["ips"][0]["address"].split("/")[0]], what
        assert len(cni.records()) == 1 and cni.links(stale_ns) == {"lo"}, what
    # neither key: nothing says what is in use, so nothing is collected, and GC says why
    stale_ns = cni.container("gsneither")
    assert cni.plugin("ADD", "stale", stale_ns)[0] == 0
    during = cni.state()
    code, out, err = cni.plugin("GC", "", conf=cni.conf())
    assert (code, out) == (0, None), err
    assert "lists no attachments" in err and "deleting nothing" in err, err
    assert cni.state() == during and len(cni.pod_ports()) == 2
    assert cni.plugin("CHECK", "kept", kept_ns, conf=kept_conf)[:2] == (0, None)
    # null alone (libcni 1.2.3 with a nil list): none is in use, both go
    nothing = {"cni.dev/valid-attachments": None, "cni.dev/attachments": None}
    code, out, err = cni.plugin("GC", "", conf={**cni.conf(), **nothing})
    assert (code, out) == (0, None), err
    assert cni.state() == before


def test_del_keeps_the_address_while_the_port_may_claim_it(cni: CniNode) -> None:
    """Finding 3: with OVSDB unreachable DEL cannot remove the port, so it keeps the address
    (host-local would hand it to the next pod while the port still claims it) and the
    record, answers "try again later", and the retry completes. Finding 6: DEL ignores the
    prevResult it does not use, here one with an IPv6 address."""
    before = cni.state()
    netns = cni.container("d3")
    code, result, err = cni.plugin("ADD", "d3", netns)
    assert code == 0, err
    address = result["ips"][0]["address"].split("/")[0]
    cni.node.ovs.stop_ovsdb_server()
    try:
        code, out, _ = cni.plugin("DEL", "d3", netns, conf={**cni.conf(), "prevResult": result})
        assert (code, out["code"]) == (1, 11), out
        assert cni.allocations() == [address] and len(cni.records()) == 1
    finally:
        cni.node.ovs.start_ovsdb_server()
    assert cni.pod_ports() == [host_ifname("d3", "eth0")]  # still there, still claiming it
    dual = {**result, "ips": [*result["ips"], {"address": "fd00::2/64", "interface": 1}]}
    conf = {**cni.conf(), "prevResult": dual}
    code, out, err = cni.plugin("DEL", "d3", netns, conf=conf)
    assert (code, out) == (0, None), err
    assert cni.state() == before
    assert cni.plugin("DEL", "d3", netns, conf=conf)[:2] == (0, None)  # idempotent


def test_record_names_are_unambiguous_and_unreadable_records_are_collected(cni: CniNode) -> None:
    """Finding 2: `x-net1`/eth0 and `x`/`net1-eth0` were both `x-net1-eth0.json` (the second
    ADD overwrote the first's record, and GC leaked its port and address); an unreadable
    record was skipped by GC, leaking what it stood for."""
    cni.cni_version = "1.1.0"
    before = cni.state()
    first, second = cni.container("r1"), cni.container("r2")
    assert cni.plugin("ADD", "x-net1", first)[0] == 0
    assert cni.plugin("ADD", "x", second, ifname="net1-eth0")[0] == 0
    assert len(cni.records()) == 2 and len(cni.allocations()) == 2
    third = cni.container("r3")
    code, _, err = cni.plugin("ADD", "torn", third)
    assert code == 0, err
    (record,) = (cni.data_dir / "vxnet").glob("torn-*.json")
    record.write_text("{")  # torn (or foreign): unreadable
    none = {"cni.dev/attachments": None, "cni.dev/valid-attachments": None}
    code, out, err = cni.plugin("GC", "", conf={**cni.conf(), **none})
    assert (code, out) == (0, None), err
    assert f"unreadable attachment record {record}" in err, err
    assert cni.state() == before
    assert cni.links(first) == cni.links(second) == cni.links(third) == {"lo"}


def test_an_address_claimed_by_another_port_is_refused_at_add(cni: CniNode) -> None:
    """Finding 8: two IPAM configurations that do not know of each other (here host-local
    and a static address; or host-local data in two mount namespaces) hand out one address:
    the second ADD is refused, before the agent would drop both endpoints."""
    netns = cni.container("a8")
    code, result, err = cni.plugin("ADD", "a8", netns)
    assert code == 0, err
    taken = result["ips"][0]["address"]
    during = cni.state()
    other = cni.container("b8")
    conf = cni.conf(ipam={"type": "static", "addresses": [{"address": taken}]})
    status, out, _ = cni.plugin("ADD", "b8", other, conf=conf)
    assert (status, out["code"]) == (1, 103), out
    assert f"vxflow-ip {taken.split('/')[0]} is claimed by port {host_ifname('a8', 'eth0')}" in (
        out["details"]
    )
    assert cni.state() == during and cni.links(other) == {"lo"}
    conf = {**cni.conf(), "prevResult": result}
    assert cni.plugin("CHECK", "a8", netns, conf=conf)[:2] == (0, None)
    assert cni.plugin("DEL", "a8", netns)[0] == 0


def test_check_allows_for_a_later_chained_plugin(cni: CniNode) -> None:
    """Finding 4: CHECK compared the MTU with the configuration, so `tuning {"mtu": 1400}`
    after vxflow failed every CHECK (spec: "The plugin must allow for a later chained plugin
    to have modified networking resources"). A route in prevResult that another plugin made,
    over another device, is checked by its destination as the reference plugins do."""
    before = cni.state()
    netns = cni.container("k4")
    chain = Libcni(cni, [cni.conf(), {"type": "tuning", "mtu": 1400}])
    code, result, err = chain.add("k4", netns)
    assert code == 0, err
    assert "mtu 1400" in subprocess.run(["nsenter", f"--net={netns}", "ip", "link", "show",
                                         "eth0"], capture_output=True, text=True).stdout  # fmt: skip
    assert chain.check("k4", netns)[:2] == (0, None)
    subprocess.run(["nsenter", f"--net={netns}", "ip", "route", "add", "203.0.113.0/24",
                    "dev", "lo"], check=True)  # fmt: skip
    chain.cached["k4", "eth0"] = {**result, "routes": [*result["routes"],
                                                       {"dst": "203.0.113.0/24"}]}  # fmt: skip
    assert chain.check("k4", netns)[:2] == (0, None)
    code, out, _ = cni.plugin("CHECK", "k4", netns, conf={**cni.conf(), "prevResult": {
        **result, "routes": [*result["routes"], {"dst": "192.0.2.0/24"}]}})  # fmt: skip
    assert (code, out["code"]) == (1, 102) and "lacks route 192.0.2.0/24" in out["details"], out
    assert chain.delete("k4", netns)[:2] == (0, None)
    assert cni.state() == before


def test_status_checks_what_add_needs(cni: CniNode, tmp_path: Path) -> None:
    """Finding 7: STATUS without CNI_PATH (optional for it) said the IPAM plugin was missing;
    with ovs-vswitchd stopped it answered 0 while ADD then failed after 10 s."""
    cni.cni_version = "1.1.0"
    cni.cni_path = ""
    assert cni.plugin("STATUS", "")[:2] == (0, None)
    cni.cni_path = str(tmp_path)  # a CNI_PATH without host-local: ADD could not get an address
    code, out, _ = cni.plugin("STATUS", "")
    assert (code, out["code"]) == (1, 50) and "not found" in out["msg"], out
    cni.cni_path = CNI_PATH
    assert cni.plugin("STATUS", "")[:2] == (0, None)
    cni.node.ovs.stop_process("ovs-vswitchd")
    try:
        code, out, _ = cni.plugin("STATUS", "")
        assert (code, out["code"]) == (1, 50) and "ovs-vswitchd is not serving" in out["msg"], out
    finally:
        cni.node.ovs.start_vswitchd()
    assert cni.plugin("STATUS", "")[:2] == (0, None)


def test_netns_is_validated_as_upstream_pkg_ns_does(cni: CniNode, tmp_path: Path) -> None:
    """Finding 9: a regular file as CNI_NETNS got through to IPAM before failing; a relative
    path meant one thing to the agent and another to `ip`. Both are refused up front."""
    before = cni.state()
    regular = tmp_path / "not-a-netns"
    regular.write_text("")
    cni.cni_path = f"{marked_ipam(tmp_path)}:{CNI_PATH}"
    conf = cni.conf(ipam={"type": "marked-ipam"})
    for netns, text in ((str(regular), "unknown FS magic"), ("/nonexistent/ns", "statfs"),
                        ("netns/pod", "absolute path")):  # fmt: skip
        for command in ("ADD", "CHECK"):
            checked = {**conf, "prevResult": {"cniVersion": "1.0.0"}}
            code, out, _ = cni.plugin(command, "n9", netns, conf=conf if command == "ADD"
                                      else checked)  # fmt: skip
            assert (code, out["code"]) == (1, 4), (netns, out)
            assert text in out["msg"] + out.get("details", ""), out
    assert not (tmp_path / "ipam-called").exists()  # IPAM was never reached
    assert cni.state() == before
    netns = cni.container("n9")  # a namespace: IPAM is called (the mark above means something)
    assert cni.plugin("ADD", "n9", netns, conf=conf)[0] == 0
    assert (tmp_path / "ipam-called").exists()
    assert cni.plugin("DEL", "n9", netns, conf=conf)[0] == 0
    assert cni.state() == before


def marked_ipam(tmp_path: Path) -> Path:
    """A folder with `marked-ipam`: host-local that leaves a mark when it is called."""
    folder = tmp_path / "marked"
    folder.mkdir()
    script = folder / "marked-ipam"
    script.write_text(f"#!/bin/sh\ntouch {tmp_path}/ipam-called\nexec {CNI_PATH}/host-local\n")
    script.chmod(0o755)
    return folder


def test_a_second_interface_of_one_container_is_refused_up_front(cni: CniNode) -> None:
    """Finding 5: a second attachment into one container failed late (`route add`, EEXIST),
    blaming the veth. vxflow refuses it before any step, and says why."""
    netns = cni.container("m5")
    assert cni.plugin("ADD", "m5", netns)[0] == 0
    during = cni.state()
    code, out, _ = cni.plugin("ADD", "m5", netns, ifname="net1")
    assert (code, out["code"]) == (1, 100), out
    assert out["msg"] == ("container m5 is attached to br-int already (as eth0); "
                          "vxflow gives a container one interface"), out  # fmt: skip
    assert "spoof guard" in out["details"], out
    assert cni.state() == during and cni.links(netns) == {"lo", "eth0"}
    assert cni.plugin("DEL", "m5", netns)[0] == 0
    assert cni.plugin("ADD", "m5", netns, ifname="net1")[0] == 0  # the one interface it has
    assert cni.plugin("DEL", "m5", netns, ifname="net1")[0] == 0


def test_add_names_the_pod_on_its_port_and_refuses_a_bad_name_before_any_step(cni: CniNode) -> None:
    """The identity network policy selects: CNI_ARGS as kubelet passes them, the labels from
    the configuration's args.cni.labels; one Kubernetes would refuse fails the ADD whole."""
    netns = cni.container("id1")
    labelled = cni.conf(args={"cni": {"labels": [{"key": "app", "value": "web"}]}})
    code, _, err = cni.plugin("ADD", "id1", netns, conf=labelled,
                              args="IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0")  # fmt: skip
    assert code == 0, err
    ids = cni.external_ids(host_ifname("id1", "eth0"))
    assert {k: ids[k] for k in ("vxflow-namespace", "vxflow-pod", "vxflow-labels", "vxflow-ip")} == {
        "vxflow-namespace": "shop", "vxflow-pod": "web-0", "vxflow-labels": '{"app":"web"}',
        "vxflow-ip": "198.19.7.2"}  # fmt: skip
    before = cni.state()
    other = cni.container("id2")
    for args, conf, code, text in (
        ("IgnoreUnknown=1;K8S_POD_NAME=web_", None, 4, "is not a Kubernetes name"),
        ("K8S_POD_NAMESPACE=shop", None, 4, "without CNI_ARGS K8S_POD_NAME"),
        ("", labelled, 7, "args.cni.labels without CNI_ARGS K8S_POD_NAME"),
        ("K8S_POD_NAME=db", cni.conf(args={"cni": {"labels": [{"key": "app", "value": "a b"}]}}),
         7, "invalid args.cni.labels"),
        ("K8S_POD_NAME=db", cni.conf(args={"cni": {"labels": {"app": "web"}}}), 7,
         "args.cni.labels must be a list"),
    ):  # fmt: skip
        assert_failed_cleanly(cni, before, cni.plugin("ADD", "id2", other, conf=conf, args=args),
                              code, text)  # fmt: skip
    assert cni.links(other) == {"lo"}
    code, _, err = cni.plugin("ADD", "id2", other, args="IgnoreUnknown=1;K8S_POD_NAME=db")
    assert code == 0, err  # podman's: the container's name, in the default namespace
    ids = cni.external_ids(host_ifname("id2", "eth0"))
    assert (ids["vxflow-namespace"], ids["vxflow-pod"], ids["vxflow-labels"]) == (
        "default", "db", "{}"), ids
    assert cni.plugin("DEL", "id2", other)[0] == 0
    assert cni.plugin("DEL", "id1", netns)[0] == 0
