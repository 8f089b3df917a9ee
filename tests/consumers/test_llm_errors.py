"""Provider failures -> Retry (with Retry-After) or PermanentFailure; the Anthropic SDK against the local server."""

from __future__ import annotations

import email.utils
from collections.abc import AsyncIterator, Iterator

import pytest

from agentstream.consumers.errors import PermanentFailure, Retry
from agentstream.consumers.llm import get_llm_client
from agentstream.consumers.llm.errors import (
    classify_status,
    error_body_kind,
    from_sdk_exception,
    parse_retry_after,
    provider_error,
)
from agentstream.consumers.llm.types import LLMChunk
from agentstream.core.settings import Settings
from tests.consumers.fake_openai_server import FakeOpenAIServer


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


@pytest.mark.parametrize(
    ("status", "error_type", "retriable"),
    [
        (200, "overloaded_error", True),
        (200, "api_error", True),
        (200, "rate_limit_error", True),
        (200, None, True),  # the request was accepted; the stream broke
        (200, "invalid_request_error", True),
        (204, None, True),
        (304, "overloaded_error", True),
        (304, None, False),
    ],
)
def test_an_error_inside_an_accepted_stream_is_classified_by_its_body_type_not_as_a_4xx(
    status: int, error_type: str | None, retriable: bool
) -> None:
    failure = classify_status("anthropic", status, "Overloaded", error_type=error_type)
    assert failure.retriable is retriable
    assert isinstance(provider_error(failure), Retry if retriable else PermanentFailure)


def test_the_body_type_of_an_sdk_error_is_read_from_anthropic_and_openai_bodies() -> None:
    anthropic_body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    openai_body = {"message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"}
    assert error_body_kind(anthropic_body) == ("overloaded_error", None)
    assert error_body_kind(openai_body) == ("insufficient_quota", "insufficient_quota")
    assert error_body_kind("<html>bad gateway</html>") == (None, None)
    assert error_body_kind(None) == (None, None)


class _StatusError(Exception):
    """What the SDKs raise: ``status_code`` and the decoded error ``body``."""

    def __init__(self, status_code: int, body: object) -> None:
        super().__init__("boom")
        self.status_code = status_code
        self.body = body


def test_a_mid_stream_overloaded_error_with_the_stream_status_200_is_retriable() -> None:
    exc = _StatusError(200, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    failure = from_sdk_exception("anthropic", exc)
    assert failure is not None and failure.retriable


@pytest.mark.parametrize("field", ["type", "code"])
def test_openai_insufficient_quota_is_permanent_and_says_to_check_billing_not_a_rate_limit(
    field: str,
) -> None:
    exc = _StatusError(429, {"message": "You exceeded your current quota", field: "insufficient_quota"})
    failure = from_sdk_exception("openai", exc)
    assert failure is not None and not failure.retriable
    assert failure.retry_after_s is None
    error = provider_error(failure)
    assert isinstance(error, PermanentFailure)
    assert "billing" in str(error) and "spend limit" in str(error)
    assert "fix the request" not in str(error)
    # a plain rate limit stays retriable
    plain = from_sdk_exception(
        "openai", _StatusError(429, {"type": "requests", "code": "rate_limit_exceeded"})
    )
    assert plain is not None and plain.retriable


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAIServer]:
    pytest.importorskip("anthropic")
    server = FakeOpenAIServer()
    server.start()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.root_url)  # read by the SDK itself
    yield server
    server.stop()


async def test_the_anthropic_sdk_s_mid_stream_overloaded_error_is_retried_not_failed_for_good(
    server: FakeOpenAIServer,
) -> None:
    settings = Settings(ANTHROPIC_API_KEY="test-key")
    llm = get_llm_client("anthropic", "overloaded-midstream", settings=settings)
    deltas: list[str] = []
    with pytest.raises(Retry) as caught:
        await _collect_deltas(llm.stream([{"role": "user", "content": "hi"}]), deltas)
    assert "".join(deltas) == "Hello"  # the stream had begun: HTTP 200
    assert "HTTP 200" in str(caught.value) and "Overloaded" in str(caught.value)
    await llm.aclose()


async def _collect_deltas(chunks: AsyncIterator[LLMChunk], into: list[str]) -> None:
    async for chunk in chunks:
        into.append(chunk.delta)
