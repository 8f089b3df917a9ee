"""Replay: rebuild projections from history, beside the live read-model.

``archive`` (complete history, the event tables in the database) resets each projection and
applies every archived event; ``log`` (recent history, the partition logs) re-applies what the
logs still hold on top of the rows (nothing is reset: the logs may be trimmed).

Either way the whole rebuild is ONE transaction: readers keep seeing the old rows until it
commits, then the new ones at once; a live projector that touches the same rows waits for the
commit and then merges its newer events on top (writes are order-insensitive).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.dateparse import parse_datetime

from agentstream.core.events import LIFECYCLE_TYPES, Event, Visibility
from agentstream.projections.projection import Projection, ReadModelProjection
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


def _for_replay(projection: Projection) -> Projection:
    # the archive is the source here: the read-model must not write it again
    return (
        ReadModelProjection(write_archive=False)
        if isinstance(projection, ReadModelProjection)
        else projection
    )


def _uuid_text(value: Any) -> str:
    if value is None or value == "":
        return ""
    return str(value) if isinstance(value, uuid.UUID) else str(uuid.UUID(str(value)))


def _ms(value: Any) -> int:
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


def archive_pages(
    connection: BaseDatabaseWrapper, *, page: int, payload_types: frozenset[str] | None
) -> Iterator[list[Event]]:
    """The archive in pages: conversation events, then run events in insertion order."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT conversation_id, seq, type, payload, ts FROM {CONVERSATION_EVENT} ORDER BY id"
        )
        conv = [
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
) -> int:
    """Rebuild ``projections`` from the archive in one transaction; returns the events applied."""
    connection = connections[database]
    targets = [_for_replay(p) for p in projections]
    started = time.perf_counter()
    done = 0
    with transaction.atomic(using=database):
        total = count_archive(connection)
        for projection in targets:
            projection.reset(connection)
        for events in archive_pages(connection, page=page, payload_types=_payload_types(targets)):
            apply_page(targets, events, connection)
            done += len(events)
            if progress:
                progress(Progress(done, total, time.perf_counter() - started))
    return done


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
