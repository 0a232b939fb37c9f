"""flannel's ip-masq rules (`--ip-masq`), in an nftables table of vxflow's own.

The rules are flannel's (pkg/trafficmngr/iptables `masqRules`, the same set
its nftables mode writes), for Network N and this node's subnet S, in order:

1. packets kube-proxy marked (mark 0x4000/0x4000) are left alone;
2. S -> N and 3. N -> S: overlay to overlay, never masqueraded;
4. not-N -> S: traffic from outside arriving for our pods keeps its source;
5. N -> anything but multicast (224.0.0.0/4): masquerade (fully random ports);
6. not-N -> N: the host's own traffic into the overlay: masquerade.

On a dual-stack node the same six for IPv6Network and the IPv6 subnet
(flannel's MasqIP6Rules; multicast there is ff00::/8) live in `table ip6
vxflow`, removed when the node has no IPv6 half any more.

They live in `table ip vxflow`, chain `postrtg` (nat, postrouting, srcnat
priority): the whole table is ours, so installing, replacing and removing
never touch anyone else's rules. `ensure()` compares the kernel's listing
with the wanted rules and, if they differ (first run, a new lease, someone
deleted or edited them), replaces the chain's contents in one transaction:
add table, add chain, flush chain, add rules. The agent calls it every few
seconds, so a deleted rule comes back, as flanneld's resync does.

Interface: libnftables' JSON API through Debian's python3-nftables, the
netfilter project's own binding. Commands are data (no rule strings built
for a shell or parsed back), a batch is one netlink transaction, and it
works on Debian 12's default firewall backend (iptables-nft writes to the
same nf_tables). It acts on the calling process's network namespace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network
from typing import Any

log = logging.getLogger(__name__)

FAMILY = "ip"
FAMILIES = {4: FAMILY, 6: "ip6"}  # nftables' family (and payload protocol) per IP version
TABLE = "vxflow"
CHAIN = "postrtg"
KUBE_PROXY_MARK = 0x4000  # kube-proxy's "masquerade this" mark, which flannel skips
MULTICAST = IPv4Network("224.0.0.0/4")
MULTICASTS = {4: MULTICAST, 6: IPv6Network("ff00::/8")}
COMMENT = "vxflow masq"
Network = IPv4Network | IPv6Network


class IpMasqError(RuntimeError):
    """nftables refused a command (no nf_tables support, no permission, bad input)."""


def _addr(field: str, op: str, network: Network) -> dict[str, Any]:
    prefix = {"prefix": {"addr": str(network.network_address), "len": network.prefixlen}}
    protocol = FAMILIES[network.version]
    return {"match": {"op": op, "left": {"payload": {"protocol": protocol, "field": field}},
                      "right": prefix}}  # fmt: skip


RETURN: dict[str, Any] = {"return": None}
MASQUERADE: dict[str, Any] = {"masquerade": {"flags": "fully-random"}}
KUBE_PROXY_MARKED = {
    "match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, KUBE_PROXY_MARK]},
              "right": KUBE_PROXY_MARK}
}  # fmt: skip


def masq_rules(network: Network, subnet: Network) -> list[list[dict[str, Any]]]:
    """flannel's six rules for `network` and this node's `subnet` (of one family), as
    nftables expressions.

    Written in the canonical form `nft -j list` prints, so a listing compares equal.
    """
    n, s = network, subnet
    return [
        [KUBE_PROXY_MARKED, RETURN],
        [_addr("saddr", "==", s), _addr("daddr", "==", n), RETURN],
        [_addr("saddr", "==", n), _addr("daddr", "==", s), RETURN],
        [_addr("saddr", "!=", n), _addr("daddr", "==", s), RETURN],
        [_addr("saddr", "==", n), _addr("daddr", "!=", MULTICASTS[n.version]), MASQUERADE],
        [_addr("saddr", "!=", n), _addr("daddr", "==", n), MASQUERADE],
    ]


def install_commands(
    rules: Sequence[Sequence[dict[str, Any]]], family: str = FAMILY
) -> dict[str, Any]:
    """One nftables JSON batch that leaves exactly `rules` in our chain of `family`'s table
    (atomically)."""
    where = {"family": family, "table": TABLE}
    chain = {**where, "name": CHAIN}
    commands: list[dict[str, Any]] = [
        {"add": {"table": {"family": family, "name": TABLE}}},
        {"add": {"chain": {**chain, "type": "nat", "hook": "postrouting", "prio": 100,
                           "policy": "accept"}}},
        {"flush": {"chain": chain}},
    ]
    commands += [
        {"add": {"rule": {**where, "chain": CHAIN, "comment": COMMENT, "expr": list(expr)}}}
        for expr in rules
    ]
    return {"nftables": commands}


def listed_rules(listing: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """The expressions of our chain's rules in an `nft -j list table` answer, in order."""
    return [
        item["rule"]["expr"]
        for item in listing.get("nftables", [])
        if "rule" in item and item["rule"].get("chain") == CHAIN
    ]


class IpMasq:
    """The rules of one node, kept in place by `ensure()`; `remove()` deletes our table."""

    def __init__(self) -> None:
        import nftables  # Debian's python3-nftables (system site-packages), loaded when used

        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self.installs = 0

    def _current(self, family: str = FAMILY) -> list[list[dict[str, Any]]] | None:
        rc, out, _err = self._nft.cmd(f"list table {family} {TABLE}")
        if rc != 0:
            return None  # no such table
        return listed_rules(json.loads(out))

    def ensure(
        self, network: IPv4Network, subnet: IPv4Network,
        ipv6: tuple[IPv6Network, IPv6Network] | None = None,
    ) -> bool:  # fmt: skip
        """Make our chains hold exactly flannel's rules, IPv6's too on a dual-stack node
        (`ipv6`: its IPv6Network and subnet; None: no ip6 table of ours); True if it had to
        (re)install any."""
        changed = self._ensure_family(masq_rules(network, subnet), FAMILY)
        if ipv6 is not None:
            changed |= self._ensure_family(masq_rules(*ipv6), FAMILIES[6])
        else:
            self._remove(FAMILIES[6])
        if changed:
            self.installs += 1
        return changed

    def _ensure_family(self, wanted: list[list[dict[str, Any]]], family: str) -> bool:
        if self._current(family) == wanted:
            return False
        rc, _out, err = self._nft.json_cmd(install_commands(wanted, family))
        if rc != 0:
            raise IpMasqError(f"installing the masquerade rules failed: {err.strip()}")
        return True

    def remove(self) -> bool:
        """Delete our tables (only ours); True if there was one."""
        return any([self._remove(family) for family in FAMILIES.values()])

    def _remove(self, family: str) -> bool:
        if self._current(family) is None:
            return False
        rc, _out, err = self._nft.json_cmd(
            {"nftables": [{"delete": {"table": {"family": family, "name": TABLE}}}]}
        )
        if rc != 0:
            raise IpMasqError(f"removing table {family} {TABLE} failed: {err.strip()}")
        return True
