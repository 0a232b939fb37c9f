"""End to end: podman containers on a dual-stack cluster get both families in one CNI ADD
(vxflow-cni's client, served by the node's agent: the veth configured through netlink)
and reach a pod on the other node over IPv6 and IPv4; removing one releases both."""

from __future__ import annotations

import re
from collections.abc import Iterator
from ipaddress import IPv6Address, IPv6Interface, IPv6Network

import pytest

from tests.emulation import emulated_cluster

OVERLAY6 = IPv6Network("fd00:198:19::/48")

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster() -> Iterator:
    with emulated_cluster("e", nodes=2, pods=1, containers=True,
                          ipv6_network=OVERLAY6) as running:  # fmt: skip
        yield running


def test_a_container_gets_both_families_and_reaches_a_pod_over_each(cluster) -> None:
    podman, (n1, n2) = cluster.podman, cluster.vxflow_nodes
    cid = podman.run(n1, "dual-a")
    try:
        shown = podman.exec(cid, "ip", "-6", "addr", "show", "dev", "eth0").stdout
        found = re.findall(r"inet6 (\S+) scope global", shown)
        assert len(found) == 1, shown
        six = IPv6Interface(found[0])
        assert six.network == cluster.ipv6_subnet(n1) and six.ip != six.network.network_address + 1
        routes = podman.exec(cid, "ip", "-6", "route").stdout
        assert f"{OVERLAY6} via {six.network.network_address + 1}" in routes, routes
        pod = cluster.pods_of(n2)[0]
        for dst in (pod.addr6, pod.addr):
            podman.wait_reachable(cid, str(dst))  # raises if not within 10 s
        out = pod.cmd(f"ping -n -c 2 -W 2 {six.ip}")
        assert " 0% packet loss" in out, out
    finally:
        podman.rm(cid)
    # the address went back to host-local with the container
    folder = podman.ipam_dir(n1)
    assert not [p for p in folder.glob("fd00*") if IPv6Address(p.name) == six.ip]
