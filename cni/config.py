"""The plugin's network configuration and its IPAM delegation, pure.

A conflist entry `{"type": "vxflow", ...}` may set:

- `ovsdb`: the node's OVSDB server (default `unix:/var/run/openvswitch/db.sock`),
- `bridge`: the integration bridge (default `br-int`),
- `subnetFile`: flannel's subnet.env (default `/run/flannel/subnet.env`),
- `dataDir`: where each attachment is recorded for DEL, CHECK and GC
  (default `/var/lib/cni/vxflow`, beside flannel's `/var/lib/cni/flannel`),
- `mtu`: the pod MTU (default FLANNEL_MTU),
- `isDefaultGateway`: also route everything else (0.0.0.0/0) via the gateway,
  as the `bridge` plugin does with it (kube-flannel's configuration sets it);
  default false: only the overlay is routed,
- `ipam`: the IPAM section, completed from subnet.env exactly as flannel's
  CNI plugin does (`getDelegateIPAM`): `type` defaults to `host-local`,
  `ranges` becomes the node's subnet (host-local never hands out its
  gateway, the first address), and a route to each FLANNEL_NETWORK is
  appended to `routes` (no `gw`: the result's gateway, .1, is the next hop);
  on a dual-stack node (FLANNEL_IPV6_SUBNET) a second range set, the IPv6
  subnet, and a route to FLANNEL_IPV6_NETWORK, as flannel's plugin does.
  Any other IPAM type named here is invoked instead, with the same fields.
- `args.cni.labels`: the pod's labels, as the CNI conventions pass them
  (`[{"key": ..., "value": ...}]`; a runtime may inject them per call); they
  need a pod name (CNI_ARGS `K8S_POD_NAME`, see cni/plugin.py),
- `agentSocket`, `agentTimeout`: read by the fast client (cni/client.py): the
  node agent's CNI socket (default /run/vxflow/cni.sock) and how many seconds
  to wait for its answer (default 120); validated here too.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni.spec import CniError, ErrorCode, Result, check_version, parse_result, version_key
from leases.subnet_env import DEFAULT_SUBNET_ENV, SubnetEnv
from ovsdb.bootstrap import DEFAULT_BRIDGE
from ovsdb.idl import DEFAULT_OVSDB

DEFAULT_DATA_DIR = Path("/var/lib/cni/vxflow")
DEFAULT_IPAM = "host-local"
DELEGATE_VERSION = "1.0.0"  # the newest cniVersion ADD/DEL/CHECK hand to the IPAM plugin
_NETWORK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
# GC's list of attachments still in use. The spec's 1.1.0 tag names it
# `cni.dev/attachments`, its text and libcni 1.2.0-1.2.2 `cni.dev/valid-attachments`;
# libcni 1.2.3 and later send both (containernetworking/cni#1101). Read as their union.
GC_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")


@dataclass(frozen=True)
class NetConf:
    """One invocation's plugin configuration (after the runtime's derivation)."""

    cni_version: str
    name: str
    raw: Mapping[str, Any]  # as received: delegated plugins get it whole
    ovsdb: str = DEFAULT_OVSDB
    bridge: str = DEFAULT_BRIDGE
    subnet_file: Path = DEFAULT_SUBNET_ENV
    data_dir: Path = DEFAULT_DATA_DIR
    mtu: int | None = None
    is_default_gateway: bool = False
    ipam: Mapping[str, Any] | None = None
    dns: Mapping[str, Any] = field(default_factory=dict)
    prev_result: Result | None = None
    labels: tuple[tuple[str, str], ...] = ()  # args.cni.labels (judged with the pod's name)
    # GC: the (containerID, ifname) pairs still in use; None: the runtime sent no list
    valid_attachments: frozenset[tuple[str, str]] | None = None


def _invalid(msg: str, details: str = "") -> CniError:
    return CniError(ErrorCode.INVALID_CONFIG, msg, details)


def _typed(raw: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = raw.get(key, default)
    if value is not default and not isinstance(value, kind):
        raise _invalid(f"{key} has the wrong type", f"{key}={value!r}")
    return value


def parse_netconf(data: bytes, command: str) -> NetConf:
    """Decode and validate stdin's configuration for `command` (CniError 1, 6 or 7)."""
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise CniError(ErrorCode.DECODING_FAILURE, "cannot decode the network configuration",
                       str(exc)) from exc  # fmt: skip
    if not isinstance(raw, dict):
        raise CniError(ErrorCode.DECODING_FAILURE, "the network configuration must be an object")
    version = raw.get("cniVersion") or "0.1.0"  # libcni's reading of a missing version
    if not isinstance(version, str):
        raise CniError(ErrorCode.DECODING_FAILURE, "cniVersion must be a string", repr(version))
    check_version(version, command)
    name = raw.get("name")
    if not isinstance(name, str) or not _NETWORK_NAME.match(name):
        raise _invalid("invalid network name", f"name={name!r}")
    mtu = _typed(raw, "mtu", int, None)
    if mtu is not None and not 68 <= mtu <= 65535:
        raise _invalid("mtu out of range", f"mtu={mtu}")
    ipam = _typed(raw, "ipam", dict, None)
    if ipam is not None and not isinstance(ipam.get("type", DEFAULT_IPAM), str):
        raise _invalid("ipam.type must be a string", repr(ipam.get("type")))
    _typed(raw, "agentSocket", str, None)
    timeout = _typed(raw, "agentTimeout", (int, float), None)
    if timeout is not None and timeout <= 0:
        raise _invalid("agentTimeout must be positive", f"agentTimeout={timeout}")
    prev = raw.get("prevResult")
    return NetConf(
        cni_version=version,
        name=name,
        raw=raw,
        ovsdb=_typed(raw, "ovsdb", str, DEFAULT_OVSDB),
        bridge=_typed(raw, "bridge", str, DEFAULT_BRIDGE),
        subnet_file=Path(_typed(raw, "subnetFile", str, str(DEFAULT_SUBNET_ENV))),
        data_dir=Path(_typed(raw, "dataDir", str, str(DEFAULT_DATA_DIR))),
        mtu=mtu,
        is_default_gateway=_typed(raw, "isDefaultGateway", bool, False),
        ipam=ipam,
        dns=_typed(raw, "dns", dict, {}),
        # DEL, GC and STATUS use no prevResult: what they are given is not theirs to refuse
        prev_result=parse_result(prev) if prev and command in ("ADD", "CHECK") else None,
        valid_attachments=_valid_attachments(raw) if command == "GC" else None,
        labels=_labels(raw) if command == "ADD" else (),
    )


