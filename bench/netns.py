"""Child network namespaces for extra ovs-vswitchd instances, joined to the benchmark's.

A second netdev ovs-vswitchd cannot share a namespace with the first (both
create the `ovs-netdev` tap), so each extra instance lives in a namespace of
its own. Its only traffic is OpenFlow to the controller, so the join is a
point-to-point veth pair: the benchmark's namespace holds HUB (198.18.0.1/32
on its loopback, where the controller listens), each child one address
198.18.0.(i+1)/32, with a host route over the pair each way. Addresses never
leave 198.18.0.0/24, and only the benchmark's own namespace (bench/isolation.py)
may be given HUB.
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass

from bench.isolation import inside

HUB = "198.18.0.1"
MAX_CHILDREN = 253  # 198.18.0.2 .. 198.18.0.254


def _ip(*args: str, netns: str | None = None, check: bool = True) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    res = subprocess.run([*prefix, "ip", *args], capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {res.stderr.strip()}")


def _require_benchmark_namespace() -> None:
    """Veths, HUB and routes go into the current namespace: never the machine's own."""
    if not inside():
        raise RuntimeError("several ovs-vswitchd need the benchmark's own namespace (bench/isolation.py)")


def add_hub() -> str:
    """Give the benchmark's namespace HUB (idempotent); return it for `--listen`."""
    _require_benchmark_namespace()
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "lo"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    if f" {HUB}/" not in out:
        _ip("addr", "add", f"{HUB}/32", "dev", "lo")
    return HUB


@dataclass
class ChildNamespace:
    """Namespace `name` reaching HUB over veth `<name>h` (here) / `<name>c` (there)."""

    name: str
    index: int  # 1.. : its address is 198.18.0.(index+1)
    _made: bool = False

    @property
    def address(self) -> str:
        if not 1 <= self.index <= MAX_CHILDREN:
            raise ValueError(f"child namespace index {self.index} outside 1..{MAX_CHILDREN}")
        return str(ipaddress.IPv4Address(HUB) + self.index)

    def start(self) -> ChildNamespace:
        _require_benchmark_namespace()
        here, there, addr = f"{self.name}h", f"{self.name}c", self.address
        _ip("netns", "add", self.name)
        self._made = True
        try:
            _ip("link", "add", here, "type", "veth", "peer", "name", there, "netns", self.name)
            _ip("link", "set", here, "up")
            _ip("route", "add", f"{addr}/32", "dev", here)
            for args in (("link", "set", "lo", "up"), ("link", "set", there, "up"),
                         ("addr", "add", f"{addr}/32", "dev", there),
                         ("route", "add", f"{HUB}/32", "dev", there, "src", addr)):  # fmt: skip
                _ip(*args, netns=self.name)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Delete the pair and the namespace (the peer and routes go with them)."""
        if self._made:
            _ip("link", "del", f"{self.name}h", check=False)
            _ip("netns", "del", self.name, check=False)
            self._made = False
