"""`ovs-appctl ofproto/trace` on one node's ovs-vswitchd, and its output as values.

The trace is OVS's own: it runs the packet through the bridge's real flow
table (and the tunnel and datapath code after it) without sending anything.
Only the named bridge's section is kept (a tunnelled packet's walk through
the underlay bridge after it is OVS's business).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

_STEP = re.compile(r"^\s*(\d+)\. (?:(.*), )?priority (\d+)(?:, cookie (0x[0-9a-f]+))?$")
_OUTPUT = re.compile(r"^output:(\d+)$")
_SET = re.compile(r"^set_field:(\S+)->(\w+)$")


class TraceError(RuntimeError):
    """ovs-appctl could not trace (no such socket, bridge or flow syntax)."""


@dataclass(frozen=True)
class Step:
    """One flow the packet hit: its table, match, priority, cookie and actions."""

    table: int
    match: str
    priority: int
    cookie: int
    actions: tuple[str, ...]


@dataclass
class BridgeTrace:
    flow: str  # the packet as traced
    steps: list[Step] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)  # ports it was output to, in order
    sets: dict[str, str] = field(default_factory=dict)  # fields set on the way (last value)
    final: dict[str, str] = field(default_factory=dict)  # the packet's fields at the end
    datapath_actions: str = ""

    @property
    def tun_dst(self) -> IPv4Address | IPv6Address | None:
        """Where the packet was tunnelled to (tun_dst, or an IPv6 tunnel's tun_ipv6_dst)."""
        if "tun_ipv6_dst" in self.sets:
            return IPv6Address(self.sets["tun_ipv6_dst"])
        return IPv4Address(self.sets["tun_dst"]) if "tun_dst" in self.sets else None

    @property
    def tun_id(self) -> int | None:
        return int(self.sets["tun_id"], 0) if "tun_id" in self.sets else None


def _fields(text: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in text.split(",") if "=" in part)


def parse(output: str, bridge: str) -> BridgeTrace:
    """The `bridge` section of an ofproto/trace output, and its end state."""
    lines = output.splitlines()
    flow = next((ln[len("Flow: "):] for ln in lines if ln.startswith("Flow: ")), "")
    trace = BridgeTrace(flow)
    inside = False
    actions: list[str] = []
    for line in lines:
        if line.startswith("bridge("):
            inside = line == f'bridge("{bridge}")'
            continue
        if line.startswith("Final flow: "):
            final = line[len("Final flow: "):]
            trace.final = _fields(flow if final == "unchanged" else final)
        elif line.startswith("Datapath actions: "):
            trace.datapath_actions = line[len("Datapath actions: "):]
        if not inside or not line.strip() or line.startswith("---"):
            continue
        step = _STEP.match(line)
        if not step and not line.startswith(" "):  # the summary after the last bridge
            inside = False
            continue
        if step:
            actions = []
            table, match, priority, cookie = step.groups()
            trace.steps.append(Step(int(table), match or "", int(priority),
                                    int(cookie or "0", 16), ()))  # fmt: skip
            continue
        action = line.strip()
        if action.startswith("->") or not trace.steps:
            continue
        actions.append(action)
        last = trace.steps[-1]
        trace.steps[-1] = Step(last.table, last.match, last.priority, last.cookie, tuple(actions))
        if m := _OUTPUT.match(action):
            trace.outputs.append(int(m.group(1)))
        elif m := _SET.match(action):
            trace.sets[m.group(2)] = m.group(1)
    return trace


def trace(unixctl: str, bridge: str, flow: str, timeout: float = 10.0) -> BridgeTrace:
    """Trace `flow` (ovs-ofctl syntax) through `bridge` of the ovs-vswitchd at `unixctl`."""
    try:
        res = subprocess.run(["ovs-appctl", "-t", unixctl, "ofproto/trace", bridge, flow],
                             capture_output=True, text=True, timeout=timeout)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TraceError(f"ovs-appctl -t {unixctl}: {exc}") from exc
    if res.returncode != 0:
        raise TraceError(f"ovs-appctl -t {unixctl} ofproto/trace {bridge}: "
                         f"{res.stderr.strip() or res.stdout.strip()}")  # fmt: skip
    return parse(res.stdout, bridge)
