"""`vxflow pods ...`: the pods published in etcd, and a running pod's labels and named ports.

A pod's identity lives on its OVS Interface (external_ids `vxflow-namespace`,
`vxflow-pod`, `vxflow-labels`, `vxflow-ports`; ovsdb/pods.py), where
vxflow-cni writes it at ADD, and the node agent publishes it with the pod's
endpoint. `pods label` and `pods ports` change it there, through the node's
OVSDB (so they run on the pod's node, or with `--ovsdb` reaching it): the
agent follows the change and re-publishes the endpoint, an agent restart
reads it back from the Interface, and it goes with the pod's port, as a
label set with `kubectl label` goes with its pod.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from leases.cli_options import echo_table, etcd_options, open_registry, operator_errors
from leases.labels import PolicyInvalid, change_labels
from leases.model import Endpoint
from leases.pods import PodIdentity, change_ports, pod_identity
from leases.state import Snapshot
from ovsdb import idl as ovsidl
from ovsdb.bootstrap import DEFAULT_BRIDGE
from ovsdb.plug import foreign_ports
from ovsdb.pods import (
    DEFAULT_NAMESPACE,
    NAMESPACE_KEY,
    POD_KEY,
    PORTS_KEY,
    identity_external_ids,
    identity_of,
)

OVSDB_TIMEOUT = 5.0  # seconds to connect to the node's OVSDB


class BadInput(click.ClickException):
    """A malformed argument: one line, exit status 2 (as click's usage errors)."""

    exit_code = 2


def parse_pod_ref(ref: str) -> tuple[str, str]:
    """`NAMESPACE/NAME` (BadInput if it is not one Kubernetes would accept)."""
    namespace, slash, name = ref.partition("/")
    if not slash:
        raise BadInput(f"{ref!r} is not NAMESPACE/NAME")
    try:
        pod_identity(namespace, name)
    except PolicyInvalid as exc:
        raise BadInput(f"{ref}: {exc}") from exc
    return namespace, name


def pod_endpoint(snap: Snapshot, namespace: str, name: str) -> Endpoint:
    """The published endpoint of pod NAMESPACE/NAME (a one-line error if there is none)."""
    found = [ep for ep in snap.endpoints if ep.pod and ep.pod.key_name == f"{namespace}/{name}"]
    if not found:
        raise click.ClickException(f"no pod {namespace}/{name} is published in etcd "
                                   "(`vxflow pods list` shows the pods there are)")  # fmt: skip
    return found[0]


def node_of(snap: Snapshot, ep: Endpoint) -> str:
    lease = snap.lease_for_subnet(ep.node_subnet)
    return str(lease.public_ip) if lease else "?"


def labels_text(labels: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels) or "<none>"


def ports_text(pod: PodIdentity) -> str:
    return ",".join(f"{p.name}={p.port}/{p.protocol}" for p in pod.ports) or "<none>"


@click.group()
def pods() -> None:
    """Pods: who each is (namespace, name, labels, named ports), what network policy selects.

    vxflow-cni names a pod from the runtime (CNI_ARGS K8S_POD_NAMESPACE and
    K8S_POD_NAME, labels from the network configuration's args.cni.labels)
    and writes it on the pod's OVS Interface; the node agent publishes it with
    the pod's endpoint. `label` and `ports` change a running pod's identity on
    that Interface, through the OVSDB of the pod's node (run them there, or
    give --ovsdb): it survives agent restarts and goes with the pod.
    """


@pods.command("list")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
              show_default=True)  # fmt: skip
@etcd_options
@operator_errors
def list_pods(output: str, **etcd: Any) -> None:
    """List the named pods published in etcd: namespace, name, IP, node, labels, ports."""
    with open_registry(**etcd) as registry:
        snap = registry.snapshot()
    named = sorted((ep for ep in snap.endpoints if ep.pod), key=lambda ep: ep.pod.key_name)
    if output == "json":
        click.echo(json.dumps([{**ep.pod.to_dict(), "IP": str(ep.ip), "Node": node_of(snap, ep),
                                "Port": ep.port_name} for ep in named], indent=2))  # fmt: skip
        return
    echo_table([("NAMESPACE", "NAME", "IP", "NODE", "LABELS", "PORTS")] + [
        (ep.pod.namespace, ep.pod.name, str(ep.ip), node_of(snap, ep), labels_text(ep.pod.labels),
         ports_text(ep.pod)) for ep in named
    ])  # fmt: skip
    unnamed = len(snap.endpoints) - len(named)
    click.echo(f"{len(named)} pods at revision {snap.revision}"
               + (f"; {unnamed} endpoints of no named pod" if unnamed else ""))  # fmt: skip


