"""Verify: fold the history afresh with ``core.state`` and compare it with the read-model rows.

Drift is reported per row: ``missing`` (in the history, not in the table), ``extra`` (in the
table, not in the history although the history reaches back to its creation), ``different``
(the fields that disagree). Runs whose beginning was trimmed from the logs are not judged. Each
partition log is trimmed on its own, so a row is judged "extra" only against its own partition's
oldest entry (``LogFloors``; a run's or conversation's partition follows from its id), and not at
all when that log is empty: nothing there to judge it against.

Two sources of truth are used on purpose, neither of them the projector's own code: the state
fields come from ``core.state``'s fold; what the fold does not track (a run's input, metadata,
idempotency key and final messages, a conversation's run count, the archive's events) is read
straight off the events' payloads here, so a projector bug cannot hide behind itself.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.db.models import Count

from agentstream.core.codec import as_text
from agentstream.core.errors import AgentStreamError, CorruptEntry
from agentstream.core.events import TERMINAL_TYPES, Event, EventType, Visibility
from agentstream.core.ids import partition_of
from agentstream.core.keys import Keys
from agentstream.core.state import (
    ConversationState,
    RunState,
    evolve,
    evolve_conversation,
)
from agentstream.core.store import Redis
from agentstream.projections.entries import decode_log_entry
from agentstream.projections.logs import parse_id
from agentstream.projections.rows import CONVERSATION_TYPES


@dataclass(frozen=True, slots=True)
class Drift:
    kind: str  # missing | extra | different | unfoldable
    table: str  # run | conversation
    id: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind:<10} {self.table:<12} {self.id}  {self.detail}".rstrip()


@dataclass(frozen=True, slots=True)
class Report:
    runs_checked: int
    conversations_checked: int
    drift: tuple[Drift, ...]

    @property
    def ok(self) -> bool:
        return not self.drift


@dataclass(slots=True)
class RunFacts:
    """What a run's events say beyond the fold: compared with the row and the archive."""

    owner: str = ""
    input: dict[str, Any] = dataclasses.field(default_factory=dict)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    idempotency_key: str | None = None
    created_ms: int = 0
    final_messages: Any = None
    conversation_id: str = ""
    events: int = 0  # logged events: the archive must hold exactly these


def run_facts(events: Iterable[Event]) -> RunFacts:
    facts = RunFacts()
    for event in events:
        facts.events += 1
        p = event.payload
        if event.type == EventType.RUN_QUEUED:
            facts.owner = str(p.get("owner", ""))
            facts.input = {"messages": list(p.get("messages") or []), "params": dict(p.get("params") or {})}
            facts.metadata = dict(p.get("metadata") or {})
            facts.idempotency_key = str(p["idempotency_key"]) if p.get("idempotency_key") else None
            facts.created_ms = event.ts_ms
            facts.conversation_id = str(p.get("conversation_id") or event.conversation_id or "")
        elif event.type in TERMINAL_TYPES:
            facts.final_messages = p.get("final_messages")
    return facts


def fold_log(events: Iterable[Event]) -> RunState | None:
    """``core.state.fold`` over a run's logged events. Ephemeral events (deltas, heartbeats) take
    a seq but stay on the run stream, so the log skips those seqs; the fold steps over them."""
    state: RunState | None = None
    for event in events:
        if state is not None and event.seq > state.seq + 1:
            state = dataclasses.replace(state, seq=event.seq - 1)
        state = evolve(state, event)
    return state


def fold_conversation(events: Iterable[Event]) -> ConversationState | None:
    state: ConversationState | None = None
    for event in events:
        state = evolve_conversation(state, event)
    return state


