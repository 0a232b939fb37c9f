"""Logged policy drops (`vxflow controller --log-policy-drops [RATE]`): the packet-ins of
the policy stage's default drops, decoded and logged one line each, bounded three times.

With the option on, each default drop of the policy stage (flows/policy.py) passes meter
DROP_LOG_METER, then sends the packet's first bytes to the controller, as Antrea logs its
policy drops: the switch's meter (RATE packets/s, a burst of as many) drops what a flood
sends past it before it costs the controller anything. The controller guards again, per
switch, with a token bucket of the same rate (a burst of two seconds' worth, so the meter
is what binds while it is in place): a switch without the meter, or one that was changed,
still cannot flood it. Where the packet-in is read (`controller.reader`, the one thread
that reads every switch) only that bucket and a bounded queue are touched, never a lock or
I/O; one green thread of its own decodes and logs. What is dropped on the controller's
side is counted by reason:

- rate: past the switch's token bucket;
- backlog: the queue of lines to write was full (the log is slower than RATE x switches);
- undecodable: not a packet vxflow can read (too short, or of an unknown drop: the switch
  holds a drop the controller no longer knows).

So every packet-in of a logged drop is either a log line (vxflow_policy_drops_logged_total)
or counted suppressed (vxflow_policy_drops_suppressed_total{reason}).
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from eventlet.queue import Full, LightQueue

from controller import metrics, ofwire
from flows.flow import Owner, Table, owner_of
from flows.policy import DROP_LOG_METER
from leases.policy import EGRESS, INGRESS

log = logging.getLogger("controller.droplog")

BACKLOG = 1024  # packet-ins waiting to be logged, every switch's together
_DIRECTION = {int(Table.POL_EGRESS): EGRESS, int(Table.POL_INGRESS): INGRESS}
_PACKET_IN = struct.Struct("!IHBBQ")  # buffer_id, total_len, reason, table_id, cookie
_PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
_PORTED = (6, 17, 132)
ETH_TYPE_IP, ETH_TYPE_IPV6, ETH_TYPE_VLAN = 0x0800, 0x86DD, 0x8100

# who a drop hit: (node, direction, the pod's address, the isolation group) -> (the pod's
# namespace/name or None, the policies isolating it), or None for no such group now
IsolationOf = Callable[[IPv4Address, str, IPv4Address | IPv6Address, IPv4Address],
                     tuple[str | None, tuple[str, ...]] | None]  # fmt: skip


def meter_mods(rate: int, xid: int) -> bytes:
    """The logged drops' meter as an add then a modify (xids `xid`, `xid + 1`): the add
    installs it where it is missing (where it is there, the switch refuses it, which is
    expected), the modify sets a meter that was there to this rate."""
    return b"".join(ofwire.encode_meter_mod(command, DROP_LOG_METER, rate, rate, xid + i)
                    for i, command in enumerate((ofwire.OFPMC_ADD, ofwire.OFPMC_MODIFY)))  # fmt: skip


@dataclass(frozen=True)
class Drop:
    """One dropped packet as a packet-in shows it."""

    direction: str  # INGRESS or EGRESS
    group: IPv4Address  # the isolation group whose default drop it hit (its cookie's key)
    protocol: str  # tcp, udp, icmp, ... or the IP protocol number
    src: IPv4Address | IPv6Address
    dst: IPv4Address | IPv6Address
    sport: int | None = None  # TCP, UDP and SCTP only
    dport: int | None = None

    @property
    def pod_ip(self) -> IPv4Address | IPv6Address:
        """The guarded pod's address: the source of egress, the destination of ingress."""
        return self.src if self.direction == EGRESS else self.dst

    def endpoints(self) -> str:
        def at(ip: IPv4Address | IPv6Address, port: int | None) -> str:
            if port is None:
                return str(ip)
            return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"

        return f"{at(self.src, self.sport)} -> {at(self.dst, self.dport)}"


def is_logged_drop(msg: bytes) -> bool:
    """Whether a whole OFPT_PACKET_IN comes from a policy default drop (by its cookie and
    table): cheap enough to ask where the message is read."""
    if len(msg) < 8 + _PACKET_IN.size:
        return False
    _, _, _, table, cookie = _PACKET_IN.unpack_from(msg, 8)
    owner = owner_of(cookie)
    return table in _DIRECTION and owner is not None and owner[0] is Owner.POLICY_DROP


