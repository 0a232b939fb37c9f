"""kubectl-style input (JSON or YAML: one object, several documents, a `List`) read into
its objects, for `vxflow policies set`. Apart from leases/policy.py, so that the daemons,
which read policies as JSON from etcd, do not import a YAML parser (~9 ms of every start)."""

from __future__ import annotations

from typing import Any

import yaml

LIST_KINDS = ("List", "NetworkPolicyList")
MAX_INPUT_BYTES = 4 * 1024 * 1024  # one `vxflow policies set` file


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors' aliases: a few bytes of them expand to gigabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"YAML aliases (*name) are not accepted, line {mark.line + 1}")
        return super().compose_node(parent, index)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"not YAML or JSON: {problem}{where}"


def read_manifests(raw: bytes | str) -> list[Any]:
    """The objects of a kubectl-style input: JSON or YAML, one object, several documents,
    a `List`/`NetworkPolicyList`'s items (empty documents skipped). ValueError, one line."""
    if len(raw) > MAX_INPUT_BYTES:
        raise ValueError(f"{len(raw)} bytes: at most {MAX_INPUT_BYTES} in one input")
    try:
        docs = [d for d in yaml.load_all(raw, Loader=_NoAliasLoader) if d is not None]
    except yaml.YAMLError as exc:
        raise ValueError(_yaml_problem(exc)) from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"not YAML or JSON: {exc.__class__.__name__}") from None
    objects: list[Any] = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") in LIST_KINDS:
            items = doc.get("items")
            if not isinstance(items, list):
                raise ValueError(f"a {doc.get('kind')} without a list of items")
            objects += items
        else:
            objects.append(doc)
    if not objects:
        raise ValueError("no object in the input")
    return objects
