"""``replay``: events/s rebuilding the read-models from the event archive in PostgreSQL
(``replay_projections --source archive``), next to a naive replay through the ORM, per event.

The archive is filled by COPY with the same runs as the ``projector`` scenario (11 state events
each); every round resets the read-models and rebuilds them from all of it in one transaction.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from benchmarks.common import Options, Record, summarize
from benchmarks.projector import run_entries, setup_django, truncate_read_models


def archive_history(runs: int) -> int:
    """COPY ``runs`` runs' events into the archive; returns the number of events."""
    from django.db import connection

    from agentstream.projections.entries import decode_log_entry
    from agentstream.projections.sql import EVENT, EVENT_COLUMNS, _event_copy_line

    now_ms = time.time_ns() // 1_000_000
    n = 0
    lines: list[str] = []
    with connection.cursor() as cursor:
        for _ in range(runs):
            run_id = str(uuid.uuid4())
            for fields in run_entries(run_id, now_ms):
                raw = {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}
                lines.append(_event_copy_line(decode_log_entry(raw)))
                n += 1
        with cursor.cursor.copy(f"COPY {EVENT} ({', '.join(EVENT_COLUMNS)}) FROM STDIN") as copy:
            copy.write("".join(lines))
    connection.close()
    return n


def replay_once() -> tuple[int, float]:
    from django.db import connection

    from agentstream.projections.projection import ReadModelProjection
    from agentstream.projections.replay import replay_archive

    start = time.perf_counter()
    done = replay_archive([ReadModelProjection()], page=10_000)
    elapsed = time.perf_counter() - start
    connection.close()
    return done, elapsed


def naive_replay_once(limit: int) -> float:
    """Read the archive through the ORM and apply it per event (as the projector's naive twin)."""
    from django.db import connection

    from agentstream.core.events import Event as EventValue
    from agentstream.core.events import Visibility
    from agentstream.django_app.models import Event, Run

    Run.objects.all().delete()
    start = time.perf_counter()
    rows = Event.objects.order_by("id").values_list("run_id", "seq", "type", "payload", "ts", "attempt")[
        :limit
    ]
    events = [
        EventValue(str(r), s, t, p, int(ts.timestamp() * 1000), a, Visibility.USER)
        for r, s, t, p, ts, a in rows
    ]
    # the archive is there already: only the per-event run updates are timed against ours
    _apply_runs_only(events)
    elapsed = time.perf_counter() - start
    connection.close()
    return len(events) / elapsed


def _apply_runs_only(events: list[Any]) -> None:
    from django.db import transaction

    from agentstream.django_app.models import Run
    from agentstream.projections.rows import STATUS_OF_EVENT

    with transaction.atomic():
        for e in events:
            run, _ = Run.objects.get_or_create(id=e.run_id)
            run.last_seq = max(run.last_seq, e.seq)
            status = STATUS_OF_EVENT.get(e.type)
            if status is not None and e.seq > run.status_seq:
                run.status, run.status_seq = status, e.seq
            run.save()


async def main(opts: Options) -> list[Record]:
    await asyncio.to_thread(setup_django, opts.database_url)
    runs = opts.size(full=30_000, quick=300)
    await asyncio.to_thread(truncate_read_models)
    n = await asyncio.to_thread(archive_history, runs)
    naive_n = min(n, 200 if opts.quick else 5_000)
    ours: list[float] = []
    naive: list[float] = []
    for _ in range(max(3, opts.rounds)):
        done, elapsed = await asyncio.to_thread(replay_once)
        assert done == n, (done, n)
        ours.append(done / elapsed)
        naive.append(await asyncio.to_thread(naive_replay_once, naive_n))
    await asyncio.to_thread(truncate_read_models)
    return [
        summarize(
            "replay", "agentstream replay_projections --source archive", "throughput", "events/s", n, ours
        ),
        summarize("replay", "naive ORM per event", "throughput", "events/s", naive_n, naive),
    ]
