"""docs/deploy.md: its commands, as written.

Run as written, on the machine under test, in a private mount namespace
(overlays over /etc and /usr/lib/cni, a tmpfs on /opt: nothing reaches the
host's files): step 1's venv and wheel install (from a wheel built from this
tree, outside it), step 2's certificates, step 5's plugin and conflist. Checked against the real programs without
running them: every `vxflow` and `vxflow-cni` command line is one the CLI
takes (command and options), the conflist is a configuration the plugin
accepts, the etcd settings are etcd's options, and the files the guide
installs are the repository's units and examples, at the paths the units read.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from ipaddress import ip_address
from pathlib import Path

import click
import pytest
from cryptography import x509

from cni.config import parse_netconf
from daemons.build import VERSION
from tests.test_package import build_wheel
from tests.test_systemd_units import directives
from vxflow.cli import cli

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "deploy.md"
VXFLOW = "/opt/vxflow/bin/vxflow"
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def blocks() -> list[str]:
    """The guide's code blocks, in order."""
    return re.findall(r"^```\n(.*?)^```$", GUIDE.read_text(), re.S | re.M)


def block(first: str) -> list[str]:
    """The lines of the block whose first line starts with `first`."""
    return next(b for b in blocks() if b.startswith(first)).splitlines()


def commands() -> list[str]:
    """Every shell line of the guide (not the etcd settings, not a here-document's body)."""
    lines, heredoc = [], None
    for text in blocks():
        if text.startswith("ETCD_"):
            continue
        for line in text.splitlines():
            if heredoc:
                heredoc = None if line == heredoc else heredoc
                continue
            if m := re.search(r"<<'(\w+)'", line):
                heredoc = m.group(1)
            lines.append(line)
    return lines


def parse(group: click.Group, words: list[str]) -> None:
    """Resolve `words` as the CLI would, down to its command's options and arguments."""
    command: click.Command = group
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        sub = command.get_command(click.Context(command), words[0])
        assert sub is not None, f"no command {words[0]!r}"
        command, words = sub, words[1:]
    if words == ["--version"] and command is cli:
        return
    command.make_parser(click.Context(command)).parse_args(list(words))  # raises if unknown


def test_every_vxflow_command_of_the_guide_is_one_the_cli_takes() -> None:
    checked = 0
    for line in commands():
        words = shlex.split(line.rsplit("|", 1)[-1])
        if words and words[0] in (VXFLOW, "vxflow"):
            parse(cli, words[1:])
            checked += 1
        elif words and words[0] == "/opt/vxflow/bin/vxflow-cni":
            assert words[1:] == ["install", "/usr/lib/cni"], line
            checked += 1
    assert checked >= 15


def test_the_guides_conflist_is_one_the_plugin_accepts() -> None:
    text = re.search(r"<<'EOF'\n(.*?)\nEOF", GUIDE.read_text(), re.S)
    assert text is not None
    conflist = json.loads(text.group(1))
    plugin = {"cniVersion": conflist["cniVersion"], "name": conflist["name"],
              **conflist["plugins"][0]}  # fmt: skip
    conf = parse_netconf(json.dumps(plugin).encode(), "ADD")
    assert (conf.bridge, str(conf.subnet_file)) == ("br-int", "/run/flannel/subnet.env")


def test_the_guides_etcd_settings_are_etcds_options() -> None:
    options = subprocess.run(["etcd", "--help"], capture_output=True, text=True).stdout
    settings = block("ETCD_NAME=")
    assert len(settings) == 17
    for line in settings:
        name = line.split("=", 1)[0].removeprefix("ETCD_").lower().replace("_", "-")
        assert f"--{name} " in options or f"--{name}\n" in options, line


