"""A private network namespace (and a mount namespace for its /sys) for each test process.

The suite's integration tests make root-namespace objects that only one holder
can have at a time: the userspace datapath's `ovs-netdev` tap device of the
`ovs` fixture's switch, the underlay's route for its node block, the ports that
etcd and the controllers bind on 127.0.0.1. Two runs on one machine (or two
pytest-xdist workers) would take them from each other. Each test process
therefore moves into namespaces of its own before any test runs, as
`ip netns exec` does: a new network namespace with its own loopback, and a
mount namespace (a slave of the host's) in which /sys shows that network
namespace, with the host's cgroup tree kept under it (runc needs it). Every process a test starts inherits them; nothing reaches the
machine's own network namespace, and all is gone when the process ends.
"""

from __future__ import annotations

import ctypes
import os
import subprocess

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 1 << 19
CGROUP = "/sys/fs/cgroup"
_entered = False


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def enter() -> bool:
    """Move this process into a private network and mount namespace; False if not root
    (the tests that need namespaces refuse to run then) or already moved."""
    global _entered
    if os.geteuid() != 0 or _entered:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWNET), "unshare")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None), "mount --make-rslave /")
    cgroup = os.open(CGROUP, os.O_PATH | os.O_DIRECTORY)
    try:
        _check(libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None), "mount sysfs /sys")
        source = f"/proc/self/fd/{cgroup}".encode()
        _check(libc.mount(source, CGROUP.encode(), None, MS_BIND | MS_REC, None), "bind cgroup")
    finally:
        os.close(cgroup)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    _entered = True
    return True
