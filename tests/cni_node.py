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
from typing import Any

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
        conf: dict | None = None, in_node: bool = True, args: str = "",
    ) -> tuple[int, dict | None, str]:  # fmt: skip
        env = {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
               "CNI_IFNAME": ifname, "CNI_PATH": self.cni_path, "CNI_ARGS": args}  # fmt: skip
        if netns:
            env["CNI_NETNS"] = netns
        prefix = ["ip", "netns", "exec", self.node.netns] if in_node else []
        res = subprocess.run(
            [*prefix, self.exe], input=json.dumps(conf or self.conf()), env=env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        out = json.loads(res.stdout) if res.stdout.strip() else None
        return res.returncode, out, res.stderr

    # -- what an attachment leaves ------------------------------------------------
    def ports(self) -> list[str]:
        return sorted(self.node.ovs.vsctl("list-ports", "br-int").split())

    def external_ids(self, port: str) -> dict[str, str]:
        """The external_ids of Interface `port`, unquoted (ovs-vsctl's JSON)."""
        out = self.node.ovs.vsctl("--format=json", "--columns=external_ids", "list", "Interface",
                                  port)  # fmt: skip
        return dict(json.loads(out)["data"][0][0][1])

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


def bootstrapped(underlay: Underlay, tmp_path: Path) -> CniNode:
    """A node whose br-int `vxflow bootstrap` made (netdev datapath), with subnet.env."""
    node = underlay.add_node()
    res = subprocess.run(
        ["ip", "netns", "exec", node.netns, VXFLOW, "bootstrap", "--network", str(NETWORK),
         "--subnet", str(SUBNET), "--public-ip", str(node.underlay_ip),
         "--ovsdb", node.ovs.db_target, "--datapath-type", "netdev"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    cni = CniNode(underlay, node, tmp_path)
    cni.write_subnet_env()
    return cni


Call = tuple[int, Any, str]  # exit status, stdout's JSON (None if empty), stderr


@dataclass
class Libcni:
    """A conflist run as containernetworking/cni's libcni runs it (libcni/api.go, v1.1.2
    and v1.2.x; containerd's go-cni and podman's CNI backend call these same functions).

    - every call's environment is invoke.Args.AsEnv(): all six CNI_* variables, empty
      where the runtime has no value (STATUS and GC: `c.args(cmd, &RuntimeConf{})`);
    - each plugin gets its conflist entry with `name` and `cniVersion` injected
      (buildOneConfig), `prevResult` for ADD the previous plugin's result, for CHECK and
      DEL the cached final result (spec >= 0.4.0), and `runtimeConfig` holding those
      CapabilityArgs whose capability the entry declares (injectRuntimeConfig);
    - ADD and CHECK run the plugins in order, DEL in reverse;
    - GC (GCNetworkList, spec >= 1.1.0) injects the valid attachments as
      `cni.dev/valid-attachments` (v1.2.0-1.2.2) or under both that and
      `cni.dev/attachments` (v1.2.3+, containernetworking/cni#1101); without GCArgs
      neither key, and a nil list is JSON null. (libcni's own DEL of cached attachments
      not listed, before GC, is the runtime's side and not done here.)
    - STATUS (GetStatusNetworkList, spec >= 1.1.0) injects only name and cniVersion.
    The plugin type "vxflow" is `cni.exe`, any other Debian's plugin of that type.
    """

    cni: CniNode
    plugins: list[dict]
    cni_version: str = "1.0.0"
    release: tuple[int, int, int] = (1, 2, 3)  # libcni's version: which GC keys
    capability_args: dict = field(default_factory=dict)
    cached: dict[tuple[str, str], dict] = field(default_factory=dict)  # libcni's result cache

    def env(self, command: str, container_id: str = "", netns: str = "", ifname: str = "",
            args: str = "") -> dict[str, str]:  # fmt: skip
        return {**os.environ, "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
                "CNI_NETNS": netns, "CNI_ARGS": args, "CNI_IFNAME": ifname,
                "CNI_PATH": self.cni.cni_path}  # fmt: skip

    def config(self, entry: dict, inject: dict) -> dict:
        conf = {**entry, "name": "vxnet", "cniVersion": self.cni_version, **inject}
        declared = entry.get("capabilities", {})
        runtime = {k: v for k, v in self.capability_args.items() if declared.get(k)}
        return {**conf, "runtimeConfig": runtime} if runtime else conf

    def exec(self, entry: dict, env: dict[str, str], conf: dict) -> Call:
        exe = self.cni.exe if entry["type"] == "vxflow" else f"{CNI_PATH}/{entry['type']}"
        res = subprocess.run(
            ["ip", "netns", "exec", self.cni.node.netns, exe], input=json.dumps(conf), env=env,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return res.returncode, json.loads(res.stdout) if res.stdout.strip() else None, res.stderr

    def add(self, container_id: str, netns: str, ifname: str = "eth0", args: str = "") -> Call:
        result: dict | None = None
        for entry in self.plugins:
            inject = {"prevResult": result} if result is not None else {}
            env = self.env("ADD", container_id, netns, ifname, args)
            code, result, err = self.exec(entry, env, self.config(entry, inject))
            if code != 0:
                return code, result, err
        assert result is not None
        self.cached[container_id, ifname] = result
        return 0, result, ""

    def check(self, container_id: str, netns: str, ifname: str = "eth0", args: str = "") -> Call:
        return self._each("CHECK", self.plugins, container_id, netns, ifname, args)

    def delete(self, container_id: str, netns: str, ifname: str = "eth0", args: str = "") -> Call:
        called = self._each("DEL", self.plugins[::-1], container_id, netns, ifname, args)
        if called[0] == 0:
            self.cached.pop((container_id, ifname), None)
        return called

    def _each(self, command: str, plugins: list[dict], container_id: str, netns: str,
              ifname: str, args: str) -> Call:  # fmt: skip
        cached = self.cached.get((container_id, ifname))
        inject = {"prevResult": cached} if cached is not None else {}
        env = self.env(command, container_id, netns, ifname, args)
        return self._run(plugins, env, inject)

    def gc(self, valid: list[tuple[str, str]] | None, nil_args: bool = False) -> Call:
        """GCNetworkList(ctx, list, &GCArgs{ValidAttachments: valid}) (None: a nil slice),
        or with nil GCArgs (`nil_args`)."""
        inject: dict = {}
        if not nil_args:
            listed = None if valid is None else [
                {"containerID": c, "ifname": i} for c, i in valid
            ]  # fmt: skip
            inject["cni.dev/valid-attachments"] = listed
            if self.release >= (1, 2, 3):
                inject["cni.dev/attachments"] = listed
        return self._list_wide("GC", inject)

    def status(self) -> Call:
        return self._list_wide("STATUS", {})

    def _list_wide(self, command: str, inject: dict) -> Call:
        return self._run(self.plugins, self.env(command), inject)

    def _run(self, plugins: list[dict], env: dict[str, str], inject: dict) -> Call:
        """A command without a result, plugin by plugin until one fails; the logs of all."""
        logs = ""
        for entry in plugins:
            code, out, err = self.exec(entry, env, self.config(entry, inject))
            logs += err
            if code != 0:
                return code, out, logs
        return 0, None, logs
