"""What ADD records about an attachment, so DEL, CHECK and GC can undo or verify it.

flannel's CNI plugin keeps the delegate configuration it used in
`<dataDir>/<containerID>` for DEL; vxflow keeps one JSON file per attachment
in `<dataDir>/<network>/<containerID>-<ifname>.json` with the IPAM request it
made (both parts percent-escaped, `-` too, so that `x-net1`/`eth0` and
`x`/`net1-eth0` never share a file; names without `-` or `%` read as before,
and records of earlier versions, named unescaped, are still found by their
content), so DEL releases the address from the same IPAM configuration even if
subnet.env changed or disappeared meanwhile, and GC knows every attachment
of its network. The file is written before the IPAM plugin is called and
removed only once everything else is gone.

The host end of the veth is named from a hash of (container id, ifname): a
retried DEL finds it without any state, and two attachments never collide.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

log = logging.getLogger("vxflow-cni")
HOST_IFNAME_PREFIX = "vx"


def host_ifname(container_id: str, ifname: str) -> str:
    """The node-side veth of an attachment: "vx" + 11 hex digits (15-character limit)."""
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return f"{HOST_IFNAME_PREFIX}{digest[:11]}"


@dataclass(frozen=True)
class Attachment:
    container_id: str
    ifname: str
    netns: str
    host_ifname: str
    ipam_request: dict[str, Any]  # the complete configuration the IPAM plugin got on ADD


def _escape(part: str) -> str:
    """`part` percent-escaped, `-` included: the one `-` of a file name then separates."""
    return quote(part, safe="").replace("-", "%2D")


def _path(data_dir: Path, network: str, container_id: str, ifname: str) -> Path:
    return data_dir / network / f"{_escape(container_id)}-{_escape(ifname)}.json"


def _legacy_path(data_dir: Path, network: str, container_id: str, ifname: str) -> Path:
    """Where vxflow before escaping recorded it (ambiguous: its content says whose it is)."""
    return data_dir / network / f"{container_id}-{ifname}.json"


def identities(path: Path) -> list[tuple[str, str]]:
    """Whose record `path` may be, by its name alone: one (containerID, ifname) for an
    escaped name, every split at a `-` for an ambiguous one of an earlier version."""
    stem = path.name.removesuffix(".json")
    if "%" in stem or stem.count("-") == 1:
        container_id, _, ifname = stem.partition("-")
        return [(unquote(container_id), unquote(ifname))]
    parts = stem.split("-")
    return [("-".join(parts[:n]), "-".join(parts[n:])) for n in range(1, len(parts))]


def save(data_dir: Path, network: str, attachment: Attachment) -> Path:
    """Write the record atomically (mode 0600; a reader never sees half of it).

    Not fsynced: that was ~1-2 ms of every ADD (B6), for a durability that the
    address it guards does not have (host-local writes its allocation files
    without fsync), and a record lost in a crash only makes DEL rebuild the
    IPAM request from subnet.env, as for an attachment without a record.
    """
    path = _path(data_dir, network, attachment.container_id, attachment.ifname)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(attachment), out)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class Unreadable(Exception):
    """A record file that is not a record (torn, foreign, or not readable)."""


def _read(path: Path) -> Attachment | None:
    """The record in `path`, None if there is none; Unreadable if it is not one."""
    try:
        return Attachment(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise Unreadable(f"{path}: {exc}") from exc


def _candidates(data_dir: Path, network: str, container_id: str, ifname: str) -> list[Path]:
    path = _path(data_dir, network, container_id, ifname)
    legacy = _legacy_path(data_dir, network, container_id, ifname)
    return [path] if legacy == path else [path, legacy]


def load(data_dir: Path, network: str, container_id: str, ifname: str) -> Attachment | None:
    """The record of this attachment, or None if there is none (an unreadable one is logged:
    DEL then rebuilds the IPAM request as for an attachment without a record)."""
    for path in _candidates(data_dir, network, container_id, ifname):
        try:
            record = _read(path)
        except Unreadable as exc:
            log.warning("unreadable attachment record %s", exc)
            continue
        if record is not None and (record.container_id, record.ifname) == (container_id, ifname):
            return record
    return None


def remove(data_dir: Path, network: str, container_id: str, ifname: str) -> None:
    """Remove this attachment's record (a file of the earlier naming only if it is its own,
    or unreadable: no one else's record can be told from it)."""
    path, *legacy = _candidates(data_dir, network, container_id, ifname)
    path.unlink(missing_ok=True)
    for old in legacy:
        try:
            record = _read(old)
        except Unreadable:
            record = Attachment(container_id, ifname, "", "", {})
        if record is not None and (record.container_id, record.ifname) == (container_id, ifname):
            old.unlink(missing_ok=True)


def recorded(data_dir: Path, network: str) -> Iterator[Attachment]:
    """Every attachment recorded for `network` (GC's view of what exists).

    An unreadable record is logged and still yielded, with only what its name
    tells (an ambiguous name of an earlier version: once for every reading),
    so that GC collects what it stands for instead of leaking it.
    """
    folder = data_dir / network
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        try:
            attachment = _read(path)
        except Unreadable as exc:
            log.warning("unreadable attachment record %s; going by its name", exc)
            for container_id, ifname in identities(path):
                yield Attachment(container_id, ifname, "", host_ifname(container_id, ifname), {})
            continue
        if attachment is not None:
            yield attachment
