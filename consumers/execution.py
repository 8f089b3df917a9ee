"""One attempt of one run: run the agent, watch it, and write how it ended.

The worker owns the job (queue entry); an ``Attempt`` runs the agent inside the task that
executes it (one task per run: no second task, no waiter), and cancels the agent there, only
while it runs, never the attempt's own writes that follow. Three things stop the agent from
outside: a cancel request (-> ``run.cancelled``, after the agent's ``cancel``
hook), the run's timeout (-> ``run.timed_out``), and a *stop* (fenced out, run gone, worker
shutting down), after which this attempt writes nothing: the run belongs to someone else, or
goes back to the queue for another worker.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.exceptions

from agentstream.consumers.context import RunContext
from agentstream.consumers.outcome import FailureDecision, Outcome, decide_failure
from agentstream.consumers.runtime import AgentRuntime, ErrorInfo, RunResult
from agentstream.consumers.stores import StoreBackend
from agentstream.consumers.timers import Cancellable, Scheduler
from agentstream.consumers.tracing import current_tracer
from agentstream.core.codec import encode_payload
from agentstream.core.errors import EventEncodingError, FencedOut, IllegalTransition, NotFound, RetryableError
from agentstream.core.events import EventType, NewEvent
from agentstream.core.logfmt import run_fields
from agentstream.core.store import CancelOutcome, Claim, EventStore
from agentstream.core.tracing import TRACEPARENT, NoopTracer, Tracer

log = logging.getLogger("agentstream.worker")

HOOK_TIMEOUT_S = 5.0
# An agent still running this long after its first cancel (the timeout's or the user's) ignores
# cancellation (it catches CancelledError in a loop): the attempt writes the run's ending itself,
# so the run ends and its lease is let go; the agent's task is left to return on its own.
ABANDON_AFTER_S = 2 * HOOK_TIMEOUT_S
# An error's message is capped like its stack (ErrorInfo.from_exception keeps 8,000 characters):
# a huge one would make the run's ending too large to write.
ERROR_MESSAGE_MAX_CHARS = 8000
# What run.failed says when the attempt's own ending could not be encoded: small enough for
# any MAX_EVENT_BYTES (at least 1,024).
UNWRITABLE_MESSAGE_BYTES = 600
TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, RetryableError)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AttemptOptions:
    timeout_s: float
    backoff_base: float
    backoff_max_s: float
    flush_interval_s: float = 0.02
    abandon_after_s: float = ABANDON_AFTER_S


class Attempt:
    def __init__(
        self,
        store: EventStore,
        runtime: AgentRuntime,
        claim: Claim,
        agent_key: str,
        options: AttemptOptions,
        *,
        worker_id: str | None = None,
        stores: StoreBackend | None = None,
        timers: Scheduler | None = None,
        on_ending: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        # called once, as the attempt sends the write that ends it (finish or retry): the agent
        # is done, so the worker may claim the next job in the same batch as that write
        self._on_ending = on_ending
        self._timers = timers  # for the timeout (None: the event loop's)
        self.worker_id = worker_id
        self._log_fields: dict[str, Any] | None = None
        self.runtime = runtime
        self.claim = claim
        self.agent_key = agent_key
        self.options = options
        self.ctx = RunContext(
            store,
            claim,
            agent_key=agent_key,
            flush_interval_s=options.flush_interval_s,
            on_cancel_requested=lambda: self.request_cancel("cancel requested"),
            on_refused=lambda exc: self.stop(Outcome.FENCED if isinstance(exc, FencedOut) else Outcome.GONE),
            stores=stores,
            timers=timers,  # its flush timer shares the worker's loop timer too
        )
        # the task the agent runs in: the attempt's own (``execute``'s caller), while the agent runs
        self.task: asyncio.Task[Any] | None = None
        self._agent_started = False
        self._agent_running = False
        self._cancels_sent = 0  # task.cancel() calls of ours, taken back when the agent returns
        self._timed_out = False
        self._timer: Cancellable | None = None  # the run's timeout
        self._abandon_timer: Cancellable | None = None  # armed by the first cancel sent
        self._abandoned: asyncio.Task[Outcome] | None = None  # the ending written without the agent
        self.cancel_reason: str | None = "cancel requested" if claim.cancel_requested else None
        self.stop_reason: Outcome | None = None
        self.cancel_requested_at: float | None = None  # monotonic, for the log line
        self.ending = ""  # why the attempt ended short of success (the span's status message)
        self.output: dict[str, Any] | None = None  # what it produced (the span's, with TRACE_CONTENT)

    @property
    def run_id(self) -> str:
        return self.claim.run_id

    @property
    def log_fields(self) -> dict[str, Any]:
        """On every log line about this attempt (see core.logfmt); built on the first line."""
        if self._log_fields is None:
            self._log_fields = run_fields(
                self.claim.run_id,
                attempt=self.claim.attempt,
                agent_key=self.agent_key,
                worker_id=self.worker_id,
            )
        return self._log_fields

    def request_cancel(self, reason: str) -> None:
        """Cancel the agent's task now; the attempt ends with ``run.cancelled``."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
            self.cancel_requested_at = time.monotonic()
        self.ctx.mark_cancel_requested()
        self._cancel_agent()

    def stop(self, why: Outcome) -> None:
        """Cancel the agent's task and write nothing more (fenced, gone, or shutting down)."""
        if self.stop_reason is None:
            self.stop_reason = why
        self._cancel_agent()

    def _cancel_agent(self) -> None:
        """Cancel the agent where it awaits, if it is running (never the attempt's own writes)."""
        task = self.task
        if task is None or not self._agent_running:
            return
        if asyncio.current_task() is task:
            # From inside the agent's own step (a flush it awaited was refused or answered
            # "cancel"): a cancel now would stay pending past its return and hit our writes.
            # Deliver it where the agent next waits, if it is still running by then.
            task.get_loop().call_soon(self._cancel_agent)
            return
        self._cancels_sent += 1
        task.cancel()
        if self._abandon_timer is None:
            self._abandon_timer = (self._timers or task.get_loop()).call_later(
                self.options.abandon_after_s, self._abandon
            )

    def _abandon(self) -> None:
        """The agent ignored its cancels: end the run from here (run.timed_out or run.cancelled),
        so it does not stay running, its lease renewed, for as long as the agent loops. Its
        task keeps its slot until it returns; its writes after the ending are refused."""
        task = self.task
        if task is None or not self._agent_running or self._abandoned is not None:
            return
        if self.stop_reason is not None:
            return  # fenced out, gone or handed back: this attempt writes nothing more
        log.error(
            "run %s: the agent ignored its cancellation for %gs (it catches CancelledError?); "
            "ending the run without it, its task holds a slot until it returns",
            self.run_id,
            self.options.abandon_after_s,
            extra=self.log_fields,
        )
        self.stop_reason = Outcome.TIMED_OUT if self._timed_out else Outcome.CANCELLED
        self._abandoned = task.get_loop().create_task(self._end_abandoned(self.stop_reason))

    async def _end_abandoned(self, outcome: Outcome) -> Outcome:
        if outcome is Outcome.TIMED_OUT:
            return await self._end_timed_out()
        return await self._end_cancelled(hook=False)  # its cancel hook would run beside the agent

    def _time_out(self) -> None:
        """The run's timeout: cancel the agent; again every HOOK_TIMEOUT_S if it ignores that."""
        if not self._agent_running or self.task is None:
            return
        self._timed_out = True
        self._cancel_agent()
        self._timer = (self._timers or self.task.get_loop()).call_later(HOOK_TIMEOUT_S, self._time_out)

    async def execute(self) -> Outcome:
        """The attempt in one span (a child of the caller's trace when the run carries one)."""
        tracer = current_tracer()
        try:
            if type(tracer) is NoopTracer:  # the default: no span, no attributes to build per run
                return await self._execute()
            return await self._traced_execute(tracer)
        finally:
            # The context calls back into this attempt: without this the two (and the task,
            # the claim, the buffers...) form a cycle that only the cyclic GC frees.
            self.ctx.detach()

    async def _traced_execute(self, tracer: Tracer) -> Outcome:
        traceparent = self.ctx.metadata.get(TRACEPARENT)
        attributes = {k: v for k, v in self.log_fields.items() if v is not None}
        with tracer.span(
            f"run {self.agent_key}",
            kind="attempt",
            traceparent=traceparent if isinstance(traceparent, str) else None,
            attributes={f"agentstream.{k}": v for k, v in attributes.items()},
        ) as span:
            outcome = await self._execute()
            span.set_attribute("agentstream.outcome", outcome.value)
            why = f"{outcome.value}: {self.ending}" if self.ending else outcome.value
            if outcome in (Outcome.FAILED, Outcome.TIMED_OUT, Outcome.RETRYING):
                span.record_error(why)
            elif outcome is not Outcome.SUCCEEDED:  # cancelled, fenced out, gone, handed back
                span.record_warning(why)
            if tracer.capture_content:
                span.record_content(input=dict(self.claim.input), output=self.output)
            return outcome

    async def _execute(self) -> Outcome:
        if self.stop_reason is not None:
            return self.stop_reason
        if self.cancel_reason is not None:  # requested before this attempt began
            return await self._end_cancelled()
        result, exc = await self._run_agent()
        if self._abandoned is not None:  # the ending was written without the agent
            return await self._abandoned
        if self._timed_out:
            if self.stop_reason is not None:
                return self.stop_reason
            return await self._end_timed_out()
        if self.stop_reason is not None:
            return self.stop_reason
        if self.cancel_reason is not None:
            return await self._end_cancelled()
        if isinstance(exc, asyncio.CancelledError):  # the agent cancelled itself: a cancellation
            self.cancel_reason = "the agent's task was cancelled"
            return await self._end_cancelled()
        if isinstance(exc, FencedOut):
            return Outcome.FENCED
        if exc is not None:
            return await self._end_failed(exc)
        if result is None:
            result = RunResult()
        if not isinstance(result, RunResult):
            failure = TypeError(
                f"{type(self.runtime).__name__}.run returned {type(result).__name__}; return a RunResult"
            )
            return await self._end_failed(failure)
        return await self._end_succeeded(result)

    async def _run_agent(self) -> tuple[Any, BaseException | None]:
        """Run the agent in this task (one task per attempt): its result or what it raised.

        Cancels (``request_cancel``, ``stop``, the timeout) reach it only while it runs, and
        are taken back when it returns, so the writes that follow are never cancelled by them.
        A cancellation of this task from elsewhere (not ours) goes on up.
        """
        task = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        self.task = task
        self._agent_started = self._agent_running = True
        self._timer = (self._timers or loop).call_later(self.options.timeout_s, self._time_out)
        outside = task.cancelling()  # cancels of this task that were not ours
        result: Any = None
        caught: BaseException | None = None
        try:
            result = await self.runtime.run(self.ctx)
        except asyncio.CancelledError as exc:
            caught = exc
        except Exception as exc:
            caught = exc
        finally:
            self._agent_running = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._abandon_timer is not None:
                self._abandon_timer.cancel()
            for _ in range(self._cancels_sent):
                task.uncancel()
            self._cancels_sent = 0
        if isinstance(caught, asyncio.CancelledError) and task.cancelling() > outside:
            raise caught  # this task itself is being cancelled, not just the agent
        return result, caught

    # -- endings -------------------------------------------------------------------------------

    async def _end_succeeded(self, result: RunResult) -> Outcome:
        output = dict(result.final_output)
        messages = result.final_messages
        payload = {
            "output": output,
            "final_messages": [dict(m) for m in messages] if messages else self.ctx.emitted_messages,
            "usage": _merge_usage(result.usage, self.ctx.usage),
            "artifacts": dict(result.artifacts),
        }
        self.output = output
        return await self._finish(EventType.RUN_SUCCEEDED, payload, Outcome.SUCCEEDED)

    async def _end_failed(self, exc: BaseException) -> Outcome:
        classified = await self._hook(self.runtime.on_error(self.ctx, exc), "on_error")
        if self.cancel_reason is not None:  # asked while on_error ran: a retry would only be cancelled
            return await self._end_cancelled()
        decision = decide_failure(
            exc,
            classified if isinstance(classified, ErrorInfo) else None,
            attempt=self.claim.attempt,
            base=self.options.backoff_base,
            max_s=self.options.backoff_max_s,
        )
        return await self._retry_or_fail(decision)

    async def _retry_or_fail(self, decision: FailureDecision) -> Outcome:
        error = decision.error.to_payload()
        error["message"] = _capped(decision.error.message, ERROR_MESSAGE_MAX_CHARS)
        self.ending = f"{decision.error.type}: {error['message']}"
        error_usage = {"usage": self.ctx.usage} if self.ctx.usage else {}
        if not decision.retry:
            return await self._finish(EventType.RUN_FAILED, {"error": error, **error_usage}, Outcome.FAILED)
        if not await self._flush_or_stop():
            return self.stop_reason or Outcome.FENCED
        self._ending()
        cancelled = self._cancelled_payload()  # if a cancel this worker has not heard of yet came first
        try:
            outcome = await ride_out_redis(
                lambda: self.store.schedule_retry(
                    self.run_id, self.claim.attempt, decision.delay_s, error, cancelled=cancelled
                ),
                log_fields=lambda: self.log_fields,
            )
        except EventEncodingError as exc:  # nothing written: fail rather than crash into a re-run
            return await self._finish(EventType.RUN_FAILED, self._unwritable(exc), Outcome.FAILED)
        except FencedOut:
            return Outcome.FENCED
        except IllegalTransition:
            return Outcome.GONE
        if isinstance(outcome, CancelOutcome):
            self.ending = str(cancelled["reason"])
            return Outcome.CANCELLED
        if outcome.retrying:
            log.info(
                "run %s retrying in %.2fs after attempt %d: %s",
                self.run_id,
                decision.delay_s,
                self.claim.attempt,
                decision.error.message,
                extra=self.log_fields,
            )
            return Outcome.RETRYING
        return Outcome.FAILED

    async def _end_cancelled(self, *, hook: bool = True) -> Outcome:
        if hook and self._agent_started:
            await self._hook(self.runtime.cancel(self.ctx), "cancel")
        self.ending = self.cancel_reason or ""
        return await self._finish(EventType.RUN_CANCELLED, self._cancelled_payload(), Outcome.CANCELLED)

    def _cancelled_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"reason": self.cancel_reason or "cancel requested"}
        if self.ctx.partial_text:
            payload["partial_output"] = {"content": self.ctx.partial_text}
        if self.ctx.emitted_messages:
            payload["final_messages"] = self.ctx.emitted_messages
        if self.ctx.usage:
            payload["usage"] = self.ctx.usage
        return payload

    async def _end_timed_out(self) -> Outcome:
        error = ErrorInfo(
            "RunTimeout",
            f"the run did not finish within {self.options.timeout_s:g}s "
            "(RUN_TIMEOUT_SECONDS or the run's timeout); raise it for longer runs",
            retriable=False,
        ).to_payload()
        self.ending = str(error["message"])
        payload: dict[str, Any] = {"error": error}
        if self.ctx.usage:
            payload["usage"] = self.ctx.usage
        return await self._finish(EventType.RUN_TIMED_OUT, payload, Outcome.TIMED_OUT)

    async def _finish(self, event_type: EventType, payload: dict[str, Any], outcome: Outcome) -> Outcome:
        try:
            last = await self.ctx.take_buffer()  # written by the same call, just before the end
        except FencedOut:
            return Outcome.FENCED
        except (IllegalTransition, NotFound):
            return Outcome.GONE
        first_index = self.ctx.next_index
        self._ending()
        try:
            try:
                await self._write_end(event_type, payload, last, first_index)
            except EventEncodingError as exc:
                # Nothing was written (the store encodes before it sends). Crashing here would
                # leave the run running until its lease ran out, then run the agent again.
                await self._write_end(EventType.RUN_FAILED, self._unwritable(exc), last, first_index)
                return Outcome.FAILED
        except FencedOut:
            return Outcome.FENCED
        except (IllegalTransition, NotFound):
            return Outcome.GONE
        return outcome

    async def _write_end(
        self, event_type: EventType, payload: dict[str, Any], last: list[NewEvent], first_index: int
    ) -> None:
        await ride_out_redis(
            lambda: self.store.finish(
                self.run_id, self.claim.attempt, event_type, payload, events=last, first_index=first_index
            ),
            log_fields=lambda: self.log_fields,
        )

    def _unwritable(self, exc: EventEncodingError) -> dict[str, Any]:
        """The attempt's ending could not be encoded: run.failed's payload instead, one that can
        always be (the codec's message says what could not be encoded and what to do)."""
        message = _cut_bytes(
            f"the run's ending could not be written, so it failed: {exc}", UNWRITABLE_MESSAGE_BYTES
        )
        self.ending, self.output = f"EventEncodingError: {message}", None
        payload: dict[str, Any] = {
            "error": ErrorInfo("EventEncodingError", message, retriable=False).to_payload()
        }
        if self.ctx.usage:
            with_usage = {**payload, "usage": self.ctx.usage}
            try:  # the usage may be what could not be encoded: then fail without it
                encode_payload(EventType.RUN_FAILED, with_usage, self.store.settings.MAX_EVENT_BYTES)
                return with_usage
            except EventEncodingError:
                pass
        return payload

    def _ending(self) -> None:
        on_ending, self._on_ending = self._on_ending, None
        if on_ending is not None:
            on_ending()

    async def _flush_or_stop(self) -> bool:
        """Write what the agent emitted before the lifecycle event; False if fenced out."""
        try:
            await ride_out_redis(self.ctx.flush, log_fields=lambda: self.log_fields)
        except FencedOut:
            self.stop_reason = self.stop_reason or Outcome.FENCED
            return False
        except (IllegalTransition, NotFound):
            self.stop_reason = self.stop_reason or Outcome.GONE
            return False
        return True

    async def _hook(self, call: Awaitable[T], name: str) -> T | None:
        try:
            return await asyncio.wait_for(call, HOOK_TIMEOUT_S)
        except Exception:
            log.exception(
                "run %s: the runtime's %s hook raised; ignoring it", self.run_id, name, extra=self.log_fields
            )
            return None


