"""The CNI plugin's pure logic: environment, versions, configuration, results, errors."""

from __future__ import annotations

import dataclasses
import json
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

import pytest

from cni import attachments
from cni.config import delegate_ipam, ipam_request, parse_netconf, pod_mtu
from cni.plugin import pod_ids
from cni.spec import (
    SUPPORTED_VERSIONS,
    CniError,
    ErrorCode,
    Interface,
    IPConfig,
    Result,
    Route,
    check_version,
    parse_error,
    parse_invocation,
    parse_result,
    render_result,
    version_result,
)
from leases.subnet_env import SubnetEnv, parse_subnet_env

ENV = SubnetEnv(IPv4Network("198.19.0.0/16"), IPv4Interface("198.19.5.1/24"), 1450, False)
ADD_ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "c0ffee",
    "CNI_NETNS": "/var/run/netns/pod",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/usr/lib/cni:/opt/cni/bin",
}


def conf(**extra) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "vxnet", "type": "vxflow", **extra}).encode()


def code_of(fn, *args) -> int:
    with pytest.raises(CniError) as info:
        fn(*args)
    return info.value.code


# -- environment ---------------------------------------------------------------
def test_invocation_reads_every_variable() -> None:
    inv = parse_invocation({**ADD_ENV, "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web"})
    assert (inv.command, inv.container_id, inv.netns, inv.ifname) == (
        "ADD", "c0ffee", "/var/run/netns/pod", "eth0",
    )  # fmt: skip
    assert inv.args == (("IgnoreUnknown", "1"), ("K8S_POD_NAME", "web"))
    assert inv.path == ("/usr/lib/cni", "/opt/cni/bin")