async def log_events(redis: Redis, keys: Keys, page: int = 5000) -> AsyncIterator[Event]:
    """Every decodable event of every partition log, oldest first per partition."""
    for partition in range(keys.partitions):
        after = "-"
        while True:
            entries: Any = await redis.xrange(keys.log(partition), min=after, count=page)
            if not entries:
                break
            for _, fields in entries:
                try:
                    yield decode_log_entry(fields)
                except CorruptEntry:
                    continue
            last = entries[-1][0]
            after = "(" + (last.decode() if isinstance(last, bytes) else str(last))
            if len(entries) < page:
                break


def archive_events(database: str, page: int = 5000) -> Iterator[Event]:
    """Every event of the archive tables (runs, then conversations)."""
    event_model = apps.get_model("agentstream", "Event")
    last = 0
    fields = ("id", "run_id", "seq", "type", "payload", "ts", "attempt", "visibility", "conversation_id")
    while True:
        chunk = list(
            event_model.objects.using(database).filter(id__gt=last).order_by("id").values_list(*fields)[:page]
        )
        for _, run_id, seq, kind, payload, ts, attempt, vis, conv in chunk:
            yield Event(
                run_id=str(run_id), seq=seq, type=kind, payload=payload or {}, ts_ms=_ms(ts), attempt=attempt,
                visibility=Visibility(vis), conversation_id=str(conv) if conv else "",
            )  # fmt: skip
        if len(chunk) < page:
            break
        last = chunk[-1][0]
    conv_model = apps.get_model("agentstream", "ConversationEvent")
    for conv, seq, kind, payload, ts in (
        conv_model.objects.using(database)
        .order_by("conversation_id", "seq")
        .values_list("conversation_id", "seq", "type", "payload", "ts")
    ).iterator(chunk_size=page):
        yield Event(
            run_id="", seq=seq, type=kind, payload=payload or {}, ts_ms=_ms(ts), conversation_id=str(conv)
        )


def _ms(value: dt.datetime | None) -> int:
    return round(value.timestamp() * 1000) if value else 0


@dataclass(slots=True)
class Expected:
    runs: dict[str, RunState]
    facts: dict[str, RunFacts]
    conversations: dict[str, ConversationState]
    problems: list[Drift]  # histories that do not fold
    oldest_ms: int  # the oldest event seen: with the whole history, rows created before it are not judged


def expected_state(events: Iterable[Event]) -> Expected:
    """Fold every run and conversation whose history starts in ``events``."""
    by_run: dict[str, dict[int, Event]] = defaultdict(dict)
    by_conv: dict[str, dict[int, Event]] = defaultdict(dict)
    oldest_ms = 0
    for e in events:
        oldest_ms = min(oldest_ms, e.ts_ms) if oldest_ms else e.ts_ms
        if e.run_id:
            by_run[e.run_id][e.seq] = e
        elif e.conversation_id and e.type in CONVERSATION_TYPES:  # not an owner's own stream
            by_conv[e.conversation_id][e.seq] = e
    runs: dict[str, RunState] = {}
    facts: dict[str, RunFacts] = {}
    convs: dict[str, ConversationState] = {}
    problems: list[Drift] = []
    for run_id, seqs in by_run.items():
        if 1 not in seqs:
            continue  # its beginning was trimmed from the log: nothing to compare with
        ordered = [seqs[s] for s in sorted(seqs)]
        try:
            state = fold_log(ordered)
        except AgentStreamError as exc:
            problems.append(Drift("unfoldable", "run", run_id, str(exc)))
            continue
        if state is not None:
            runs[run_id] = state
            facts[run_id] = run_facts(ordered)
    for conv_id, seqs in by_conv.items():
        if 1 not in seqs:
            continue
        try:
            cstate = fold_conversation(seqs[s] for s in sorted(seqs))
        except AgentStreamError as exc:
            problems.append(Drift("unfoldable", "conversation", conv_id, str(exc)))
            continue
        if cstate is not None:
            convs[conv_id] = cstate
    _release_reused_idempotency_keys(facts)
    return Expected(runs, facts, convs, problems, oldest_ms)


