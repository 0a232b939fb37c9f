"""Real OVS bridges standing in for nodes' br-int: many in one private ovs-vswitchd (or a few).

Each bridge is shaped as bootstrap shapes a node's br-int for the controller:
netdev datapath, fail_mode=secure, OpenFlow 1.3/1.4, datapath-id derived from
the node's PublicIP, and the VXLAN port pinned at TUNNEL_OFPORT. Port names
must be unique per OVSDB, so they carry the bridge's index; flows never name
ports, only ofports. Names carry a per-run tag so parallel runs never collide,
and stopping the instance (by PID) removes every bridge and tap with it.

One instance per network namespace: the userspace datapath creates a tap
named `ovs-netdev`, so a second netdev ovs-vswitchd in the same namespace
fails. Benchmarks therefore run inside their own namespace (bench/isolation.py).
One process serialises the work every node's own ovs-vswitchd would do in a
real cluster, so `vswitchds` > 1 spreads the bridges round-robin over several
instances, each extra one in a child namespace of its own (bench/netns.py):
the controller must then listen on netns.HUB.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.netns import ChildNamespace
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
    """One bridge per lease in `leases`, dealt round-robin over `vswitchds` private
    ovs-vswitchd (the first in this namespace, each other in a child namespace)."""

    leases: list[Lease]
    tag: str = field(default_factory=lambda: f"{TAG_PREFIX}{os.getpid() % 0xFFFF:04x}")
    bridges: list[Bridge] = field(default_factory=list)
    vswitchds: int = 1
    instances: list[OvsInstance] = field(default_factory=list)
    namespaces: list[ChildNamespace] = field(default_factory=list)

    @property
    def ovs(self) -> OvsInstance | None:
        """The first instance (the only one unless `vswitchds` > 1)."""
        return self.instances[0] if self.instances else None

    def start(self) -> BridgeFarm:
        if not 1 <= self.vswitchds <= max(1, len(self.leases)):
            raise ValueError(f"vswitchds={self.vswitchds}: want 1..{len(self.leases)} (one bridge each at least)")
        try:
            for i in range(self.vswitchds):
                netns = None
                if i:
                    self.namespaces.append(ChildNamespace(f"{self.tag}n{i}", i).start())
                    netns = self.namespaces[-1].name
                self.instances.append(OvsInstance(name=f"{self.tag}v{i}" if i else self.tag,
                                                  netns=netns).start())  # fmt: skip
            self._add_bridges()
        except BaseException:
            self.stop()
            raise
        return self

    def _add_bridges(self) -> None:
        args: dict[int, list[str]] = {i: [] for i in range(len(self.instances))}
        for i, lease in enumerate(self.leases):
            br, tun = f"{self.tag}s{i}", f"{self.tag}t{i}"
            dpid = f"{datapath_id_for(lease.public_ip):016x}"
            args[i % len(self.instances)] += [
                "--", "add-br", br,
                "--", "set", "bridge", br, "datapath_type=netdev", "fail_mode=secure",
                "protocols=OpenFlow13,OpenFlow14", f"other-config:datapath-id={dpid}",
                "other-config:disable-in-band=true",
                "--", "add-port", br, tun,
                "--", "set", "interface", tun, "type=vxlan", f"ofport_request={TUNNEL_OFPORT}",
                "options:remote_ip=flow", "options:key=flow",
                f"options:local_ip={lease.public_ip}", "options:dst_port=8472",
            ]  # fmt: skip
            self.bridges.append(Bridge(br, lease, self.instances[i % len(self.instances)]))
        self._each(lambda ovs, a: ovs.vsctl("--timeout=300", *a, timeout=330), args)

    def _each(self, run, args: dict[int, list[str]]) -> None:
        """`run(instance, its args)` for every instance with args, all at once: with several
        instances the switches connect together, as real nodes would, not one after another."""
        jobs = [(self.instances[i], a) for i, a in args.items() if a]
        with ThreadPoolExecutor(max_workers=len(jobs) or 1) as pool:
            for f in [pool.submit(run, ovs, a) for ovs, a in jobs]:
                f.result()

    def switch_pids(self) -> list[int]:
        """Every instance's ovs-vswitchd PID, in instance order."""
        return [ovs.pids()["ovs-vswitchd"] for ovs in self.instances]

    def use_tls(self, pki: Path) -> None:
        """Every instance's SSL table for `ssl:` targets: one certificate from the CA in `pki`
        naming every bridge's PublicIP (one ovs-vswitchd presents one certificate for all
        its bridges; the controller checks each datapath-id's PublicIP against it)."""
        from vxflow import pki as vxpki

        assert self.ovs is not None, "start() first"
        ips = [str(b.lease.public_ip) for b in self.bridges]
        issued = vxpki.issue(pki, f"{self.tag}-farm", f"bench farm {self.tag}", ips=ips,
                             force=True)  # fmt: skip
        for ovs in self.instances:
            ovs.vsctl("set-ssl", str(issued.key), str(issued.cert), str(pki / "ca.pem"))

    def set_controller(
        self, target: str | Sequence[str] | None, bridges: list[Bridge] | None = None
    ) -> None:
        """Point `bridges` (default: all) at `target` (e.g. tcp:127.0.0.1:6653), or at every
        target of a sequence (controller replicas), in one transaction, reconnect backoff
        capped at 1 s; None detaches them. One transaction per instance, all at once."""
        targets = [target] if isinstance(target, str) else list(target or ())
        assert self.instances, "start() first"
        args: dict[int, list[str]] = {i: [] for i in range(len(self.instances))}
        for i, b in enumerate(self.bridges if bridges is None else bridges):
            mine = args[self.instances.index(b.ovs)]
            if not targets:
                mine += ["--", "del-controller", b.name]
                continue
            ids = [f"@c{i}x{j}" for j in range(len(targets))]
            for ref, t in zip(ids, targets, strict=True):
                mine += ["--", f"--id={ref}", "create", "Controller", f'target="{t}"',
                         "max_backoff=1000"]  # fmt: skip
            mine += ["--", "set", "Bridge", b.name, f"controller=[{','.join(ids)}]"]
        self._each(lambda ovs, a: ovs.vsctl("--timeout=60", *a, timeout=90), args)

    def masters(self) -> dict[str, str]:
        """bridge name -> target of the controller ovs-vswitchd reports as its master
        (bridges without one are left out; OVS refreshes this status lazily)."""
        assert self.instances, "start() first"
        csv = ("--format=csv", "--data=bare", "--no-headings")
        out = {}
        for ovs in self.instances:
            rows = ovs.vsctl(*csv, "--columns=_uuid,target,role", "list", "controller")
            master = {u: t for u, t, role in (r.split(",") for r in rows.splitlines())
                      if role == "master"}  # fmt: skip
            for line in ovs.vsctl(*csv, "--columns=name,controller", "list", "bridge").splitlines():
                name, _, uuids = line.partition(",")
                held = [master[u] for u in uuids.split() if u in master]
                if len(held) == 1:
                    out[name] = held[0]
        return out

    def stop(self) -> None:
        """Stop every instance (by PID), then delete its namespace and veth pair."""
        for ovs in self.instances:
            ovs.stop()
        for ns in self.namespaces:
            ns.stop()
        self.instances.clear()
        self.namespaces.clear()
        self.bridges.clear()

    def __enter__(self) -> BridgeFarm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
