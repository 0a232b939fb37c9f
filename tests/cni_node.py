"""An emulated node for driving the CNI plugin directly: br-int, subnet.env, the plugin's dirs.

Shared by the plugin's tests (tests/test_cni_plugin.py) and the fast path's
(tests/test_cni_fast.py): what an attachment leaves behind is read the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network
from pathlib import Path

from leases.subnet_env import SubnetEnv, write_subnet_env
from tests.emulation import Node, Underlay

VXFLOW = str(Path(sys.executable).parent / "vxflow")
VXFLOW_CNI = str(Path(sys.executable).parent / "vxflow-cni")
CNI_PATH = "/usr/lib/cni"
NETWORK = IPv4Network("198.19.0.0/16")
SUBNET = IPv4Network("198.19.7.0/24")


@dataclass
class CniNode:
    """One node with br-int, a subnet.env, and the plugin's state directories."""

    underlay: Underlay
    node: Node
    workdir: Path
    cni_version: str = "1.0.0"
    exe: str = VXFLOW_CNI  # the plugin executable: vxflow-cni, or the fast client it installs
    cni_path: str = CNI_PATH
    conf_extra: dict = field(default_factory=dict)  # e.g. agentSocket

    @property
    def subnet_file(self) -> Path:
        return self.workdir / "subnet.env"

    @property
    def ipam_dir(self) -> Path:
        return self.workdir / "ipam"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def write_subnet_env(self, subnet: IPv4Network = SUBNET) -> None:
        gateway = IPv4Interface((subnet.network_address + 1, subnet.prefixlen))
        write_subnet_env(self.subnet_file, SubnetEnv(NETWORK, gateway, 1450, False))

    def conf(self, **extra) -> dict:
        ipam = {"dataDir": str(self.ipam_dir), **extra.pop("ipam", {})}
        return {
            "cniVersion": self.cni_version, "name": "vxnet", "type": "vxflow",
            "ovsdb": self.node.ovs.db_target, "subnetFile": str(self.subnet_file),
            "dataDir": str(self.data_dir), "ipam": ipam, **self.conf_extra, **extra,
        }  # fmt: skip

    def container(self, name: str) -> str:
        """A fresh container network namespace; its path (what a runtime passes as CNI_NETNS)."""
        return f"/var/run/netns/{self.underlay.add_netns(name)}"

    def plugin(
        self, command: str, container_id: str, netns: str = "", ifname: str = "eth0",
        conf: dict | None = None, in_node: bool = True, exe: str = "",
    ) -> tuple[int, dict | None, str]:  # fmt: skip
        env = {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
               "CNI_IFNAME": ifname, "CNI_PATH": self.cni_path}  # fmt: skip
        if netns:
            env["CNI_NETNS"] = netns
        prefix = ["ip", "netns", "exec", self.node.netns] if in_node else []
        res = subprocess.run(
            [*prefix, exe or self.exe], input=json.dumps(conf or self.conf()), env=env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        out = json.loads(res.stdout) if res.stdout.strip() else None
        return res.returncode, out, res.stderr

    def chain(
        self, command: str, container_id: str, netns: str, plugins: list[dict],
        prev: dict | None = None,
    ) -> tuple[int, dict | None, str]:  # fmt: skip
        """A conflist's `plugins` run as libcni 1.x runs them (AddNetworkList and the
        others): in order (DEL in reverse), each entry with the list's name and cniVersion
        injected, and for CHECK and DEL the cached final result as prevResult, for ADD the
        previous plugin's; the plugin "vxflow" is this node's executable, others Debian's."""
        out: dict | None = prev
        order = reversed(plugins) if command == "DEL" else plugins
        for entry in order:
            conf = {**entry, "name": "vxnet", "cniVersion": self.cni_version}
            if out is not None and command != "VERSION":
                conf["prevResult"] = out
            exe = "" if entry["type"] == "vxflow" else f"{CNI_PATH}/{entry['type']}"
            code, answer, err = self.plugin(command, container_id, netns, conf=conf, exe=exe)
            if code != 0:
                return code, answer, err
            if command == "ADD":
                out = answer
        return 0, out if command == "ADD" else None, ""

    # -- what an attachment leaves ------------------------------------------------
    def ports(self) -> list[str]:
        return sorted(self.node.ovs.vsctl("list-ports", "br-int").split())

    def pod_ports(self) -> list[str]:
        return [p for p in self.ports() if p.startswith("vx") and p != "vxgw0" and p != "vxlan0"]

    def links(self, netns: str | None = None) -> set[str]:
        out = self.node.run("ip", "-o", "link", "show") if netns is None else subprocess.run(
            ["nsenter", f"--net={netns}", "ip", "-o", "link", "show"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}

    def allocations(self) -> list[str]:
        folder = self.ipam_dir / "vxnet"
        return sorted(p.name for p in folder.glob("198.19.*")) if folder.exists() else []

    def records(self) -> list[str]:
        folder = self.data_dir / "vxnet"
        return sorted(p.name for p in folder.glob("*.json")) if folder.exists() else []

    def state(self) -> dict:
        return {"ports": self.ports(), "links": self.links(), "addresses": self.allocations(),
                "records": self.records()}  # fmt: skip
