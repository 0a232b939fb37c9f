"""The node's kernel network state through `ip` (iproute2): queries and the one runner.

iproute2 is netlink's reference tool, on every node, and `ip -j` gives JSON,
so reads are exact; `ip -batch` applies many changes in one process.
pyroute2's import alone (~90 ms) would cost a CNI plugin process more than
all of its `ip` calls together; only the agent's CNI server, which imports
it once, makes the pod's veth through it (cni/netlink.py). `netns` is a namespace name (`ip -n NETNS`) or a
path such as CNI_NETNS or /proc/PID/ns/net (run under `nsenter --net=PATH`).
"""

from __future__ import annotations

import json
import subprocess
from ipaddress import IPv4Address, IPv6Address, ip_address


class IprouteError(RuntimeError):
    """An `ip` command failed, or the kernel did not reach the state asked for."""


def in_netns(netns: str | None, *cmd: str) -> list[str]:
    """`cmd` run inside `netns`: a path through nsenter, a name with `ip -n`, None as it is."""
    if netns and "/" in netns:
        return ["nsenter", f"--net={netns}", *cmd]
    if netns and cmd[0] == "ip":
        return ["ip", "-n", netns, *cmd[1:]]
    if netns:
        return ["ip", "netns", "exec", netns, *cmd]
    return list(cmd)


def run(*cmd: str, netns: str | None = None, check: bool = True, input: str | None = None) -> str:
    """A command in `netns`; IprouteError with its stderr if it fails and `check`."""
    full = in_netns(netns, *cmd)
    res = subprocess.run(full, capture_output=True, text=True, timeout=10, input=input)
    if check and res.returncode != 0:
        raise IprouteError(f"`{' '.join(full)}` failed: {res.stderr.strip()}")
    return res.stdout


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    return run("ip", *args, netns=netns, check=check)


def ip_batch(commands: list[str], netns: str | None = None) -> None:
    """Several `ip` commands in one process (`ip -batch -`); stops at the first that fails."""
    run("ip", "-batch", "-", netns=netns, input="\n".join(commands) + "\n")


def tx_checksum_off(ifname: str, netns: str | None = None) -> None:
    """The userspace datapath and kernel VXLAN drop packets whose TX checksum was offloaded."""
    run("ethtool", "-K", ifname, "tx", "off", netns=netns)


def ip_json(*args: str, netns: str | None = None) -> list[dict]:
    out = ip("-j", *args, netns=netns)
    return json.loads(out) if out.strip() else []


def ip_json_batch(commands: list[str], netns: str | None, *options: str) -> list[list[dict]]:
    """Each of `commands` (`ip -j OPTIONS` ones that cannot fail) in one process: its JSON."""
    out = run("ip", "-j", *options, "-batch", "-", netns=netns, input="\n".join(commands) + "\n")
    answers: list[list[dict]] = []
    decoder, at = json.JSONDecoder(), 0
    for _ in commands:
        while at < len(out) and out[at].isspace():
            at += 1
        if at == len(out):
            raise IprouteError(f"`ip -batch` gave {len(answers)} answers to {commands}")
        answer, at = decoder.raw_decode(out, at)
        answers.append(answer)
    return answers


def link_holding(
    address: IPv4Address, netns: str | None = None, links: list[dict] | None = None
) -> dict | None:
    """The `ip -j addr` entry of the interface holding `address` (the underlay), or None
    (among `links`, `ip -j addr`'s entries if already read)."""
    for link in ip_json("addr", "show", netns=netns) if links is None else links:
        for info in link.get("addr_info", []):
            if info.get("family") == "inet" and info.get("local") == str(address):
                return link
    return None


def address_of(
    ifname: str, netns: str | None = None, version: int = 4
) -> IPv4Address | IPv6Address | None:
    """The first IPv4 address of `ifname` (flannel's --iface), or with `version` 6 its first
    global IPv6 one (flannel's PublicIPv6 from --iface); None if it has none."""
    args = ("addr", "show", "dev", ifname) + (("scope", "global") if version == 6 else ())
    family = "inet" if version == 4 else "inet6"
    for link in ip_json(f"-{version}", *args, netns=netns):
        for info in link.get("addr_info", []):
            if info.get("family") == family:
                return ip_address(info["local"])
    return None


def default_route_interface(netns: str | None = None) -> str | None:
    """The interface of the IPv4 default route (flanneld's choice when --iface is not given)."""
    routes = ip_json("route", "show", "default", netns=netns)
    return routes[0].get("dev") if routes else None


def gateway_to(address: IPv4Address, netns: str | None = None) -> IPv4Address | None:
    """The next hop of this node's route to `address` (None: on link, or no route)."""
    try:
        routes = ip_json("route", "get", str(address), netns=netns)
    except IprouteError:
        return None
    gateway = routes[0].get("gateway") if routes else None
    return IPv4Address(gateway) if gateway else None