LogFields = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


async def ride_out_redis(
    call: Callable[[], Awaitable[T]], budget_s: float = 20.0, *, log_fields: LogFields | None = None
) -> T:
    """Ride out a Redis outage (connection reset, restart, failover) on lifecycle writes: retry
    with capped exponential backoff for up to ``budget_s``, then let the error through (the job
    stays pending and is reclaimed after its lease). ``log_fields``: the run's, for the log line
    (or a function returning them: built only when a line is written)."""
    deadline = time.monotonic() + budget_s
    n = 0
    while True:
        try:
            return await call()
        except TRANSIENT as exc:
            delay_s = min(2.0, 0.1 * 2**n) * random.uniform(0.5, 1.5)  # jitter: no thundering herd
            if time.monotonic() + delay_s > deadline:
                raise
            fields = log_fields() if callable(log_fields) else log_fields
            log.warning("redis unavailable (%s); retrying in %.2fs", exc, delay_s, extra=fields)
            await asyncio.sleep(delay_s)
            n += 1


def _capped(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars``, saying so (the head holds what the error is)."""
    if len(text) <= max_chars:
        return text
    return f"{text[:max_chars]}... ({len(text) - max_chars} more characters cut)"


def _cut_bytes(text: str, max_bytes: int) -> str:
    """``text`` cut to ``max_bytes`` of UTF-8 (never inside a character), saying so."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return data[: max_bytes - 20].decode(errors="ignore") + "... (cut)"


def _merge_usage(*parts: Any) -> dict[str, int | float]:
    out: dict[str, int | float] = {}
    for part in parts:
        if not part:
            continue
        for name, amount in dict(part).items():
            if isinstance(amount, int | float) and not isinstance(amount, bool):
                out[name] = out.get(name, 0) + amount
    return out
