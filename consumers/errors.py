"""Errors of agentstream.consumers: what an agent raises to steer its run, and registry failures.

::

    AgentStreamError (agentstream.core.errors)
    └── ConsumerError
        ├── AgentFailure              raised BY an agent to say how its run should end
        │   ├── Retry                 try again (after ``delay_s``, else the configured backoff)
        │   └── PermanentFailure      fail now; retrying would fail the same way
        ├── RegistryError             a runtime could not be registered, or no runtime has the key
        └── StoresNotConfigured       ctx.memory / tasks / ... on a worker without a store backend

Any other exception from an agent is classified by its runtime's ``on_error`` hook (default:
retriable), so a flaky HTTP call is retried and a bug is not retried forever (``max_attempts``);
``ConfigurationError`` and ``StoresNotConfigured`` fail at once, as they would on every attempt.
"""

from __future__ import annotations

from agentstream.core.errors import AgentStreamError

# the longest Retry delay: a run's due time is kept in milliseconds (Lua numbers, a zset score),
# and a delay past ~10**305 s overflowed their conversion and crashed the retry's scheduling
MAX_RETRY_DELAY_S = 100 * 365 * 24 * 3600.0


class ConsumerError(AgentStreamError):
    """Base of the consumers package's errors."""


class AgentFailure(ConsumerError):
    """Raised by an agent to end its attempt in a chosen way."""


class Retry(AgentFailure):
    """Try the run again, after ``delay_s`` seconds (``None``: the exponential backoff)."""

    def __init__(
        self, message: str = "retry requested by the agent", *, delay_s: float | None = None
    ) -> None:
        super().__init__(message)
        if delay_s is not None and not 0 <= delay_s <= MAX_RETRY_DELAY_S:  # nan and inf too
            raise ValueError(
                f"Retry(delay_s={delay_s}): the delay must be a finite number of seconds, zero or more "
                f"and at most {MAX_RETRY_DELAY_S:.0f} (100 years)"
            )
        self.delay_s = delay_s


class PermanentFailure(AgentFailure):
    """Fail the run at once: no retry, whatever attempts are left."""


class RegistryError(ConsumerError, LookupError):
    pass


class StoresNotConfigured(ConsumerError, RuntimeError):
    pass