def _labels(raw: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """`args.cni.labels` (CNI conventions): a list of {"key", "value"} strings, each key once."""
    args = _typed(raw, "args", dict, {})
    cni = args.get("cni", {})
    if not isinstance(cni, dict):
        raise _invalid("args.cni must be an object", repr(cni))
    items = cni.get("labels") or []
    if not isinstance(items, list):
        raise _invalid("args.cni.labels must be a list", repr(items))
    labels: dict[str, str] = {}
    for item in items:
        key, value = (item.get("key"), item.get("value")) if isinstance(item, dict) else (None, None)
        if not isinstance(key, str) or not isinstance(value, str):
            raise _invalid("args.cni.labels: each label is {\"key\": string, \"value\": string}",
                           repr(item))  # fmt: skip
        if key in labels:
            raise _invalid(f"args.cni.labels: label {key!r} is given twice", repr(items))
        labels[key] = value
    return tuple(labels.items())


def _valid_attachments(raw: Mapping[str, Any]) -> frozenset[tuple[str, str]] | None:
    """The union of GC_KEYS' lists; `null` is an empty list (libcni's nil slice); None if
    neither key is there (nothing says what is in use, so nothing may be collected)."""
    if not any(key in raw for key in GC_KEYS):
        return None
    valid: set[tuple[str, str]] = set()
    for key in GC_KEYS:
        items = raw.get(key) or []
        if not isinstance(items, list):
            raise _invalid(f"{key} must be a list", repr(items))
        try:
            valid.update((str(a["containerID"]), str(a["ifname"])) for a in items)
        except (KeyError, TypeError) as exc:
            raise _invalid(f"malformed {key}", repr(items)) from exc
    return frozenset(valid)


def delegate_ipam(conf: NetConf, env: SubnetEnv) -> dict[str, Any]:
    """The IPAM section handed to the IPAM plugin: flannel's getDelegateIPAM on subnet.env."""
    ipam = copy.deepcopy(dict(conf.ipam or {}))
    ipam.setdefault("type", DEFAULT_IPAM)
    ipam["ranges"] = [[{"subnet": str(env.subnet.network)}]]
    routes = ipam.get("routes", [])
    if not isinstance(routes, list):
        raise _invalid("ipam.routes must be a list", repr(routes))
    ipam["routes"] = [*routes, {"dst": str(env.network)}]
    if env.ipv6_subnet is not None and env.ipv6_network is not None:
        ipam["ranges"].append([{"subnet": str(env.ipv6_subnet.network)}])
        ipam["routes"].append({"dst": str(env.ipv6_network)})
    return ipam


def ipam_request(conf: NetConf, ipam: Mapping[str, Any]) -> dict[str, Any]:
    """The whole configuration as the IPAM plugin must see it: ours, `ipam` filled in.

    Its cniVersion is at most 1.0.0: 1.1.0 changed nothing in what ADD, DEL
    and CHECK ask of an IPAM plugin, and Debian 12's reference plugins speak
    up to 1.0.0 (STATUS and GC are forwarded in 1.1.0, to plugins that say
    they speak it).
    """
    request = {k: v for k, v in conf.raw.items() if k != "prevResult"}
    if version_key(conf.cni_version) > version_key(DELEGATE_VERSION):
        request["cniVersion"] = DELEGATE_VERSION
    request["ipam"] = dict(ipam)
    return request


def pod_mtu(conf: NetConf, env: SubnetEnv) -> int:
    """The configured `mtu`, else flannel's FLANNEL_MTU."""
    return conf.mtu if conf.mtu is not None else env.mtu
