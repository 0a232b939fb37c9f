"""flanneld's masquerade rules in iptables, as `vxflow migrate` hands them over.

flanneld with --ip-masq keeps its rules in the nat table: a jump `POSTROUTING -j
FLANNEL-POSTRTG` and the chain FLANNEL-POSTRTG (pkg/trafficmngr/iptables). A migration
puts vxflow's own table in place first (ovsdb/ipmasq.py: the same rules in nftables),
then reads flanneld's rules as `iptables -t nat -S` prints them (lines iptables-restore
takes back), records them and removes them; a rollback puts them back before it removes
vxflow's table. Both rule sets masquerade alike, so while both are there a packet is
masqueraded once (the first NAT decision holds for its connection), and at no moment is
neither there. Each change is one iptables-restore --noflush: one transaction.
"""

from __future__ import annotations

import subprocess

CHAIN = "FLANNEL-POSTRTG"


class FlannelMasqError(RuntimeError):
    """iptables refused (or is not installed): the message says why."""


def _iptables(command: list[str], stdin: str | None = None) -> str:
    try:
        res = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise FlannelMasqError(f"`{command[0]}`: {exc}") from exc
    if res.returncode != 0:
        raise FlannelMasqError(f"`{' '.join(command)}` failed: {res.stderr.strip()}")
    return res.stdout


def rules() -> list[str]:
    """flanneld's rules as `iptables -t nat -S` prints them: the jumps to its chain, then
    the chain's rules in order (empty: none, e.g. flanneld without --ip-masq)."""
    listed = _iptables(["iptables", "-w", "-t", "nat", "-S"]).splitlines()
    jumps = [line for line in listed
             if line.startswith("-A ") and line.split()[-2:] == ["-j", CHAIN]]  # fmt: skip
    return jumps + [line for line in listed if line.startswith(f"-A {CHAIN} ")]


def _restore(lines: list[str]) -> None:
    _iptables(["iptables-restore", "-w", "--noflush"], "\n".join(["*nat", *lines, "COMMIT", ""]))


def remove(recorded: list[str]) -> None:
    """The jumps of `recorded` and flanneld's chain gone, in one transaction (nothing if
    they are gone already: a re-run of the step)."""
    if not recorded or not rules():
        return
    jumps = ["-D" + line[2:] for line in recorded if not line.startswith(f"-A {CHAIN} ")]
    _restore([*jumps, f"-F {CHAIN}", f"-X {CHAIN}"])


def put_back(recorded: list[str]) -> None:
    """`recorded` in place again, in one transaction, unless flanneld's chain is there
    already (a flanneld started meanwhile made it again)."""
    if not recorded or rules():
        return
    _restore([f":{CHAIN} - [0:0]", *recorded])
