"""Provider failures -> Retry (with Retry-After) or PermanentFailure."""

from __future__ import annotations

import email.utils

import pytest

from agentstream.consumers.errors import PermanentFailure, Retry
from agentstream.consumers.llm.errors import classify_status, parse_retry_after, provider_error


@pytest.mark.parametrize(
    ("status", "retriable"),
    [
        (None, True),
        (408, True),
        (409, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (529, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (413, False),
        (422, False),
    ],
)
def test_rate_limits_timeouts_and_5xx_are_retriable_other_4xx_are_permanent(
    status: int | None, retriable: bool
) -> None:
    failure = classify_status("openai", status, "boom", {"retry-after": "3"})
    assert failure.retriable is retriable
    error = provider_error(failure)
    assert isinstance(error, Retry if retriable else PermanentFailure)
    if retriable:
        assert isinstance(error, Retry) and error.delay_s == 3.0
    else:
        assert "fix the request" in str(error)


def test_retry_after_in_seconds_milliseconds_and_http_date() -> None:
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now_s=1_000_000) == 30.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "-5"}) == 0.0
