"""Real OVS bridges standing in for nodes' br-int: many in one private ovs-vswitchd.

Each bridge is shaped as bootstrap shapes a node's br-int for the controller:
netdev datapath, fail_mode=secure, OpenFlow 1.3/1.4, datapath-id derived from
the node's PublicIP, and the VXLAN port pinned at TUNNEL_OFPORT. Port names
must be unique per OVSDB, so they carry the bridge's index; flows never name
ports, only ofports. Names carry a per-run tag so parallel runs never collide,
and stopping the instance (by PID) removes every bridge and tap with it.

One instance per network namespace: the userspace datapath creates a tap
named `ovs-netdev`, so a second netdev ovs-vswitchd in the same namespace
fails. Benchmarks therefore run inside their own namespace (bench/isolation.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flows.ports import TUNNEL_OFPORT
from leases.model import Lease, datapath_id_for
from ovsdb.instance import OvsInstance

TAG_PREFIX = "vxb"


@dataclass
class Bridge:
    name: str
    lease: Lease
    ovs: OvsInstance

    @property
    def mgmt_socket(self) -> Path:
        return self.ovs.mgmt_socket(self.name)

    @property
    def dpid(self) -> int:
        return datapath_id_for(self.lease.public_ip)


@dataclass
class BridgeFarm:
    """One bridge per lease in `leases`, all in one private ovs-vswitchd."""

    leases: list[Lease]
    tag: str = field(default_factory=lambda: f"{TAG_PREFIX}{os.getpid() % 0xFFFF:04x}")
    bridges: list[Bridge] = field(default_factory=list)
    ovs: OvsInstance | None = None

    def start(self) -> BridgeFarm:
        self.ovs = OvsInstance(name=self.tag).start()
        try:
            self._add_bridges(self.ovs)
        except Exception:
            self.stop()
            raise
        return self

    def _add_bridges(self, ovs: OvsInstance) -> None:
        args: list[str] = []
        for i, lease in enumerate(self.leases):
            br, tun = f"{self.tag}s{i}", f"{self.tag}t{i}"
            dpid = f"{datapath_id_for(lease.public_ip):016x}"
            args += [
                "--", "add-br", br,
                "--", "set", "bridge", br, "datapath_type=netdev", "fail_mode=secure",
                "protocols=OpenFlow13,OpenFlow14", f"other-config:datapath-id={dpid}",
                "other-config:disable-in-band=true",
                "--", "add-port", br, tun,
                "--", "set", "interface", tun, "type=vxlan", f"ofport_request={TUNNEL_OFPORT}",
                "options:remote_ip=flow", "options:key=flow",
                f"options:local_ip={lease.public_ip}", "options:dst_port=8472",
            ]  # fmt: skip
            self.bridges.append(Bridge(br, lease, ovs))
        ovs.vsctl("--timeout=300", *args, timeout=330)

    def use_tls(self, pki: Path) -> None:
        """The instance's SSL table for `ssl:` targets: one certificate from the CA in `pki`
        naming every bridge's PublicIP (one ovs-vswitchd presents one certificate for all
        its bridges; the controller checks each datapath-id's PublicIP against it)."""
        from vxflow import pki as vxpki

        assert self.ovs is not None, "start() first"
        ips = [str(b.lease.public_ip) for b in self.bridges]
        issued = vxpki.issue(pki, f"{self.tag}-farm", f"bench farm {self.tag}", ips=ips,
                             force=True)  # fmt: skip
        self.ovs.vsctl("set-ssl", str(issued.key), str(issued.cert), str(pki / "ca.pem"))

    def set_controller(
        self, target: str | Sequence[str] | None, bridges: list[Bridge] | None = None
    ) -> None:
        """Point `bridges` (default: all) at `target` (e.g. tcp:127.0.0.1:6653), or at every
        target of a sequence (controller replicas), in one transaction, reconnect backoff
        capped at 1 s; None detaches them."""
        targets = [target] if isinstance(target, str) else list(target or ())
        args: list[str] = []
        for i, b in enumerate(self.bridges if bridges is None else bridges):
            if not targets:
                args += ["--", "del-controller", b.name]
                continue
            ids = [f"@c{i}x{j}" for j in range(len(targets))]
            for ref, t in zip(ids, targets, strict=True):
                args += ["--", f"--id={ref}", "create", "Controller", f'target="{t}"',
                         "max_backoff=1000"]  # fmt: skip
            args += ["--", "set", "Bridge", b.name, f"controller=[{','.join(ids)}]"]
        assert self.ovs is not None, "start() first"
        self.ovs.vsctl("--timeout=60", *args, timeout=90)

    def masters(self) -> dict[str, str]:
        """bridge name -> target of the controller ovs-vswitchd reports as its master
        (bridges without one are left out; OVS refreshes this status lazily)."""
        assert self.ovs is not None, "start() first"
        csv = ("--format=csv", "--data=bare", "--no-headings")
        rows = self.ovs.vsctl(*csv, "--columns=_uuid,target,role", "list", "controller")
        master = {u: t for u, t, role in (r.split(",") for r in rows.splitlines()) if role == "master"}
        out = {}
        for line in self.ovs.vsctl(*csv, "--columns=name,controller", "list", "bridge").splitlines():
            name, _, uuids = line.partition(",")
            held = [master[u] for u in uuids.split() if u in master]
            if len(held) == 1:
                out[name] = held[0]
        return out

    def stop(self) -> None:
        if self.ovs is not None:
            self.ovs.stop()
        self.ovs = None
        self.bridges.clear()

    def __enter__(self) -> BridgeFarm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
