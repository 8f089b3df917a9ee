"""Provider failures mapped to the runtime's errors, sans-I/O.

Rate limits (429), timeouts (408), conflicts (409), 5xx and lost connections are worth another
attempt, after ``Retry-After`` when the provider names one. Every other 4xx fails the run at once:
a request that the provider rejects as malformed fails the same way every time, so retrying it
would only burn attempts (and, with a generous ``MAX_RETRIES``, days of backoff).

The error body's ``type`` / ``code`` refine the status. OpenAI's 429 ``insufficient_quota`` is
billing, not a rate limit: permanent. An error that arrives inside a stream carries the stream's
status (Anthropic's SSE ``event: error`` becomes an ``APIStatusError`` with HTTP 200): below 400,
``overloaded_error`` / ``api_error`` / ``rate_limit_error`` are retriable, and so is any failure
with a 2xx status, since the provider accepted the request and the stream broke.

``classify_status`` is the decision, a value; ``provider_error`` turns it into ``Retry`` /
``PermanentFailure`` for the worker engine, and ``from_sdk_exception`` reads any of the
OpenAI-style SDK exceptions (openai, anthropic, litellm all carry ``status_code`` and ``response``).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

RETRIABLE_STATUSES = frozenset({408, 409, 425, 429})
# Error body types that say "try again" whatever the status (a stream's is its 200).
RETRIABLE_ERROR_TYPES = frozenset({"overloaded_error", "api_error", "rate_limit_error"})
QUOTA_EXHAUSTED = "insufficient_quota"  # OpenAI's 429 ``type`` / ``code`` when billing ran out
QUOTA_HINT = "check the account's billing and spend limit (the quota is exhausted), then submit again"


@dataclass(frozen=True, slots=True)
class ProviderFailure:
    provider: str
    message: str
    status_code: int | None
    retriable: bool
    retry_after_s: float | None = None
    hint: str | None = None  # what to do about a permanent failure, when the default is wrong


def classify_status(
    provider: str,
    status_code: int | None,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    error_type: str | None = None,
    error_code: str | None = None,
) -> ProviderFailure:
    """``status_code=None`` means the request never got an answer (connection lost, timed out);
    ``error_type`` / ``error_code`` are the error body's ``type`` / ``code`` when it has them."""
    if QUOTA_EXHAUSTED in (error_type, error_code):
        return ProviderFailure(provider, message, status_code, False, hint=QUOTA_HINT)
    if status_code is None or status_code in RETRIABLE_STATUSES or status_code >= 500:
        retriable = True
    elif status_code < 400:  # an error inside an accepted response: a stream that broke
        retriable = error_type in RETRIABLE_ERROR_TYPES or 200 <= status_code < 300
    else:
        retriable = False
    retry_after_s = parse_retry_after(headers or {}) if retriable else None
    return ProviderFailure(provider, message, status_code, retriable, retry_after_s)


def parse_retry_after(headers: Mapping[str, str], *, now_s: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` (OpenAI), ``retry-after`` seconds, or an HTTP date."""
    lowered = {key.lower(): value for key, value in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now_s is None else now_s))


def provider_error(failure: ProviderFailure) -> Exception:
    """The runtime error the worker engine acts on: ``Retry`` (with the provider's delay) or ``PermanentFailure``."""
    from agentstream.consumers.errors import PermanentFailure, Retry

    status = f"HTTP {failure.status_code}" if failure.status_code is not None else "no response"
    text = f"{failure.provider} request failed ({status}): {failure.message}"
    if failure.retriable:
        return Retry(text, delay_s=failure.retry_after_s)
    hint = failure.hint or "fix the request (model name, messages, tools, API key) and submit again"
    return PermanentFailure(f"{text}; {hint}")


def deadline_exceeded(provider: str, timeout_s: float) -> Exception:
    """The ``Retry`` for a call that outlived its deadline (``CallDeadline`` in ``streaming``)."""
    from agentstream.consumers.errors import Retry

    return Retry(
        f"{provider} call did not finish within {timeout_s:g} s (STEP_TIMEOUT_SECONDS bounds the "
        "whole LLM call, every streamed chunk included); if the model needs longer, raise "
        "STEP_TIMEOUT_SECONDS or pass a larger timeout_s to get_llm_client()"
    )


def from_sdk_exception(provider: str, exc: BaseException) -> ProviderFailure | None:
    """Read an SDK exception; ``None`` when it is not a provider/HTTP failure (a bug: let it raise)."""
    status = getattr(exc, "status_code", None)
    response: Any = getattr(exc, "response", None)
    headers: dict[str, str] = {}
    if response is not None and hasattr(response, "headers"):
        headers = dict(response.headers.items())
        if status is None:
            status = getattr(response, "status_code", None)
    # litellm keeps the provider's headers apart (its ``response`` is a synthetic one).
    extra: Any = getattr(exc, "litellm_response_headers", None)
    if extra is not None and hasattr(extra, "items"):
        headers = {**headers, **dict(extra.items())}
    message = str(getattr(exc, "message", None) or exc) or type(exc).__name__
    if isinstance(status, int):
        error_type, error_code = error_body_kind(getattr(exc, "body", None))
        return classify_status(
            provider, status, message, headers, error_type=error_type, error_code=error_code
        )
    # No status: the SDKs' connection and timeout errors (APIConnectionError, APITimeoutError, ...).
    name = type(exc).__name__
    if "Connection" in name or "Timeout" in name or isinstance(exc, ConnectionError | TimeoutError):
        return classify_status(provider, None, message)
    return None


def error_body_kind(body: object) -> tuple[str | None, str | None]:
    """``(type, code)`` of an SDK exception's ``body``: OpenAI's is the ``error`` object itself,
    Anthropic's the whole ``{"type": "error", "error": {...}}`` envelope."""
    if not isinstance(body, Mapping):
        return None, None
    inner = body.get("error")
    fields: Mapping[str, Any] = inner if isinstance(inner, Mapping) else body
    kind, code = fields.get("type"), fields.get("code")
    return (kind if isinstance(kind, str) else None), (code if isinstance(code, str) else None)


def raise_mapped(provider: str, exc: BaseException) -> None:
    """Raise the runtime error for a provider failure; return (so the caller re-raises) otherwise."""
    failure = from_sdk_exception(provider, exc)
    if failure is not None:
        raise provider_error(failure) from exc
