"""The pod's veth pair through netlink: cni/veth.py's steps without processes.

For the agent's CNI server (cni/server.py), which keeps one netlink socket
open: there the `ip`, `nsenter` and `ethtool` processes of cni/veth.py
were the largest share of an ADD (BENCHMARKS.md, B6), while a plugin
process could not afford pyroute2's import (~90 ms, more than those
processes take). The steps and their results are veth.create()'s and
veth.configure()'s: the host end in this namespace, the container end made
inside CNI_NETNS with its name and MTU, then its MAC, link, address and
routes; on a userspace-datapath bridge the host end made inert and TX
checksum offload off on both ends (the ETHTOOL_STXCSUM ioctl, as `ethtool
-K IF tx off`). The calling thread enters CNI_NETNS (setns) only to open a
netlink and an ioctl socket there, and returns before anything else runs;
the sockets keep working in the container from outside it.

Each step is one batch of rtnetlink requests, encoded with pyroute2's
message classes and sent on a plain netlink socket (`request()`): pyroute2's
IPRoute API spends ~0.4 ms of Python compiling each request (its asyncio
core, request filters), fifteen times the kernel's work, which made the
container end's four requests ~1.5 ms of every ADD. pyroute2 itself is imported at
the first request, not with this module: its package's import (~80 ms) was paid at the
start of every agent, `vxflow bootstrap` and `vxflow migrate`, most of which attach no pod.
Errors are cni/veth.py's: VethExists, IprouteError.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import itertools
import os
import socket
import struct
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from cni.veth import ContainerEnd, Pair, VethExists, host_link_exists, make_inert, random_mac
from ovsdb.iproute import IprouteError

if TYPE_CHECKING:
    from pyroute2.netlink import nlmsg

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17  # set TX checksum offload (struct ethtool_value {cmd, data})
IFF_UP = 0x1
NLMSG_ERROR = 0x2  # an acknowledgement (error 0) or a refusal (-errno)
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 20, 24
CREATE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL  # `ip ... add`
CHANGE = NLM_F_REQUEST | NLM_F_ACK  # `ip link set`
RT_TABLE_MAIN, RTPROT_STATIC, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 4, 0, 1
_HEADER = struct.Struct("IHHII")  # struct nlmsghdr: length, type, flags, seq, pid
_ERROR = struct.Struct("i")  # struct nlmsgerr's error, after the header
_IFREQ = struct.Struct("16sP")  # ifr_name, ifr_data


class NetlinkError(Exception):
    """A request the kernel refused; `code` is its errno."""

    def __init__(self, code: int) -> None:
        super().__init__(code, os.strerror(code))
        self.code = code


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


def tx_checksum_off(sock: socket.socket, ifname: str) -> None:
    """`ethtool -K IFNAME tx off` for an interface in `sock`'s network namespace."""
    value = array.array("I", [ETHTOOL_STXCSUM, 0])
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, _IFREQ.pack(ifname.encode(), value.buffer_info()[0]))


def _message(cls: type[nlmsg], kind: int, how: int, attrs: list, **fields: int) -> nlmsg:
    """A `kind` request (`how`: CREATE or CHANGE) of message class `cls`."""
    msg = cls()
    for name, value in fields.items():
        msg[name] = value
    msg["attrs"] = attrs
    msg["header"]["type"], msg["header"]["flags"] = kind, how
    return msg