@pytest.mark.parametrize("missing", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"])
def test_add_names_the_missing_variable(missing: str) -> None:
    env = {k: v for k, v in ADD_ENV.items() if k != missing}
    with pytest.raises(CniError) as info:
        parse_invocation(env)
    assert info.value.code == ErrorCode.INVALID_ENVIRONMENT == 4
    assert missing in info.value.msg


def test_del_needs_no_netns_and_version_needs_nothing() -> None:
    env = {k: v for k, v in ADD_ENV.items() if k != "CNI_NETNS"}
    assert parse_invocation({**env, "CNI_COMMAND": "DEL"}).netns == ""
    assert parse_invocation({"CNI_COMMAND": "VERSION"}).command == "VERSION"
    assert parse_invocation({"CNI_COMMAND": "STATUS"}).command == "STATUS"
    assert code_of(parse_invocation, {"CNI_COMMAND": "GC"}) == 4  # GC needs CNI_PATH


@pytest.mark.parametrize(
    "env",
    [
        {"CNI_COMMAND": "ATTACH"},
        {},
        {**ADD_ENV, "CNI_CONTAINERID": "-bad"},
        {**ADD_ENV, "CNI_CONTAINERID": "a/b"},
        {**ADD_ENV, "CNI_IFNAME": "a-name-of-16-chr"},
        {**ADD_ENV, "CNI_IFNAME": "eth/0"},
        {**ADD_ENV, "CNI_IFNAME": ".."},
        {**ADD_ENV, "CNI_ARGS": "novalue"},
        {**ADD_ENV, "CNI_NETNS": "/var/run/netns/a b"},
        {**ADD_ENV, "CNI_NETNS": "netns/pod"},  # finding 9: relative
    ],
)
def test_invalid_environment_is_code_4(env: dict) -> None:
    assert code_of(parse_invocation, env) == 4


# -- versions ------------------------------------------------------------------
def test_version_answer_echoes_the_asked_version() -> None:
    assert version_result(b'{"cniVersion": "0.4.0"}') == {
        "cniVersion": "0.4.0",
        "supportedVersions": list(SUPPORTED_VERSIONS),
    }
    assert version_result(b"")["cniVersion"] == "1.1.0"
    assert {"0.4.0", "1.0.0"} <= set(SUPPORTED_VERSIONS)  # podman writes 0.4.0; libcni reads 1.0.0
    assert code_of(version_result, b"{not json") == ErrorCode.DECODING_FAILURE


@pytest.mark.parametrize("version", ["0.2.0", "2.0.0", "1.0", "x", "0.1.0"])
def test_unsupported_versions_are_code_1(version: str) -> None:
    assert code_of(check_version, version, "ADD") == ErrorCode.INCOMPATIBLE_VERSION


def test_commands_need_the_version_that_introduced_them() -> None:
    assert code_of(check_version, "0.3.1", "CHECK") == 1
    check_version("0.4.0", "CHECK")
    assert code_of(check_version, "1.0.0", "STATUS") == 1
    assert code_of(check_version, "1.0.0", "GC") == 1
    check_version("1.1.0", "GC")


def test_missing_cni_version_is_read_as_010_and_refused() -> None:
    data = json.dumps({"name": "vxnet", "type": "vxflow"}).encode()
    assert code_of(parse_netconf, data, "ADD") == 1


# -- configuration ---------------------------------------------------------------
def test_defaults_are_the_nodes() -> None:
    c = parse_netconf(conf(), "ADD")
    assert (c.ovsdb, c.bridge, c.subnet_file, c.data_dir) == (
        "unix:/var/run/openvswitch/db.sock", "br-int", Path("/run/flannel/subnet.env"),
        Path("/var/lib/cni/vxflow"),
    )  # fmt: skip
    assert c.ipam is None and c.prev_result is None and pod_mtu(c, ENV) == 1450


def test_options_are_read() -> None:
    c = parse_netconf(
        conf(ovsdb="unix:/x/db.sock", bridge="br-x", subnetFile="/x/subnet.env",
             dataDir="/x/data", mtu=1400),
        "ADD",
    )  # fmt: skip
    assert (c.ovsdb, c.bridge, str(c.subnet_file), str(c.data_dir), pod_mtu(c, ENV)) == (
        "unix:/x/db.sock", "br-x", "/x/subnet.env", "/x/data", 1400,
    )  # fmt: skip


@pytest.mark.parametrize(
    "data, code",
    [
        (b"{", 6),
        (b"[]", 6),
        (conf(cniVersion=1), 6),
        (conf(name="-x"), 7),
        (conf(name=None), 7),
        (conf(bridge=5), 7),
        (conf(mtu=20), 7),
        (conf(mtu="1450"), 7),
        (conf(isDefaultGateway="yes"), 7),
        (conf(ipam=[]), 7),
        (conf(ipam={"type": 3}), 7),
        (conf(prevResult={"ips": [{"address": "nonsense"}]}), 6),
        (conf(args=[]), 7),
        (conf(args={"cni": []}), 7),
        (conf(args={"cni": {"labels": {"app": "web"}}}), 7),  # a list of {key, value}
        (conf(args={"cni": {"labels": [{"key": "app", "value": 1}]}}), 7),
        (conf(args={"cni": {"labels": [["app", "web"]]}}), 7),
        (conf(args={"cni": {"labels": [{"key": "a", "value": "1"}, {"key": "a", "value": "2"}]}}),
         7),
    ],
)
def test_bad_configurations_get_their_codes(data: bytes, code: int) -> None:
    assert code_of(parse_netconf, data, "ADD") == code


def test_labels_come_from_args_cni_labels_for_add_only() -> None:
    labels = [{"key": "app", "value": "web"}, {"key": "tier", "value": ""}]
    data = conf(args={"cni": {"labels": labels, "ips": ["198.19.5.9"]}, "other": {}})
    assert parse_netconf(data, "ADD").labels == (("app", "web"), ("tier", ""))
    assert parse_netconf(data, "DEL").labels == ()  # DEL does not judge what ADD used
    assert parse_netconf(conf(), "ADD").labels == ()


@pytest.mark.parametrize(
    "args, labels, ids",
    [
        ("", (), {}),  # nobody named the pod (ctr run --cni passes IgnoreUnknown=1 alone)
        ("IgnoreUnknown=1", (), {}),
        ("IgnoreUnknown=1;K8S_POD_NAME=db", (), {  # podman: the container's name only
            "vxflow-namespace": "default", "vxflow-pod": "db", "vxflow-labels": "{}"}),
        ("K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=c0ffee",
         (("app", "web"),), {"vxflow-namespace": "shop", "vxflow-pod": "web-0",
                             "vxflow-labels": '{"app":"web"}'}),
        ("K8S_POD_NAMESPACE=;K8S_POD_NAME=a.b", (), {  # empty: as absent
            "vxflow-namespace": "default", "vxflow-pod": "a.b", "vxflow-labels": "{}"}),
        ("IgnoreUnknown=1;K8S_POD_NAME=Happy_Turing", (), {  # podman's container name
            "vxflow-namespace": "default", "vxflow-pod": "happy-turing", "vxflow-labels": "{}"}),
    ],
)  # fmt: skip
def test_the_pod_is_named_from_cni_args(args: str, labels: tuple, ids: dict) -> None:
    inv = parse_invocation({**ADD_ENV, "CNI_ARGS": args})
    assert pod_ids(inv, dataclasses.replace(parse_netconf(conf(), "ADD"), labels=labels)) == ids


@pytest.mark.parametrize(
    "args, labels, code, text",
    [
        ("K8S_POD_NAME=web_", (), 4, "K8S_POD_NAME is not a Kubernetes name"),
        ("K8S_POD_NAME=a..b", (), 4, "K8S_POD_NAME is not a Kubernetes name"),
        ("K8S_POD_NAMESPACE=a.b;K8S_POD_NAME=web", (), 4, "K8S_POD_NAMESPACE is not"),
        ("K8S_POD_NAMESPACE=shop", (), 4, "K8S_POD_NAMESPACE=shop without CNI_ARGS K8S_POD_NAME"),
        ("", (("app", "web"),), 7, "args.cni.labels without CNI_ARGS K8S_POD_NAME"),
        ("K8S_POD_NAME=web", (("app", "two words"),), 7, "invalid args.cni.labels"),
        ("K8S_POD_NAME=web", (("-app", "web"),), 7, "invalid args.cni.labels"),
    ],
)  # fmt: skip
def test_an_identity_kubernetes_would_refuse_is_an_error(args: str, labels: tuple, code: int,
                                                         text: str) -> None:  # fmt: skip
    inv = parse_invocation({**ADD_ENV, "CNI_ARGS": args})
    netconf = dataclasses.replace(parse_netconf(conf(), "ADD"), labels=labels)
    with pytest.raises(CniError) as info:
        pod_ids(inv, netconf)
    assert info.value.code == code and text in str(info.value), info.value


def test_ipam_is_completed_as_flannel_does() -> None:
    """getDelegateIPAM: host-local, the node's subnet as the only range, a route to Network."""
    c = parse_netconf(conf(), "ADD")
    assert delegate_ipam(c, ENV) == {
        "type": "host-local",
        "ranges": [[{"subnet": "198.19.5.0/24"}]],
        "routes": [{"dst": "198.19.0.0/16"}],
    }
    request = ipam_request(c, delegate_ipam(c, ENV))
    assert request["name"] == "vxnet" and request["type"] == "vxflow"
    assert request["ipam"]["ranges"] == [[{"subnet": "198.19.5.0/24"}]]
    assert request["cniVersion"] == "1.0.0"
    newer = parse_netconf(conf(cniVersion="1.1.0"), "ADD")
    assert ipam_request(newer, delegate_ipam(newer, ENV))["cniVersion"] == "1.0.0"
    older = parse_netconf(conf(cniVersion="0.4.0"), "ADD")
    assert ipam_request(older, delegate_ipam(older, ENV))["cniVersion"] == "0.4.0"


def test_ipam_type_and_extra_routes_are_honoured() -> None:
    c = parse_netconf(
        conf(ipam={"type": "static", "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "/x",
                   "ranges": [[{"subnet": "10.0.0.0/8"}]]}),
        "ADD",
    )  # fmt: skip
    ipam = delegate_ipam(c, ENV)
    assert ipam["type"] == "static" and ipam["dataDir"] == "/x"
    assert ipam["ranges"] == [[{"subnet": "198.19.5.0/24"}]]  # subnet.env wins, as in flannel
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "198.19.0.0/16"}]
    assert c.ipam["routes"] == [{"dst": "0.0.0.0/0"}]  # the configuration itself is untouched


