"""The pod's veth pair through netlink (pyroute2): cni/veth.py's steps without processes.

For the agent's CNI server (cni/server.py), which keeps one netlink socket
open: there the `ip`, `nsenter` and `ethtool` processes of cni/veth.py
were the largest share of an ADD (BENCHMARKS.md, B6), while a plugin
process could not afford pyroute2's import (~90 ms, more than those
processes take). The steps and their results are veth.create()'s and
veth.configure()'s: the host end in this namespace, the container end made
inside CNI_NETNS with its name and MTU, then its MAC, address, link and
routes; on a userspace-datapath bridge the host end made inert and TX
checksum offload off on both ends (the ETHTOOL_STXCSUM ioctl, as `ethtool
-K IF tx off`). The calling
thread enters CNI_NETNS (setns) only to open a netlink and an ioctl socket
there, and returns before anything else runs; the sockets keep working in
the container from outside it.
Errors are cni/veth.py's: VethExists, IprouteError.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni.veth import ContainerEnd, Pair, VethExists, host_link_exists, make_inert, random_mac
from ovsdb.iproute import IprouteError

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17  # set TX checksum offload (struct ethtool_value {cmd, data})
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = struct.Struct("16sP")  # ifr_name, ifr_data
_IFREQ_FLAGS = struct.Struct("16sH14x")  # ifr_name, ifr_flags
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


def tx_checksum_off(sock: socket.socket, ifname: str) -> None:
    """`ethtool -K IFNAME tx off` for an interface in `sock`'s network namespace."""
    value = array.array("I", [ETHTOOL_STXCSUM, 0])
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, _IFREQ.pack(ifname.encode(), value.buffer_info()[0]))


def set_up(sock: socket.socket, ifname: str) -> None:
    """`ip link set IFNAME up` for an interface in `sock`'s namespace (two ioctls, no netlink)."""
    name = ifname.encode()
    flags = _IFREQ_FLAGS.unpack(fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS,
                                            _IFREQ_FLAGS.pack(name, 0)))[1]  # fmt: skip
    fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, _IFREQ_FLAGS.pack(name, flags | IFF_UP))


@dataclass
class _Container:
    """What the thread opened inside the container's namespace (usable from outside it)."""

    ipr: IPRoute
    sock: socket.socket  # for ioctls on the container's interfaces
    index: int  # the container end's ifindex

    def close(self) -> None:
        self.ipr.close()
        self.sock.close()


class Netlink:
    """One thread's netlink socket, kept open; cni/veth.py's create() and configure() on it."""

    def __init__(self) -> None:
        self._own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()
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
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            return _Container(IPRoute(), sock, socket.if_nametoindex(ifname))
        except BaseException:
            sock.close()
            raise

    def create(self, pair: Pair) -> str:
        """veth.create(): the pair, the host end up (and inert); the host end's MAC."""
        if host_link_exists(pair.host):
            raise VethExists(f"host interface {pair.host} exists already")
        host_mac = random_mac()
        try:
            self._ipr.link("add", ifname=pair.host, kind="veth", address=host_mac, mtu=pair.mtu,
                           state="up", peer={"ifname": pair.ifname, "mtu": pair.mtu,
                                             "net_ns_fd": pair.netns})  # fmt: skip
        except NetlinkError as exc:
            if exc.code == errno.EEXIST and not host_link_exists(pair.host):
                raise VethExists(f"interface {pair.ifname} exists already in the container "
                                 f"({pair.netns})") from exc  # fmt: skip
            raise IprouteError(f"netlink: adding veth {pair.host}: {exc}") from exc
        if pair.userspace_datapath:
            make_inert(pair.host)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                tx_checksum_off(sock, pair.host)
        return host_mac

    def configure(self, pair: Pair, end: ContainerEnd) -> None:
        """veth.configure(): the container end's MAC, address, link up, routes (TX offload)."""
        inside = self._inside(pair.netns, lambda: self._open_container(pair.ifname))
        try:
            inside.ipr.link("set", index=inside.index, address=end.mac)
            set_up(inside.sock, pair.ifname)
            inside.ipr.addr("add", index=inside.index, address=str(end.address.ip),
                            prefixlen=end.address.network.prefixlen)  # fmt: skip
            for dst, gw in end.routes:
                inside.ipr.route("add", dst=str(dst), gateway=str(gw), oif=inside.index)
            if pair.userspace_datapath:
                tx_checksum_off(inside.sock, pair.ifname)
        except NetlinkError as exc:
            raise IprouteError(f"netlink: configuring {pair.ifname} in {pair.netns}: {exc}") from exc
        finally:
            inside.close()
