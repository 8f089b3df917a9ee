"""Provider failures mapped to the runtime's errors, sans-I/O.

Rate limits (429), timeouts (408), conflicts (409), 5xx and lost connections are worth another
attempt, after ``Retry-After`` when the provider names one. Every other 4xx fails the run at once:
a request that the provider rejects as malformed fails the same way every time, so retrying it
would only burn attempts (and, with a generous ``MAX_RETRIES``, days of backoff).

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


@dataclass(frozen=True, slots=True)
class ProviderFailure:
    provider: str
    message: str
    status_code: int | None
    retriable: bool
    retry_after_s: float | None = None


def classify_status(
    provider: str, status_code: int | None, message: str, headers: Mapping[str, str] | None = None
) -> ProviderFailure:
    """``status_code=None`` means the request never got an answer (connection lost, timed out)."""
    retriable = status_code is None or status_code in RETRIABLE_STATUSES or status_code >= 500
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
    return PermanentFailure(
        f"{text}; fix the request (model name, messages, tools, API key) and submit again"
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
        return classify_status(provider, status, message, headers)
    # No status: the SDKs' connection and timeout errors (APIConnectionError, APITimeoutError, ...).
    name = type(exc).__name__
    if "Connection" in name or "Timeout" in name or isinstance(exc, ConnectionError | TimeoutError):
        return classify_status(provider, None, message)
    return None


def raise_mapped(provider: str, exc: BaseException) -> None:
    """Raise the runtime error for a provider failure; return (so the caller re-raises) otherwise."""
    failure = from_sdk_exception(provider, exc)
    if failure is not None:
        raise provider_error(failure) from exc
