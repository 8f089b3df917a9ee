"""Replay: rebuild projections from history, beside the live read-model.

``archive`` (complete history, the event tables in the database) resets each projection and
applies every archived event; ``log`` (recent history, the partition logs) re-applies what the
logs still hold on top of the rows (nothing is reset: the logs may be trimmed).

The archive is written by another group (``read_model``), which may lag: a projection other than
the read-model also gets, from the partition logs, what its own group read beyond the archive
(``entries_ahead``), so a replay never loses what its projector had applied and acknowledged.

Either way the whole rebuild is ONE transaction: readers keep seeing the old rows until it
commits, then the new ones at once; a live projector that touches the same rows waits for the
commit and then merges its newer events on top (writes are order-insensitive).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.dateparse import parse_datetime

from agentstream.core.errors import CorruptEntry
from agentstream.core.events import LIFECYCLE_TYPES, TERMINAL_TYPES, Event, EventType, Visibility
from agentstream.core.settings import Settings
from agentstream.core.state import RunStatus
from agentstream.core.store import redis_from_url
from agentstream.projections.entries import decode_log_entry
from agentstream.projections.logs import entries_ahead
from agentstream.projections.projection import GROUP_PREFIX, READ_MODEL, Projection, ReadModelProjection
from agentstream.projections.projector import REDIS_UNAVAILABLE
from agentstream.projections.rows import STATUS_OF_EVENT, ConversationPatch, Patches, RunPatch, run_patch
from agentstream.projections.sql import CONVERSATION_EVENT, EVENT


@dataclass(frozen=True, slots=True)
class Progress:
    done: int
    total: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float:
        return (self.total - self.done) / self.rate if self.rate else 0.0

    def bar(self, width: int = 30) -> str:
        share = self.done / self.total if self.total else 1.0
        filled = int(width * share)
        eta = dt.timedelta(seconds=round(self.eta_s))
        return (
            f"[{'#' * filled}{'.' * (width - filled)}] {share:6.1%} {self.done:,}/{self.total:,} events "
            f"{self.rate:,.0f}/s ETA {eta}"
        )


ProgressCallback = Callable[[Progress], None]


ARCHIVIST = GROUP_PREFIX + READ_MODEL  # the group that writes the archive


def _for_replay(projection: Projection) -> Projection:
    # the archive is the source here: the read-model must not write it again
    return (
        ReadModelProjection(write_archive=False)
        if isinstance(projection, ReadModelProjection)
        else projection
    )


@functools.lru_cache(maxsize=65536)
def _canonical_uuid(value: str) -> str:
    return str(uuid.UUID(value))


def _uuid_text(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, uuid.UUID):
        return str(value)
    text = str(value)
    return text if len(text) == 36 else _canonical_uuid(text)


def _ms(value: Any) -> int:
    if isinstance(value, int):
        return value
    when = value if isinstance(value, dt.datetime) else parse_datetime(str(value))
    if when is None:
        return 0
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return round(when.timestamp() * 1000)


def _payload(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str | bytes):
        loaded = orjson.loads(value)
        return loaded if isinstance(loaded, dict) else {}
    return dict(value)


def _payload_types(projections: Sequence[Projection]) -> frozenset[str] | None:
    """Types whose payload some projection needs (None: all). The read-model alone needs
    only lifecycle payloads: every other event just moves last_seq and activity."""
    needed: set[str] = set()
    for p in projections:
        if isinstance(p, ReadModelProjection):
            needed |= LIFECYCLE_TYPES
        elif p.event_types is None:
            return None
        else:
            needed |= p.event_types
    return frozenset(needed)


def archived_conversation_events(connection: BaseDatabaseWrapper) -> list[Event]:
    """Every archived conversation event, in insertion order."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT conversation_id, seq, type, payload, ts FROM {CONVERSATION_EVENT} ORDER BY id"
        )
        return [
            Event(
                run_id="",
                seq=seq,
                type=kind,
                payload=_payload(p),
                ts_ms=_ms(ts),
                conversation_id=_uuid_text(c),
            )
            for c, seq, kind, p, ts in cursor.fetchall()
        ]


