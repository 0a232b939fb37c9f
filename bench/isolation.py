"""Each benchmark runs inside a network namespace of its own.

Why: ovs-vswitchd's userspace datapath creates a tap named `ovs-netdev`, so
two netdev instances in one namespace collide (other helpers and tests run
OVS in parallel on this machine); and inside a private namespace etcd, the
controller and the bridges talk over that namespace's loopback only, so no
benchmark packet ever leaves it. `isolate()` re-runs the current module
inside a fresh namespace and deletes the namespace afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

ENV_FLAG = "VXFLOW_BENCH_NETNS"
NETNS_PREFIX = "vxbn"


def inside() -> bool:
    return bool(os.environ.get(ENV_FLAG))


def isolate(module: str) -> int | None:
    """Re-run `python -m module <same args>` in a new namespace and return its exit code;
    None when already inside one (the caller then does the real work)."""
    if inside():
        return None
    ns = f"{NETNS_PREFIX}{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", module, *sys.argv[1:]]
        # A Ctrl-C reaches the benchmark too (one process group), which then stops what it
        # started; here it must not interrupt the wait: subprocess.run would SIGKILL the
        # benchmark mid-cleanup. A no-op handler, not SIG_IGN: exec resets a handler to
        # the default, so the benchmark still gets its KeyboardInterrupt.
        previous = signal.signal(signal.SIGINT, lambda *_: None)
        try:
            return subprocess.run(cmd, env={**os.environ, ENV_FLAG: ns}).returncode
        finally:
            signal.signal(signal.SIGINT, previous)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
