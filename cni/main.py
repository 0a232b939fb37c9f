"""`vxflow-cni`: the executable a container runtime runs (conflist `"type": "vxflow"`).

A runtime finds a plugin by its type in its CNI bin directories, so install
it there under the name `vxflow`, beside the reference plugins it delegates
IPAM to (see USAGE).

The protocol is the CNI spec's: CNI_* variables in, the configuration on
stdin, a result or the spec's error JSON on stdout, logs on stderr.

This is the full plugin, run in-process. `vxflow-cni install DIR` puts the
fast executable in its place (cni/client.py): a client of the node agent,
which runs these same calls (cni/server.py) and falls back to
`python -I -m cni.main` (this module) when no agent serves it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from cni import client
from cni.client import DEFAULT_SOCKET
from cni.spec import LATEST, SUPPORTED_VERSIONS, CniError, ErrorCode

USAGE = f"""\
usage: vxflow-cni [--help | --version | install CNI_BIN_DIR]

vxflow's CNI plugin (CNI spec {", ".join(SUPPORTED_VERSIONS)}). A container
runtime runs it with CNI_COMMAND=ADD|DEL|CHECK|VERSION|STATUS|GC, CNI_CONTAINERID,
CNI_NETNS, CNI_IFNAME, CNI_PATH in the environment and the network
configuration on stdin; it logs to stderr (VXFLOW_CNI_LOG_LEVEL=debug: the
time of each ADD step). Install it as the type `vxflow` in the CNI bin
directory (Debian's: CNI_BIN_DIR=/usr/lib/cni, beside host-local):

    vxflow-cni install "$CNI_BIN_DIR"

That writes $CNI_BIN_DIR/vxflow, a small client that hands each call to the
node's `vxflow agent` (its --cni-socket; the conflist's "agentSocket",
default {DEFAULT_SOCKET}) and runs it in-process, as vxflow-cni itself
does, when no agent answers there. Name it in a conflist
(e.g. /etc/cni/net.d/10-vxflow.conflist):

    {{"cniVersion": "1.0.0", "name": "vxflow",
     "plugins": [{{"type": "vxflow", "ovsdb": "unix:/var/run/openvswitch/db.sock",
                  "bridge": "br-int", "subnetFile": "/run/flannel/subnet.env",
                  "isDefaultGateway": true}}]}}

Addresses come from the node's subnet in subnet.env through `host-local` (or
the conflist's "ipam" type); the pod's port joins br-int with the external_ids
the vxflow agent publishes endpoints from.
"""

log = logging.getLogger("vxflow-cni")
LOG_LEVEL = client.DEBUG.decode()  # VXFLOW_CNI_LOG_LEVEL=debug: each ADD step's time on stderr
LOG_FORMAT = "vxflow-cni: %(levelname)s %(message)s"
FAST_NAME = "vxflow"  # the conflist type, the executable's name in the CNI bin directory
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # ip, ethtool, nsenter


def log_level(environ: Mapping[str, str]) -> int:
    return getattr(logging, environ.get(LOG_LEVEL, "warning").upper(), logging.WARNING)


LAUNCHER = """\
#!{python} -IS
import sys

sys.path.insert(0, {root!r})  # no site packages (-IS): the vxflow installation it came from
try:
    from cni.client import main
except ImportError:  # that installation was moved or removed since
    sys.stdout.write({error!r})
    sys.exit(1)
main()
"""


def launcher(root: Path) -> str:
    """The executable `install` writes: this interpreter runs cni/client.py from `root`."""
    error = CniError(ErrorCode.IO_FAILURE, f"vxflow is no longer installed in {root}",
                     "run `vxflow-cni install CNI_BIN_DIR` again")  # fmt: skip
    return LAUNCHER.format(python=sys.executable, root=str(root),
                           error=json.dumps(error.to_json(LATEST)) + "\n")  # fmt: skip


def install(folder: Path) -> Path:
    """Write the fast client's launcher as FOLDER/vxflow, run by this interpreter without
    site packages.

    It imports cni/client.py rather than holding a copy of it: a script is compiled
    afresh at every start (~2.5 ms, a third of the interpreter's own start-up on
    this machine), a module comes from its cached bytecode.
    """
    target = folder / FAST_NAME
    fd, tmp = tempfile.mkstemp(prefix=f".{FAST_NAME}.", dir=folder)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(launcher(Path(client.__file__).resolve().parents[1]))
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _version_in(stdin: bytes) -> str:
    """The configuration's cniVersion, for an error found before it is parsed (the
    environment's): LATEST only when it names none this plugin speaks."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError):
        return LATEST
    return version if version in SUPPORTED_VERSIONS else LATEST


def run(argv: list[str], environ: Mapping[str, str], stdin: bytes,
        netns_handle: str = "") -> tuple[str, int]:  # fmt: skip
    """One invocation: (what goes to stdout, exit status); see Invocation.netns_handle."""
    if argv in (["--help"], ["-h"]):
        return USAGE, 0
    if argv == ["--version"]:
        from daemons.build import VERSION

        return f"vxflow-cni {VERSION}: CNI spec versions {', '.join(SUPPORTED_VERSIONS)}\n", 0
    if len(argv) == 2 and argv[0] == "install":
        try:
            return f"installed {install(Path(argv[1]))}\n", 0
        except OSError as exc:
            sys.stderr.write(f"vxflow-cni: cannot install into {argv[1]}: {exc}\n")
            return "", 1
    if argv or not environ.get("CNI_COMMAND"):
        sys.stderr.write(USAGE)
        return "", 2
    version = _version_in(stdin)
    try:
        from cni.spec import parse_invocation, render_result, version_result

        inv = parse_invocation(environ, netns_handle)
        if inv.command == "VERSION":
            return json.dumps(version_result(stdin)) + "\n", 0
        from cni.config import parse_netconf
        from cni.plugin import COMMANDS

        conf = parse_netconf(stdin, inv.command)
        version = conf.cni_version
        result = COMMANDS[inv.command](inv, conf, environ)
        return (json.dumps(render_result(result, version)) + "\n" if result else ""), 0
    except CniError as exc:
        log.error("%s %s failed: %s", environ.get("CNI_COMMAND"), environ.get("CNI_CONTAINERID", ""),
                  exc)  # fmt: skip
        return json.dumps(exc.to_json(version)) + "\n", 1
    except Exception as exc:  # a bug: still the spec's error JSON, one line in the log
        log.error("unexpected error: %r", exc)
        error = CniError(ErrorCode.SETUP_FAILED, "unexpected error", repr(exc))
        return json.dumps(error.to_json(version)) + "\n", 1


def main() -> None:
    # python-ovs probes for eventlet and gevent monkey-patching at import; a plugin
    # patches nothing, and importing eventlet would add ~0.2 s to every call.
    for name in ("eventlet", "gevent"):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    os.environ.setdefault("PATH", PATH)
    logging.basicConfig(stream=sys.stderr, level=log_level(os.environ), format=LOG_FORMAT)
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    out, status = run(sys.argv[1:], os.environ, stdin)
    sys.stdout.write(out)
    sys.stdout.flush()
    logging.shutdown()
    # Nothing is left to clean up: skip the interpreter's teardown of every module
    # (~20 ms, a sixth of an ADD) that a runtime would wait for.
    os._exit(status)


if __name__ == "__main__":  # the fast client's fallback: `python -I -m cni.main`
    main()
