"""Node liveness records (pure): validation with reasons, their events and snapshots, and
the rule that calls a node DOWN."""

from __future__ import annotations

import itertools
from ipaddress import IPv4Address

from leases.events import LivenessAdded, LivenessRemoved
from leases.keys import KV, KeyKind, Keys
from leases.liveness import MAX_RECORD_BYTES, check_liveness, liveness_to_json, node_down
from leases.model import Liveness
from leases.state import View, diff
from leases.validate import Rejection

KEYS = Keys("/coreos.com/network")
IP = IPv4Address("198.18.0.3")


def record_kv(ip: str = "198.18.0.3", value: str | None = None, lease: int = 9, rev: int = 4) -> KV:
    raw = value if value is not None else liveness_to_json(Liveness(IPv4Address(ip), 2))
    return KV(f"{KEYS.nodes}{ip}", raw.encode(), rev, rev, lease)


def test_records_validate_with_reasons() -> None:
    assert KEYS.classify(KEYS.node(IP)) == (KeyKind.NODE, "198.18.0.3")
    assert check_liveness(record_kv(), "198.18.0.3") == Liveness(IP, 2, 9)
    bad = {
        "bad_key": record_kv(value='{"PublicIP": "198.18.0.4", "TTL": 2}'),
        "bad_json": record_kv(value="{oops"),
        "not_bound": record_kv(lease=0),
        "wrong_type": record_kv(value='{"PublicIP": "198.18.0.3", "TTL": "2"}'),
        "missing_field": record_kv(value='{"PublicIP": "198.18.0.3"}'),
        "bad_ttl": record_kv(value='{"PublicIP": "198.18.0.3", "TTL": 0}'),
        "oversized": record_kv(value='{"PublicIP": "198.18.0.3", "TTL": 2, "x": "' + "y" * MAX_RECORD_BYTES + '"}'),
    }
    for reason, kv in bad.items():
        result = check_liveness(kv, "198.18.0.3")
        assert isinstance(result, Rejection) and result.reason == reason, (reason, result)
        assert result.kind is KeyKind.NODE
    named = record_kv("node-3", value='{"PublicIP": "node-3", "TTL": 2}')
    assert check_liveness(named, "node-3").reason == "bad_key"


def test_the_view_reports_records_as_events_in_snapshots_and_rejections() -> None:
    view = View(KEYS).load([record_kv()], 4)
    before = view.snapshot()
    assert before.liveness == (Liveness(IP, 2, 9),) and before.alive() == {IP}
    events, _, _ = view.apply({KEYS.node(IP): None}, 5)
    assert events == [LivenessRemoved(Liveness(IP, 2, 9), 5)]
    assert diff(before, view.snapshot()) == events  # a re-list yields the same
    events, _, _ = view.apply({KEYS.node(IP): record_kv(lease=11, rev=6)}, 6)
    assert events == [LivenessAdded(Liveness(IP, 2, 11), 6)]
    unbound = record_kv("198.18.0.5", lease=0, rev=7)
    events, rejections, _ = view.apply({unbound.key: unbound}, 7)
    assert events == [] and [r.reason for r in rejections] == ["not_bound"]
    assert [r.key for r in view.snapshot().rejected_of(KeyKind.NODE)] == [unbound.key]


def test_a_node_is_down_only_when_judged_and_both_signals_are_gone() -> None:
    for judged, alive, connected in itertools.product((False, True), repeat=3):
        assert node_down(judged, alive, connected) == (judged and not alive and not connected)
    assert node_down(True, alive=False, connected=False)  # a crash
    assert not node_down(True, alive=True, connected=False)  # a partition from the controller
    assert not node_down(True, alive=False, connected=True)  # the agent died, its switch lives
    assert not node_down(False, alive=False, connected=False)  # a flannel node: no pods of ours