def _release_reused_idempotency_keys(facts: Mapping[str, RunFacts]) -> None:
    """A key reused after its TTL names the newest run only; older runs' rows show none."""
    holder: dict[tuple[str, str], RunFacts] = {}
    for f in facts.values():
        if f.idempotency_key:
            scope = (f.owner, f.idempotency_key)
            other = holder.get(scope)
            if other is None or other.created_ms <= f.created_ms:
                if other is not None:
                    other.idempotency_key = None
                holder[scope] = f
            else:
                f.idempotency_key = None


def run_differences(
    state: RunState, row: Mapping[str, Any], facts: RunFacts | None = None, archived: int | None = None
) -> dict[str, tuple[Any, Any]]:
    """Field -> (expected, found) for every field of the row the history disagrees with."""
    expected: dict[str, Any] = {
        "status": str(state.status),
        "last_seq": state.seq,
        "attempt": state.attempt,
        "agent_key": state.agent_key,
        "owner": state.owner,
        "conversation_id": state.conversation_id or None,
        "max_attempts": state.max_attempts,
        "cancel_requested": state.cancel_requested,
        "created_ms": state.created_ms,
        "started_ms": state.started_ms,
        "finished_ms": state.finished_ms,
        "output": state.output,
        "error": state.error,
        "usage": dict(state.usage),
    }
    found = {
        "status": row["status"],
        "last_seq": row["last_seq"],
        "attempt": row["attempt"],
        "agent_key": row["agent_key"],
        "owner": row["owner"],
        "conversation_id": str(row["conversation_id"]) if row["conversation_id"] else None,
        "max_attempts": row["max_attempts"],
        "cancel_requested": row["cancel_requested_at"] is not None,
        "created_ms": _ms(row["created_at"]),
        "started_ms": _ms(row["started_at"]),
        "finished_ms": _ms(row["finished_at"]),
        "output": row["output"],
        "error": row["error"],
        "usage": row["usage"] or {},
    }
    if facts is not None:
        expected |= {
            "input": facts.input,
            "metadata": facts.metadata,
            "idempotency_key": facts.idempotency_key,
            "final_messages": facts.final_messages,
        }
        found |= {
            "input": row["input"] or {},
            "metadata": row["metadata"] or {},
            "idempotency_key": row["idempotency_key"],
            "final_messages": row["final_messages"],
        }
        if archived is not None:
            expected["archived events"], found["archived events"] = facts.events, archived
    return {k: (v, found[k]) for k, v in expected.items() if found[k] != v}


def conversation_differences(
    state: ConversationState, row: Mapping[str, Any], run_count: int | None = None
) -> dict[str, tuple[Any, Any]]:
    expected: dict[str, Any] = {
        "owner": state.owner,
        "agent_key": state.agent_key,
        "title": state.title,
        "metadata": dict(state.metadata),
        "deleted": state.deleted,
        "last_seq": state.seq,
        "created_ms": state.created_ms,
        "active_branch_id": state.active_branch_id or None,
    }
    found = {
        "owner": row["owner"],
        "agent_key": row["agent_key"],
        "title": row["title"],
        "metadata": row["metadata"],
        "deleted": row["deleted_at"] is not None,
        "last_seq": row["last_seq"],
        "created_ms": _ms(row["created_at"]),
        "active_branch_id": row["active_branch_id"],
    }
    if run_count is not None:
        expected["run_count"], found["run_count"] = run_count, row["run_count"]
    return {k: (v, found[k]) for k, v in expected.items() if found[k] != v}


@dataclass(frozen=True, slots=True)
class LogFloors:
    """Per partition, the time of the oldest entry its log still holds (none: the log is empty)."""

    partitions: int
    oldest_ms: Mapping[int, int]

    def judges(self, row_id: str, created_ms: int) -> bool:
        """Whether the log reaches back to the row's creation. Strictly after the oldest entry:
        an entry trimmed in that same millisecond may have created it."""
        floor = self.oldest_ms.get(partition_of(row_id, self.partitions))
        return floor is not None and created_ms > floor


