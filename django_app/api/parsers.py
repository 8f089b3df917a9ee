"""The JSON request parser of the agentstream views: hostile JSON is a 400, never a 500.

DRF's ``JSONParser`` lets three things through that fail later, as 500s or half-written runs:
nesting deep enough to exhaust the interpreter's recursion (``[[[[...`` x 100k), numbers that
overflow to ``inf`` (``1e999``, not JSON-compliant and not renderable), and text that is not
UTF-8. This parser refuses all three with a ``ParseError`` that says what is wrong.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_JSON_DEPTH = 64  # chat messages, content parts and tool arguments nest a handful of levels


class AgentJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        raw = stream.read() if stream is not None else b""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ParseError(f"the request body is not valid UTF-8 (byte {exc.start})") from None
        try:
            data = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
        except RecursionError:
            raise ParseError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        if _depth_over(data, MAX_JSON_DEPTH):
            raise ParseError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:32]} is out of range")
    return value


def _depth_over(data: Any, limit: int) -> bool:
    """Iterative (a recursive walk is what the limit protects against)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
