"""How an attempt ends, decided without I/O: the engine executes the decision.

``decide_failure`` turns what the agent raised into retry / fail; ``backoff_delay_s`` is the
exponential backoff with jitter: ``min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_BASE ** attempt)``
times a factor in [0.5, 1.0], so workers that failed together do not retry together.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from agentstream.consumers.errors import MAX_RETRY_DELAY_S, PermanentFailure, Retry
from agentstream.consumers.runtime import ErrorInfo


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    FENCED = "fenced"  # another worker took the run over; this attempt wrote nothing more
    GONE = "gone"  # the run ended elsewhere (cancelled while queued, dead-lettered)
    HANDED_BACK = "handed_back"  # shutdown: the job stays pending for another worker
    DROPPED = "dropped"  # the job needed no run (stale, already ended)


@dataclass(frozen=True, slots=True)
class FailureDecision:
    retry: bool
    error: ErrorInfo
    delay_s: float = 0.0


def backoff_delay_s(
    attempt: int, base: float, max_s: float, rand: Callable[[], float] = random.random
) -> float:
    return min(max_s, base**attempt) * (0.5 + rand() / 2)


def decide_failure(
    exc: BaseException,
    classified: ErrorInfo | None,
    *,
    attempt: int,
    base: float,
    max_s: float,
    rand: Callable[[], float] = random.random,
) -> FailureDecision:
    """Retry or fail, for an exception of attempt ``attempt`` (the store caps the attempts)."""
    if isinstance(exc, Retry):
        error = ErrorInfo.from_exception(exc, retriable=True)
        delay_s = exc.delay_s
        if delay_s is None or not 0 <= delay_s <= MAX_RETRY_DELAY_S:  # set after __init__ checked it
            delay_s = backoff_delay_s(attempt, base, max_s, rand)
        return FailureDecision(True, error, delay_s)
    if isinstance(exc, PermanentFailure):
        return FailureDecision(False, classified or ErrorInfo.from_exception(exc, retriable=False))
    error = classified or ErrorInfo.from_exception(exc)
    if not error.retriable:
        return FailureDecision(False, error)
    return FailureDecision(True, error, backoff_delay_s(attempt, base, max_s, rand))