def node_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--bridge", default=DEFAULT_BRIDGE, show_default=True,
                     help="The integration bridge the pod's port is on.")(f)  # fmt: skip
    return click.option("--ovsdb", default=ovsidl.DEFAULT_OVSDB, show_default=True,
                        help="OVSDB of the pod's node.")(f)  # fmt: skip


def _rewrite(ovsdb: str, bridge: str, namespace: str, name: str,
             change: Callable[[PodIdentity], PodIdentity]) -> tuple[str, PodIdentity]:  # fmt: skip
    """Change the identity on pod NAMESPACE/NAME's Interface: (its name, the new identity)."""
    try:
        idl = ovsidl.connect(ovsdb, timeout=OVSDB_TIMEOUT)
    except ovsidl.OvsdbUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    done: list[tuple[str, PodIdentity]] = []

    def fill(_txn: Any) -> None:
        done.clear()
        rows = [i for port in foreign_ports(idl, bridge) for i in port.interfaces
                if i.external_ids.get(POD_KEY) == name
                and i.external_ids.get(NAMESPACE_KEY, DEFAULT_NAMESPACE) == namespace]  # fmt: skip
        if len(rows) != 1:
            raise click.ClickException(
                f"no pod {namespace}/{name} on {bridge} at {ovsdb}: run this on the pod's node "
                "(`vxflow pods list` names it) or give its --ovsdb" if not rows else
                f"pod {namespace}/{name} names {len(rows)} ports of {bridge}: "
                + ", ".join(sorted(r.name for r in rows)))  # fmt: skip
        iface = rows[0]
        ids = dict(iface.external_ids)
        current = identity_of(ids)
        if not isinstance(current, PodIdentity):
            raise click.ClickException(f"port {iface.name}: {current}")
        pod = change(current)
        new = {k: v for k, v in ids.items() if k != PORTS_KEY}
        iface.verify("external_ids")
        iface.external_ids = {**new, **identity_external_ids(pod)}
        done.append((iface.name, pod))

    try:
        ovsidl.transact(idl, fill, f"vxflow pods: {namespace}/{name}")
    except ovsidl.OvsdbError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        idl.close()
    return done[0]


def _checked(what: Callable[[], PodIdentity]) -> PodIdentity:
    try:
        return what()
    except PolicyInvalid as exc:
        raise BadInput(str(exc)) from exc


@pods.command("label")
@click.argument("pod", metavar="NAMESPACE/NAME")
@click.argument("changes", nargs=-1, required=True, metavar="KEY=VALUE|KEY- ...")
@node_options
def label(pod: str, changes: tuple[str, ...], ovsdb: str, bridge: str) -> None:
    """Set (KEY=VALUE) or remove (KEY-) labels of a running pod, as kubectl label does.

    Written on the pod's OVS Interface through its node's OVSDB; the agent
    re-publishes the endpoint. Example: vxflow pods label shop/web tier=front
    """
    namespace, name = parse_pod_ref(pod)
    _checked(lambda: pod_identity(namespace, name, change_labels({}, changes)))  # syntax, first

    def relabel(current: PodIdentity) -> PodIdentity:
        labels = change_labels(current.label_map, changes)
        return _checked(lambda: pod_identity(namespace, name, labels,
                                             [p.to_dict() for p in current.ports]))  # fmt: skip

    port, new = _rewrite(ovsdb, bridge, namespace, name, relabel)
    click.echo(f"labelled {namespace}/{name} (port {port}): {labels_text(new.labels)}")


@pods.command("ports")
@click.argument("pod", metavar="NAMESPACE/NAME")
@click.argument("changes", nargs=-1, required=True, metavar="NAME=PORT[/PROTOCOL]|NAME- ...")
@node_options
def ports(pod: str, changes: tuple[str, ...], ovsdb: str, bridge: str) -> None:
    """Publish (NAME=PORT[/PROTOCOL], TCP by default) or withdraw (NAME-) a running pod's
    named container ports, which policies' named ports resolve to.

    No container runtime passes a pod spec's port names to CNI, so this is how
    they are published. Example: vxflow pods ports shop/web http=8080/TCP
    """
    namespace, name = parse_pod_ref(pod)
    _checked(lambda: pod_identity(namespace, name, ports=[
        p.to_dict() for p in change_ports((), changes)]))  # syntax, first  # fmt: skip

    def republish(current: PodIdentity) -> PodIdentity:
        published = change_ports(current.ports, changes)
        return _checked(lambda: pod_identity(namespace, name, current.label_map,
                                             [p.to_dict() for p in published]))  # fmt: skip

    port, new = _rewrite(ovsdb, bridge, namespace, name, republish)
    click.echo(f"ports of {namespace}/{name} (port {port}): {ports_text(new)}")