def test_gc_reads_valid_attachments() -> None:
    data = conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": [
        {"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "net1"}]})
    assert parse_netconf(data, "GC").valid_attachments == {("a", "eth0"), ("b", "net1")}
    bad = conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"ifname": "eth0"}]})
    assert code_of(parse_netconf, bad, "GC") == 7
    bad = conf(cniVersion="1.1.0", **{"cni.dev/attachments": {"containerID": "a"}})
    assert code_of(parse_netconf, bad, "GC") == 7


def test_gc_reads_both_key_names_as_their_union_and_null_as_none() -> None:
    """Finding 1: the spec's tag says `cni.dev/attachments`, libcni 1.2.0-1.2.2 send only
    `cni.dev/valid-attachments`, 1.2.3 both; a nil slice arrives as null."""
    a, b = {"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "eth0"}

    def valid(**lists):
        return parse_netconf(conf(cniVersion="1.1.0", **lists), "GC").valid_attachments

    assert valid(**{"cni.dev/attachments": [a]}) == {("a", "eth0")}
    assert valid(**{"cni.dev/valid-attachments": [a]}) == {("a", "eth0")}
    both = valid(**{"cni.dev/attachments": [a], "cni.dev/valid-attachments": [b]})
    assert both == {("a", "eth0"), ("b", "eth0")}
    assert valid(**{"cni.dev/attachments": None, "cni.dev/valid-attachments": None}) == set()
    assert valid(**{"cni.dev/valid-attachments": None, "cni.dev/attachments": [a]}) == {
        ("a", "eth0")
    }
    assert valid() is None  # no list at all: not "nothing is valid"


# -- subnet.env ----------------------------------------------------------------
def test_subnet_env_needs_network_subnet_and_mtu() -> None:
    text = "FLANNEL_NETWORK=198.19.0.0/16\nFLANNEL_SUBNET=198.19.5.1/24\nFLANNEL_MTU=1450\n"
    assert parse_subnet_env(text) == ENV  # FLANNEL_IPMASQ absent: false
    with pytest.raises(ValueError, match="missing FLANNEL_SUBNET, FLANNEL_MTU"):
        parse_subnet_env("FLANNEL_NETWORK=198.19.0.0/16\n")
    with pytest.raises(ValueError, match="malformed"):
        parse_subnet_env(text.replace("1450", "big"))


# -- results -------------------------------------------------------------------
RESULT = Result(
    interfaces=(
        Interface("vx0123456789a", "0a:58:c6:13:05:01"),
        Interface("eth0", "0a:58:c6:13:05:02", "/var/run/netns/pod", 1450),
    ),
    ips=(IPConfig(IPv4Interface("198.19.5.2/24"), IPv4Address("198.19.5.1"), 1),),
    routes=(Route(IPv4Network("198.19.0.0/16")),),
    dns={"nameservers": ["198.19.0.10"]},
)


def test_result_1_0_0() -> None:
    assert render_result(RESULT, "1.0.0") == {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "vx0123456789a", "mac": "0a:58:c6:13:05:01"},
            {"name": "eth0", "mac": "0a:58:c6:13:05:02", "sandbox": "/var/run/netns/pod"},
        ],
        "ips": [{"address": "198.19.5.2/24", "gateway": "198.19.5.1", "interface": 1}],
        "routes": [{"dst": "198.19.0.0/16"}],
        "dns": {"nameservers": ["198.19.0.10"]},
    }