def archive_pages(
    connection: BaseDatabaseWrapper, *, page: int, payload_types: frozenset[str] | None
) -> Iterator[list[Event]]:
    """The archive in pages: conversation events, then run events in insertion order."""
    conv = archived_conversation_events(connection)
    if conv:
        yield conv
    if payload_types is None:
        payload_sql = "payload"
        params: list[Any] = []
    else:
        marks = ", ".join(["%s"] * len(payload_types))
        payload_sql = f"CASE WHEN type IN ({marks}) THEN payload END"
        params = sorted(payload_types)
    sql = (
        f"SELECT id, run_id, seq, type, {payload_sql}, ts, attempt, visibility, conversation_id "
        f"FROM {EVENT} WHERE id > %s ORDER BY id LIMIT %s"
    )
    last = 0
    visibilities = {v.value: v for v in Visibility}
    run_ids: dict[Any, str] = {}
    while True:
        with connection.cursor() as cursor:
            cursor.execute(sql, [*params, last, page])
            chunk = cursor.fetchall()
        if not chunk:
            return
        events = []
        for _, run_id, seq, kind, p, ts, attempt, vis, conv_id in chunk:
            text_id = run_ids.get(run_id)
            if text_id is None:
                text_id = run_ids[run_id] = _uuid_text(run_id)
            events.append(
                Event(
                    run_id=text_id, seq=seq, type=kind, payload=_payload(p), ts_ms=_ms(ts), attempt=attempt,
                    visibility=visibilities.get(vis, Visibility.USER), conversation_id=_uuid_text(conv_id),
                )
            )  # fmt: skip
        yield events
        last = chunk[-1][0]
        if len(run_ids) > 100_000:
            run_ids.clear()


def count_archive(connection: BaseDatabaseWrapper) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT (SELECT COUNT(*) FROM {EVENT}) + (SELECT COUNT(*) FROM {CONVERSATION_EVENT})")
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def replay_archive(
    projections: Sequence[Projection],
    database: str = "default",
    *,
    page: int = 5000,
    progress: ProgressCallback | None = None,
    settings: Settings | None = None,
) -> int:
    """Rebuild ``projections`` from the archive in one transaction; returns the events applied.

    Projections other than the read-model also read the partition logs (``settings``' Redis,
    Django's ``AGENTSTREAM`` when None): call it off any event loop."""
    connection = connections[database]
    started = time.perf_counter()
    read_models = [p for p in projections if isinstance(p, ReadModelProjection)]
    others = [p for p in projections if not isinstance(p, ReadModelProjection)]
    total = 0
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(Progress(done, total, time.perf_counter() - started))

    with transaction.atomic(using=database):
        for projection in projections:
            projection.reset(connection)
        # read after the reset, before the archive: see unarchived_events
        ahead = unarchived_events(others, settings or _django_settings(), page) if others else []
        events_in_archive = count_archive(connection)
        total = events_in_archive * ((1 if read_models else 0) + (1 if others else 0)) + len(ahead)
        if read_models:
            replay_read_model(connection, page=page, step=step)
        if others:
            for events in archive_pages(connection, page=page, payload_types=_payload_types(others)):
                apply_page(others, events, connection)
                step(len(events))
            for start in range(0, len(ahead), page):
                apply_page(others, ahead[start : start + page], connection)
                step(len(ahead[start : start + page]))
    return events_in_archive + len(ahead)


def unarchived_events(projections: Sequence[Projection], settings: Settings, page: int) -> list[Event]:
    """The log entries ``projections``' groups read that the archive may lack: from the
    read-model group's oldest unacknowledged entry up to the furthest of theirs, per partition.

    The archive alone would lose them for good: those groups acknowledged them, so they are
    never delivered again. Rather than refuse while the read-model lags (routine), apply them:
    trimming waits for the read-model group, so they are still in the logs.

    Read inside the replay's transaction, after the reset: whatever a live projector committed
    before the reset (and the reset wiped), it had read by now; what it commits later survives
    the reset (PostgreSQL) or waits for the replay (SQLite). What the read-model acknowledged
    before this read is in the archive read after it. Events also archived come twice: harmless,
    projections are idempotent. Entries no group has read yet are left to its projector."""

    groups = [p.group for p in projections]

    async def read() -> list[tuple[int, list[Any]]]:
        redis = redis_from_url(settings.REDIS_URL)
        try:
            return await entries_ahead(redis, settings.keys, behind=ARCHIVIST, ahead=groups, page=page)
        finally:
            await redis.aclose()

    try:
        found = asyncio.run(read())
    except REDIS_UNAVAILABLE as exc:
        # raised as it is (the commands say "cannot reach Redis" in one line); it rolls the
        # reset back, so refusing loses nothing
        names = ", ".join(p.name for p in projections)
        exc.add_note(f"replaying {names} from the archive also reads the partition logs; nothing changed")
        raise
    events: list[Event] = []
    for _, entries in found:
        for _, fields in entries:
            with contextlib.suppress(CorruptEntry):  # the projector recorded it as skipped
                events.append(decode_log_entry(fields))
    return events


