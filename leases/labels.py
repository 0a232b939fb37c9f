"""Kubernetes' syntax for names and labels, and the one-line error of a bad one.

Pure, and the bottom of policy: pod identities (`leases.pods`), policies and
namespaces (`leases.policy`) are all judged by these rules, as the API server
judges them (k8s.io/apimachinery/pkg/util/validation).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

MAX_SELECTOR_TERMS = 64  # matchLabels plus matchExpressions of one selector
MAX_LABELS = 128  # labels of one namespace or pod

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL.pattern}(\.{_DNS_LABEL.pattern})*")
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_PORT_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


class PolicyReason:
    """Reason codes of rejected policies and namespaces (beside `leases.validate.Reason`)."""

    BAD_MANIFEST = "bad_manifest"
    BAD_SELECTOR = "bad_selector"
    BAD_PEER = "bad_peer"
    BAD_PORT = "bad_port"
    BAD_PROTOCOL = "bad_protocol"
    BAD_IP_BLOCK = "bad_ip_block"
    BAD_LABEL = "bad_label"
    BAD_POD = "bad_pod"
    TOO_MANY = "too_many"


class PolicyInvalid(ValueError):
    """One line: the object (if known), the field and what is wrong with it."""

    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.reason = reason
        self.field = field
        self.message = message

    def of(self, what: str) -> PolicyInvalid:
        """The same error, prefixed with the object it is about."""
        return PolicyInvalid(self.reason, f"{what}: {self.field}" if self.field else what,
                             self.message)  # fmt: skip


# -- syntax of names and labels ----------------------------------------------------------


def dns_label_problem(value: str) -> str | None:
    if len(value) <= 63 and _DNS_LABEL.fullmatch(value):
        return None
    return (f"{value!r} must be at most 63 lower-case letters, digits and '-', "
            "starting and ending with a letter or digit")  # fmt: skip


def dns_subdomain_problem(value: str) -> str | None:
    if len(value) <= 253 and _DNS_SUBDOMAIN.fullmatch(value):
        return None
    return (f"{value!r} must be at most 253 lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit")  # fmt: skip


def label_key_problem(key: str) -> str | None:
    """Why `key` is not a label key (an optional DNS-subdomain prefix, '/', a name)."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or dns_subdomain_problem(prefix)):
        return f"label key {key!r} has an invalid prefix (a DNS subdomain is expected)"
    if len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        return (f"label key {key!r}: the name must be 1-63 letters, digits, '-', '_' and '.', "
                "starting and ending with a letter or digit")  # fmt: skip
    return None


def label_value_problem(value: str) -> str | None:
    if value == "" or (len(value) <= 63 and _LABEL_NAME.fullmatch(value)):
        return None
    return (f"label value {value!r} must be empty or 1-63 letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit")  # fmt: skip


def port_name_problem(name: str) -> str | None:
    if (len(name) <= 15 and _PORT_NAME.fullmatch(name) and "--" not in name
            and any(c.isalpha() for c in name)):  # fmt: skip
        return None
    return (f"port name {name!r} must be 1-15 lower-case letters, digits and '-' (not "
            "doubled, nor first or last), with at least one letter")  # fmt: skip


def show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def bounded(items: list[Any], limit: int, field: str, what: str) -> list[Any]:
    if len(items) > limit:
        raise PolicyInvalid(PolicyReason.TOO_MANY, field,
                            f"{len(items)} {what}: vxflow accepts at most {limit}")  # fmt: skip
    return items


def change_labels(current: dict[str, str], changes: Iterable[str],
                  fixed: tuple[str, str] | None = None) -> dict[str, str]:  # fmt: skip
    """`current` changed as `kubectl label` does: `k=v` sets, `k-` removes. PolicyInvalid
    for a malformed change, or one of `fixed`'s label (key, why it cannot change)."""
    labels = dict(current)
    for change in changes:
        key, eq, value = change.partition("=")
        if not eq and change.endswith("-"):
            key = change[:-1]
        elif not eq:
            raise PolicyInvalid(PolicyReason.BAD_LABEL, change,
                                "is neither KEY=VALUE nor KEY- (to remove it)")  # fmt: skip
        if fixed and key == fixed[0]:
            raise PolicyInvalid(PolicyReason.BAD_LABEL, change, fixed[1])
        problem = label_key_problem(key) or (label_value_problem(value) if eq else None)
        if problem:
            raise PolicyInvalid(PolicyReason.BAD_LABEL, change, problem)
        if eq:
            labels[key] = value
        else:
            labels.pop(key, None)
    return labels


def parse_labels(raw: Any, field: str, limit: int = MAX_SELECTOR_TERMS) -> dict[str, str]:
    """A map of valid label keys to valid label values (both strings)."""
    if not isinstance(raw, dict):
        raise PolicyInvalid(PolicyReason.BAD_LABEL, field, f"must be an object, got {show(raw)}")
    bounded(list(raw), limit, field, "labels")
    for key, value in raw.items():
        if not isinstance(key, str):
            raise PolicyInvalid(PolicyReason.BAD_LABEL, field,
                                f"label key {show(key)} is not a string")  # fmt: skip
        if not isinstance(value, str):
            raise PolicyInvalid(PolicyReason.BAD_LABEL, f"{field}.{key}",
                                f"label value {show(value)} is not a string (quote it)")  # fmt: skip
        problem = label_key_problem(key) or label_value_problem(value)
        if problem:
            raise PolicyInvalid(PolicyReason.BAD_LABEL, field, problem)
    return raw