def test_result_0_4_0_has_ip_versions_and_1_1_0_has_mtu() -> None:
    legacy = render_result(RESULT, "0.4.0")
    assert legacy["ips"] == [
        {"version": "4", "address": "198.19.5.2/24", "gateway": "198.19.5.1", "interface": 1}
    ]
    assert render_result(RESULT, "1.1.0")["interfaces"][1]["mtu"] == 1450


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_results_read_back_in_every_version(version: str) -> None:
    back = parse_result(render_result(RESULT, version))
    expected = RESULT if version == "1.1.0" else RESULT.with_interfaces(
        tuple(Interface(i.name, i.mac, i.sandbox) for i in RESULT.interfaces), 1
    )  # fmt: skip
    assert back == expected


def test_ipam_result_is_attached_to_the_container_interface() -> None:
    ipam = parse_result({"cniVersion": "1.0.0", "ips": [{"address": "198.19.5.9/24",
                         "gateway": "198.19.5.1"}], "routes": [{"dst": "198.19.0.0/16"}]})  # fmt: skip
    attached = ipam.with_interfaces(RESULT.interfaces, 1)
    assert attached.ips[0].interface == 1 and attached.interfaces == RESULT.interfaces


def test_error_json_and_delegate_errors() -> None:
    err = CniError(ErrorCode.TRY_AGAIN_LATER, "subnet.env not there yet", "/run/flannel/subnet.env")
    assert err.to_json("1.0.0") == {
        "cniVersion": "1.0.0", "code": 11, "msg": "subnet.env not there yet",
        "details": "/run/flannel/subnet.env",
    }  # fmt: skip
    assert "details" not in CniError(7, "bad").to_json("1.0.0")
    passed = parse_error({"cniVersion": "1.0.0", "code": 2, "msg": "no ranges", "details": "x"})
    assert passed is not None and (passed.code, passed.msg, passed.details) == (2, "no ranges", "x")
    assert parse_error({"cniVersion": "1.0.0", "ips": []}) is None


