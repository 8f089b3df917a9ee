"""Errors of agentstream.core. Callers catch the branch they can act on.

::

    AgentStreamError
    ├── ConfigurationError            a setting is unknown or invalid (lists the valid ones)
    ├── EventEncodingError            a payload cannot be encoded, or is too large; nothing written
    ├── InvalidRecord                 a store write (memory, task, knowledge...) that cannot be recorded
    ├── CorruptEntry                  a stream entry that does not decode (written by hand?)
    ├── IllegalTransition             an event that the run's state does not allow
    │   ├── RunTerminal               the run already ended; it takes no further event
    │   └── FencedOut                 a worker's attempt is no longer the current one (zombie)
    ├── NotFound                      no such run / conversation (or not yours)
    ├── Conflict                      the request contradicts what exists
    │   ├── IdempotencyConflict       same idempotency key, different request
    │   └── ConversationBusy          policy ``reject`` and a run of the conversation is active
    ├── RetryableError                worth trying again later (Redis unreachable, ...)
    └── PermanentError                will fail the same way every time
"""

from __future__ import annotations


class AgentStreamError(Exception):
    """Base of every error agentstream raises on purpose."""


class ConfigurationError(AgentStreamError):
    pass


class EventEncodingError(AgentStreamError, ValueError):
    pass


class InvalidRecord(AgentStreamError, ValueError):
    pass


class CorruptEntry(AgentStreamError, ValueError):
    pass


class IllegalTransition(AgentStreamError):
    pass


class RunTerminal(IllegalTransition):
    pass


class FencedOut(IllegalTransition):
    pass


class NotFound(AgentStreamError, LookupError):
    pass


class Conflict(AgentStreamError):
    pass


class IdempotencyConflict(Conflict):
    pass


class ConversationBusy(Conflict):
    pass


class RetryableError(AgentStreamError):
    pass


class PermanentError(AgentStreamError):
    pass
