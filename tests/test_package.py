"""The wheel: built from the source, installed into a fresh venv outside the checkout, it
gives working `vxflow` and `vxflow-cni` entry points and runs an emulated cluster whose
controller, agents and CNI plugin all come from that install.

The venv is made as scripts/setup.sh makes one (Debian's Python 3.11,
--system-site-packages: Debian's python3-nftables for --ip-masq). Its
dependencies are the suite's own: a .pth file puts this environment's
site-packages on its path, so pip resolves the wheel's pinned ranges against
exactly the versions under test, offline, while vxflow itself
comes only from the wheel (that directory's own .pth files, among them the
checkout's editable install, are not processed). Dependency checks: `UNMET`.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from daemons.build import VERSION
from leases.subnet_env import read_subnet_env
from tests.emulation import emulated_cluster

ROOT = Path(__file__).resolve().parents[1]
# The installed vxflow's requirements (not its extras) that its environment does not meet
# (`pip check` would also judge Debian's own system packages).
UNMET = """
from importlib.metadata import PackageNotFoundError, requires, version
from packaging.requirements import Requirement
for req in map(Requirement, requires("vxflow")):
    if req.marker is None:
        try:
            have = version(req.name)
        except PackageNotFoundError:
            have = None
        if have is None or not req.specifier.contains(have, prereleases=True):
            print(req, "unmet:", have)
"""
BUILD = ".venv/bin/python -m pip wheel --no-deps --no-build-isolation -w dist ."  # README's
PACKAGES = {"vxflow", "daemons", "controller", "ovsdb", "flows", "leases", "cni"}


@dataclass(frozen=True)
class Install:
    wheel: Path
    venv: Path
    workdir: Path  # outside the checkout: no source tree in sight

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=check,
                              cwd=self.workdir)  # fmt: skip


def source_copy(dest: Path) -> Path:
    """The checkout's files (tracked and new, not ignored): building writes beside them."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
                           capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def commit_copy(dest: Path, commit: str) -> Path:
    """The tree of `commit` (`git archive`), as a release was cut from it. A shallow clone
    (as CI systems make) lacks it: its history is fetched from its origin first."""
    dest.mkdir(parents=True)
    git = ["git", "-C", str(ROOT)]
    if subprocess.run([*git, "cat-file", "-e", f"{commit}^{{commit}}"],
                      capture_output=True).returncode != 0:
        shallow = subprocess.run([*git, "rev-parse", "--is-shallow-repository"],
                                 capture_output=True, text=True).stdout.strip() == "true"  # fmt: skip
        assert shallow, f"commit {commit} is not in this clone's history"
        subprocess.run([*git, "fetch", "--quiet", "--unshallow"], check=True, timeout=300)
    archive = subprocess.run([*git, "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def build_wheel(tmp: Path, version: str | None = None, commit: str | None = None) -> Path:
    """The wheel, built as the README shows in a copy of the checkout (or of `commit`'s
    tree), moved to `tmp` (`version`: its code under another version, e.g. the next
    release)."""
    src = commit_copy(tmp / "src", commit) if commit else source_copy(tmp / "src")
    if version is not None:
        pyproject = src / "pyproject.toml"
        text = pyproject.read_text()
        old = re.search(r'^version = "([^"]+)"', text, re.M)
        assert old is not None, "pyproject.toml names no version"
        pyproject.write_text(text.replace(old.group(0), f'version = "{version}"', 1))
    (src / ".venv").symlink_to(Path(sys.executable).parents[1])  # as scripts/setup.sh left it
    subprocess.run(shlex.split(BUILD), cwd=src, check=True, capture_output=True)
    (built,) = (src / "dist").glob("vxflow-*.whl")
    wheel = Path(shutil.move(built, tmp / built.name))
    shutil.rmtree(src)
    return wheel


def use_tested_dependencies(venv: Path) -> None:
    """Put this environment's site-packages on `venv`'s path (see the module's docstring)."""
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    (site / "vxflow-test-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")


def install_wheel(tmp: Path, version: str | None = None,
                  commit: str | None = None) -> tuple[Path, Path]:  # fmt: skip
    """(wheel, venv): the wheel built (see build_wheel) and installed into a fresh venv in
    `tmp`."""
    wheel = build_wheel(tmp, version, commit)
    venv = tmp / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)  # fmt: skip
    use_tested_dependencies(venv)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "--no-index", "--no-deps", str(wheel)], check=True,
                   capture_output=True)  # fmt: skip
    return wheel, venv


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    tmp = tmp_path_factory.mktemp("wheel")
    wheel, venv = install_wheel(tmp)
    checked = subprocess.run([str(venv / "bin" / "python"), "-c", UNMET], capture_output=True,
                             text=True)  # fmt: skip
    assert (checked.returncode, checked.stdout) == (0, ""), checked  # ranges hold what is tested
    workdir = tmp / "elsewhere"
    workdir.mkdir()
    yield Install(wheel, venv, workdir)


