"""What the controller does over and over leaves no cyclic garbage behind.

The controller raises its collector's thresholds (controller/app.py: its flow tables are
many small objects), so a reference cycle made per renewal or per request is freed only
rarely: the soak (bench/soak.py) saw its RSS climb ~8.5 MiB/h with time. Each test runs
one real path in a process of its own under eventlet's hub, as the controller does, with
the collector saving what it finds (gc.DEBUG_SAVEALL): repeated, the path must leave none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from leases.etcd_server import EtcdServer

REPO = Path(__file__).resolve().parent.parent
REPEAT = 20

SCRIPT = r"""
import eventlet
eventlet.monkey_patch()
import collections, gc, json, sys, urllib.request
from os_ken.lib import hub
from controller import status
from controller.model import ClusterModel
from controller.replica import Membership
from daemons.httpd import wsgi_app
from leases.registry import Registry

what, endpoint, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
gc.disable()  # only our collections below: what they find is what the repetitions left
membership = Membership(Registry(endpoint, "/garbage") if endpoint else None, "r1", "", 2,
                        on_change=lambda: None)


def renewals():
    # the real loop against the real etcd, counting its keepalives, then a clean leave and
    # a wait past the last deadline (a timer pending till then still holds its garbage)
    etcd, done = membership.registry.etcd, [0]
    keepalive = etcd.keepalive
    def counted(lease_id):
        done[0] += 1
        return keepalive(lease_id)
    etcd.keepalive = counted
    membership.begin()
    loop = hub.spawn(membership.run)
    while done[0] < repeat:
        eventlet.sleep(0.1)
    assert membership.valid()
    membership.leave()
    hub.kill(loop)
    eventlet.sleep(membership.ttl + 0.5)


def requests(path):
    server = hub.WSGIServer(("127.0.0.1", 0), wsgi_app({
        "/status": lambda: status.page(membership, ClusterModel(), {}, {}),
        "/threads": status.threads}))
    port = server.server.getsockname()[1]
    hub.spawn(server.serve_forever)
    def run():
        for _ in range(repeat):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as reply:
                assert reply.status == 200 and reply.read()
    return run


run = renewals if what == "renewals" else requests(what)
gc.collect()
gc.set_debug(gc.DEBUG_SAVEALL)
run()
found = gc.collect()
kinds = collections.Counter(type(o).__name__ for o in gc.garbage)
print(json.dumps({"found": found, "kinds": kinds.most_common(8)}))
"""


def garbage(what: str, endpoint: str = "") -> dict:
    """Run `what` REPEAT times in a fresh eventlet process: the cyclic garbage it left."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, what, endpoint, str(REPEAT)],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_membership_renewals_leave_no_cyclic_garbage(etcd: EtcdServer) -> None:
    """A lapse timer killed and spawned anew per renewal left its GreenletExit traceback."""
    result = garbage("renewals", etcd.endpoint)
    assert result["found"] == 0, result


def test_metrics_requests_leave_no_cyclic_garbage() -> None:
    """eventlet's set_idle closure, kept in its handler's environ, made a cycle per request."""
    result = garbage("/metrics")
    assert result["found"] == 0, result


@pytest.mark.parametrize("path", ["/status", "/threads"])
def test_json_pages_leave_no_cyclic_garbage(path: str) -> None:
    """The indenting JSON encoder (pure Python, nested closures) made a cycle per page."""
    result = garbage(path)
    assert result["found"] == 0, result
