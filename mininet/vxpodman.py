"""Containers on emulated nodes through a real runtime: podman + runc driving vxflow-cni.

Facts this follows (verified on Debian 12 with podman 4.3.1
and runc 1.1.5): podman's CNI backend (`network_backend = "cni"`) loads the
`*.conflist` files of its `network_config_dir`, so each node gets its own
containers.conf naming its own directory, whose conflist points vxflow-cni at
that node's OVSDB, subnet.env and agent socket (`vxflow-cni install` puts the
fast client in the cluster's CNI bin directory, so each node's agent runs the
calls); a node whose CNI config dir is its own (one `vxflow migrate` switched)
gets a containers.conf naming that directory, so podman reads its conflist as
it is; `runtime = "runc"` (crun fails on this machine's cgroups) and
`default_ulimits = []` (podman's default nofile limit is refused here). podman runs under `nsenter --net=/proc/<node>/ns/net`, so
the CNI plugins run in the node's namespace and the pod's veth lands on that
node (`ip netns exec` would remount /sys and runc would find no cgroups).

Everything podman keeps (storage, its database, run and tmp dirs) is under
the cluster's work dir, so it never sees or touches the machine's own
containers; the image is imported from Debian's busybox-static (no registry
is needed). Containers are removed by id when the cluster stops.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vxnodes import OvsHost, VxflowNode, _venv_tool

IMAGE = "localhost/vxflow-busybox:latest"
NETWORK = "vxflow"  # the conflist's name, which `podman run --network` selects
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
CNI_DIR = Path("/usr/lib/cni")  # Debian's containernetworking-plugins (host-local)
APPLETS = ("sh", "ping", "ip", "sleep", "cat", "hostname", "ls", "wget", "nc", "true")


def missing() -> list[str]:
    """What this machine lacks to run containers (empty: podman can run here)."""
    needs = {
        "podman": shutil.which("podman"),
        "runc": shutil.which("runc"),
        "nsenter": shutil.which("nsenter"),
        f"{CNI_DIR}/host-local (containernetworking-plugins)": (CNI_DIR / "host-local").exists()
        or None,
        f"{BUSYBOX} (busybox-static)": BUSYBOX.exists() or None,
    }
    return [name for name, found in needs.items() if not found]


class PodmanError(RuntimeError):
    """A podman command failed (its stderr says why)."""


@dataclass
class Podman:
    """A private podman for one cluster: `add_node()` each node, then `run()` containers."""

    workdir: Path
    _nodes: dict[str, OvsHost] = field(default_factory=dict)
    networks: dict[str, str] = field(default_factory=dict)  # node name -> network, if not NETWORK
    containers: dict[str, str] = field(default_factory=dict)  # id -> node name
    names: dict[str, str] = field(default_factory=dict)  # name -> id

    @property
    def storage_conf(self) -> Path:
        return self.workdir / "storage.conf"

    @property
    def cni_bin(self) -> Path:
        return self.workdir / "cni-bin"

    def node_dir(self, node: OvsHost) -> Path:
        return self.workdir / node.name

    def setup(self) -> Podman:
        """Storage, the plugin under its type name, and the busybox image."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_conf.write_text(
            "[storage]\n"
            'driver = "vfs"\n'
            f'graphroot = "{self.workdir / "storage"}"\n'
            f'runroot = "{self.workdir / "run"}"\n'
        )
        self._write_conf(self.workdir)  # for commands of no node (the image import)
        self.cni_bin.mkdir(exist_ok=True)  # `vxflow`, the type: the fast client of the agents
        subprocess.run([_venv_tool("vxflow-cni"), "install", str(self.cni_bin)], check=True,
                       capture_output=True)  # fmt: skip
        self._import_image()
        return self

    def _import_image(self) -> None:
        rootfs = self.workdir / "rootfs.tar"
        with tarfile.open(rootfs, "w") as tar:
            for folder in ("bin", "etc", "proc", "sys", "dev", "tmp", "run"):
                info = tarfile.TarInfo(folder)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            tar.add(BUSYBOX, "bin/busybox")
            for applet in APPLETS:
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(info)
        self._podman(None, "import", "--quiet", str(rootfs), IMAGE)
        rootfs.unlink()

    def add_node(self, node: VxflowNode, ovsdb: str, subnet_file: Path, agent_socket: Path) -> None:
        """The node's containers.conf and CNI config dir with its vxflow conflist."""
        folder = self.node_dir(node)
        (folder / "net.d").mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [{
                "type": "vxflow", "ovsdb": ovsdb, "bridge": "br-int",
                "subnetFile": str(subnet_file), "dataDir": str(folder / "cni"),
                "agentSocket": str(agent_socket), "isDefaultGateway": True,
                "ipam": {"type": "host-local", "dataDir": str(folder / "ipam")},
            }],
        }  # fmt: skip
        (folder / "net.d" / f"10-{NETWORK}.conflist").write_text(json.dumps(conflist, indent=2))
        self._write_conf(folder)
        self._nodes[node.name] = node

    def add_node_conf_dir(self, node: OvsHost, conf_dir: Path) -> str:
        """A node whose CNI config dir is its own `conf_dir` (one `vxflow migrate` switched to
        vxflow-cni): podman reads the conflist there unchanged. Its network's name (the
        conflist's), which `run()` selects on this node."""
        (conflist,) = conf_dir.glob("*.conflist")
        network = json.loads(conflist.read_text())["name"]
        self._write_conf(self.node_dir(node), conf_dir)
        self._nodes[node.name], self.networks[node.name] = node, network
        return network

    def _write_conf(self, folder: Path, conf_dir: Path | None = None) -> None:
        """`folder`/containers.conf: podman's settings, CNI networks from `conf_dir`
        (default `folder`/net.d)."""
        conf_dir = conf_dir or folder / "net.d"
        conf_dir.mkdir(parents=True, exist_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "containers.conf").write_text(
            "[containers]\n"
            "default_ulimits = []\n"
            "[network]\n"
            'network_backend = "cni"\n'
            f'network_config_dir = "{conf_dir}"\n'
            f'cni_plugin_dirs = ["{self.cni_bin}", "{CNI_DIR}"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "none"\n'
            f'tmp_dir = "{self.workdir / "tmp"}"\n'
            f'static_dir = "{self.workdir / "storage" / "libpod"}"\n'
            f'volume_path = "{self.workdir / "volumes"}"\n'
        )

    def ipam_dir(self, node: VxflowNode) -> Path:
        """host-local's allocations for this node: one file per address in use."""
        return self.node_dir(node) / "ipam" / NETWORK

    def command(self, node: OvsHost | None, *args: str,
                env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:  # fmt: skip
        """The argv and environment of `podman ARGS` as it runs for `node` (inside its netns),
        with `env` added (podman forwards its CNI_ARGS to the plugins)."""
        folder = self.workdir if node is None else self.node_dir(node)
        env = {**os.environ, **(env or {}), "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
               "CONTAINERS_CONF": str(folder / "containers.conf")}  # fmt: skip
        argv = ["podman", *args]
        if node is not None:
            argv = ["nsenter", f"--net=/proc/{node.pid}/ns/net", *argv]
        return argv, env

    def _podman(self, node: OvsHost | None, *args: str, timeout: float = 60,
                env: dict[str, str] | None = None) -> str:  # fmt: skip
        argv, env = self.command(node, *args, env=env)
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise PodmanError(f"`podman {' '.join(args)}` on "
                              f"{node.name if node else 'the host'} failed: {res.stderr.strip()}")  # fmt: skip
        return res.stdout

    def network(self, node: OvsHost) -> str:
        """The CNI network of vxflow on `node`: NETWORK, or its own conflist's."""
        return self.networks.get(node.name, NETWORK)

    def run(self, node: OvsHost, name: str, *cmd: str, env: dict[str, str] | None = None) -> str:
        """Start a container on `node` in its vxflow network (`env` added to podman's); its id."""
        cid = self._podman(
            node, "run", "--detach", "--name", name, "--network", self.network(node),
            "--cap-add", "NET_RAW", IMAGE, *(cmd or ("sleep", "3600")), env=env,
        ).strip()  # fmt: skip
        self.containers[cid] = node.name
        self.names[name] = cid
        return cid

    def node_of(self, ref: str) -> OvsHost:
        """The node of a container we started, by id or name."""
        return self._nodes[self.containers[self.names.get(ref, ref)]]

    def exec(self, ref: str, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """`podman exec REF CMD` (id or name; the command's result, whatever its exit status)."""
        argv, env = self.command(self.node_of(ref), "exec", ref, *cmd)
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)

    def address(self, ref: str) -> str:
        node = self.node_of(ref)
        template = f"{{{{.NetworkSettings.Networks.{self.network(node)}.IPAddress}}}}"
        return self._podman(node, "inspect", "--format", template, ref).strip()

    def wait_reachable(self, ref: str, address: str, timeout: float = 10) -> float:
        """Until a ping from container `ref` to `address` is answered (its flows may still be
        on their way); the seconds it took."""
        start = time.monotonic()
        while self.exec(ref, "ping", "-c", "1", "-W", "1", address).returncode != 0:
            if time.monotonic() - start > timeout:
                raise PodmanError(f"{address} not reachable from {ref[:12]} after {timeout:.0f}s")
        return time.monotonic() - start

    def rm(self, ref: str) -> None:
        """`podman rm --force --time 0 REF` (CNI DEL runs as its network is torn down)."""
        self._podman(self.node_of(ref), "rm", "--force", "--time", "0", ref)
        cid = self.names.get(ref, ref)
        del self.containers[cid]
        self.names = {n: i for n, i in self.names.items() if i != cid}

    def stop(self) -> list[str]:
        """Remove every container we started, by id; the errors met (never raises)."""
        errors = []
        for cid in list(self.containers):
            try:
                self.rm(cid)
            except (PodmanError, subprocess.TimeoutExpired) as exc:
                errors.append(str(exc))
                self.containers.pop(cid, None)
        return errors

    def wait_running(self, cid: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.exec(cid, "true").returncode != 0:
            if time.monotonic() > deadline:
                raise PodmanError(f"container {cid[:12]} is not running after {timeout:.0f}s")
            time.sleep(0.1)