def test_the_guide_installs_the_repositorys_units_where_they_read_their_settings() -> None:
    installed = [shlex.split(x) for x in commands() if x.startswith("install -m")]
    assert len(installed) == 4
    for _install, _m, mode, source, dest in installed:
        assert (ROOT / source).is_file(), source
        if source.endswith(".default"):
            unit = ROOT / source.replace(".default", ".service")
            assert directives(unit)["EnvironmentFile"] == [f"-{dest}"] and mode == "600"


@pytest.mark.integration
def test_install_certificates_and_cni_plugin_as_written(tmp_path: Path) -> None:
    """Step 1's venv and wheel, step 2's `vxflow pki` lines, step 5's plugin and conflist,
    typed as the guide has them."""
    work, scratch, out = tmp_path / "work", tmp_path / "scratch", tmp_path / "out"
    for d in (work, scratch, out):
        d.mkdir()
    wheel = build_wheel(work)
    install = block("python3 -m venv")
    assert install[1] == f"/opt/vxflow/bin/pip install ./{wheel.name}"  # the guide's version
    site = "/opt/vxflow/lib/python3.11/site-packages"
    tested = subprocess.run([str(ROOT / ".venv/bin/python"), "-c",
                             "import sysconfig; print(sysconfig.get_path('purelib'))"],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    script = "\n".join([
        "set -eux",
        f"mount -t tmpfs tmpfs {scratch}", f"mkdir {scratch}/upper {scratch}/work",
        f"mount -t overlay overlay -o lowerdir=/etc,upperdir={scratch}/upper,"
        f"workdir={scratch}/work /etc",
        "mount -t tmpfs tmpfs /opt",
        f"mkdir {scratch}/cni {scratch}/cni-work",
        f"mount -t overlay overlay -o lowerdir=/usr/lib/cni,upperdir={scratch}/cni,"
        f"workdir={scratch}/cni-work /usr/lib/cni",
        f"cd {work}",
        install[0],
        # the dependencies: this suite's own (see tests/test_package.py), no index
        f"echo {tested} > {site}/vxflow-test-dependencies.pth",
        *install[1:],
        *block(f"{VXFLOW} pki init"),
        f"cp -a /etc/vxflow/pki {out}/",
        *block("/opt/vxflow/bin/vxflow-cni install"),
        # the installed plugin answers the runtime's VERSION call with the conflist's version
        "CNI_COMMAND=VERSION /usr/lib/cni/vxflow < /etc/cni/net.d/10-vxflow.conflist"
        f" > {out}/version.json",
        f"cp /usr/lib/cni/vxflow /etc/cni/net.d/10-vxflow.conflist {out}/",
    ])  # fmt: skip
    # a Debian machine's PATH (python3 is Debian's), pip kept off any index
    env = {**os.environ, "PATH": DEBIAN_PATH, "PIP_NO_INDEX": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # fmt: skip
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                         capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"vxflow, version {VERSION}\n" in res.stdout
    pki = out / "pki"
    names = {"ca", "admin", "ctl1", "ctl2", "etcd1", "etcd2", "etcd3",
             "node-10.0.0.1", "node-10.0.0.2", "node-10.0.0.3"}  # fmt: skip
    assert {p.name for p in pki.iterdir()} == {f"{n}{s}.pem" for n in names for s in ("", "-key")}
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in pki.glob("*-key.pem"))
    etcd1 = x509.load_pem_x509_certificate((pki / "etcd1.pem").read_bytes())
    sans = etcd1.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ip_address("10.0.0.1"),
                                                        ip_address("127.0.0.1")]  # fmt: skip
    # step 5: the plugin in Debian's CNI directory, run by the venv's Python; the conflist
    assert (out / "vxflow").read_text().startswith("#!/opt/vxflow/bin/python")
    assert json.loads((out / "version.json").read_text())["cniVersion"] == "1.0.0"
    assert json.loads((out / "10-vxflow.conflist").read_text())["plugins"][0]["type"] == "vxflow"
    assert not Path("/opt/vxflow").exists() and not Path("/etc/vxflow").exists()
    assert not Path("/usr/lib/cni/vxflow").exists()