# -- attachment records ------------------------------------------------------------
def test_host_ifname_is_stable_short_and_distinct() -> None:
    a = attachments.host_ifname("c0ffee", "eth0")
    assert a == attachments.host_ifname("c0ffee", "eth0") and len(a) == 13 and a.startswith("vx")
    assert a != attachments.host_ifname("c0ffee", "net1")
    assert a != attachments.host_ifname("c0ffef", "eth0")


def test_attachment_records_round_trip(tmp_path: Path) -> None:
    record = attachments.Attachment("c1", "eth0", "/var/run/netns/p", "vx1", {"name": "n"})
    path = attachments.save(tmp_path, "vxnet", record)
    assert path.stat().st_mode & 0o777 == 0o600
    assert attachments.load(tmp_path, "vxnet", "c1", "eth0") == record
    assert list(attachments.recorded(tmp_path, "vxnet")) == [record]
    assert list(attachments.recorded(tmp_path, "other")) == []
    attachments.remove(tmp_path, "vxnet", "c1", "eth0")
    attachments.remove(tmp_path, "vxnet", "c1", "eth0")  # idempotent
    assert attachments.load(tmp_path, "vxnet", "c1", "eth0") is None


def test_record_names_are_unambiguous(tmp_path: Path) -> None:
    """Finding 2: `<containerID>-<ifname>.json` was one file for x-net1/eth0 and x/net1-eth0."""
    a = attachments.Attachment("x-net1", "eth0", "/n/a", "vxa", {"name": "a"})
    b = attachments.Attachment("x", "net1-eth0", "/n/b", "vxb", {"name": "b"})
    odd = attachments.Attachment("y", "e%1", "/n/c", "vxc", {"name": "c"})
    paths = {attachments.save(tmp_path, "vxnet", r) for r in (a, b, odd)}
    assert len(paths) == 3
    assert sorted(attachments.identities(p)[0] for p in paths) == [
        ("x", "net1-eth0"), ("x-net1", "eth0"), ("y", "e%1"),
    ]  # fmt: skip
    assert attachments.load(tmp_path, "vxnet", "x", "net1-eth0") == b
    def listed() -> list[attachments.Attachment]:
        return sorted(attachments.recorded(tmp_path, "vxnet"), key=lambda r: r.host_ifname)

    assert listed() == [a, b, odd]
    attachments.remove(tmp_path, "vxnet", "x", "net1-eth0")
    assert listed() == [a, odd]
    # a plain container id and ifname keep the name they always had
    assert attachments.save(tmp_path, "vxnet", attachments.Attachment(
        "c1", "eth0", "", "", {})).name == "c1-eth0.json"  # fmt: skip


