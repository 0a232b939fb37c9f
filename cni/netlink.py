"""The pod's veth pair through netlink (pyroute2): cni/veth.py's create() without processes.

For the agent's CNI server (cni/server.py), which keeps one netlink socket
open: there the `ip`, `nsenter` and `ethtool` processes of veth.create()
were the largest share of an ADD (BENCHMARKS.md, B6), while a plugin
process could not afford pyroute2's import (~90 ms, more than those
processes take). The steps and their result are veth.create()'s: the host
end in this namespace, the container end made inside CNI_NETNS with its
name, MAC and MTU, then its address, link and routes; on a userspace-
datapath bridge the host end made inert and TX checksum offload off on both
ends (the ETHTOOL_STXCSUM ioctl, as `ethtool -K IF tx off`). Inside the
container the calling thread enters CNI_NETNS (setns) only to open a
netlink and an ioctl socket there, and returns before anything else runs.
Errors are veth.create()'s: VethExists, IprouteError.
"""

from __future__ import annotations

import array
import ctypes
import fcntl
import os
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from cni.veth import VethExists, VethSpec, host_link_exists, make_inert, random_mac
from ovsdb.iproute import IprouteError

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17  # set TX checksum offload (struct ethtool_value {cmd, data})
_IFREQ = struct.Struct("16sP")  # ifr_name, ifr_data
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def tx_checksum_off(sock: socket.socket, ifname: str) -> None:
    """`ethtool -K IFNAME tx off` for an interface in `sock`'s network namespace."""
    value = array.array("I", [ETHTOOL_STXCSUM, 0])
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, _IFREQ.pack(ifname.encode(), value.buffer_info()[0]))


class Netlink:
    """One thread's netlink socket, kept open; `create()` is veth.create() for that thread."""

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

    @contextmanager
    def _container(self, netns: str) -> Iterator[tuple[IPRoute, socket.socket]]:
        ipr, sock = self._inside(netns, lambda: (IPRoute(), socket.socket(socket.AF_INET,
                                                                           socket.SOCK_DGRAM)))  # fmt: skip
        try:
            yield ipr, sock
        finally:
            ipr.close()
            sock.close()

    def create(self, spec: VethSpec) -> str:
        """Make and configure the pair; the host end's MAC (see veth.create)."""
        if host_link_exists(spec.host):
            raise VethExists(f"host interface {spec.host} exists already")
        host_mac = random_mac()
        try:
            self._ipr.link("add", ifname=spec.host, kind="veth", address=host_mac, mtu=spec.mtu,
                           peer={"ifname": spec.ifname, "address": spec.mac, "mtu": spec.mtu,
                                 "net_ns_fd": spec.netns})  # fmt: skip
        except NetlinkError as exc:
            if exc.code == 17 and not host_link_exists(spec.host):  # EEXIST: the container's
                raise VethExists(f"interface {spec.ifname} exists already in the container "
                                 f"({spec.netns})") from exc  # fmt: skip
            raise IprouteError(f"netlink: adding veth {spec.host}: {exc}") from exc
        try:
            self._ipr.link("set", index=socket.if_nametoindex(spec.host), state="up")
            with self._container(spec.netns) as (ipr, sock):
                index = ipr.link_lookup(ifname=spec.ifname)[0]
                ipr.addr("add", index=index, address=str(spec.address.ip),
                         prefixlen=spec.address.network.prefixlen)  # fmt: skip
                ipr.link("set", index=index, state="up")
                for dst, gw in spec.routes:
                    ipr.route("add", dst=str(dst), gateway=str(gw), oif=index)
                if spec.userspace_datapath:
                    tx_checksum_off(sock, spec.ifname)
            if spec.userspace_datapath:
                make_inert(spec.host)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    tx_checksum_off(sock, spec.host)
        except (NetlinkError, IndexError) as exc:
            raise IprouteError(f"netlink: configuring {spec.ifname} in {spec.netns}: "
                               f"{exc or 'not found'}") from exc  # fmt: skip
        return host_mac