def _django_settings() -> Settings:
    # no settings passed: Django's AGENTSTREAM, parsed as django_app.conf parses it
    from django.conf import settings as django_settings

    return Settings.from_mapping(getattr(django_settings, "AGENTSTREAM", {}))


_PG_MS = "(EXTRACT(EPOCH FROM {}) * 1000)::bigint"


def replay_read_model(connection: BaseDatabaseWrapper, *, page: int, step: Callable[[int], None]) -> None:
    """The read-model from the archive, with the database doing the bulk of it: per run, one
    aggregate row (max seq, attempt, time) stands for the events that only move those, and only
    lifecycle events are read in full. Two streams ordered by run id, merged page by page, each
    run folded as its rows go by (``RunFacts``)."""
    projection = ReadModelProjection(write_archive=False)
    conv = archived_conversation_events(connection)
    if conv:
        projection.handle(conv, connection)
        step(len(conv))
    if connection.vendor == "postgresql":
        # text ids and epoch milliseconds from the server: no per-row uuid or datetime objects
        run_id, conv_id, ts, payload = (
            "run_id::text",
            "conversation_id::text",
            _PG_MS.format("ts"),
            "payload::text",
        )
        max_ts = _PG_MS.format("MAX(ts)")
    else:
        run_id, conv_id, ts, payload, max_ts = "run_id", "conversation_id", "ts", "payload", "MAX(ts)"
    marks = ", ".join(["%s"] * len(LIFECYCLE_TYPES))
    lifecycle = sorted(LIFECYCLE_TYPES)
    aggregates = connection.chunked_cursor()
    aggregates.execute(
        f"SELECT {run_id}, COUNT(*), MAX(seq), MAX(attempt), {max_ts}, MAX({conv_id}) FROM {EVENT} "
        f"WHERE type NOT IN ({marks}) GROUP BY run_id ORDER BY run_id",
        lifecycle,
    )
    lifecycles = connection.chunked_cursor()
    lifecycles.execute(
        f"SELECT {run_id}, seq, type, {payload}, {ts}, attempt, {conv_id} FROM {EVENT} "
        f"WHERE type IN ({marks}) ORDER BY run_id, seq",
        lifecycle,
    )
    pending_life: list[Any] = []
    life_done = False
    aggregates_done = False
    while not (aggregates_done and life_done):
        chunk = [] if aggregates_done else aggregates.fetchmany(page)
        aggregates_done = aggregates_done or len(chunk) < page
        runs: dict[str, RunFacts] = {}
        covered = 0
        for run_id, count, seq, attempt, ts, conv_id in chunk:
            facts = runs[run_id] = RunFacts(run_id)
            facts.see(seq, attempt, _ms(ts), conv_id)
            covered += count
        # lifecycle rows up to the last run of this chunk (all of them after the last chunk)
        until = chunk[-1][0] if chunk and not aggregates_done else None
        while not life_done:
            if not pending_life:
                pending_life = list(lifecycles.fetchmany(page))
                if not pending_life:
                    life_done = True
                    break
            cut = len(pending_life) if until is None else _first_after(pending_life, until)
            for row in pending_life[:cut]:
                facts = runs.get(row[0]) or runs.setdefault(row[0], RunFacts(row[0]))
                facts.apply(row)
            covered += cut
            pending_life = pending_life[cut:]
            if pending_life:
                break  # the rest belongs to later runs
        if runs:
            projection.write(facts_to_patches(runs.values()), connection)
        step(covered)
    aggregates.close()
    lifecycles.close()