def test_records_of_the_earlier_naming_are_read_and_removed(tmp_path: Path) -> None:
    old = attachments.Attachment("a-b", "eth0", "/n/a", "vxa", {"name": "a"})
    folder = tmp_path / "vxnet"
    folder.mkdir()
    (folder / "a-b-eth0.json").write_text(json.dumps(dataclasses.asdict(old)))
    assert attachments.load(tmp_path, "vxnet", "a-b", "eth0") == old
    assert attachments.load(tmp_path, "vxnet", "a", "b-eth0") is None  # not its content
    attachments.remove(tmp_path, "vxnet", "a", "b-eth0")  # not its own: stays
    assert list(attachments.recorded(tmp_path, "vxnet")) == [old]
    attachments.remove(tmp_path, "vxnet", "a-b", "eth0")
    assert list(attachments.recorded(tmp_path, "vxnet")) == []


def test_unreadable_records_are_reported_and_still_listed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "vxnet"
    folder.mkdir()
    (folder / "torn-eth0.json").write_text("{")
    (folder / "p-q-eth0.json").write_text("")  # an earlier, ambiguous name: every reading
    listed = {(r.container_id, r.ifname) for r in attachments.recorded(tmp_path, "vxnet")}
    assert listed == {("torn", "eth0"), ("p", "q-eth0"), ("p-q", "eth0")}
    assert "unreadable attachment record" in caplog.text and "torn-eth0.json" in caplog.text
    assert attachments.load(tmp_path, "vxnet", "torn", "eth0") is None
    attachments.remove(tmp_path, "vxnet", "torn", "eth0")
    attachments.remove(tmp_path, "vxnet", "p", "q-eth0")
    assert list(folder.iterdir()) == []


def test_a_chained_result_is_appended_to_prev_result() -> None:
    prev = Result(interfaces=(Interface("lo"),), ips=(), routes=(Route(IPv4Network("0.0.0.0/0")),))
    merged = RESULT.after(prev)
    assert [i.name for i in merged.interfaces] == ["lo", "vx0123456789a", "eth0"]
    assert merged.ips[0].interface == 2  # still the container's eth0
    assert merged.routes == (Route(IPv4Network("0.0.0.0/0")), Route(IPv4Network("198.19.0.0/16")))


def test_a_dual_stack_prev_result_is_read_whole() -> None:
    """Both families are read (which ones a node routes, the plugin judges: CHECK)."""
    dual = {"ips": [{"address": "198.19.5.2/24"}, {"address": "fd00::2/64", "gateway": "fd00::1"}],
            "routes": [{"dst": "fd00::/48"}]}  # fmt: skip
    prev = parse_netconf(conf(prevResult=dual), "CHECK").prev_result
    assert [str(i.address) for i in prev.ips] == ["198.19.5.2/24", "fd00::2/64"]
    assert (str(prev.ips[1].gateway), str(prev.routes[0].dst)) == ("fd00::1", "fd00::/48")
    assert render_result(prev, "0.4.0")["ips"][1]["version"] == "6"


def test_del_ignores_the_prev_result_it_does_not_use() -> None:
    """Finding 6: DEL, GC and STATUS do not read prevResult, so none of it can fail them."""
    bad = {"ips": [{"address": "198.19.5.2/24"}, {"address": "nonsense"}]}
    for command in ("DEL", "GC", "STATUS"):
        data = conf(cniVersion="1.1.0", prevResult=bad)
        assert parse_netconf(data, command).prev_result is None
    assert code_of(parse_netconf, conf(prevResult=bad), "CHECK") == 6
