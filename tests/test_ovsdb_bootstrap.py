"""OVSDB bootstrap against a real ovsdb-server/ovs-vswitchd in an emulated node's namespace.

The kernel side (gateway address, route) lands in the node's namespace, never
in the root namespace; ovs-vsctl and ip are used only to inspect and to drift.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from ipaddress import IPv4Network, IPv6Address, IPv6Network

import pytest

from flows.ports import GATEWAY_OFPORT, TUNNEL_OFPORT, gateway_mac, vtep_mac_for
from leases.model import BackendConfig, FamilyConfig, Lease, NetworkConfig, datapath_id_for
from ovsdb import idl as ovsidl
from ovsdb.bootstrap import BootstrapError, BootstrapOptions, bootstrap
from tests.emulation import Node, Underlay

CONTROLLERS = ("tcp:127.0.0.1:6653",)
CONFIG = NetworkConfig(network=IPv4Network("198.19.0.0/16"), backend=BackendConfig(vni=7))


@dataclass
class Booted:
    node: Node
    idl: object
    lease: Lease

    def run(self, dry_run: bool = False) -> list[str]:
        return bootstrap(
            self.idl, CONFIG, self.lease, CONTROLLERS, BootstrapOptions(),
            netns=self.node.netns, dry_run=dry_run,
        )  # fmt: skip

    def get(self, table: str, record: str, column: str) -> str:
        return self.node.ovs.vsctl("get", table, record, column).strip()


@pytest.fixture
def booted(underlay: Underlay) -> Iterator[Booted]:
    node = underlay.add_node()
    lease = Lease(
        subnet=IPv4Network("198.19.5.0/24"), public_ip=node.underlay_ip, vni=7,
        vtep_mac=vtep_mac_for(node.underlay_ip),
    )  # fmt: skip
    idl = ovsidl.connect(node.ovs.db_target)
    try:
        yield Booted(node, idl, lease)
    finally:
        idl.close()


@pytest.mark.integration
def test_bootstrap_on_empty_db_then_no_change(booted: Booted) -> None:
    node = booted.node
    planned = booted.run(dry_run=True)
    assert "bridge br-int: create" in planned[0]
    assert node.ovs.vsctl("--if-exists", "get", "Bridge", "br-int", "name").strip() == ""

    changes = booted.run()
    assert changes[0].startswith("bridge br-int: create")
    assert booted.get("Bridge", "br-int", "datapath_type") == "netdev"  # no kernel module here
    assert booted.get("Bridge", "br-int", "fail_mode") == "secure"
    assert booted.get("Bridge", "br-int", "protocols") == "[OpenFlow13, OpenFlow14]"
    other = booted.get("Bridge", "br-int", "other_config")
    assert f'datapath-id="{datapath_id_for(node.underlay_ip):016x}"' in other
    assert 'disable-in-band="true"' in other
    assert node.ovs.vsctl("get-controller", "br-int").split() == list(CONTROLLERS)
    assert booted.get("Controller", "br-int", "max_backoff") == "1000"  # OVS's least: reconnect fast
    # a dead controller connection noticed in seconds (OVS's default: 5 s, then as long again)
    assert booted.get("Controller", "br-int", "inactivity_probe") == "5000"
    assert booted.get("Interface", "vxlan0", "type") == "vxlan"
    assert booted.get("Interface", "vxlan0", "options") == (
        f'{{dst_port="8472", key=flow, local_ip="{node.underlay_ip}", remote_ip=flow}}'
    )
    assert booted.get("Interface", "vxlan0", "ofport") == str(TUNNEL_OFPORT)
    assert booted.get("Interface", "vxgw0", "ofport") == str(GATEWAY_OFPORT)
    assert booted.get("Interface", "vxgw0", "mac_in_use") == f'"{gateway_mac(booted.lease.subnet)}"'
    # the OpenFlow datapath id the controller sees is the one bootstrap set
    assert f"dpid:{datapath_id_for(node.underlay_ip):016x}" in node.ovs.ofctl("show", "br-int")

    link = json.loads(node.run("ip", "-j", "addr", "show", "dev", "vxgw0"))[0]
    assert link["mtu"] == 1450  # br-phy's 1500 minus VXLAN's 50
    assert "UP" in link["flags"]
    assert [(a["local"], a["prefixlen"]) for a in link["addr_info"] if a["family"] == "inet"] == [
        ("198.19.5.1", 24)
    ]
    route = json.loads(node.run("ip", "-j", "route", "show", "exact", "198.19.0.0/16"))
    assert [r["dev"] for r in route] == ["vxgw0"]

    assert booted.run() == []
    assert booted.run(dry_run=True) == []


@pytest.mark.integration
def test_drift_is_repaired_and_foreign_ports_left_alone(booted: Booted) -> None:
    node, ovs = booted.node, booted.node.ovs
    booted.run()
    ovs.vsctl(
        "add-port", "br-int", "foreign0", "--", "set", "Interface", "foreign0", "type=internal",
        "ofport_request=7", "external_ids:owner=someone-else",
    )  # fmt: skip
    ovs.vsctl("br-set-external-id", "br-int", "vxflow-round", "3")  # the controller's key
    foreign_before = ovs.vsctl("list", "Interface", "foreign0")

    ovs.vsctl(
        "set", "Bridge", "br-int", "fail_mode=standalone", "other_config:disable-in-band=false"
    )
    ovs.vsctl("set", "Interface", "vxlan0", "options:dst_port=4789", "options:key=99")
    ovs.vsctl("set-controller", "br-int", "tcp:127.0.0.1:6999")
    node.run("ip", "route", "del", "198.19.0.0/16")
    node.run("ip", "addr", "flush", "dev", "vxgw0")

    changes = booted.run()
    assert sorted(changes) == sorted([
        "bridge br-int fail_mode: standalone -> secure",
        "bridge br-int other_config:disable-in-band: false -> true",
        "bridge br-int controller: ['tcp:127.0.0.1:6999'] -> ['tcp:127.0.0.1:6653']",
        "interface vxlan0 options: {dst_port=4789, key=99, local_ip=198.18.0.1, remote_ip=flow}"
        " -> {dst_port=8472, key=flow, local_ip=198.18.0.1, remote_ip=flow}",
        "kernel: vxgw0 add address 198.19.5.1/24",
        "kernel: route 198.19.0.0/16 dev vxgw0",
    ])  # fmt: skip
    assert booted.get("Bridge", "br-int", "fail_mode") == "secure"
    assert booted.get("Interface", "vxlan0", "options").startswith('{dst_port="8472"')
    assert node.ovs.vsctl("br-get-external-id", "br-int", "vxflow-round").strip() == "3"
    assert booted.run() == []
    ovs.vsctl("set", "Controller", "br-int", "max_backoff=8000", "inactivity_probe=30000")
    assert booted.run() == ["controller tcp:127.0.0.1:6653 max_backoff: 8000 -> 1000",
                            "controller tcp:127.0.0.1:6653 inactivity_probe: 30000 -> 5000"]  # fmt: skip

    # a port vxflow owns that it no longer wants goes; the foreign one stays as it was
    ovs.vsctl("add-port", "br-int", "stale0", "--", "set", "Interface", "stale0", "type=internal",
              "external_ids:vxflow-owned=true", "--", "set", "Port", "stale0",
              "external_ids:vxflow-owned=true")  # fmt: skip
    assert booted.run() == ["port stale0: delete (vxflow-owned, no longer desired)"]
    assert "stale0" not in ovs.vsctl("list-ports", "br-int").split()
    assert "foreign0" in ovs.vsctl("list-ports", "br-int").split()
    ignore = ("ofport", "statistics", "link_resets", "mtu", "status", "link_state", "ifindex")
    after = ovs.vsctl("list", "Interface", "foreign0")

    def stable(listing: str) -> list[str]:
        return [line for line in listing.splitlines() if line.split(":")[0].strip() not in ignore]

    assert stable(after) == stable(foreign_before)


@pytest.mark.integration
def test_foreign_port_with_a_vxflow_name_is_refused(booted: Booted) -> None:
    booted.node.ovs.vsctl("add-br", "br-int", "--", "set", "Bridge", "br-int", "datapath_type=netdev",
                          "--", "add-port", "br-int", "vxlan0", "--", "set", "Interface", "vxlan0",
                          "type=internal")  # fmt: skip
    with pytest.raises(BootstrapError, match="vxlan0 exists but was not created by vxflow"):
        booted.run()
    assert booted.get("Interface", "vxlan0", "type") == "internal"


@pytest.mark.integration
def test_ssl_controller_and_the_ovs_ssl_table(booted: Booted, tmp_path) -> None:
    """An `ssl:` target comes with the switch's key, certificate and CA in the SSL table
    (what `ovs-vsctl set-ssl` writes), converged like the rest and idempotent."""
    from ovsdb.bootstrap import BootstrapError, SslSpec

    b = booted
    files = [tmp_path / name for name in ("node-key.pem", "node.pem", "ca.pem")]
    spec = SslSpec(*(str(f) for f in files))
    target = ("ssl:127.0.0.1:6653",)
    with pytest.raises(BootstrapError, match="needs the switch's key"):
        bootstrap(b.idl, CONFIG, b.lease, target, BootstrapOptions(), netns=b.node.netns)
    changes = bootstrap(b.idl, CONFIG, b.lease, target, BootstrapOptions(ssl=spec),
                        netns=b.node.netns)  # fmt: skip
    assert any(line.startswith("ssl: create") for line in changes), changes
    got = b.node.ovs.vsctl("get-ssl")
    assert f"Private key: {files[0]}" in got and f"Certificate: {files[1]}" in got, got
    assert f"CA Certificate: {files[2]}" in got, got
    assert b.get("Bridge", "br-int", "controller") != "[]"
    moved = SslSpec(spec.private_key, spec.certificate, str(tmp_path / "other-ca.pem"))
    again = bootstrap(b.idl, CONFIG, b.lease, target, BootstrapOptions(ssl=moved),
                      netns=b.node.netns)  # fmt: skip
    assert again == [f"ssl ca_cert: {files[2]} -> {tmp_path / 'other-ca.pem'}"], again
    assert bootstrap(b.idl, CONFIG, b.lease, target, BootstrapOptions(ssl=moved),
                     netns=b.node.netns) == []  # fmt: skip


def test_the_service_network_is_routed_into_the_gateway_port_and_only_ours_removed(
    booted: Booted,
) -> None:
    node = booted.node

    def converge(routes: tuple[IPv4Network, ...] | None) -> list[str]:
        return bootstrap(booted.idl, CONFIG, booted.lease, CONTROLLERS, BootstrapOptions(),
                         netns=node.netns, service_routes=routes)  # fmt: skip

    def on_gateway() -> list[tuple[str, str]]:
        routes = json.loads(node.run("ip", "-j", "route", "show", "dev", "vxgw0"))
        return sorted((r["dst"], r.get("protocol", "")) for r in routes)

    first, second = IPv4Network("198.20.0.0/16"), IPv4Network("198.21.0.0/24")
    assert "kernel: route 198.20.0.0/16 dev vxgw0 (ServiceNetwork)" in converge((first,))
    assert ("198.20.0.0/16", "118") in on_gateway()  # vxflow's routing protocol number
    assert converge((first,)) == []
    node.run("ip", "route", "add", "198.22.0.0/16", "dev", "vxgw0")  # someone else's route
    assert converge(None) == []  # the range is not known (no etcd): left as it is
    assert converge((second,)) == [
        "kernel: remove route 198.20.0.0/16 dev vxgw0 (a previous ServiceNetwork)",
        "kernel: route 198.21.0.0/24 dev vxgw0 (ServiceNetwork)",
    ]
    assert converge(()) == ["kernel: remove route 198.21.0.0/24 dev vxgw0 (a previous ServiceNetwork)"]
    assert [dst for dst, _ in on_gateway()] == ["198.19.0.0/16", "198.19.5.0/24", "198.22.0.0/16"]


@pytest.mark.integration
def test_a_wait_for_ovsdb_ends_when_the_wake_descriptor_is_written(booted: Booted) -> None:
    """The agent's loop waits for OVSDB (up to a second); its watch wakes it through a pipe,
    so a config change seen in etcd is acted on at once."""
    ovsidl.refresh(booted.idl)
    read, write = os.pipe()
    try:
        waker = threading.Timer(0.2, os.write, (write, b"\0"))
        waker.start()
        started = time.monotonic()
        assert not ovsidl.run_once(booted.idl, timeout=60, wake=read)  # woken: nothing changed
        # long before its timeout, and before the session's 5 s inactivity probe could end it
        assert time.monotonic() - started < 4
        waker.join()
    finally:
        os.close(read)
        os.close(write)


@pytest.mark.integration
def test_a_dual_stack_gateway_and_its_removal_when_the_lease_loses_its_ipv6_half(
    booted: Booted,
) -> None:
    node = booted.node
    dual_config = replace(CONFIG, ipv6=FamilyConfig(IPv6Network("fd00:198:19::/48"), 64,
                                                    IPv6Network("fd00:198:19:1::/64"),
                                                    IPv6Network("fd00:198:19:ffff::/64")))  # fmt: skip
    dual = replace(booted.lease, ipv6_subnet=IPv6Network("fd00:198:19:5::/64"),
                   public_ipv6=IPv6Address("fd00:198:18::5"), vtep_mac_v6="0e:36:c6:12:00:05")  # fmt: skip

    def converge(config: NetworkConfig, lease: Lease) -> list[str]:
        return bootstrap(booted.idl, config, lease, CONTROLLERS, BootstrapOptions(),
                         netns=node.netns)  # fmt: skip

    def six() -> tuple[list[str], list[str]]:
        link = json.loads(node.run("ip", "-j", "addr", "show", "dev", "vxgw0"))[0]
        addresses = [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                     if a["family"] == "inet6" and a["scope"] == "global"]  # fmt: skip
        routes = json.loads(node.run("ip", "-6", "-j", "route", "show", "dev", "vxgw0"))
        return addresses, sorted(r["dst"] for r in routes if not r["dst"].startswith("fe80"))

    changes = converge(dual_config, dual)
    assert "kernel: vxgw0 add address fd00:198:19:5::1/64" in changes
    assert "kernel: route fd00:198:19::/48 dev vxgw0" in changes
    assert "port vxlan6: create" in " ".join(changes)
    assert six() == (["fd00:198:19:5::1/64"], ["fd00:198:19:5::/64", "fd00:198:19::/48"])
    assert converge(dual_config, dual) == []
    node.run("ip", "-6", "route", "add", "fd00:198:77::/48", "dev", "vxgw0")  # someone else's
    # (the kernel's MTU may already be OVS's, set from mtu_request, or be set here)
    plain = [c for c in converge(CONFIG, booted.lease) if c != "kernel: vxgw0 mtu 1430 -> 1450"]
    assert plain == [
        "interface vxgw0 mtu_request: 1430 -> 1450",
        "port vxlan6: delete (vxflow-owned, no longer desired)",
        "kernel: vxgw0 remove address fd00:198:19:5::1/64",
        "kernel: remove route fd00:198:19::/48 dev vxgw0 (a previous IPv6Network)",
    ], plain
    assert six() == ([], ["fd00:198:77::/48"])