def decode(msg: bytes) -> Drop | None:
    """A whole OFPT_PACKET_IN of a logged drop as a Drop; None if it is not one vxflow can
    read (not an IP packet, or cut short before its addresses)."""
    if not is_logged_drop(msg):
        return None
    _, _, _, table, cookie = _PACKET_IN.unpack_from(msg, 8)
    pos = 8 + _PACKET_IN.size
    if len(msg) < pos + 4:
        return None
    (match_len,) = struct.unpack_from("!H", msg, pos + 2)
    frame = msg[pos + ofwire.pad8(match_len) + 2 :]
    return _frame(frame, _DIRECTION[table], IPv4Address(cookie & 0xFFFFFFFF))


def _frame(frame: bytes, direction: str, group: IPv4Address) -> Drop | None:
    if len(frame) < 14:
        return None
    pos, (eth_type,) = 12, struct.unpack_from("!H", frame, 12)
    if eth_type == ETH_TYPE_VLAN and len(frame) >= 18:
        pos, (eth_type,) = 16, struct.unpack_from("!H", frame, 16)
    ip = frame[pos + 2 :]
    if eth_type == ETH_TYPE_IP and len(ip) >= 20 and ip[0] >> 4 == 4:
        proto, l4 = ip[9], ip[(ip[0] & 0xF) * 4 :]
        src, dst = IPv4Address(ip[12:16]), IPv4Address(ip[16:20])
    elif eth_type == ETH_TYPE_IPV6 and len(ip) >= 40 and ip[0] >> 4 == 6:
        proto, l4 = ip[6], ip[40:]  # (extension headers are not followed: no ports then)
        src, dst = IPv6Address(bytes(ip[8:24])), IPv6Address(bytes(ip[24:40]))
    else:
        return None
    ports = struct.unpack_from("!HH", l4) if proto in _PORTED and len(l4) >= 4 else (None, None)
    return Drop(direction, group, _PROTOCOLS.get(proto, str(proto)), src, dst, *ports)


@dataclass
class Bucket:
    """A token bucket: `rate` a second, at most `burst` held; starts full."""

    rate: float
    burst: float
    tokens: float = -1.0
    at: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:
            self.tokens, self.at = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class DropLog:
    """Takes the packet-ins of logged drops where they are read (`receive`) and logs them
    from a green thread of its own (`run`)."""

    rate: int
    isolation: IsolationOf
    clock: Callable[[], float] = time.monotonic
    queue: LightQueue = field(default_factory=lambda: LightQueue(BACKLOG))
    _buckets: dict[IPv4Address, Bucket] = field(default_factory=dict)

    def receive(self, node: IPv4Address, msg: bytes) -> bool:
        """A packet-in from `node`'s switch; False if it is not a logged drop's (the caller
        handles it as any other). Never blocks: a drop past the switch's bucket or the
        queue's room is counted and forgotten."""
        if not is_logged_drop(msg):
            return False
        bucket = self._buckets.get(node)
        if bucket is None:
            bucket = self._buckets[node] = Bucket(self.rate, 2 * self.rate)
        if not bucket.take(self.clock()):
            metrics.DROPS_SUPPRESSED["rate"].inc()
            return True
        try:
            self.queue.put_nowait((node, msg))
        except Full:
            metrics.DROPS_SUPPRESSED["backlog"].inc()
        return True

    def forget(self, node: IPv4Address) -> None:
        """`node`'s switch is gone: its bucket with it."""
        self._buckets.pop(node, None)

    def run(self) -> None:
        while True:
            node, msg = self.queue.get()
            try:
                self.write(node, msg)
            except Exception:  # never seen; one bad packet-in must not end the log
                metrics.DROPS_SUPPRESSED["undecodable"].inc()
                log.exception("switch %s: a logged policy drop could not be logged", node)

    def write(self, node: IPv4Address, msg: bytes) -> None:
        """One line for one packet-in (or, undecodable, a count)."""
        drop = decode(msg)
        found = None if drop is None else self.isolation(node, drop.direction, drop.pod_ip, drop.group)
        if drop is None or found is None:
            metrics.DROPS_SUPPRESSED["undecodable"].inc()
            return
        pod, policies = found
        metrics.DROPS_LOGGED.inc()
        log.info(
            "policy drop: node %s, pod %s, %s, default isolation by policy %s: %s %s",
            node, pod or "unknown", drop.direction.lower(), ",".join(policies), drop.protocol,
            drop.endpoints(),
            extra={"event": "policy_drop", "node": str(node), "pod": pod,
                   "direction": drop.direction.lower(), "policies": list(policies),
                   "protocol": drop.protocol, "src": str(drop.src), "dst": str(drop.dst),
                   "sport": drop.sport, "dport": drop.dport},
        )  # fmt: skip
