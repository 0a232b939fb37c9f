"""The node's kernel network state through `ip` (iproute2): queries and the one runner.

iproute2 is on every node and `ip -j` gives JSON, so reads are exact; this
keeps pyroute2 out of the dependency list for the handful of calls vxflow
makes. `netns` runs a call with `ip -n NETNS`.
"""

from __future__ import annotations

import json
import subprocess
from ipaddress import IPv4Address


class IprouteError(RuntimeError):
    """An `ip` command failed, or the kernel did not reach the state asked for."""


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    cmd = ["ip", *(("-n", netns) if netns else ()), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    if check and res.returncode != 0:
        raise IprouteError(f"`{' '.join(cmd)}` failed: {res.stderr.strip()}")
    return res.stdout


def ip_json(*args: str, netns: str | None = None) -> list[dict]:
    out = ip("-j", *args, netns=netns)
    return json.loads(out) if out.strip() else []


def link_holding(address: IPv4Address, netns: str | None = None) -> dict | None:
    """The `ip -j addr` entry of the interface holding `address` (the underlay), or None."""
    for link in ip_json("addr", "show", netns=netns):
        for info in link.get("addr_info", []):
            if info.get("family") == "inet" and info.get("local") == str(address):
                return link
    return None


def address_of(ifname: str, netns: str | None = None) -> IPv4Address | None:
    """The first IPv4 address of `ifname` (flannel's --iface), or None."""
    for link in ip_json("addr", "show", "dev", ifname, netns=netns):
        for info in link.get("addr_info", []):
            if info.get("family") == "inet":
                return IPv4Address(info["local"])
    return None


def default_route_interface(netns: str | None = None) -> str | None:
    """The interface of the IPv4 default route (flanneld's choice when --iface is not given)."""
    routes = ip_json("route", "show", "default", netns=netns)
    return routes[0].get("dev") if routes else None
