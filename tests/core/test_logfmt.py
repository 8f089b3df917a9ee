"""Structured logs: the JSON formatter writes the run's fields and nothing else from ``extra``."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from agentstream.core.logfmt import JsonFormatter, configure_logging, run_fields


def record(**extra: object) -> logging.LogRecord:
    made = logging.LogRecord("agentstream.worker", logging.INFO, __file__, 1, "run %s started", ("r1",), None)
    for name, value in extra.items():
        setattr(made, name, value)
    return made


def test_a_json_line_carries_the_message_and_the_run_fields() -> None:
    fields = run_fields("r1", attempt=2, agent_key="echo", worker_id="h:1:ab")
    line = json.loads(JsonFormatter().format(record(**fields)))
    assert line["message"] == "run r1 started"
    assert line["level"] == "INFO" and line["logger"] == "agentstream.worker"
    assert {k: line[k] for k in fields} == {
        "run_id": "r1",
        "attempt": 2,
        "agent_key": "echo",
        "worker_id": "h:1:ab",
    }


def test_other_extra_fields_such_as_a_message_body_or_a_key_are_never_written() -> None:
    line = json.loads(JsonFormatter().format(record(run_id="r1", messages=["secret body"], api_key="sk-1")))
    assert "messages" not in line and "api_key" not in line
    assert "secret" not in json.dumps(line)


def test_a_traceback_is_one_field_of_the_same_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        made = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = JsonFormatter().format(made)
    assert "\n" not in text and "ValueError: boom" in json.loads(text)["exc"]


def test_an_unknown_log_format_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="text, json"):
        configure_logging("INFO", "xml")


def test_a_value_json_cannot_hold_is_written_escaped_not_a_lost_line() -> None:
    made = record(run_id="r\ud800", attempt=2**70, agent_key="echo")
    made.msg, made.args = "cannot open %s", ("a\udcff.txt",)
    line = json.loads(JsonFormatter().format(made))
    assert line["message"] == "cannot open a\\udcff.txt"
    assert (line["run_id"], line["attempt"], line["agent_key"]) == ("r\\ud800", str(2**70), "echo")


def test_a_stack_asked_for_is_one_field_of_the_line() -> None:
    made = record()
    made.stack_info = "Stack (most recent call last):\n  File 'x.py', line 1"
    line = json.loads(JsonFormatter().format(made))
    assert line["stack"].startswith("Stack (most recent call last)")


def test_a_log_level_is_taken_in_any_case_and_an_unknown_one_is_refused_with_the_valid_ones() -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        root.handlers = []
        configure_logging("debug", "json")
        assert root.level == logging.DEBUG and isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers, root.level = handlers, level
    with pytest.raises(ValueError, match="DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        configure_logging("loud", "text")


def test_json_asked_of_a_root_logger_the_project_set_up_says_it_is_not_applied(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """basicConfig does nothing when the root has handlers (Django's LOGGING): LOG_FORMAT='json'
    was dropped without a word. The project's handlers stay; a warning says what to do."""
    root = logging.getLogger()
    theirs = logging.StreamHandler(sys.stderr)
    root.addHandler(theirs)
    try:
        with caplog.at_level(logging.WARNING, logger="agentstream"):
            configure_logging("INFO", "json")
        assert theirs in root.handlers and not any(
            isinstance(h.formatter, JsonFormatter) for h in root.handlers
        )
        assert "LOG_FORMAT='json' is not applied" in caplog.text and "JsonFormatter" in caplog.text
        caplog.clear()
        theirs.setFormatter(JsonFormatter())
        configure_logging("INFO", "json")
        assert "not applied" not in caplog.text
    finally:
        root.removeHandler(theirs)
