"""Structured logs on stdlib ``logging``: a JSON formatter and the run fields every run's line carries.

A line about a run passes ``extra=run_fields(...)``; the JSON formatter writes those fields as keys
(``run_id``, ``attempt``, ``agent_key``, ``worker_id``) and the text format ignores them. Nothing
else from ``extra`` is copied, so a caller cannot leak a secret or a message body by accident.

    LOG_FORMAT = "json"  ->  {"ts": "...", "level": "INFO", "logger": "agentstream.worker",
                              "message": "run ... started: attempt 1 on w-1", "run_id": "...", ...}
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

RUN_FIELDS = ("run_id", "attempt", "agent_key", "worker_id")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"


def run_fields(
    run_id: str,
    *,
    attempt: int | None = None,
    agent_key: str | None = None,
    worker_id: str | None = None,
) -> dict[str, Any]:
    """The ``extra=`` of a log line about a run (only the fields that are known)."""
    fields: dict[str, Any] = {"run_id": run_id}
    if attempt is not None:
        fields["attempt"] = attempt
    if agent_key is not None:
        fields["agent_key"] = agent_key
    if worker_id is not None:
        fields["worker_id"] = worker_id
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, pid, message, the run fields, the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for name in RUN_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(line, default=str).decode()
        except TypeError:  # a lone surrogate (an undecodable file name...), an int past 64 bits
            return orjson.dumps({k: _encodable(v) for k, v in line.items()}, default=str).decode()


def _encodable(value: Any) -> Any:
    """What orjson refuses, as text: surrogates escaped (``\\udcff``), other values by ``str``."""
    if isinstance(value, bool | float) or value is None:
        return value
    if isinstance(value, int) and -(2**63) <= value < 2**64:
        return value
    text = value if isinstance(value, str) else str(value)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def configure_logging(level: str | int = "INFO", log_format: str = "text") -> None:
    """Root logging for a process of ours (worker, projector, server): text or JSON on stderr."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is unknown; use one of {', '.join(LOG_FORMATS)}")
    level = log_level(level)  # refused here whoever configures the root
    root = logging.getLogger()
    if root.handlers:
        # The project's LOGGING (or an embedder) set the root up: its handlers (Sentry, files...)
        # and levels stay as they are; ours would only double every line. Say what is not applied.
        if log_format == "json" and not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
            logging.getLogger("agentstream").warning(
                "LOG_FORMAT='json' is not applied: the root logger already has handlers (Django's "
                "LOGGING?); give them the formatter agentstream.core.logfmt.JsonFormatter"
            )
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])


def log_level(level: str | int) -> str | int:
    """A level by number or by name in any case (``--log-level info``, ``AGENTSTREAM_LOG_LEVEL=debug``)."""
    if isinstance(level, int):
        return level
    name = level.strip().upper()
    if name.isdigit():
        return int(name)
    if name not in LOG_LEVELS:
        raise ValueError(f"log level {level!r} is unknown; use one of {', '.join(LOG_LEVELS)}")
    return name
