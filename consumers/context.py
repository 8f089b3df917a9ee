"""``RunContext``: what an agent sees of its run, and the buffer that makes emitting cheap.

Emitting is the hot path (many ``assistant.delta`` per second), so events are coalesced into
``append_many`` calls: a batch leaves after ``flush_interval_s``, at ``max_batch`` events, or
before any lifecycle transition (the engine flushes before it finishes the run). Order is kept:
one flush at a time. A flush the store refuses for good (``FencedOut``: this attempt was
superseded; ``RunTerminal`` / ``NotFound`` / another ``IllegalTransition``: the run ended elsewhere
or is gone) is remembered, raised from the next ``emit`` and reported to the engine, which stops
the task; nothing is sent again. Once the attempt is over (``detach``) what is left is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from agentstream.consumers.errors import StoresNotConfigured
from agentstream.consumers.stores import Knowledge, Memory, Preferences, StoreBackend, Tasks
from agentstream.consumers.timers import Cancellable, Scheduler
from agentstream.consumers.tools import ToolRegistry
from agentstream.core.codec import pack_payload
from agentstream.core.errors import FencedOut, IllegalTransition, NotFound
from agentstream.core.events import LIFECYCLE_TYPES, Event, EventType, NewEvent, Visibility
from agentstream.core.logfmt import run_fields
from agentstream.core.records import STORE_TYPES
from agentstream.core.store import AppendResult, Claim, EventStore

log = logging.getLogger("agentstream.worker")

Usage = Mapping[str, int | float]
# The store's refusals that no retry can change: fenced out, or the run ended or is gone.
Refusal = IllegalTransition | NotFound
T = TypeVar("T", Memory, Preferences, Tasks, Knowledge)


class RunContext:
    """One attempt of one run, as its agent sees it."""

    def __init__(
        self,
        store: EventStore,
        claim: Claim,
        *,
        agent_key: str = "",
        flush_interval_s: float = 0.02,
        max_batch: int = 200,
        on_cancel_requested: Callable[[], None] | None = None,
        on_refused: Callable[[Refusal], None] | None = None,
        stores: StoreBackend | None = None,
        timers: Scheduler | None = None,
    ) -> None:
        queued = claim.input
        self.run_id: str = claim.run_id
        self.conversation_id: str | None = claim.conversation_id or None
        self.attempt: int = claim.attempt
        self.agent_key: str = agent_key or str(queued.get("agent_key", ""))
        self.owner: str = str(queued.get("owner", ""))
        self.input_messages: list[dict[str, Any]] = [dict(m) for m in queued.get("messages") or []]
        self.params: dict[str, Any] = dict(queued.get("params") or {})
        self.metadata: dict[str, Any] = dict(queued.get("metadata") or {})
        self._store = store
        self._flush_interval_s = flush_interval_s
        self._max_batch = max_batch
        self._on_cancel_requested = on_cancel_requested
        self._on_refused = on_refused
        self._buffer: list[NewEvent] = []
        self._flush_lock: asyncio.Lock | None = None  # made by the first flush: most runs never flush
        self._timers = timers  # the flush timer's (None: the event loop's)
        self._timer: Cancellable | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._refused: Refusal | None = None
        self._detached = False  # the attempt is over: nothing is sent any more
        self._cancel_requested = claim.cancel_requested
        self._usage: dict[str, int | float] = {}
        self._state: dict[str, Any] | None = None
        self._tool_registry: ToolRegistry | None = None  # made when the agent asks for it
        self._messages: list[dict[str, Any]] = []
        self._pending_text: list[str] = []
        self.last_seq: int = claim.seq
        # events of this attempt known written: the next batch's first event is number written + 1
        # (numbered, a batch sent again after a lost reply writes nothing twice)
        self._written = 0
        self._stores = stores
        self._store_objects: dict[type, object] = {}

    # -- the agent's API ---------------------------------------------------------------------

    async def emit(
        self, event_type: str | EventType, payload: Mapping[str, Any], *, visibility: str | None = None
    ) -> None:
        """Append an event to the run (buffered; sent within ``flush_interval_s``).

        ``visibility``: ``internal`` | ``debug`` | ``user``; default: EVENT_VISIBILITY's.
        """
        if self._refused is not None:
            raise self._refused
        kind = str(event_type)
        if kind in LIFECYCLE_TYPES:
            raise ValueError(
                f"{kind} is written by the runtime itself; return a RunResult or raise instead of emitting it"
            )
        if kind in STORE_TYPES:
            raise ValueError(
                f"{kind} is written by the run's stores; use ctx.memory / preferences / tasks / knowledge"
            )
        # encoded here, once: a bad payload fails here, not in a later flush, which sends these bytes
        packed = pack_payload(kind, payload, self._store.settings.MAX_EVENT_BYTES)
        self._remember(kind, payload)
        self._buffer.append(NewEvent(kind, packed, Visibility(visibility) if visibility else None))
        if len(self._buffer) >= self._max_batch:
            await self.flush()
        elif self._timer is None:
            timers = self._timers or asyncio.get_running_loop()
            self._timer = timers.call_later(self._flush_interval_s, self._flush_in_background)

    async def emit_user_message(self, content: str) -> None:
        await self.emit(EventType.ASSISTANT_MESSAGE, {"role": "assistant", "content": content})

    async def emit_error(self, message: str, details: Mapping[str, Any] | None = None, **more: Any) -> None:
        """An ``error`` event: ``{"message", "details"?, **more}`` (the seed's ``emit_error(msg,
        {...})`` and ``emit_error(msg, details={...})`` write the same payload)."""
        payload: dict[str, Any] = {"message": message, **more}
        if details is not None:
            payload["details"] = dict(details)
        await self.emit(EventType.ERROR, payload)

    async def checkpoint(self, state: Mapping[str, Any]) -> None:
        """Save state a retried attempt resumes from (``get_state``); written before returning."""
        await self.emit(EventType.STATE_CHECKPOINT, {"state": dict(state)})
        await self.flush()
        self._state = dict(state)

    async def get_state(self) -> dict[str, Any] | None:
        """The last checkpoint of this run, from this attempt or an earlier one."""
        if self._state is not None:
            return dict(self._state)
        for event in reversed(await self._store.read_run(self.run_id)):
            if event.type == EventType.STATE_CHECKPOINT:
                state = event.payload.get("state")
                return dict(state) if isinstance(state, Mapping) else None
        return None

    def cancelled(self) -> bool:
        """True once cancellation was requested (the task is being cancelled too)."""
        return self._cancel_requested

    def record_usage(self, usage: Usage) -> None:
        """Add token counts (or costs) into this attempt's usage, reported with its outcome."""
        for name, amount in usage.items():
            if isinstance(amount, int | float) and not isinstance(amount, bool):
                self._usage[name] = self._usage.get(name, 0) + amount

    # -- the owner's stores (consumers.stores) --------------------------------------------------

    @property
    def memory(self) -> Memory:
        """Key-value memory of the run's owner, kept across runs."""
        return self._owned_store(Memory)

    @property
    def preferences(self) -> Preferences:
        return self._owned_store(Preferences)

    @property
    def tasks(self) -> Tasks:
        return self._owned_store(Tasks)

    @property
    def knowledge(self) -> Knowledge:
        return self._owned_store(Knowledge)

    def _owned_store(self, cls: type[T]) -> T:
        found = self._store_objects.get(cls)
        if found is None:
            if self._stores is None:
                raise StoresNotConfigured(
                    "this worker has no store backend: run it through Django (manage.py runagent, "
                    "agentstream demo) or pass stores= to Worker"
                )
            found = self._store_objects[cls] = cls(self.record, self._stores, self.owner)
        return found  # type: ignore[return-value]

    async def record(self, event_type: str, payload: Mapping[str, Any]) -> Event:
        """Append one event now, after everything buffered, and return it with its seq (the
        stores' write path: the event must be in the run before its effect is applied)."""
        packed = pack_payload(event_type, payload, self._store.settings.MAX_EVENT_BYTES)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        async with self._lock():
            if self._refused is not None:
                raise self._refused
            self._buffer.append(NewEvent(event_type, packed))
            batch, self._buffer = self._buffer, []
            result = await self._send(batch)
        return Event(
            run_id=self.run_id,
            seq=result.last_seq,  # seqs are dense and ours is the batch's last
            type=event_type,
            payload=payload,
            attempt=self.attempt,
            conversation_id=self.conversation_id or "",
        )

    # -- the engine's side -------------------------------------------------------------------

    @property
    def usage(self) -> dict[str, int | float]:
        return dict(self._usage)

    @property
    def emitted_messages(self) -> list[dict[str, Any]]:
        return list(self._messages)

    @property
    def partial_text(self) -> str:
        """Text streamed as deltas since the last full message (what a cancel cut short)."""
        return "".join(self._pending_text)

    @property
    def fenced(self) -> FencedOut | None:
        return self._refused if isinstance(self._refused, FencedOut) else None

    def detach(self) -> None:
        """The attempt is over: drop the engine's callbacks (they would keep it alive in a cycle)
        and what it left unsent (a stopped attempt writes nothing; a flush timer would keep
        this context alive and sending)."""
        self._on_cancel_requested = None
        self._on_refused = None
        self._detached = True
        self.discard_buffer()

    def mark_cancel_requested(self) -> None:
        self._cancel_requested = True

    async def flush(self) -> None:
        """Send every buffered event, in order; raises the store's refusal (``FencedOut``,
        ``RunTerminal``...) if the attempt may write no more."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        async with self._lock():
            if self._refused is not None:
                raise self._refused
            if not self._buffer:
                return
            batch, self._buffer = self._buffer, []
            await self._send(batch)

    async def _send(self, batch: list[NewEvent]) -> AppendResult:
        """One ``append_many`` of ``batch``; the caller holds the flush lock."""
        sending = asyncio.ensure_future(
            self._store.append_many(self.run_id, self.attempt, batch, first_index=self._written + 1)
        )
        try:
            result = await asyncio.shield(sending)
        except asyncio.CancelledError:
            # The agent was cancelled mid-flush: the batch is on its way; let it land (so it
            # is neither lost nor sent twice by the final flush), then honour the cancel.
            await _landed(sending)
            self._after_cancelled_send(sending, batch)
            raise
        except (IllegalTransition, NotFound) as exc:
            self._refuse(exc)
            raise
        except BaseException:
            self._buffer[:0] = batch  # maybe not written: send them again, numbered as before
            raise
        self._written += len(batch)
        self.last_seq = result.last_seq
        if result.cancel_requested and not self._cancel_requested:
            self._cancel_requested = True
            if self._on_cancel_requested is not None:
                self._on_cancel_requested()
        return result

    @property
    def next_index(self) -> int:
        """The number, within the attempt, of the first event ``take_buffer`` returns."""
        return self._written + 1

    async def take_buffer(self) -> list[NewEvent]:
        """The events not sent yet, for the engine's last write (``finish`` carries them).

        Waits for a flush in flight first, so the order holds; the store's refusal if one was
        refused for good.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flush_lock is None:  # nothing ever flushed, so nothing in flight to wait for
            return self._take_buffer_now()
        async with self._flush_lock:
            return self._take_buffer_now()

    def _take_buffer_now(self) -> list[NewEvent]:
        if self._refused is not None:
            raise self._refused
        batch, self._buffer = self._buffer, []
        return batch

    def _lock(self) -> asyncio.Lock:
        """The flush lock (one flush at a time keeps the order), made when first needed."""
        if self._flush_lock is None:
            self._flush_lock = asyncio.Lock()
        return self._flush_lock

    def _refuse(self, exc: Refusal) -> None:
        """The store refused this attempt for good: remember it, stop sending, tell the engine."""
        self._refused = exc
        self.discard_buffer()
        if self._on_refused is not None:
            self._on_refused(exc)

    def _after_cancelled_send(self, sending: asyncio.Future[AppendResult], batch: list[NewEvent]) -> None:
        exc = sending.exception()
        if isinstance(exc, IllegalTransition | NotFound):
            self._refuse(exc)
        elif exc is None:
            self._written += len(batch)
            self.last_seq = sending.result().last_seq
        else:  # maybe not written: the final write carries them, numbered as before
            self._buffer[:0] = batch

    def discard_buffer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buffer.clear()

    def _flush_in_background(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self._quiet_flush())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _quiet_flush(self) -> None:
        try:
            await self.flush()
        except (IllegalTransition, NotFound):
            pass  # final, reported through on_refused; the engine stops the attempt
        except Exception as exc:  # Redis unreachable: the events stay buffered, try again soon
            log.warning(
                "run %s: could not append events yet (%s); retrying",
                self.run_id,
                exc,
                extra=run_fields(self.run_id, attempt=self.attempt, agent_key=self.agent_key),
            )
            if self._timer is None and self._buffer and not self._detached:
                timers = self._timers or asyncio.get_running_loop()
                self._timer = timers.call_later(0.5, self._flush_in_background)

    def _remember(self, kind: str, payload: Mapping[str, Any]) -> None:
        if kind == EventType.ASSISTANT_MESSAGE:
            self._messages.append(dict(payload))
            self._pending_text.clear()
        elif kind == EventType.ASSISTANT_DELTA and isinstance(payload.get("delta"), str):
            self._pending_text.append(payload["delta"])

    # -- django-agent-runtime's RunContext Protocol ----------------------------------------------

    @property
    def tool_registry(self) -> ToolRegistry:
        """This attempt's own registry, empty until the agent registers tools into it (the seed's
        runner gave each run an empty one too)."""
        if self._tool_registry is None:
            self._tool_registry = ToolRegistry()
        return self._tool_registry


async def _landed(sending: asyncio.Future[Any]) -> None:
    """Wait until ``sending`` is done, whatever cancels this task meanwhile (the heartbeat's, the
    timeout's again, the drain's): cut short, the batch would be neither counted nor sent again.
    Each ``cancel()`` stays counted by the task (``Task.cancelling``), so the one the caller
    re-raises stands for them all and the attempt takes back exactly the ones it sent."""
    while not sending.done():
        try:
            await asyncio.wait({sending})
        except asyncio.CancelledError:
            continue
