"""docs/deploy.md run as written, every step, on three emulated machines.

Each machine is an emulated node (tests/emulation.py: a network namespace on
the test underlay, its own ovsdb-server and ovs-vswitchd with br-phy) and a
mount namespace of its own in which /etc, /var and /usr/lib/cni are overlays
of the host's, /opt, /root (HOME: pip's cache), /srv and /run are empty tmpfs (what
the guide's lines write outside their working directory stays on the machine,
away from the host and from parallel tests), /run/openvswitch is the node's OVS
run directory (Debian's layout: db.sock, ovs-vswitchd.pid,
ovs-vswitchd.PID.ctl). The guide's lines run there in bash as root, from a
Debian shell (PATH, HOME=/root), in a working directory that holds the wheel
and a copy of the repository's packaging/. `systemctl` is tests/unitstarter.py
(no systemd as PID 1 here; tests/README.md says what it covers): it starts
Debian's own etcd.service and the repository's units from the files installed.

What the test changes in the guide's text, mechanically (`substitute`):
the machines' addresses 10.0.0.1-3 become the nodes' underlay addresses
(198.18.0.1-3), the overlay 10.244.0.0/16 becomes 198.19.0.0/16, the trace
example's pods 10.244.1.2 and 10.244.2.2 become the addresses the two test
pods got, `vxflow-NEW` the next release's version, and the agent's
FLANNELD_IFACE=eth0 becomes br-phy (the emulated nodes use OVS's userspace
datapath, whose underlay address sits on br-phy, not eth0). A line written for
one machine runs on another with that machine's number (`for_machine`).

What the test does that the guide leaves to the operator, in prose: copying
the wheel, the certificates (as step 2 lists them) and the repository's
packaging/ to each machine; the container runtime's part: a CNI ADD of two
pods (one on node1, one on node2) through the conflist as a runtime runs it.
Pip takes the wheel's dependencies from this suite's site-packages, offline
(tests/test_package.py), not from PyPI: a .pth file in /opt/vxflow names them at
SUITE_SITE, where each machine has them bound read-only. Not at their own path:
the units' PrivateTmp= and ProtectHome= hide /tmp and /home from the daemons,
and a checkout there (a CI clone in /tmp) left the daemons without their
dependencies, failing at their first import, restarted again and again. `apt-get install` succeeds only while the
machine's packages are the newest its apt lists name (the machines have no route out:
nothing is downloaded; its changes stay in the machine's /var). Not run at all:
`modprobe openvswitch`
(no kernel modules can be loaded here; the agent picks the userspace datapath
by itself when the module is absent).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_interface
from pathlib import Path

import pytest

from daemons.build import VERSION
from ovsdb.instance import OvsInstance
from tests.emulation import Node, Underlay
from tests.leftovers import RUN_MARKER
from tests.test_deploy_guide import DEBIAN_PATH, GUIDE, block, blocks
from tests.test_e2e_controllers import wait_until
from tests.test_package import BUILD, build_wheel
from tests.test_systemd_units import UNITS, bounding_set, capabilities

# One of the suite's longest tests (1.5-3 min alone, about 4 min beside another e2e module): handed
# out among the first (conftest.group_module_fixtures puts grouped tests first) so that it never
# runs on alone at the end of a parallel run, with a time limit of its own.
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.xdist_group("deploy_guide_run"),
    pytest.mark.timeout(600),
]

ROOT = Path(__file__).resolve().parents[1]
NEW = f"{VERSION}.post1"  # the next release (this tree under a higher version)
GUIDE_MACHINES = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
GUIDE_PODS = ("10.244.1.2", "10.244.2.2")  # step 6's trace example: a pod on node1, one on node2
OVERLAY = "198.19.0.0/16"
SUITE_SITE = "/srv/suite-site-packages"  # this suite's dependencies on each machine (see above)
NOT_RUN = {"modprobe openvswitch": "no kernel module can be loaded on the test machine"}


@dataclass
class Substitution:
    """The guide's example values -> the test's (see the module's docstring)."""

    machines: dict[str, str]
    pods: dict[str, str]

    def __call__(self, text: str) -> str:
        for old, new in (*self.pods.items(), *self.machines.items(),
                         ("10.244.0.0/16", OVERLAY), ("FLANNELD_IFACE=eth0", "FLANNELD_IFACE=br-phy"),
                         ("vxflow-NEW-", f"vxflow-{NEW}-")):  # fmt: skip
            text = text.replace(old, new)
        return text


def for_machine(line: str, example: int, number: int) -> str:
    """A line the guide writes for machine `example` (1-based), as machine `number` runs it."""
    return (line.replace(f"10.0.0.{example}", f"10.0.0.{number}")
            .replace(f"etcd{example}", f"etcd{number}").replace(f"ctl{example}", f"ctl{number}"))  # fmt: skip


def block_with(line: str, nth: int = 0) -> list[str]:
    """The lines of the `nth` code block holding `line` (a whole line)."""
    found = [b.splitlines() for b in blocks() if line in b.splitlines()]
    return found[nth]


def inline(prefix: str) -> str:
    """A command the guide gives inline, in `backticks`, starting with `prefix`."""
    m = re.search(rf"`({re.escape(prefix)}[^`]*)`", GUIDE.read_text())
    assert m is not None, prefix
    return m.group(1)


@dataclass
class Machine:
    """An emulated machine: the node's network namespace, a mount namespace of its own."""

    number: int
    node: Node
    home: Path  # the operator's working directory on it
    holder: subprocess.Popen  # holds the mount namespace (a sleep in it)
    env: dict[str, str]

    def sh(self, lines: Sequence[str], check: bool = True,
           timeout: float = 300) -> subprocess.CompletedProcess:  # fmt: skip
        """`lines` in bash on this machine as root, stopping at the first that fails."""
        script = "\n".join(["set -ex", f"cd {self.home}", *lines])
        res = subprocess.run(["nsenter", "-t", str(self.holder.pid), "-m", "-n", "--",
                              "bash", "-c", script], env=self.env, capture_output=True,
                             text=True, timeout=timeout)  # fmt: skip
        if check and res.returncode != 0:
            raise AssertionError(f"node{self.number}: exit {res.returncode}\n{res.stderr[-4000:]}")
        return res

    def units(self) -> list[str]:
        res = self.sh(["ls /run/unitstarter 2>/dev/null || true"])
        return sorted({n.removesuffix(".json") for n in res.stdout.split() if n.endswith(".json")})

    def log(self, unit: str) -> str:
        return self.sh([f"cat /run/unitstarter/{unit}.service.log"]).stdout


MOUNTS = """set -e
mount -t tmpfs tmpfs {scratch}
for d in etc var cni; do mkdir -p {scratch}/$d/upper {scratch}/$d/work; done
mount -t overlay overlay -o lowerdir=/etc,upperdir={scratch}/etc/upper,workdir={scratch}/etc/work /etc
mount -t overlay overlay -o lowerdir=/var,upperdir={scratch}/var/upper,workdir={scratch}/var/work /var
mount -t overlay overlay -o lowerdir=/usr/lib/cni,upperdir={scratch}/cni/upper,workdir={scratch}/cni/work /usr/lib/cni
mount -t tmpfs tmpfs /opt
mount -t tmpfs tmpfs /root
mount -t tmpfs tmpfs /srv
mkdir {suite_site}
mount --bind -o ro {site} {suite_site}
mkdir {scratch}/netns
mount --rbind /run/netns {scratch}/netns
mount -t tmpfs tmpfs /run
mkdir /run/netns /run/openvswitch /run/lock
mount --rbind {scratch}/netns /run/netns
mount --bind {ovs} /run/openvswitch
echo ready
exec sleep infinity
"""


@contextmanager
def machine(number: int, node: Node, tmp: Path, files: Sequence[Path]) -> Iterator[Machine]:
    """Machine `number` on `node`, with `files` in its operator's directory; on leaving,
    every unit stopped and the mount namespace gone."""
    base = tmp / f"node{number}"
    home, scratch, shim, ovs = base / "home", base / "scratch", base / "bin", base / "ovs"
    for d in (home, scratch, shim, ovs):
        d.mkdir(parents=True)
    for f in files:
        (shutil.copytree if f.is_dir() else shutil.copy2)(f, home / f.name)
    starter = f"{sys.executable} {ROOT / 'tests' / 'unitstarter.py'}"
    for name, verb in (("systemctl", ""), ("journalctl", " journalctl")):
        (shim / name).write_text(f'#!/bin/sh\nexec {starter}{verb} "$@"\n')
        (shim / name).chmod(0o755)
    script = MOUNTS.format(scratch=scratch, ovs=ovs, site=sysconfig.get_path("purelib"),
                           suite_site=SUITE_SITE)  # fmt: skip
    holder = subprocess.Popen(["ip", "netns", "exec", node.netns, "unshare", "--mount",
                               "--propagation", "private", "bash", "-c", script],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "ready"
        # Open vSwitch as Debian's openvswitch-switch runs it: in the machine's file system
        # (it reads the agent's certificates from /etc), its files in /run/openvswitch
        node.ovs = OvsInstance(name=f"{node.netns}", workdir=ovs,
                               exec_prefix=["nsenter", "-t", str(holder.pid), "-m", "-n"])  # fmt: skip
        node.ovs.start()
        pid = (ovs / "ovs-vswitchd.pid").read_text().strip()
        (ovs / f"ovs-vswitchd.{pid}.ctl").symlink_to("ovs-vswitchd.ctl")
        node.run("ip", "addr", "flush", "dev", "eth0")
        Underlay._setup_br_phy(node)  # the userspace datapath's underlay address on br-phy
        env = {"PATH": f"{shim}:{DEBIAN_PATH}", "HOME": "/root", "LANG": "C.UTF-8",
               RUN_MARKER: os.environ[RUN_MARKER], "PIP_NO_INDEX": "1",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # fmt: skip
        m = Machine(number, node, home, holder, env)
        try:
            yield m
        finally:
            not_stopped = []
            for unit in m.units():  # each stopped, or the teardown fails saying which
                res = m.sh([f"systemctl stop {unit}", f"! systemctl is-active {unit}"],
                           check=False, timeout=120)  # fmt: skip
                if res.returncode != 0 and "not found" not in res.stderr:
                    not_stopped.append(f"{unit}: {res.stderr[-2000:]}")
            # the units' output and state, kept with the test's tmp_path for a post-mortem
            m.sh([f"cp -r /run/unitstarter {base}/journal 2>/dev/null || true"])
            assert not_stopped == [], not_stopped
    finally:
        node.ovs.stop()
        holder.send_signal(signal.SIGTERM)
        holder.wait(timeout=10)


def in_parallel(*calls) -> None:
    """Run the calls at once (three operators at three machines); raise the first failure."""
    errors: list[BaseException] = []

    def run(call) -> None:
        try:
            call()
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def main_pid(m: Machine, unit: str) -> int:
    status = m.sh([f"systemctl status {unit}"]).stdout
    return int(re.search(r"Main PID: (\d+)", status).group(1))


def mounts_of(pid: int) -> dict[str, tuple[str, str]]:
    """A process's view: mount point -> (file system type, per-mount options)."""
    view = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        view[fields[4]] = (fields[fields.index("-") + 1], fields[5])
    return view


def check_hardening(m: Machine, unit: str, writable: Sequence[str]) -> None:
    """The running daemon has the unit's bounding set, no_new_privs, a read-only system
    but for `writable`, a private /tmp."""
    pid = main_pid(m, unit)
    assert bounding_set(pid) == set(capabilities(UNITS / f"{unit}.service"))
    view = mounts_of(pid)
    assert "ro" in view["/"][1].split(","), view["/"]
    assert "ro" in view["/etc"][1].split(",") and "ro" in view["/run"][1].split(",")
    for path in writable:
        assert "rw" in view[path][1].split(","), (path, view.get(path))
    assert view["/tmp"][0] == "tmpfs" and "rw" in view["/tmp"][1].split(",")


def report_on_failure(machines: Sequence[Machine], failed: type | None) -> None:
    """After a failure: each unit's state and the end of its log (the journal's stand-in).
    (`m.sh` stops at the first command that fails, and `systemctl status` of a unit that is
    not active, the one to look at, exits 3.)"""
    if failed is None:
        return
    for m in machines:
        for unit in m.units():
            res = m.sh([f"systemctl status {unit} || true",
                        f"tail -n 30 /run/unitstarter/{unit}.log",
                        f"tail -n 30 /run/unitstarter/{unit}.supervisor"], check=False)  # fmt: skip
            print(f"--- node{m.number} {unit}\n{res.stdout}", file=sys.stderr)


def cni_add(m: Machine, netns: str, container: str) -> IPv4Address:
    """What a container runtime does with the guide's conflist: the plugin's ADD."""
    conflist = json.loads(m.sh(["cat /etc/cni/net.d/10-vxflow.conflist"]).stdout)
    (plugin,) = conflist["plugins"]
    conf = {"cniVersion": conflist["cniVersion"], "name": conflist["name"], **plugin}
    env = (f"CNI_COMMAND=ADD CNI_CONTAINERID={container} CNI_NETNS=/run/netns/{netns} "
           "CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni")  # fmt: skip
    res = m.sh([f"{env} /usr/lib/cni/vxflow <<'EOF'\n{json.dumps(conf)}\nEOF"])
    return ip_interface(json.loads(res.stdout)["ips"][0]["address"]).ip


def test_the_guide_as_written_on_three_machines(underlay: Underlay, tmp_path: Path) -> None:
    nodes = [underlay.add_node(i, with_ovs=False) for i in (1, 2, 3)]
    pod_ns = [underlay.add_netns("pa"), underlay.add_netns("pb")]  # before the machines' mounts
    subst = Substitution(
        {a: str(n.underlay_ip) for a, n in zip(GUIDE_MACHINES, nodes, strict=True)}, {}
    )

    # step 1's build, in a checkout; the next release beside it for step 7
    assert block_with(BUILD) == [BUILD]
    ran = {BUILD}  # the lines of the guide's code blocks used as written, checked at the end
    built: dict[str | None, Path] = {}
    in_parallel(*(lambda v=v: built.update({v: build_wheel(tmp_path / f"wheel-{v or 'this'}", v)})
                  for v in (None, NEW)))  # fmt: skip
    wheel, new_wheel = built[None], built[NEW]
    packaging = tmp_path / "packaging"
    shutil.copytree(ROOT / "packaging", packaging)
    for unit in packaging.rglob("*"):
        if unit.is_file():
            unit.write_text(subst(unit.read_text()))
    with ExitStack() as stack:
        machines = [stack.enter_context(machine(i + 1, n, tmp_path, [wheel, new_wheel, packaging]))
                    for i, n in enumerate(nodes)]  # fmt: skip
        m1, m2, m3 = machines
        stack.push(lambda failed, *_: report_on_failure(machines, failed))

        def run(
            m: Machine, lines: Sequence[str], example: int = 1, **kw
        ) -> subprocess.CompletedProcess:
            ran.update(lines)
            return m.sh([subst(for_machine(x, example, m.number)) for x in lines
                         if x not in NOT_RUN], **kw)  # fmt: skip

        # 1. packages and the wheel, on every machine
        venv_site = "/opt/vxflow/lib/python3.11/site-packages"
        packages = block_with("modprobe openvswitch")
        install = block_with("python3 -m venv --system-site-packages /opt/vxflow")
        assert install[1] == f"/opt/vxflow/bin/pip install ./{wheel.name}"

        def step1(m: Machine) -> None:
            run(m, packages)
            out = run(m, [install[0], f"echo {SUITE_SITE} > {venv_site}/vxflow-test-dependencies.pth",
                          *install[1:]]).stdout  # fmt: skip
            assert out.endswith(f"vxflow, version {VERSION}\n"), out

        in_parallel(*(lambda m=m: step1(m) for m in machines))

        # 2. certificates on node1, copied to the others as the guide lists them
        run(m1, block_with("/opt/vxflow/bin/vxflow pki init /etc/vxflow/pki"))
        pki = tmp_path / "pki"
        m1.sh([f"cp -a /etc/vxflow/pki {pki}"])
        for m in (m2, m3):
            ip = nodes[m.number - 1].underlay_ip
            names = ["ca.pem", f"node-{ip}.pem", f"node-{ip}-key.pem", f"etcd{m.number}.pem",
                     f"etcd{m.number}-key.pem"]  # fmt: skip
            names += ["ctl2.pem", "ctl2-key.pem"] if m is m2 else []
            m.sh(["install -d /etc/vxflow/pki",
                  *(f"cp -p {pki / n} /etc/vxflow/pki/" for n in names)])  # fmt: skip
        for m in machines:
            run(m, [inline("chown etcd /etc/vxflow/pki/etcd1-key.pem")])

        # 3. etcd: /etc/default/etcd per machine, the three members started at once
        settings = block_with("ETCD_NAME=etcd1")
        ran.update(settings)
        for m in machines:
            text = "\n".join(x if x.startswith("ETCD_INITIAL_CLUSTER=")
                             else for_machine(x, 1, m.number) for x in settings)  # fmt: skip
            m.sh([f"cat > /etc/default/etcd <<'EOF'\n{subst(text)}\nEOF"])
        start_etcd = block_with("rm -rf /var/lib/etcd/default")
        in_parallel(*(lambda m=m: run(m, start_etcd, timeout=150) for m in machines))
        run(m1, block_with("etcdctl auth enable"))

        # 4. the network, two controller replicas, an agent on every node
        operator = [x for x in block_with("/opt/vxflow/bin/vxflow config show")
                    if x.startswith("export ")]  # fmt: skip
        out = run(m1, block_with("/opt/vxflow/bin/vxflow config show")).stdout
        assert OVERLAY in out, out
        for m in (m1, m2):
            run(m, block_with("install -m 644 packaging/systemd/vxflow-controller.service "
                              "/etc/systemd/system/"))  # fmt: skip
        run(m2, block("sed -i 's/ctl1/ctl2/g"), example=2)
        controller_start = block_with("systemctl enable --now vxflow-controller")
        for m in (m1, m2):
            run(m, controller_start)
            assert m.sh(["systemctl status vxflow-controller"]).stdout.count("active (running)")
        agent_files = block_with("install -m 644 packaging/systemd/vxflow-agent.service "
                                 "/etc/systemd/system/")  # fmt: skip
        agent_edit = block("sed -i 's/node-10.0.0.1/")
        for m in machines:
            run(m, agent_files)
            if m.number > 1:
                run(m, agent_edit, example=2)
            run(m, block_with("systemctl enable --now vxflow-agent"))
            assert "FLANNEL_SUBNET=" in m.sh(["cat /run/flannel/subnet.env"]).stdout
        check_hardening(m1, "vxflow-controller", [])
        check_hardening(m1, "vxflow-agent", ["/run/flannel", "/run/vxflow", "/var/lib/cni",
                                             "/run/openvswitch"])  # fmt: skip
        journal = inline("journalctl -u vxflow-agent")  # "its first line names the version"
        for m in machines:
            first = run(m, [journal]).stdout.splitlines()[0]
            assert f"vxflow {VERSION} agent starting" in first, first

        # 5. the CNI plugin on every node; a container runtime adds a pod on node1 and node2
        for m in machines:
            run(m, block_with("/opt/vxflow/bin/vxflow-cni install /usr/lib/cni"))
        pods = [cni_add(m, ns, f"guide-{m.number}") for m, ns in zip((m1, m2), pod_ns, strict=True)]
        subst.pods = {example: str(ip) for example, ip in zip(GUIDE_PODS, pods, strict=True)}

        def reaches(a: int, b: int) -> bool:
            res = subprocess.run(["ip", "netns", "exec", pod_ns[a], "ping", "-c", "1", "-W", "1",
                                  str(pods[b])], capture_output=True)  # fmt: skip
            return res.returncode == 0

        wait_until("pod on node1 reaches pod on node2", lambda: reaches(0, 1), 60)

        # 6. checking: status (until all is well), the leases, a trace from node1
        status = block_with("/opt/vxflow/bin/vxflow status")

        def healthy(replicas: set[str] | None = None) -> bool:
            """`vxflow status` exits 0 (and lists exactly `replicas`, if given)."""
            res = run(m1, [*operator, status[0]], check=False)
            listed = set(re.findall(r"^(ctl\d) ", res.stdout, re.M))
            return res.returncode == 0 and replicas in (None, listed)

        wait_until("vxflow status: all is well", healthy, 60)
        out = run(m1, [*operator, *status]).stdout
        for node in nodes:
            assert str(node.underlay_ip) in out
        res = run(m1, [*operator, *block("CTL=/var/run/openvswitch/")], check=False)
        assert res.returncode == 1, res.stderr[-2000:]
        assert f"into the tunnel to {nodes[1].underlay_ip}, VNI 1" in res.stdout, res.stdout
        assert f"stopped on node {nodes[1].underlay_ip}" in res.stdout, res.stdout

        # 7. rolling upgrade: the replicas one by one, then the agents, under a ping
        ping = subprocess.Popen(["ip", "netns", "exec", pod_ns[0], "ping", "-n", "-i", "0.05",
                                 str(pods[1])], stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert inline("/opt/vxflow/bin/vxflow status") == status[0]
            for m in (m1, m2):
                run(m, block_with("systemctl restart vxflow-controller"))
                wait_until(f"node{m.number}'s replica back: status exits 0 listing both",
                           lambda: healthy({"ctl1", "ctl2"}), 60)  # fmt: skip
            for m in machines:
                run(m, block_with("systemctl restart vxflow-agent"))
                wait_until(f"node{m.number}'s agent back", healthy, 60)
        finally:
            ping.send_signal(signal.SIGINT)
            out, _ = ping.communicate(timeout=10)
        sent = int(re.search(r"(\d+) packets transmitted", out).group(1))
        answered = {int(seq) for seq in re.findall(r"icmp_seq=(\d+) ttl=", out)}
        assert sent > 20 and not set(range(1, sent)) - answered, out.splitlines()[-3:]
        for m in machines:
            assert m.log("vxflow-agent").count(f"vxflow {NEW} agent starting") == 1
        for m in (m1, m2):
            assert m.log("vxflow-controller").count(f"vxflow {NEW} controller starting") == 1

        # uninstalling node3's agent: its lease given back, its bridge, table and files gone
        a3 = str(nodes[2].underlay_ip)
        leases = block_with("/opt/vxflow/bin/vxflow leases list")
        assert a3 in run(m1, [*operator, leases[-1]]).stdout
        run(m3, block_with("systemctl disable --now vxflow-agent"))
        assert a3 not in run(m1, [*operator, leases[-1]]).stdout
        assert "br-int" not in nodes[2].ovs.vsctl("list-br").split()
        left = m3.sh(["nft list tables; ls /opt /usr/lib/cni /etc/systemd/system"]).stdout
        assert "vxflow" not in left, left
        # and node2's replica: node1's takes its switches, the pods still reach each other
        run(m2, [inline("systemctl disable --now vxflow-controller")])
        wait_until("ctl2 has left the cluster", lambda: healthy({"ctl1"}), 15)
        wait_until("pod on node1 reaches pod on node2 after ctl2 left", lambda: reaches(0, 1), 30)
        assert reaches(1, 0)

    # every line of every code block of the guide was used as written, but the one that cannot be
    unused = [x for b in blocks() for x in b.splitlines() if x not in ran and x not in NOT_RUN]
    assert unused == [], f"lines of docs/deploy.md this test does not run: {unused}"