async def log_floors(redis: Redis, keys: Keys) -> LogFloors:
    oldest: dict[int, int] = {}
    for partition in range(keys.partitions):
        first: Any = await redis.xrange(keys.log(partition), count=1)
        if first:
            oldest[partition] = parse_id(as_text(first[0][0]))[0]
    return LogFloors(keys.partitions, oldest)


def compare(events: Iterable[Event], database: str, floors: LogFloors | None = None) -> Report:
    """Drift between a fold of ``events`` and the read-model rows in ``database``. ``floors``:
    where each partition log starts (``events`` are the logs'); None: ``events`` are the whole
    history (the archive), every row created since the oldest of them is judged."""
    want = expected_state(events)
    judges = floors.judges if floors is not None else lambda _, created_ms: created_ms >= want.oldest_ms
    drift = want.problems
    run_model = apps.get_model("agentstream", "Run")
    conv_model = apps.get_model("agentstream", "Conversation")
    event_model = apps.get_model("agentstream", "Event")
    run_rows = {str(r["id"]): r for r in run_model.objects.using(database).values()}
    conv_rows = {str(r["id"]): r for r in conv_model.objects.using(database).values()}
    archived = {
        str(run_id): n
        for run_id, n in event_model.objects.using(database)
        .values("run_id")
        .annotate(n=Count("id"))
        .values_list("run_id", "n")
    }
    runs_of_conversation: dict[str, int] = defaultdict(int)
    for facts in want.facts.values():
        if facts.conversation_id:
            runs_of_conversation[facts.conversation_id] += 1
    for run_id, state in sorted(want.runs.items()):
        row = run_rows.get(run_id)
        if row is None:
            drift.append(Drift("missing", "run", run_id, f"{state.status} in the log"))
            continue
        diff = run_differences(state, row, want.facts[run_id], archived.get(run_id, 0))
        if diff:
            drift.append(Drift("different", "run", run_id, _describe(diff)))
    for run_id, row in sorted(run_rows.items()):
        if run_id not in want.runs and judges(run_id, _ms(row["created_at"])):
            drift.append(Drift("extra", "run", run_id, f"{row['status']} in the table, not in the history"))
    for conv_id, cstate in sorted(want.conversations.items()):
        crow = conv_rows.get(conv_id)
        if crow is None:
            drift.append(Drift("missing", "conversation", conv_id))
            continue
        # the conversation's history starts in ``events``, and its runs come after its creation
        # in the same partition log: all of them are in ``events`` too
        diff = conversation_differences(cstate, crow, runs_of_conversation.get(conv_id, 0))
        if diff:
            drift.append(Drift("different", "conversation", conv_id, _describe(diff)))
    for conv_id, crow in sorted(conv_rows.items()):
        if (
            conv_id not in want.conversations
            and crow["created_at"] is not None
            and judges(conv_id, _ms(crow["created_at"]))
        ):
            drift.append(Drift("extra", "conversation", conv_id))
    return Report(len(want.runs), len(want.conversations), tuple(drift))


def _describe(diff: Mapping[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: expected {e!r}, found {f!r}" for k, (e, f) in diff.items())


async def verify_log(redis: Redis, keys: Keys, database: str) -> Report:
    """Fold the partition logs afresh and compare (the DB part runs in a thread)."""
    import asyncio

    events = [e async for e in log_events(redis, keys)]
    # after the events: a trim in between only raises a floor (fewer rows judged), never lowers it
    floors = await log_floors(redis, keys)
    return await asyncio.to_thread(_compare_and_close, events, database, floors)


def _compare_and_close(events: list[Event], database: str, floors: LogFloors) -> Report:
    from django.db import connections

    try:
        return compare(events, database, floors)
    finally:
        connections[database].close()
