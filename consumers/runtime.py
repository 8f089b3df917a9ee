"""What an agent author writes: an ``AgentRuntime`` whose ``run(ctx)`` returns a ``RunResult``."""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentstream.consumers.errors import PermanentFailure, StoresNotConfigured
from agentstream.core.errors import ConfigurationError

if TYPE_CHECKING:
    from agentstream.consumers.context import RunContext


@dataclass(frozen=True, slots=True)
class RunResult:
    """A successful run's outcome; it becomes the ``run.succeeded`` payload."""

    final_output: Mapping[str, Any] = field(default_factory=dict)
    final_messages: list[Mapping[str, Any]] = field(default_factory=list)
    usage: Mapping[str, int | float] = field(default_factory=dict)
    artifacts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An error as runs record it (``run.failed``/``run.retrying`` payloads); ``retriable`` decides."""

    # django-agent-runtime's field order: ErrorInfo("T", "msg", traceback, False) means what it did there
    type: str
    message: str
    stack: str | None = None
    retriable: bool = True
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.stack, bool):  # ErrorInfo("T", "m", False): agentstream's earlier order
            warnings.warn(
                "ErrorInfo's third field is the stack (django-agent-runtime's order): "
                "pass retriable= by keyword",
                DeprecationWarning,
                stacklevel=3,
            )
            object.__setattr__(self, "retriable", self.stack)
            object.__setattr__(self, "stack", None)

    @classmethod
    def from_exception(cls, exc: BaseException, *, retriable: bool | None = None) -> ErrorInfo:
        stack = "".join(traceback.format_exception(exc))[-8000:]  # the tail holds the raise site
        if retriable is None:  # a configuration error fails the same way on every attempt
            retriable = not isinstance(exc, PermanentFailure | ConfigurationError | StoresNotConfigured)
        return cls(type=type(exc).__name__, message=str(exc), retriable=retriable, stack=stack)

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "message": self.message, "retriable": self.retriable}
        if self.stack:
            out["stack"] = self.stack
        if self.details:
            out["details"] = dict(self.details)
        return out


class AgentRuntime:
    """Base class of an agent: set ``key`` and implement ``run``; the hooks are optional.

    ``on_error`` classifies an exception ``run`` raised (return ``ErrorInfo(retriable=False)`` to
    fail at once; ``None`` keeps the default: retriable, except ``PermanentFailure`` and
    configuration errors: ``ConfigurationError`` (an LLM provider without its key, say) and
    ``StoresNotConfigured``).
    ``cancel`` is called after the run's task was cancelled (a cancel request or ``interrupt``),
    before ``run.cancelled`` is written: close sockets, stop sub-processes.
    """

    key: str = ""

    async def run(self, ctx: RunContext) -> RunResult | None:
        raise NotImplementedError(f"{type(self).__name__}.run(ctx) is not implemented")

    async def on_error(self, ctx: RunContext, exc: BaseException) -> ErrorInfo | None:
        return None

    async def cancel(self, ctx: RunContext) -> None:
        return None