class RunFacts:
    """One run's history, folded as its rows stream by (lifecycle rows in seq order): the same
    result as ``rows.fold_patches`` over the events, without an object per event."""

    __slots__ = ("activity", "attempt", "cancel", "conv", "last_seq", "queued", "run_id", "started", "status",
                 "status_seq", "terminal")  # fmt: skip

    def __init__(self, run_id: Any) -> None:
        self.run_id = run_id
        self.last_seq = self.attempt = self.activity = self.status_seq = self.started = self.cancel = 0
        self.conv = ""
        self.status: RunStatus | None = None
        self.queued: RunPatch | None = None
        self.terminal: RunPatch | None = None

    def see(self, seq: int, attempt: int, ts_ms: int, conv: Any) -> None:
        self.last_seq = max(self.last_seq, seq)
        self.attempt = max(self.attempt, attempt)
        self.activity = max(self.activity, ts_ms)
        if conv and not self.conv:
            self.conv = _uuid_text(conv)

    def apply(self, row: Any) -> None:
        _, seq, kind, payload, ts, attempt, conv = row
        ts_ms = _ms(ts)
        self.see(seq, attempt, ts_ms, conv)
        status = STATUS_OF_EVENT.get(kind)
        if status is not None and seq > self.status_seq:
            self.status, self.status_seq = status, seq
        if kind == EventType.RUN_STARTED:
            self.started = min(self.started, ts_ms) if self.started else ts_ms
        elif kind == EventType.RUN_CANCEL_REQUESTED:
            self.cancel = min(self.cancel, ts_ms) if self.cancel else ts_ms
        elif kind == EventType.RUN_QUEUED or kind in TERMINAL_TYPES:
            patch = run_patch(self.event(seq, kind, payload, ts_ms, attempt, conv))
            if kind == EventType.RUN_QUEUED:
                self.queued = patch
                self.conv = patch.conversation_id or self.conv
            elif self.terminal is None:
                self.terminal = patch

    def event(self, seq: int, kind: str, payload: Any, ts_ms: int, attempt: int, conv: Any) -> Event:
        return Event(
            run_id=_uuid_text(self.run_id), seq=seq, type=kind, payload=_payload(payload), ts_ms=ts_ms,
            attempt=attempt, conversation_id=_uuid_text(conv),
        )  # fmt: skip

    def patch(self) -> RunPatch:
        return RunPatch(
            run_id=_uuid_text(self.run_id),
            last_seq=self.last_seq,
            status=self.status,
            status_seq=self.status_seq,
            attempt=self.attempt,
            queued=self.queued.queued if self.queued else None,
            started_ms=self.started,
            cancel_requested_ms=self.cancel,
            terminal=self.terminal.terminal if self.terminal else None,
            conversation_id=self.conv,
            last_activity_ms=self.activity,
        )


def facts_to_patches(runs: Iterable[RunFacts]) -> Patches:
    patches: dict[str, RunPatch] = {}
    activity: dict[str, int] = {}
    for facts in runs:
        patch = facts.patch()
        patches[patch.run_id] = patch
        if patch.conversation_id:
            activity[patch.conversation_id] = max(
                activity.get(patch.conversation_id, 0), patch.last_activity_ms
            )
    conversations = {
        c: ConversationPatch(conversation_id=c, last_activity_ms=ms) for c, ms in activity.items()
    }
    return Patches(patches, conversations)


def _first_after(rows: list[Any], run_id: Any) -> int:
    for i, row in enumerate(rows):
        if row[0] > run_id:
            return i
    return len(rows)


def replay_events(
    projections: Sequence[Projection],
    pages: Sequence[list[Event]],
    database: str = "default",
    *,
    progress: ProgressCallback | None = None,
) -> int:
    """Re-apply events (the partition logs' recent history) in one transaction, resetting nothing."""
    connection = connections[database]
    total = sum(len(p) for p in pages)
    started = time.perf_counter()
    done = 0
    with transaction.atomic(using=database):
        for events in pages:
            apply_page(projections, events, connection)
            done += len(events)
            if progress:
                progress(Progress(done, total, time.perf_counter() - started))
    return done


def apply_page(
    projections: Sequence[Projection], events: list[Event], connection: BaseDatabaseWrapper
) -> None:
    for projection in projections:
        wanted = events if projection.event_types is None else [e for e in events if projection.wants(e.type)]
        if wanted:
            projection.handle(wanted, connection)
