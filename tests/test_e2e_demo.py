"""End to end, as typed: the README's main job (`make demo`) and the cluster script's batch form.

Each succeeds and leaves nothing behind. The interactive forms (`vxflow demo
--keep`, `mininet/cluster.py --cli`, `mn --custom`) are in test_e2e_interactive.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.leftovers import Before, cluster_tag

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_make_demo_exits_0_and_leaves_nothing_running() -> None:
    before = Before()
    res = subprocess.run(["make", "demo"], cwd=REPO, capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "all checks passed" in res.stdout, res.stdout
    assert "FAIL" not in res.stdout, res.stdout
    assert "ok  etcdctl shows flannel's lease keys and values" in res.stdout, res.stdout
    # setup installs podman: the containers step ran, it was not skipped
    assert "ok  container web1 on n1 -> web2 on n2: 3 replies, ttl=63" in res.stdout, res.stdout
    # agents, controller and the containers vxflow-cni attached: `vxflow status` exits 0
    assert "ok  vxflow status: healthy (exit status 0)" in res.stdout, res.stdout
    assert before.left_behind(cluster_tag(res.stdout)) == []


@pytest.mark.e2e
def test_demo_with_tls_on_every_channel_exits_0_and_leaves_nothing_running() -> None:
    """`vxflow demo --tls`: certificates from `vxflow pki`, OpenFlow over TLS, etcd over TLS
    with client certificates and a user whose role holds the prefix only; same walk-through."""
    before = Before()
    res = subprocess.run([str(REPO / ".venv" / "bin" / "vxflow"), "demo", "--tls"], cwd=REPO,
                         capture_output=True, text=True, timeout=280)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "all checks passed" in res.stdout and "FAIL" not in res.stdout, res.stdout
    assert "connected over ssl:" in res.stdout, res.stdout
    assert "ok  vxflow status: healthy (exit status 0)" in res.stdout, res.stdout
    assert before.left_behind(cluster_tag(res.stdout)) == []


@pytest.mark.e2e
def test_demo_tears_down_when_its_output_goes_away() -> None:
    """The reader of the demo's output leaves once the cluster is up (as `vxflow demo | head`
    does): writing then fails, and the cluster must still be torn down."""
    before = Before()
    demo = subprocess.Popen(
        [str(REPO / ".venv" / "bin" / "vxflow"), "demo"], cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    shown = b""
    try:
        while b"overlay converged" not in (line := demo.stdout.readline()):
            assert line, "the demo ended before the cluster was up"
            shown += line
    finally:
        demo.stdout.close()
    assert demo.wait(timeout=240) != 0  # it could not report: it must not claim success
    assert before.left_behind(cluster_tag(shown.decode())) == []


@pytest.mark.e2e
def test_cluster_script_pings_every_pair_and_exits_0() -> None:
    """`.venv/bin/python mininet/cluster.py --nodes 3 --pods 2` (README, mininet/README.md)."""
    before = Before()
    res = subprocess.run(
        [".venv/bin/python", "mininet/cluster.py", "--nodes", "3", "--pods", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "pod pairs answering: 30/30" in res.stdout, res.stdout
    assert before.left_behind(cluster_tag(res.stdout)) == []
