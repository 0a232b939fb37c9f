"""`vxflow-cni` as an executable: usage, VERSION, the spec's error JSON; its install line as typed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from cni.config import parse_netconf
from cni.main import USAGE, run

VXFLOW_CNI = Path(sys.executable).parent / "vxflow-cni"


def test_help_and_version() -> None:
    assert run(["--help"], {}, b"") == (USAGE, 0)
    out, status = run(["--version"], {}, b"")
    assert status == 0 and "1.0.0" in out
    assert run([], {}, b"")[1] == 2  # no CNI_COMMAND: usage on stderr
    assert run(["--bogus"], {"CNI_COMMAND": "VERSION"}, b"")[1] == 2


def test_version_command() -> None:
    out, status = run([], {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}')
    assert status == 0
    assert json.loads(out) == {
        "cniVersion": "1.0.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }


def test_errors_are_the_specs_json_with_the_configs_version() -> None:
    out, status = run([], {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1"}, b"{}")
    assert status == 1
    assert json.loads(out) == {
        "cniVersion": "1.1.0",
        "code": 4,
        "msg": "required env variables [CNI_NETNS, CNI_IFNAME] missing",
    }
    # finding 10: an error in the environment, found before the configuration is parsed,
    # still carries the configuration's version
    conf = {"cniVersion": "0.4.0", "name": "vxnet", "type": "vxflow"}
    out, status = run([], {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1"}, json.dumps(conf).encode())
    assert (status, json.loads(out)["cniVersion"], json.loads(out)["code"]) == (1, "0.4.0", 4)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/nonexistent",
           "CNI_IFNAME": "eth0"}  # fmt: skip
    conf = {"cniVersion": "0.4.0", "name": "vxnet", "type": "vxflow",
            "subnetFile": "/nonexistent/subnet.env"}  # fmt: skip
    out, status = run([], env, json.dumps(conf).encode())
    error = json.loads(out)
    assert (status, error["cniVersion"], error["code"]) == (1, "0.4.0", 11)
    assert error["msg"] == "/nonexistent/subnet.env does not exist yet"


def test_usage_conflist_is_a_valid_configuration() -> None:
    text = re.search(r"\{\"cniVersion\".*?\}\]\}", USAGE, re.S)
    assert text is not None
    conflist = json.loads(text.group(0))
    plugin = {"cniVersion": conflist["cniVersion"], "name": conflist["name"],
              **conflist["plugins"][0]}  # fmt: skip
    conf = parse_netconf(json.dumps(plugin).encode(), "ADD")
    assert (conf.bridge, str(conf.subnet_file)) == ("br-int", "/run/flannel/subnet.env")
    assert conf.is_default_gateway


def install_line() -> str:
    return next(x.strip() for x in USAGE.splitlines() if x.strip().startswith("vxflow-cni install"))


def test_install_line_as_typed(tmp_path: Path) -> None:
    """The usage's install line run as typed; the runtime then finds the plugin as type vxflow.

    No agent serves the conflist's socket here: the client runs the plugin itself.
    """
    line = install_line()
    env = {**os.environ, "CNI_BIN_DIR": str(tmp_path),
           "PATH": f"{VXFLOW_CNI.parent}:{os.environ['PATH']}"}  # fmt: skip
    subprocess.run(["sh", "-c", line], env=env, check=True)
    installed = tmp_path / "vxflow"
    assert installed.read_text().startswith(f"#!{VXFLOW_CNI.parent / 'python'} -IS\n")
    assert os.access(installed, os.X_OK)
    conf = {"cniVersion": "0.4.0", "agentSocket": str(tmp_path / "no-agent.sock")}
    res = subprocess.run(
        [str(installed)], input=json.dumps(conf), text=True,
        env={**env, "CNI_COMMAND": "VERSION"}, capture_output=True, check=True,
    )  # fmt: skip
    assert json.loads(res.stdout)["cniVersion"] == "0.4.0"
    help_text = subprocess.run([str(VXFLOW_CNI), "--help"], capture_output=True, text=True)
    assert (help_text.returncode, help_text.stdout) == (0, USAGE)


def test_readme_install_line_is_the_tested_one() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"\n{install_line()}\n" in readme
