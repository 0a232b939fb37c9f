"""`vxflow --log-format json`: one JSON object per line, with the record's own fields."""

from __future__ import annotations

import json
import logging
import subprocess

from tests.test_cli_help import VXFLOW
from vxflow.logs import JsonFormatter


def test_json_line_carries_message_level_and_extra_fields():
    record = logging.LogRecord("controller.switch", logging.WARNING, __file__, 1,
                               "switch %s drifted", ("198.18.0.1",), None)  # fmt: skip
    record.event, record.node = "drift", "198.18.0.1"
    doc = json.loads(JsonFormatter().format(record))
    assert doc.pop("time").endswith("+00:00")
    assert doc == {"level": "warning", "logger": "controller.switch",
                   "message": "switch 198.18.0.1 drifted", "event": "drift",
                   "node": "198.18.0.1"}  # fmt: skip


def test_log_format_json_as_typed():
    """`vxflow --log-format json COMMAND`: every stderr line but click's error is JSON."""
    res = subprocess.run(
        [VXFLOW, "--log-format", "json", "--log-level", "debug", "leases", "list",
         "--etcd-endpoints", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 1
    *lines, error = res.stderr.splitlines()
    assert error == "Error: etcd unreachable: http://127.0.0.1:9: Connection refused"
    assert lines and all(json.loads(line)["level"] == "debug" for line in lines), res.stderr
