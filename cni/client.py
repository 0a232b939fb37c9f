"""The fast `vxflow` CNI executable: a thin client of the node agent's CNI server.

A container runtime starts a plugin process for every ADD and DEL, so its
start-up is paid per pod: the full plugin (`vxflow-cni`, cni/main.py) spends
~40 ms starting the venv's interpreter with its site packages and ~40 ms
importing python-ovs and vxflow before it does anything. As antrea-cni does
for the antrea-agent, this client only forwards the call (CNI_* environment,
configuration on stdin) over a unix socket to the agent (cni/server.py),
which runs the same plugin code in-process with its imports done and its
OVSDB connection open, and relays the answer: stdout, the log lines for
stderr, the exit status. `vxflow-cni install DIR` writes DIR/vxflow, a
launcher that runs this module with `<vxflow's python> -IS`: no site
packages, only built-in modules (`_socket`, `_json`, `posix`, `sys`,
`time`), and this module's cached bytecode (a script would be compiled at
every start), so it starts in little more than the time of a bare
interpreter (`json` and `socket` would cost ~7 ms more, through `re` and
`enum`, and `os` ~1 ms).

When no agent serves the socket (absent, refused, or the server declines:
another network namespace, another uid, an unknown request format) the
client execs the full plugin (`python -I -m cni.main`) with the same
environment and stdin: a node without a running agent works as before.
Once the server has taken a request, the client never runs it a second time
behind the agent's back:

- the agent dies mid-request (the connection closes without an answer): for
  ADD the client undoes whatever it did (DEL in-process, idempotent) and runs
  the ADD in-process; other commands are simply run in-process (DEL, CHECK,
  STATUS and GC are idempotent). Only an IPAM call the agent had started may
  outlive it; host-local keys its addresses by container and interface, so
  that call's address is the one the retry gets (or it is refused as a
  duplicate), and the runtime's DEL releases it;
- no answer within `agentTimeout`: the spec's "try again later" (11); the
  agent, whose answer then finds no one to acknowledge it, undoes that ADD
  itself, before it serves the runtime's next call.

Conflist keys read here: `agentSocket` (default /run/vxflow/cni.sock, the
agent's --cni-socket) and `agentTimeout` (seconds, default 120: IPAM may take
60 s, the port's ofport 10 s).
"""

import _socket  # socket.py would import enum and selectors
import posix  # what `os` wraps: os itself costs ~1 ms of imports at every start
import sys
import time

try:  # CPython's JSON scanner, without json.decoder's import of `re`
    from _json import encode_basestring_ascii as _quote
    from _json import make_scanner
except ImportError:  # another interpreter: the json module
    from json import dumps as _quote
    from json import loads as _loads
else:

    class _Decoding:
        """What the C scanner reads from a json.JSONDecoder: strict, the default hooks."""

        strict = True
        object_hook = object_pairs_hook = None
        parse_float, parse_int, parse_constant = float, int, float

    _scan = make_scanner(_Decoding())

    def _loads(text: str) -> object:
        """The JSON value at the start of `text` (only the agent settings are read from it)."""
        return _scan(text.strip(), 0)[0]


DEFAULT_SOCKET = "/run/vxflow/cni.sock"
DEFAULT_TIMEOUT = 120.0  # seconds for the agent's answer: IPAM may take 60 s, the ofport 10 s
CONNECT_TIMEOUT = 2.0  # connecting and sending the request (the agent queues what it accepts)
MAGIC = b"vxflow-cni/1"  # the request format; a server that does not know it declines
RESULT, DECLINED, ACK = b"result", b"declined", b"ack"
TRY_AGAIN_LATER = 11  # the spec's code
DEBUG = b"VXFLOW_CNI_LOG_LEVEL"  # "debug": say which way each call went


class NotServed(Exception):
    """No agent took the request (nothing was done): run it in-process."""


class AgentLost(Exception):
    """The agent took the request and went away without answering."""


class AgentTimeout(Exception):
    """The agent took the request and did not answer in time (it may still be working)."""


# -- the wire format: length-prefixed fields --------------------------------------------
def pack(*fields: bytes) -> bytes:
    """`fields` framed: each one a 4-byte big-endian length, then its bytes."""
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


def read_fields(sock: _socket.socket, count: int, deadline: float | None = None) -> list[bytes]:
    """`count` fields from `sock`: EOFError if it closes first, TimeoutError past `deadline`."""
    buffer, fields = b"", []
    while len(fields) < count:
        size = int.from_bytes(buffer[:4], "big") if len(buffer) >= 4 else None
        if size is not None and len(buffer) >= 4 + size:
            fields.append(buffer[4 : 4 + size])
            buffer = buffer[4 + size :]
            continue
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no answer in time")
            sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        buffer += chunk
    return fields


def encode_environ(environ: dict[bytes, bytes]) -> bytes:
    return b"\0".join(k + b"=" + v for k, v in environ.items())


def decode_environ(data: bytes) -> dict[str, str]:
    pairs = (item.partition(b"=") for item in data.split(b"\0") if item)
    return {_text(k): _text(v) for k, _, v in pairs}


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")  # os.fsdecode on Linux


