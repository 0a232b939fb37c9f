"""cni/netlink.py's requests: what they say (decoded by pyroute2), and how answers are read.

The kernel's side of them (the veth made, the container end configured, its
refusals as the spec's errors) is tests/test_cni_fast.py's, through an agent.
"""

from __future__ import annotations

import errno
import socket
import struct
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
from pyroute2.netlink.rtnl import RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE

from cni.netlink import (
    CHANGE,
    CREATE,
    IFA_F_NODAD,
    IFF_UP,
    NLMSG_ERROR,
    NetlinkError,
    container_messages,
    request,
    veth_message,
)
from cni.veth import ContainerEnd, Pair

GW = IPv4Address("198.19.7.1")
END = ContainerEnd("0a:58:c6:13:07:02", IPv4Interface("198.19.7.2/24"),
                   ((IPv4Network("198.19.0.0/16"), GW), (IPv4Network("0.0.0.0/0"), GW)))  # fmt: skip


def decoded(msg):
    """The message as the kernel would read it: encoded, then decoded by pyroute2."""
    msg["header"]["sequence_number"] = 1
    msg.encode()
    back = type(msg)(msg.data)
    back.decode()
    return back


def test_veth_request() -> None:
    pair = Pair(host="vx0123456789a", netns="/var/run/netns/c1", ifname="eth0", mtu=1450)
    msg = decoded(veth_message(pair, "02:11:22:33:44:55", 7))
    assert (msg["header"]["type"], msg["header"]["flags"]) == (RTM_NEWLINK, CREATE)
    assert (msg["index"], msg["flags"] & IFF_UP, msg["change"] & IFF_UP) == (0, IFF_UP, IFF_UP)
    assert (msg.get("ifname"), msg.get("address"), msg.get("mtu")) == (pair.host,
                                                                       "02:11:22:33:44:55", 1450)  # fmt: skip
    info = msg.get("linkinfo")
    assert info.get("kind") == "veth"
    peer = info.get("data").get("VETH_INFO_PEER")
    assert (peer.get("ifname"), peer.get("mtu"), peer.get("net_ns_fd")) == ("eth0", 1450, 7)


def test_container_end_requests_in_order() -> None:
    link, addr, network, default = (decoded(m) for m in container_messages(5, END))
    assert (link["header"]["type"], link["header"]["flags"]) == (RTM_NEWLINK, CHANGE)
    assert (link["index"], link["flags"], link["change"], link.get("address")) == (
        5, IFF_UP, IFF_UP, END.mac)  # fmt: skip
    assert (addr["header"]["type"], addr["header"]["flags"]) == (RTM_NEWADDR, CREATE)
    assert (addr["family"], addr["index"], addr["prefixlen"]) == (socket.AF_INET, 5, 24)
    assert addr.get("local") == addr.get("address") == "198.19.7.2"
    for route, (dst, prefix) in ((network, ("198.19.0.0", 16)), (default, (None, 0))):
        assert (route["header"]["type"], route["header"]["flags"]) == (RTM_NEWROUTE, CREATE)
        assert (route["family"], route["dst_len"], route["table"]) == (socket.AF_INET, prefix, 254)
        assert (route.get("dst"), route.get("gateway"), route.get("oif")) == (dst, "198.19.7.1", 5)


def test_a_dual_stack_container_end_gets_its_ipv6_address_and_routes() -> None:
    gw6 = IPv6Address("fd00:198:19:7::1")
    end = replace(END, address6=IPv6Interface("fd00:198:19:7::2/64"),
                  routes=(*END.routes, (IPv6Network("fd00:198:19::/48"), gw6)))  # fmt: skip
    _, _, addr6, *routes = (decoded(m) for m in container_messages(5, end))
    assert (addr6["header"]["type"], addr6["family"], addr6["prefixlen"]) == (
        RTM_NEWADDR, socket.AF_INET6, 64)  # fmt: skip
    assert addr6.get("address") == "fd00:198:19:7::2" and addr6.get("flags") & IFA_F_NODAD
    route6 = routes[-1]
    assert (route6["family"], route6["dst_len"], route6.get("dst"), route6.get("gateway")) == (
        socket.AF_INET6, 48, "fd00:198:19::", "fd00:198:19:7::1")  # fmt: skip
    assert [r["family"] for r in routes[:-1]] == [socket.AF_INET, socket.AF_INET]


class Kernel:
    """A netlink socket's two calls, answering each request with `answers[seq]` (0: ack)."""

    def __init__(self, answers: dict[int, int], split: bool = False) -> None:
        self.answers, self.split = answers, split
        self.sent: list[bytes] = []
        self.pending: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(bytes(data))
        offset, replies = 0, []
        while offset < len(data):
            length, _, _, seq, _ = struct.unpack_from("IHHII", data, offset)
            body = struct.pack("i", -self.answers.get(seq, 0)) + data[offset : offset + 16]
            replies.append(struct.pack("IHHII", 16 + len(body), NLMSG_ERROR, 0, seq, 0) + body)
            offset += length
        stale = struct.pack("IHHII", 36, NLMSG_ERROR, 0, 999, 0) + bytes(20)  # not ours
        self.pending = [stale, *replies] if self.split else [stale + b"".join(replies)]

    def recv(self, size: int) -> bytes:
        return self.pending.pop(0)


@pytest.mark.parametrize("split", [False, True])
def test_one_datagram_out_every_answer_read(split: bool) -> None:
    counter = iter(range(10, 100)).__next__
    kernel = Kernel({}, split)
    request(kernel, container_messages(5, END), counter)  # type: ignore[arg-type]
    assert len(kernel.sent) == 1 and not kernel.pending
    refusing = Kernel({15: errno.ENETUNREACH, 16: errno.EEXIST}, split)
    with pytest.raises(NetlinkError) as refused:  # the first refusal, all answers read
        request(refusing, container_messages(5, END), counter)  # type: ignore[arg-type]
    assert refused.value.code == errno.ENETUNREACH and not refusing.pending
    assert "Network is unreachable" in str(refused.value)


def test_the_kernel_numbers_spelled_out_to_defer_pyroute2_are_its_own() -> None:
    """cni/netlink.py and ovsdb/direct.py name rtnetlink's numbers themselves, so that an
    agent imports pyroute2 only when it first uses it; they are pyroute2's."""
    import pyroute2.netlink as nl
    import pyroute2.netlink.rtnl as rtnl

    from cni import netlink
    from ovsdb import direct

    for name in ("NLM_F_REQUEST", "NLM_F_ACK", "NLM_F_EXCL", "NLM_F_CREATE"):
        assert getattr(netlink, name) == getattr(nl, name), name
    for name in ("RTM_NEWLINK", "RTM_NEWADDR", "RTM_NEWROUTE"):
        assert getattr(netlink, name) == getattr(rtnl, name), name
    for name in ("RTMGRP_LINK", "RTMGRP_IPV4_IFADDR", "RTMGRP_IPV4_ROUTE", "RTMGRP_IPV6_IFADDR",
                 "RTMGRP_IPV6_ROUTE"):  # fmt: skip
        assert getattr(direct, name) == getattr(rtnl, name), name
