"""Structured logs: one JSON object per line with extras and exceptions."""

from __future__ import annotations

import json
import logging

from kubeaccel_runtime.serve.logs import JsonFormatter, logging_config


def test_a_record_becomes_one_json_line_with_its_extra_fields() -> None:
    record = logging.LogRecord("kubeaccel.serve", logging.WARNING, "f.py", 1, "x=%d", (3,), None)
    record.model = "mlp"
    record.color_message = "\x1b[1mx\x1b[0m"  # uvicorn's duplicate; dropped
    line = JsonFormatter().format(record)
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["level"] == "warning"
    assert doc["msg"] == "x=3"
    assert doc["model"] == "mlp"
    assert "color_message" not in doc
    assert doc["ts"].endswith("Z")


def test_exceptions_are_kept_in_the_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("k", logging.ERROR, "f", 1, "failed", (), sys.exc_info())
    doc = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in doc["exc"]


def test_the_logging_config_routes_uvicorn_through_the_json_formatter() -> None:
    cfg = logging_config("debug")
    assert cfg["loggers"]["uvicorn"]["handlers"] == ["default"]
    assert cfg["loggers"]["kubeaccel"]["level"] == "DEBUG"
    assert cfg["formatters"]["json"]["()"] is JsonFormatter