def test_the_wheel_holds_every_package_and_nothing_of_the_tree(install: Install) -> None:
    names = zipfile.ZipFile(install.wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == PACKAGES
    for package in PACKAGES:  # every module of the source is in it
        for module in (ROOT / package).rglob("*.py"):
            assert str(module.relative_to(ROOT)) in names, module
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(install.wheel).read(entry_points).decode()
    assert "vxflow = vxflow.cli:main" in text and "vxflow-cni = cni.main:main" in text


def test_every_dependency_is_bounded_above() -> None:
    """Pinned to ranges that are tested: a new major release is not taken untested (the
    fixture checks that the versions under test meet the ranges)."""
    for req in map(Requirement, metadata.requires("vxflow")):
        if req.marker is None:  # not an extra
            assert any(s.operator in ("<", "<=", "~=", "==") for s in req.specifier), req


def test_entry_points_run_from_the_install(install: Install) -> None:
    assert install.run(install.bin("vxflow"), "--version").stdout == f"vxflow, version {VERSION}\n"
    assert install.run(install.bin("vxflow-cni"), "--version").stdout.startswith(
        f"vxflow-cni {VERSION}: CNI spec"
    )
    where = install.run(install.bin("python"), "-c",
                        "import cni, controller, daemons, ovsdb, vxflow; "
                        "print(*(m.__file__ for m in (cni, controller, daemons, ovsdb, vxflow)))")  # fmt: skip
    assert all(f.startswith(str(install.venv)) for f in where.stdout.split()), where.stdout
    for daemon in ("agent", "controller"):
        assert install.run(install.bin("vxflow"), daemon, "--help").stdout.startswith(
            f"Usage: vxflow {daemon}"
        )


def test_demo_from_a_wheel_says_it_needs_the_source_tree(install: Install) -> None:
    res = install.run(install.bin("vxflow"), "demo", check=False)
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.startswith("Error: ") and "needs a vxflow source tree" in res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1, res.stderr


@pytest.mark.e2e
def test_a_cluster_runs_from_the_install(install: Install, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two nodes, controller, agents and the CNI client from the venv (VXFLOW_BIN): pods and
    podman containers on both nodes reach each other."""
    monkeypatch.setenv("VXFLOW_BIN", str(install.venv / "bin"))
    with emulated_cluster("w", nodes=2, pods=1, containers=True) as cluster:
        daemons = [r.proc for r in cluster.replicas]
        daemons += [node.procs["agent"] for node in cluster.vxflow_nodes]
        for proc in daemons:  # the running process (mnexec has exec'd the agents)
            argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode().split("\0")
            assert argv[:2] == [install.bin("python"), install.bin("vxflow")], argv
        failed = [f"{a.name}->{b.name}" for a, b in cluster.pairs()
                  if not cluster.reachable(a, b.addr)]  # fmt: skip
        assert failed == []
        podman = cluster.podman
        launcher = (podman.cni_bin / "vxflow").read_text()  # what `vxflow-cni install` wrote
        assert launcher.startswith(f"#!{install.bin('python')} -IS") and str(ROOT) not in launcher
        n1, n2 = cluster.vxflow_nodes
        a, b = podman.run(n1, "wheel-a"), podman.run(n2, "wheel-b")
        ip_b = podman.address(b)
        assert IPv4Address(ip_b) in read_subnet_env(cluster.subnet_env_path(n2)).subnet.network
        out = podman.exec(a, "ping", "-c", "3", "-W", "2", ip_b).stdout
        assert " 0% packet loss" in out, out
        log = (cluster.node_dir(n1) / "agent.log").read_text()
        assert f"CNI ADD {a}/eth0: status 0" in log  # the installed client, served by the agent
        podman.rm(a)
        podman.rm(b)
