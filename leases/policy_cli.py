"""`vxflow policies ...` and `vxflow namespaces ...`: Kubernetes NetworkPolicies and the
namespace labels their selectors match, stored and validated in etcd."""

from __future__ import annotations

import json
from typing import IO, Any

import click

from leases.cli_options import echo_table, etcd_options, open_registry, operator_errors
from leases.errors import PolicyRejected
from leases.keys import KeyKind
from leases.manifests import read_manifests
from leases.policy import (
    API_VERSION,
    PolicyInvalid,
    policy_to_dict,
    selector_text,
)
from leases.state import Snapshot

EXAMPLE = """\b
Example FILE (YAML or JSON, as for kubectl apply -f):
  apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: allow-web, namespace: shop}
  spec:
    podSelector: {matchLabels: {app: web}}
    ingress:
    - from:
      - namespaceSelector: {matchLabels: {team: front}}
      ports: [{port: 80}]
"""
_KINDS = (KeyKind.POLICY, KeyKind.NAMESPACE)


def _rejected(snap: Snapshot) -> list[Any]:
    return [r for r in snap.rejected if r.kind in _KINDS]


@click.group()
def policies() -> None:
    """Kubernetes NetworkPolicies (stored and validated; not yet enforced in the flows)."""


@policies.command("set", epilog=EXAMPLE)
@click.argument("file", type=click.File("rb"))
@etcd_options
@operator_errors
def set_policies(file: IO[bytes], **etcd: Any) -> None:
    """Validate the NetworkPolicy manifests in FILE (- for stdin) and store them all under
    <prefix>/vxflow/policies/<namespace>/<name>, replacing policies of those names.

    FILE holds one object, several YAML documents or a List. If any object is refused,
    each refusal is printed and nothing is written. A manifest without a namespace goes
    to "default".
    """
    try:
        objects = read_manifests(file.read())
    except ValueError as exc:
        raise click.ClickException(f"{getattr(file, 'name', '-')}: {exc}") from exc
    with open_registry(**etcd) as registry:
        try:
            written = registry.put_policies(objects)
        except PolicyRejected as exc:
            if len(objects) == 1:
                raise click.ClickException(exc.problems[0]) from exc
            for problem in exc.problems:
                click.echo(f"refused {problem}", err=True)
            raise
        for policy in written:
            key = registry.keys.policy(policy.namespace, policy.name)
            click.echo(f"wrote {key}: pods {selector_text(policy.pod_selector)}, "
                       f"{'+'.join(policy.policy_types)}")  # fmt: skip


@policies.command("list")
@click.option("--output", "-o", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="table for people; json: a kubectl List of the "
              "normalised manifests (an input of `policies set`) and the rejected keys.")  # fmt: skip
@etcd_options
@operator_errors
def list_policies(output: str, **etcd: Any) -> None:
    """List valid policies with their defaults filled in; rejected ones with their reasons."""
    with open_registry(**etcd) as registry:
        snap = registry.snapshot()
    rejected = _rejected(snap)
    if output == "json":
        doc = {
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": str(snap.revision)},
            "items": [policy_to_dict(p) for p in snap.policies],
            "rejected": [r.to_dict() for r in rejected],
        }
        click.echo(json.dumps(doc, indent=2))
        return
    lines = [("NAMESPACE", "NAME", "POD-SELECTOR", "POLICY-TYPES", "INGRESS", "EGRESS")]
    for p in snap.policies:
        lines.append((p.namespace, p.name, selector_text(p.pod_selector), ",".join(p.policy_types),
                      str(len(p.ingress)), str(len(p.egress))))  # fmt: skip
    echo_table(lines)
    click.echo(f"{len(snap.policies)} {API_VERSION} NetworkPolicies at revision {snap.revision}")
    for r in rejected:
        click.echo(f"rejected {r}", err=True)


@policies.command("rm")
@click.argument("policy", metavar="NAMESPACE/NAME")
@etcd_options
@operator_errors
def remove(policy: str, **etcd: Any) -> None:
    """Remove the policy NAME of NAMESPACE."""
    namespace, slash, name = policy.partition("/")
    if not slash or not namespace or not name:
        raise click.ClickException(f"{policy!r} is not NAMESPACE/NAME")
    with open_registry(**etcd) as registry:
        key = registry.keys.policy(namespace, name)
        if not registry.delete_policy(namespace, name):
            raise click.ClickException(f"no policy at {key}")
    click.echo(f"removed {key}")


@click.group()
def namespaces() -> None:
    """Namespaces' labels, which policies' namespaceSelectors match."""


@namespaces.command("label")
@click.argument("name")
@click.argument("changes", nargs=-1, required=True, metavar="KEY=VALUE|KEY- ...")
@etcd_options
@operator_errors
def label(name: str, changes: tuple[str, ...], **etcd: Any) -> None:
    """Set (KEY=VALUE) or remove (KEY-) labels of the namespace NAME, as kubectl label does.

    kubernetes.io/metadata.name is always NAME, as in Kubernetes.
    """
    with open_registry(**etcd) as registry:
        try:
            ns = registry.label_namespace(name, changes)
        except PolicyInvalid as exc:
            raise click.ClickException(f"namespace {name}: {exc}") from exc
        key = registry.keys.namespace(name)
    click.echo(f"wrote {key}: " + ",".join(f"{k}={v}" for k, v in ns.labels))


@namespaces.command("list")
@etcd_options
@operator_errors
def list_namespaces(**etcd: Any) -> None:
    """List labelled namespaces (any other has its name label alone)."""
    with open_registry(**etcd) as registry:
        snap = registry.snapshot()
    echo_table([("NAME", "LABELS")] + [
        (ns.name, ",".join(f"{k}={v}" for k, v in ns.labels)) for ns in snap.namespaces
    ])  # fmt: skip
    for r in _rejected(snap):
        if r.kind is KeyKind.NAMESPACE:
            click.echo(f"rejected {r}", err=True)