# -- the client ---------------------------------------------------------------------------
def settings(stdin: bytes) -> tuple[str, float, str]:
    """(socket, timeout, cniVersion) from the configuration, defaults where it has none.

    Malformed input gets the defaults: whoever runs the call reports it properly.
    """
    try:
        conf = _loads(stdin.decode())
    except Exception:
        conf = None
    if not isinstance(conf, dict):
        conf = {}
    path, timeout, version = conf.get("agentSocket"), conf.get("agentTimeout"), conf.get("cniVersion")
    return (
        path if isinstance(path, str) and path else DEFAULT_SOCKET,
        timeout if isinstance(timeout, int | float) and timeout > 0 else DEFAULT_TIMEOUT,
        version if isinstance(version, str) else "1.0.0",
    )


def netns_fd(environ: dict[bytes, bytes]) -> bytes:
    """CNI_NETNS opened (kept open until we exit), for an agent that cannot see its path."""
    try:
        return str(posix.open(environ[b"CNI_NETNS"], posix.O_RDONLY)).encode()
    except (KeyError, OSError):  # none given (DEL, GC) or gone: the path is all there is
        return b""


def exchange(path: str, environ: dict[bytes, bytes], stdin: bytes,
             timeout: float) -> tuple[int, bytes, bytes]:  # fmt: skip
    """Have the agent at `path` run one call: (exit status, stdout, stderr).

    NotServed if it did nothing; AgentLost or AgentTimeout once it took the call.
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(path)
            sock.sendall(pack(MAGIC, encode_environ(environ), stdin, netns_fd(environ)))
        except OSError as exc:  # absent, refused, not ours, or gone before it read anything
            raise NotServed(f"{path}: {exc}") from None
        try:
            kind, status, out, err = read_fields(sock, 4, time.monotonic() + timeout)
        except TimeoutError:
            raise AgentTimeout(f"the vxflow agent at {path} did not answer "
                               f"within {timeout:g} s") from None  # fmt: skip
        except (EOFError, OSError) as exc:
            raise AgentLost(f"the vxflow agent at {path} went away: {exc}") from None
        if kind == DECLINED:
            raise NotServed(f"{path} declined: {out.decode(errors='replace')}")
        try:  # (contextlib.suppress: one more import on every call)  # noqa: SIM105
            sock.sendall(pack(ACK))  # without it the agent undoes an ADD: no one took its result
        except OSError:
            pass
        return int(status), out, err
    finally:
        sock.close()


def plugin_argv() -> list[str]:
    """The full plugin: the interpreter this file runs on, with its site packages this time."""
    return [sys.executable, "-I", "-m", "cni.main"]


def _stdin_fd(data: bytes) -> int:
    """A file descriptor reading `data` from its start (the full plugin's stdin)."""
    fd = posix.memfd_create("vxflow-cni-stdin")
    posix.write(fd, data)
    posix.lseek(fd, 0, 0)
    return fd


def exec_plugin(argv: list[str], stdin: bytes | None) -> None:
    """Become the full plugin with `argv` and `stdin` (None: ours, unread)."""
    if stdin is not None:
        posix.dup2(_stdin_fd(stdin), 0)
    sys.stdout.flush()
    sys.stderr.flush()
    posix.execv(sys.executable, plugin_argv() + argv)


def undo_add(stdin: bytes) -> int:
    """DEL in-process whatever an ADD that the agent took may have done; the exit status."""
    fd = _stdin_fd(stdin)
    env = {**posix.environ, b"CNI_COMMAND": b"DEL"}
    pid = posix.posix_spawn(sys.executable, plugin_argv(), env,
                            file_actions=[(posix.POSIX_SPAWN_DUP2, fd, 0),
                                          (posix.POSIX_SPAWN_DUP2, 2, 1)])  # its answer: our log  # fmt: skip
    posix.close(fd)
    return posix.waitstatus_to_exitcode(posix.waitpid(pid, 0)[1])


def error_json(version: str, code: int, msg: str, details: str) -> str:
    return (f'{{"cniVersion": {_quote(version)}, "code": {code}, "msg": {_quote(msg)}, '
            f'"details": {_quote(details)}}}\n')  # fmt: skip


def _debug(line: str) -> None:
    if posix.environ.get(DEBUG, b"").lower() == b"debug":
        sys.stderr.write(f"vxflow-cni: DEBUG {line}\n")


def main() -> None:
    if sys.argv[1:] or not posix.environ.get(b"CNI_COMMAND"):
        exec_plugin(sys.argv[1:], None)  # --help, --version, install, usage: the full plugin's
    stdin = sys.stdin.buffer.read()
    path, timeout, version = settings(stdin)
    command = _text(posix.environ[b"CNI_COMMAND"])
    try:
        status, out, err = exchange(path, dict(posix.environ), stdin, timeout)
    except NotServed as exc:
        _debug(f"{command} in-process: no agent ({exc})")
        exec_plugin([], stdin)
    except AgentLost as exc:
        sys.stderr.write(f"vxflow-cni: WARNING {exc}; running {command} in-process\n")
        if command == "ADD" and undo_add(stdin) != 0:
            sys.stdout.write(error_json(version, TRY_AGAIN_LATER, "the vxflow agent went away "
                                        "during ADD and undoing it failed", str(exc)))  # fmt: skip
            sys.exit(1)
        exec_plugin([], stdin)
    except AgentTimeout as exc:
        after = "it undoes the ADD itself once done" if command == "ADD" else "try again"
        sys.stdout.write(error_json(version, TRY_AGAIN_LATER, "the vxflow agent did not answer",
                                    f"{exc}; {after}"))  # fmt: skip
        sys.exit(1)
    sys.stderr.buffer.write(err)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.stderr.flush()
    posix._exit(status)


if __name__ == "__main__":
    main()