def veth_message(pair: Pair, host_mac: str, netns_fd: int) -> nlmsg:
    """`ip link add HOST address MAC mtu M up type veth peer name IFNAME mtu M netns FD`."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # imported at first use: see above

    peer = {"attrs": [("IFLA_IFNAME", pair.ifname), ("IFLA_MTU", pair.mtu),
                      ("IFLA_NET_NS_FD", netns_fd)]}  # fmt: skip
    info = {"attrs": [("IFLA_INFO_KIND", "veth"),
                      ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]})]}  # fmt: skip
    attrs = [("IFLA_IFNAME", pair.host), ("IFLA_ADDRESS", host_mac), ("IFLA_MTU", pair.mtu),
             ("IFLA_LINKINFO", info)]  # fmt: skip
    return _message(ifinfmsg, RTM_NEWLINK, CREATE, attrs, index=0, flags=IFF_UP, change=IFF_UP)


_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
IFA_F_NODAD = 0x02  # an IPv6 address without duplicate address detection (veth.configure)


def container_messages(index: int, end: ContainerEnd) -> list[nlmsg]:
    """The container end `index`: its MAC and link up, its addresses, its routes (in this
    order)."""
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg  # imported at first use: see above
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    messages = [
        _message(ifinfmsg, RTM_NEWLINK, CHANGE, [("IFLA_ADDRESS", end.mac)], index=index,
                 flags=IFF_UP, change=IFF_UP),
    ]  # fmt: skip
    for address in (end.address, end.address6):
        if address is None:
            continue
        ip, nodad = str(address.ip), [("IFA_FLAGS", IFA_F_NODAD)] if address.version == 6 else []
        messages.append(_message(ifaddrmsg, RTM_NEWADDR, CREATE,
                                 [("IFA_LOCAL", ip), ("IFA_ADDRESS", ip), *nodad],
                                 family=_FAMILY[address.version],
                                 prefixlen=address.network.prefixlen, index=index))  # fmt: skip
    for dst, gw in end.routes:
        attrs = [("RTA_GATEWAY", str(gw)), ("RTA_OIF", index)]
        if dst.prefixlen:
            attrs.append(("RTA_DST", str(dst.network_address)))
        messages.append(_message(rtmsg, RTM_NEWROUTE, CREATE, attrs, family=_FAMILY[dst.version],
                                 dst_len=dst.prefixlen, table=RT_TABLE_MAIN, proto=RTPROT_STATIC,
                                 scope=RT_SCOPE_UNIVERSE, type=RTN_UNICAST))  # fmt: skip
    return messages


def request(sock: socket.socket, messages: list[nlmsg], sequence: Callable[[], int]) -> None:
    """Send `messages` in one datagram and wait for every answer; NetlinkError for the first
    one refused (rtnetlink carries them out in order, each whatever became of the others)."""
    data, pending = bytearray(), {}
    for index, msg in enumerate(messages):
        seq = sequence()
        msg["header"]["sequence_number"], pending[seq] = seq, index
        msg.encode()
        data += msg.data
    sock.send(data)
    refused: list[tuple[int, int]] = []  # (position in `messages`, errno)
    while pending:
        buffer, offset = sock.recv(65536), 0
        while offset + _HEADER.size <= len(buffer):
            length, kind, _, seq, _ = _HEADER.unpack_from(buffer, offset)
            if kind == NLMSG_ERROR and seq in pending:
                code = -_ERROR.unpack_from(buffer, offset + _HEADER.size)[0]
                position = pending.pop(seq)
                if code:
                    refused.append((position, code))
            offset += max((length + 3) & ~3, _HEADER.size)
    if refused:
        code = min(refused)[1]
        raise NetlinkError(code)


def _netlink_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)


@dataclass
class _Container:
    """What the thread opened inside the container's namespace (usable from outside it)."""

    netlink: socket.socket
    sock: socket.socket  # for ioctls on the container's interfaces
    index: int  # the container end's ifindex

    def close(self) -> None:
        self.netlink.close()
        self.sock.close()


class Netlink:
    """One thread's netlink socket, kept open; cni/veth.py's create() and configure() on it."""

    def __init__(self) -> None:
        self._own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._socket = _netlink_socket()
        self._sequence = itertools.count(1).__next__

    def close(self) -> None:
        self._socket.close()
        os.close(self._own)

    def _inside(self, netns: str, fn: Callable[[], T]) -> T:
        """`fn()` called with this thread in `netns` (sockets it opens stay there)."""
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(fd)
            try:
                return fn()
            finally:
                _setns(self._own)  # never fails for our own namespace
        finally:
            os.close(fd)

    @staticmethod
    def _open_container(ifname: str) -> _Container:
        """(Run inside the container.) The sockets to configure its end with."""
        with ExitStack() as opened:
            netlink = opened.enter_context(_netlink_socket())
            sock = opened.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            container = _Container(netlink, sock, socket.if_nametoindex(ifname))
            opened.pop_all()
        return container

    def create(self, pair: Pair) -> str:
        """veth.create(): the pair, the host end up (and inert); the host end's MAC."""
        if host_link_exists(pair.host):
            raise VethExists(f"host interface {pair.host} exists already")
        host_mac = random_mac()
        netns = os.open(pair.netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            request(self._socket, [veth_message(pair, host_mac, netns)], self._sequence)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST and not host_link_exists(pair.host):
                raise VethExists(f"interface {pair.ifname} exists already in the container "
                                 f"({pair.netns})") from exc  # fmt: skip
            raise IprouteError(f"netlink: adding veth {pair.host}: {exc}") from exc
        finally:
            os.close(netns)
        if pair.userspace_datapath:
            make_inert(pair.host)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                tx_checksum_off(sock, pair.host)
        return host_mac

    def configure(self, pair: Pair, end: ContainerEnd) -> None:
        """veth.configure(): the container end's MAC, link up, address, routes (TX offload)."""
        inside = self._inside(pair.netns, lambda: self._open_container(pair.ifname))
        try:
            request(inside.netlink, container_messages(inside.index, end), self._sequence)
            if pair.userspace_datapath:
                tx_checksum_off(inside.sock, pair.ifname)
        except NetlinkError as exc:
            raise IprouteError(f"netlink: configuring {pair.ifname} in {pair.netns}: {exc}") from exc
        finally:
            inside.close()
