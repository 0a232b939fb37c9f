"""Calling the IPAM plugin (spec section 4, "Plugin Delegation"): the CNI plugin's exec edge.

The delegated plugin is looked up in CNI_PATH, gets our whole environment
with the command set, and the complete configuration on stdin; its stderr
is ours (the runtime's log), its stdout is a result or the spec's error
JSON, which is passed on with its own code.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cni.spec import CniError, ErrorCode, Invocation, Result, parse_error, parse_result

TIMEOUT = 60.0  # seconds; a DHCP-style IPAM may take a while, a hung one must not hang us


def find(plugin: str, inv: Invocation) -> Path:
    """The executable `plugin` in CNI_PATH (CniError 7 if there is none)."""
    if "/" in plugin or plugin in ("", ".", ".."):
        raise CniError(ErrorCode.INVALID_CONFIG, "invalid IPAM plugin type", repr(plugin))
    for folder in inv.path:
        candidate = Path(folder) / plugin
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(ErrorCode.INVALID_CONFIG, f"IPAM plugin {plugin!r} not found",
                   f"CNI_PATH={':'.join(inv.path) or '(empty)'}")  # fmt: skip


def environment(command: str, inv: Invocation, environ: Mapping[str, str]) -> dict[str, str]:
    """Ours, for `command` and `inv`'s attachment (GC releases attachments other than its own)."""
    own = {"CNI_CONTAINERID": inv.container_id, "CNI_IFNAME": inv.ifname, "CNI_NETNS": inv.netns}
    env = {k: v for k, v in environ.items() if k not in own}
    env.update({k: v for k, v in own.items() if v})
    env["CNI_COMMAND"] = command
    return env


@dataclass
class Pending:
    """An IPAM call under way (ADD starts it, then makes the veth pair while it runs)."""

    command: str
    plugin: str
    proc: subprocess.Popen
    deadline: float

    def result(self) -> Result | None:
        """Its result for ADD, None otherwise; CniError as the plugin reported it."""
        plugin, command = self.plugin, self.command
        try:
            stdout, _ = self.proc.communicate(timeout=max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            self.proc.communicate()
            raise CniError(ErrorCode.IO_FAILURE, f"IPAM plugin {plugin} {command} failed",
                           str(exc)) from exc  # fmt: skip
        try:
            answer = json.loads(stdout) if stdout.strip() else None
        except ValueError:
            answer = None
        if self.proc.returncode != 0:
            error = parse_error(answer)
            if error is not None:
                error.msg = f"IPAM plugin {plugin}: {error.msg}"
                raise error
            raise CniError(ErrorCode.SETUP_FAILED, f"IPAM plugin {plugin} {command} failed",
                           f"exit status {self.proc.returncode}: {stdout.decode(errors='replace')}")  # fmt: skip
        if command != "ADD":
            return None
        if answer is None:
            raise CniError(ErrorCode.DECODING_FAILURE, f"IPAM plugin {plugin} returned no result",
                           stdout.decode(errors="replace"))  # fmt: skip
        return parse_result(answer)

    def finish(self) -> None:
        """Wait for the call to end, whatever its outcome (before its address is released)."""
        if self.proc.returncode is None:
            with contextlib.suppress(CniError):  # its outcome is being undone anyway
                self.result()


def start(
    command: str,
    request: Mapping[str, Any],
    inv: Invocation,
    environ: Mapping[str, str],
) -> Pending:
    """Start the request's IPAM plugin with `command` (`result()` waits for its answer)."""
    plugin = str(request["ipam"].get("type", ""))
    exe = find(plugin, inv)
    stdin = os.memfd_create("ipam-request")  # all of it readable at once, nothing to feed later
    try:
        os.write(stdin, json.dumps(request).encode())
        os.lseek(stdin, 0, os.SEEK_SET)
        proc = subprocess.Popen([str(exe)], stdin=stdin, stdout=subprocess.PIPE,
                                env=environment(command, inv, environ))  # fmt: skip
    except OSError as exc:
        raise CniError(ErrorCode.IO_FAILURE, f"IPAM plugin {plugin} {command} failed",
                       str(exc)) from exc  # fmt: skip
    finally:
        os.close(stdin)
    return Pending(command, plugin, proc, time.monotonic() + TIMEOUT)


def call(
    command: str,
    request: Mapping[str, Any],
    inv: Invocation,
    environ: Mapping[str, str],
) -> Result | None:
    """Run the request's IPAM plugin with `command`; its result for ADD, None otherwise."""
    return start(command, request, inv, environ).result()


def supports(plugin: str, version: str, inv: Invocation, environ: Mapping[str, str]) -> bool:
    """Whether the IPAM plugin speaks `version` (VERSION), to forward STATUS and GC only then."""
    try:
        proc = subprocess.run(
            [str(find(plugin, inv))], input=json.dumps({"cniVersion": version}).encode(),
            env={**environ, "CNI_COMMAND": "VERSION"}, capture_output=True, timeout=TIMEOUT,
        )  # fmt: skip
        return version in json.loads(proc.stdout).get("supportedVersions", [])
    except (OSError, subprocess.TimeoutExpired, ValueError, AttributeError):
        return False
