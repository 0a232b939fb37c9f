"""What ADD records about an attachment, so DEL, CHECK and GC can undo or verify it.

flannel's CNI plugin keeps the delegate configuration it used in
`<dataDir>/<containerID>` for DEL; vxflow keeps one JSON file per attachment
in `<dataDir>/<network>/<containerID>-<ifname>.json` with the IPAM request it
made, so DEL releases the address from the same IPAM configuration even if
subnet.env changed or disappeared meanwhile, and GC knows every attachment
of its network. The file is written before the IPAM plugin is called and
removed only once everything else is gone.

The host end of the veth is named from a hash of (container id, ifname): a
retried DEL finds it without any state, and two attachments never collide.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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


def _path(data_dir: Path, network: str, container_id: str, ifname: str) -> Path:
    return data_dir / network / f"{container_id}-{ifname}.json"


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


def load(data_dir: Path, network: str, container_id: str, ifname: str) -> Attachment | None:
    """The record of this attachment, or None if there is none (or it is unreadable)."""
    return _read(_path(data_dir, network, container_id, ifname))


def _read(path: Path) -> Attachment | None:
    try:
        return Attachment(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError):
        return None  # a torn or foreign file: DEL still removes what it can find by name


def remove(data_dir: Path, network: str, container_id: str, ifname: str) -> None:
    _path(data_dir, network, container_id, ifname).unlink(missing_ok=True)


def recorded(data_dir: Path, network: str) -> Iterator[Attachment]:
    """Every attachment recorded for `network` (GC's view of what exists)."""
    folder = data_dir / network
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        attachment = _read(path)
        if attachment is not None:
            yield attachment
