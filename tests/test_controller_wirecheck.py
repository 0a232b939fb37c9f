"""The structure checks in front of os-ken's parsers (pure)."""

from __future__ import annotations

import struct

from controller import metrics, ofwire, wirecheck
from controller.loglimit import LogLimit
from flows.compiler import compile_node
from tests.test_controller_sync import CONFIG, lease, stats_body


def msg(mtype: int, body: bytes = b"", version: int = 5) -> bytes:
    return struct.pack("!BBHI", version, mtype, 8 + len(body), 1) + body


def test_what_ovs_sends_passes() -> None:
    flows = compile_node(CONFIG, [lease(1), lease(2)], [], lease(1).public_ip)
    reply = msg(wirecheck.MULTIPART_REPLY, struct.pack("!HH4x", 1, 0) + stats_body(flows))
    assert wirecheck.problem(5, wirecheck.MULTIPART_REPLY, reply) is None
    assert list(ofwire.decode_flow_stats(reply[16:]))  # and it reads back
    hello = msg(wirecheck.HELLO, struct.pack("!HHI", 1, 8, 0b110000))
    assert wirecheck.problem(5, wirecheck.HELLO, hello) is None
    port = struct.pack("!IH2x6s2x16sII", 1, 72, b"\x02" * 6, b"vxlan0".ljust(16, b"\0"), 0, 0)
    port += struct.pack("!HH4xIIIIII", 0, 32, 0, 0, 0, 0, 0, 0)  # ethernet property
    assert wirecheck.problem(5, wirecheck.PORT_STATUS, msg(12, b"\x02" + b"\0" * 7 + port)) is None
    assert wirecheck.problem(5, wirecheck.BARRIER_REPLY, msg(21)) is None


def test_lists_that_would_spin_os_ken_are_refused() -> None:
    zero_elem = msg(wirecheck.HELLO, struct.pack("!HH", 1, 0) + b"\0" * 4)
    assert "hello element at 8 has length 0" in wirecheck.problem(5, 0, zero_elem)
    flows = compile_node(CONFIG, [lease(1), lease(2)], [], lease(1).public_ip)
    body = bytearray(stats_body(flows))
    struct.pack_into("!H", body, 0, 0)  # first entry of length 0
    reply = msg(19, struct.pack("!HH4x", 1, 0) + bytes(body))
    assert "flow stats entry at 16 has length 0" in wirecheck.problem(5, 19, reply)
    body = bytearray(stats_body([max(flows, key=lambda f: len(f.actions))]))
    match_len = struct.unpack_from("!H", body, 48 + 2)[0]
    struct.pack_into("!H", body, 48 + (match_len + 7) // 8 * 8 + 2, 0)  # instruction length 0
    reply = msg(19, struct.pack("!HH4x", 1, 0) + bytes(body))
    assert "instruction" in wirecheck.problem(5, 19, reply)
    port = struct.pack("!IH2x6s2x16sII", 1, 48, b"\x02" * 6, b"p".ljust(16, b"\0"), 0, 0)
    port += struct.pack("!HH4x", 0, 0)  # a property of length 0
    assert "port property" in wirecheck.problem(5, 12, msg(12, b"\0" * 8 + port))
    assert "never asks" in wirecheck.problem(5, 13, msg(13))  # a packet-out from a switch
    assert "never asks" in wirecheck.problem(5, 19, msg(19, struct.pack("!HH4x", 14, 0)))
    assert "version 4 after the hello" in wirecheck.problem(4, 6, msg(6, version=4))
    truncated = msg(19, struct.pack("!HH4x", 1, 0) + stats_body(flows)[:30])
    assert "flow stats entry at 16 has length" in wirecheck.problem(5, 19, truncated)


def test_group_desc_and_the_actions_ct_nests_are_walked() -> None:
    """The services' groups (buckets of ct with a nested nat) pass; a bucket or a nested
    action of length 0 would spin os-ken's parser and is refused."""
    from controller import groups
    from flows.services import plan_groups
    from tests.test_controller_ofwire import SERVICES

    body = b"".join(groups.group_desc_entry(g) for g in plan_groups(SERVICES))
    reply = msg(19, struct.pack("!HH4x", wirecheck.MP_GROUP_DESC, 0) + body)
    assert wirecheck.problem(5, 19, reply) is None
    zero_bucket = bytearray(body)
    struct.pack_into("!H", zero_bucket, 8, 0)  # the first bucket's length
    reply = msg(19, struct.pack("!HH4x", wirecheck.MP_GROUP_DESC, 0) + bytes(zero_bucket))
    assert "bucket at 24 has length 0" in wirecheck.problem(5, 19, reply)
    nested = bytearray(body)
    nat_at = 8 + 16 + 24  # entry, bucket, ct: the nat action nested in the first ct
    assert struct.unpack_from("!HH", nested, nat_at) == (0xFFFF, 24)
    struct.pack_into("!H", nested, nat_at + 2, 0)
    reply = msg(19, struct.pack("!HH4x", wirecheck.MP_GROUP_DESC, 0) + bytes(nested))
    assert f"action at {16 + nat_at} has length 0" in wirecheck.problem(5, 19, reply)


def test_messages_shorter_than_their_fixed_part_are_refused() -> None:
    """An ERROR or ROLE_REPLY cut short used to pass and log a traceback in its decoder."""
    for mtype, fixed in ((wirecheck.ERROR, 12), (wirecheck.ROLE_REPLY, 24),
                         (wirecheck.ROLE_STATUS, 24), (wirecheck.PACKET_IN, 34)):  # fmt: skip
        short = msg(mtype, b"\0" * (fixed - 9))
        assert wirecheck.problem(5, mtype, short) == (
            f"{fixed - 1} bytes, shorter than its fixed part ({fixed})"
        )
    error = msg(wirecheck.ERROR, struct.pack("!HH", 1, 10))
    assert wirecheck.problem(5, wirecheck.ERROR, error) is None
    assert wirecheck.problem(1, wirecheck.ERROR, msg(wirecheck.ERROR, b"\0", version=1))
    assert wirecheck.problem(5, wirecheck.ROLE_REPLY, msg(wirecheck.ROLE_REPLY, b"\0" * 16)) is None


def test_what_a_peer_can_send_at_will_grows_no_metric_series_and_no_log_flood() -> None:
    """Errors of any (type, code) and packet-ins are counted, but the label values are
    OpenFlow's own, and the log takes one line per interval (counting the rest)."""
    assert metrics.of_error(5, 9) is metrics.OF_ERRORS.labels("5", "9")
    for err_type, code in ((0xABCD, 1), (1, 0xFFFF), (14, 0)):
        assert metrics.of_error(err_type, code) is metrics.OF_ERRORS.labels("other", "other")
    now = [100.0]
    limit = LogLimit(interval=10.0, clock=lambda: now[0])
    assert limit.admit() == 0
    assert [limit.admit() for _ in range(5)] == [None] * 5
    now[0] += 10.0
    assert limit.admit() == 5 and limit.admit() is None


def test_a_silent_peer_meets_its_handshake_deadline_before_the_echo_probe_drops_it() -> None:
    from controller.guard import HANDSHAKE_TIMEOUT, MAX_UNREPLIED_ECHOES, handshake_deadline

    for interval in (0.5, 2.0, 15.0):
        deadline = handshake_deadline(interval)
        assert deadline <= HANDSHAKE_TIMEOUT and deadline < interval * (MAX_UNREPLIED_ECHOES + 1)
    assert handshake_deadline(15.0) == HANDSHAKE_TIMEOUT  # os-ken's pace: the full 10 s
