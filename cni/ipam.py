"""Calling the IPAM plugin (spec section 4, "Plugin Delegation"): the CNI plugin's exec edge.

The delegated plugin is looked up in CNI_PATH, gets our whole environment
with the command set, and the complete configuration on stdin; its stderr
is ours (the runtime's log), its stdout is a result or the spec's error
JSON, which is passed on with its own code.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
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


def call(
    command: str,
    request: Mapping[str, Any],
    inv: Invocation,
    environ: Mapping[str, str],
) -> Result | None:
    """Run the request's IPAM plugin with `command`; its result for ADD, None otherwise."""
    plugin = str(request["ipam"].get("type", ""))
    exe = find(plugin, inv)
    env = environment(command, inv, environ)
    try:
        proc = subprocess.run(
            [str(exe)], input=json.dumps(request).encode(), env=env,
            stdout=subprocess.PIPE, timeout=TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CniError(
            ErrorCode.IO_FAILURE, f"IPAM plugin {plugin} {command} failed", str(exc)
        ) from exc
    try:
        answer = json.loads(proc.stdout) if proc.stdout.strip() else None
    except ValueError:
        answer = None
    if proc.returncode != 0:
        error = parse_error(answer)
        if error is not None:
            error.msg = f"IPAM plugin {plugin}: {error.msg}"
            raise error
        raise CniError(ErrorCode.SETUP_FAILED, f"IPAM plugin {plugin} {command} failed",
                       f"exit status {proc.returncode}: {proc.stdout.decode(errors='replace')}")  # fmt: skip
    if command != "ADD":
        return None
    if answer is None:
        raise CniError(ErrorCode.DECODING_FAILURE, f"IPAM plugin {plugin} returned no result",
                       proc.stdout.decode(errors="replace"))  # fmt: skip
    return parse_result(answer)


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
