"""Pure logic of ovsdb/: desired bridge state, the pod-port convention, sysconfig parsing."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)

import pytest

from flows.ports import (
    GATEWAY_OFPORT,
    GATEWAY_PORT,
    TUNNEL6_OFPORT,
    TUNNEL6_PORT,
    TUNNEL_OFPORT,
    TUNNEL_PORT,
    gateway_mac,
)
from leases.model import BackendConfig, FamilyConfig, Lease, NetworkConfig
from ovsdb.bootstrap import BootstrapOptions, desired_state
from ovsdb.pods import PodPort, endpoints_from_ports
from ovsdb.sysconfig import SysconfigError, parse_sysconfig

NET = NetworkConfig(network=IPv4Network("198.19.0.0/16"), backend=BackendConfig(vni=3, port=4789))
LEASE = Lease(IPv4Network("198.19.8.0/24"), IPv4Address("198.18.0.8"), 3, "0e:76:c6:12:00:08")
NETDEV = BootstrapOptions(datapath_type="netdev")


def test_desired_state_shape() -> None:
    state = desired_state(NET, LEASE, ("tcp:127.0.0.1:6653", "tcp:127.0.0.1:6653"), NETDEV)
    assert (state.name, state.datapath_type, state.fail_mode) == ("br-int", "netdev", "secure")
    assert state.protocols == ("OpenFlow13", "OpenFlow14")
    assert state.controllers == ("tcp:127.0.0.1:6653",)
    assert dict(state.other_config) == {
        "datapath-id": "76780000c6120008",
        "disable-in-band": "true",
    }
    ports = {p.name: p for p in state.ports}
    tunnel, gateway = ports[TUNNEL_PORT], ports[GATEWAY_PORT]
    assert tunnel.ofport_request == TUNNEL_OFPORT and tunnel.type == "vxlan"
    assert dict(tunnel.options) == {
        "remote_ip": "flow", "key": "flow", "dst_port": "4789", "local_ip": "198.18.0.8",
    }  # fmt: skip
    assert gateway.ofport_request == GATEWAY_OFPORT and gateway.type == "internal"
    assert gateway.mac == gateway_mac(LEASE.subnet) and gateway.mtu_request == 1450
    assert state.gateway.address == IPv4Interface("198.19.8.1/24")
    assert state.gateway.route == IPv4Network("198.19.0.0/16")


def test_desired_state_mtu_key_and_validation() -> None:
    pinned = NetworkConfig(
        network=NET.network, backend=BackendConfig(vni=3, port=8472, mtu=1400)
    )  # fmt: skip
    state = desired_state(pinned, LEASE, ("tcp:127.0.0.1:6653",),
                          BootstrapOptions(datapath_type="system", tunnel_key="vni",
                                           underlay_mtu=9000))  # fmt: skip
    assert state.gateway.mtu == 1400  # Backend.MTU wins over the underlay's
    assert dict(next(p for p in state.ports if p.name == TUNNEL_PORT).options)["key"] == "3"
    jumbo = desired_state(NET, LEASE, ("tcp:127.0.0.1:6653",),
                          BootstrapOptions(datapath_type="netdev", underlay_mtu=9000))  # fmt: skip
    assert jumbo.gateway.mtu == 8950
    with pytest.raises(ValueError, match="resolved"):
        desired_state(NET, LEASE, ("tcp:127.0.0.1:6653",), BootstrapOptions())
    outside = Lease(IPv4Network("10.0.0.0/24"), LEASE.public_ip, 3, LEASE.vtep_mac)
    with pytest.raises(ValueError, match="outside Network"):
        desired_state(NET, outside, ("tcp:127.0.0.1:6653",), NETDEV)
    with pytest.raises(ValueError, match="controller"):
        desired_state(NET, LEASE, (), NETDEV)


def pod(name: str, ofport: int | None, **ids: str) -> PodPort:
    return PodPort(name, ofport, tuple(sorted(ids.items())))


def test_pod_ports_to_endpoints_and_rejections() -> None:
    ports = [
        pod("ok", 5, **{"attached-mac": "0A-58-00-00-00-05", "vxflow-ip": "198.19.8.5"}),
        pod("notpod", 6, other="x"),
        pod("pending", None, **{"attached-mac": "0a:58:00:00:00:07", "vxflow-ip": "198.19.8.7"}),
        pod("nomac", 8, **{"vxflow-ip": "198.19.8.8"}),
        pod("mcast", 9, **{"attached-mac": "01:00:5e:00:00:01", "vxflow-ip": "198.19.8.9"}),
        pod("gw", 10, **{"attached-mac": "0a:58:00:00:00:0a", "vxflow-ip": "198.19.8.1"}),
        pod("far", 11, **{"attached-mac": "0a:58:00:00:00:0b", "vxflow-ip": "198.19.9.11"}),
        pod("v6", 12, **{"attached-mac": "0a:58:00:00:00:0c", "vxflow-ip": "fe80::1"}),
        pod("dup1", 13, **{"attached-mac": "0a:58:00:00:00:0d", "vxflow-ip": "198.19.8.13"}),
        pod("dup2", 14, **{"attached-mac": "0a:58:00:00:00:0e", "vxflow-ip": "198.19.8.13"}),
    ]
    endpoints, rejected = endpoints_from_ports(ports, LEASE)
    assert list(endpoints) == [IPv4Address("198.19.8.5")]
    ep = endpoints[IPv4Address("198.19.8.5")]
    assert (ep.mac, ep.ofport, ep.port_name, ep.node_subnet) == (
        "0a:58:00:00:00:05", 5, "ok", LEASE.subnet,
    )  # fmt: skip
    reasons = {r.port: r.reason for r in rejected}
    assert set(reasons) == {"nomac", "mcast", "gw", "far", "v6", "dup1", "dup2"}
    assert "attached-mac is missing" in reasons["nomac"]
    assert "multicast" in reasons["mcast"]
    assert "gateway" in reasons["gw"]
    assert "outside this node's subnet" in reasons["far"]
    assert "not an IPv4 address" in reasons["v6"]
    assert "claimed by ports dup1, dup2" in reasons["dup2"]


def test_pod_identity_from_external_ids() -> None:
    """Namespace, name, labels and named ports ride on the Interface; a malformed one
    rejects the port (a pod published without its labels would escape its policies)."""
    base = {"attached-mac": "0a:58:00:00:00:05", "vxflow-ip": "198.19.8.5"}
    ports_json = '[{"name": "http", "containerPort": 8080}, {"containerPort": 9}]'
    named = pod("named", 5, **base, **{"vxflow-namespace": "x", "vxflow-pod": "a",
                                       "vxflow-labels": '{"pod": "a", "app.kubernetes.io/name": "web"}',
                                       "vxflow-ports": ports_json})  # fmt: skip
    endpoints, rejected = endpoints_from_ports([named], LEASE)
    identity = endpoints[IPv4Address("198.19.8.5")].pod
    assert rejected == [] and identity is not None
    assert (identity.namespace, identity.name) == ("x", "a")
    assert identity.label_map == {"pod": "a", "app.kubernetes.io/name": "web"}
    assert [(p.name, p.port, p.protocol) for p in identity.ports] == [("http", 8080, "TCP")]
    only_name = pod("n", 5, **base, **{"vxflow-pod": "b"})
    identity = endpoints_from_ports([only_name], LEASE)[0][IPv4Address("198.19.8.5")].pod
    assert identity is not None and (identity.namespace, identity.labels) == ("default", ())
    assert endpoints_from_ports([pod("anon", 5, **base)], LEASE)[0][IPv4Address("198.19.8.5")].pod is None
    bad = {
        "nameless": {"vxflow-labels": '{"a": "b"}'},
        "notjson": {"vxflow-pod": "a", "vxflow-labels": "{a: b"},
        "intlabel": {"vxflow-pod": "a", "vxflow-labels": '{"a": 1}'},
        "badkey": {"vxflow-pod": "a", "vxflow-labels": '{"-a": "b"}'},
        "badns": {"vxflow-pod": "a", "vxflow-namespace": "X_1"},
        "badport": {"vxflow-pod": "a", "vxflow-ports": '[{"name": "http", "containerPort": 0}]'},
        "twice": {"vxflow-pod": "a", "vxflow-ports":
                  '[{"name": "h", "containerPort": 1}, {"name": "h", "containerPort": 2}]'},
    }  # fmt: skip
    _, rejected = endpoints_from_ports([pod(n, 5, **base, **ids) for n, ids in bad.items()], LEASE)
    reasons = {r.port: r.reason for r in rejected}
    assert set(reasons) == set(bad)
    assert "vxflow-labels without external_ids:vxflow-pod" in reasons["nameless"]
    assert "not JSON" in reasons["notjson"]
    assert "is not a string" in reasons["intlabel"]
    assert "containerPort" in reasons["badport"] and "published twice" in reasons["twice"]


def test_sysconfig_both_generations_and_options() -> None:
    seed = parse_sysconfig(
        '# /etc/sysconfig/flanneld\nFLANNEL_ETCD="http://10.140.0.2:2379"\n'
        'FLANNEL_ETCD_KEY="/atomic.io/network"\n'
    )
    assert seed.values == {
        "etcd_endpoints": "http://10.140.0.2:2379",
        "etcd_prefix": "/atomic.io/network",
    }
    later = parse_sysconfig(
        "FLANNEL_ETCD_ENDPOINTS=http://127.0.0.1:2379\nFLANNEL_ETCD_PREFIX=/coreos.com/network\n"
        "FLANNEL_OPTIONS='-iface=eth1 --ip-masq --public-ip=198.18.0.3 -v=2'\n"
    )
    assert later.values == {
        "etcd_endpoints": "http://127.0.0.1:2379",
        "etcd_prefix": "/coreos.com/network",
        "iface": "eth1",
        "ip_masq": "true",
        "public_ip": "198.18.0.3",
    }
    assert later.ignored == ["-v=2"]
    with pytest.raises(SysconfigError, match="line 1"):
        parse_sysconfig("this is not an assignment\n")


DUAL_NET = replace(NET, ipv6=FamilyConfig(IPv6Network("fc00::/48"), 64,
                                          IPv6Network("fc00:0:0:1::/64"),
                                          IPv6Network("fc00:0:0:ffff::/64")))  # fmt: skip
DUAL_LEASE = replace(LEASE, ipv6_subnet=IPv6Network("fc00:0:0:8::/64"),
                     public_ipv6=IPv6Address("fd00:198:18::8"), vtep_mac_v6="0e:36:c6:12:00:08")  # fmt: skip


def test_desired_state_of_a_dual_stack_node() -> None:
    state = desired_state(DUAL_NET, DUAL_LEASE, ("tcp:127.0.0.1:6653",), NETDEV)
    ports = {p.name: p for p in state.ports}
    six = ports[TUNNEL6_PORT]
    assert (six.type, six.ofport_request) == ("vxlan", TUNNEL6_OFPORT)
    assert dict(six.options) == {
        "remote_ip": "flow", "key": "flow", "dst_port": "4789", "local_ip": "fd00:198:18::8",
    }  # fmt: skip
    assert dict(ports[TUNNEL_PORT].options)["local_ip"] == "198.18.0.8"
    assert state.gateway.address6 == IPv6Interface("fc00:0:0:8::1/64")
    assert state.gateway.route6 == IPv6Network("fc00::/48")
    assert state.gateway.mtu == 1430 == ports[GATEWAY_PORT].mtu_request  # IPv6's outer header
    # IPv4-only: config without EnableIPv6, or a lease without its IPv6 half
    for net, lease in ((NET, DUAL_LEASE), (DUAL_NET, LEASE)):
        plain = desired_state(net, lease, ("tcp:127.0.0.1:6653",), NETDEV)
        assert plain == desired_state(NET, LEASE, ("tcp:127.0.0.1:6653",), NETDEV)
    # both families' service ranges: IPv6's routed on a dual-stack node only
    ranges = (IPv4Network("10.96.0.0/16"), IPv6Network("fd00:96::/108"))
    both = desired_state(DUAL_NET, DUAL_LEASE, ("tcp:127.0.0.1:6653",), NETDEV, ranges)
    assert both.gateway.service_routes == ranges
    plain = desired_state(DUAL_NET, LEASE, ("tcp:127.0.0.1:6653",), NETDEV, ranges)
    assert plain.gateway.service_routes == ranges[:1]


def test_pod_ports_publish_their_ipv6_address_on_a_dual_stack_node() -> None:
    mac = {"attached-mac": "0a:58:00:00:00:05", "vxflow-ip": "198.19.8.5"}
    ports = [
        pod("ok", 5, **mac, **{"vxflow-ipv6": "fc00:0:0:8::5"}),
        pod("far", 6, **{**mac, "vxflow-ip": "198.19.8.6"}, **{"vxflow-ipv6": "fc00:0:0:9::6"}),
        pod("gw", 7, **{**mac, "vxflow-ip": "198.19.8.7"}, **{"vxflow-ipv6": "fc00:0:0:8::1"}),
        pod("bad", 8, **{**mac, "vxflow-ip": "198.19.8.8"}, **{"vxflow-ipv6": "198.19.8.8"}),
        pod("twin", 9, **{**mac, "vxflow-ip": "198.19.8.9"}, **{"vxflow-ipv6": "fc00:0:0:8::5"}),
    ]
    endpoints, rejected = endpoints_from_ports(ports, DUAL_LEASE)
    reasons = {r.port: r.reason for r in rejected}
    assert list(endpoints) == [] and set(reasons) == {"ok", "far", "gw", "bad", "twin"}
    assert "claimed by ports ok, twin" in reasons["ok"] and "outside" in reasons["far"]
    assert "gateway" in reasons["gw"] and "not an IPv6 address" in reasons["bad"]
    endpoints, rejected = endpoints_from_ports(ports[:1], DUAL_LEASE)
    assert endpoints[IPv4Address("198.19.8.5")].ipv6 == IPv6Address("fc00:0:0:8::5")
    # the node's lease has no IPv6 half (any more): the pod is published for IPv4
    endpoints, rejected = endpoints_from_ports(ports[:1], LEASE)
    assert endpoints[IPv4Address("198.19.8.5")].ipv6 is None and rejected == []
