"""``run_finished`` (a Django signal) and ``RUN_COMPLETED_HOOK``, once per run, driven by the logs.

The worker never notifies: it can die between writing the terminal event and calling anything.
This projection reads the terminal events from the partition logs and claims each run with an
insert-or-ignore into ``agentstream_runnotice`` inside the batch's transaction; only the runs it
newly claimed are notified, after COMMIT. A redelivered batch, a second projector process, a
replay, or a run reclaimed from a killed worker (one terminal event however many attempts) can
therefore never notify twice.

The price of "never twice" is "at most once" for the projector itself: if its process dies between
COMMIT and the receivers' return, those runs keep ``notified_at`` null (visible, not retried).

Enabled when ``RUN_COMPLETED_HOOK`` is set, or by listing
``agentstream.projections.notify.RunFinishedProjection`` in ``PROJECTIONS`` (signal only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, ClassVar

from django.db import transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.dispatch import Signal

from agentstream.core.events import TERMINAL_TYPES, Event
from agentstream.core.settings import load_callable
from agentstream.core.state import RunStatus
from agentstream.projections.projection import Projection

NAME = "run_finished"
TABLE = "agentstream_runnotice"
log = logging.getLogger("agentstream.projections")

# receivers get sender=RunFinishedProjection, finished=RunFinished
run_finished = Signal()

_STATUS_OF = {
    "run.succeeded": RunStatus.SUCCEEDED,
    "run.failed": RunStatus.FAILED,
    "run.cancelled": RunStatus.CANCELLED,
    "run.timed_out": RunStatus.TIMED_OUT,
}


@dataclass(frozen=True, slots=True)
class RunFinished:
    """What a hook or receiver learns about a run that ended (the terminal event's payload)."""

    run_id: str
    status: RunStatus
    attempt: int
    seq: int
    finished_at_ms: int
    conversation_id: str | None
    payload: dict[str, Any]  # output / error / usage, as the terminal event carries them


class RunFinishedProjection(Projection):
    name: ClassVar[str] = NAME
    event_types: ClassVar[frozenset[str] | None] = frozenset(TERMINAL_TYPES)

    def __init__(self, hook_path: str | None = None) -> None:
        # loaded now: a bad path stops the projector at start, not after a commit
        self.hook = _load_hook(hook_path) if hook_path else None

    def handle(self, events: Sequence[Event], connection: BaseDatabaseWrapper) -> None:
        first: dict[str, Event] = {}
        for event in events:
            if event.type in _STATUS_OF and event.run_id not in first:
                first[event.run_id] = event  # a run has one terminal event; a batch may repeat it
        if not first:
            return
        claimed = _claim(connection, list(first.values()))
        if claimed:
            finished = [_finished(first[run_id]) for run_id in claimed]
            transaction.on_commit(lambda: self.notify(finished, connection), using=connection.alias)

    def notify(self, finished: Sequence[RunFinished], connection: BaseDatabaseWrapper) -> None:
        """Call the hook and the signal's receivers (after COMMIT); one failing receiver is logged
        and never stops the others or the projector."""
        for item in finished:
            if self.hook is not None:
                try:
                    self.hook(item)
                except Exception:
                    log.exception(
                        "RUN_COMPLETED_HOOK raised for run %s", item.run_id, extra={"run_id": item.run_id}
                    )
            for receiver, result in run_finished.send_robust(sender=RunFinishedProjection, finished=item):
                if isinstance(result, Exception):
                    log.error(
                        "run_finished receiver %r raised for run %s: %r",
                        receiver,
                        item.run_id,
                        result,
                        extra={"run_id": item.run_id},
                    )
        with connection.cursor() as cursor:
            marks = ", ".join(["%s"] * len(finished))
            cursor.execute(
                f"UPDATE {TABLE} SET notified_at = %s WHERE run_id IN ({marks})",
                [datetime.now(UTC), *(f.run_id for f in finished)],
            )


def _claim(connection: BaseDatabaseWrapper, events: Sequence[Event]) -> list[str]:
    """Insert-or-ignore one row per run; the run ids this call inserted (one statement)."""
    now = datetime.now(UTC)
    rows = ", ".join(["(%s, %s, %s, %s)"] * len(events))
    params: list[Any] = []
    for event in events:
        params += [event.run_id, _STATUS_OF[event.type].value, event.seq, now]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (run_id, status, seq, created_at) VALUES {rows} "
            "ON CONFLICT (run_id) DO NOTHING RETURNING run_id",
            params,
        )
        return [str(row[0]) for row in cursor.fetchall()]


def _finished(event: Event) -> RunFinished:
    return RunFinished(
        run_id=event.run_id,
        status=_STATUS_OF[event.type],
        attempt=event.attempt,
        seq=event.seq,
        finished_at_ms=event.ts_ms,
        conversation_id=event.conversation_id or None,
        payload=dict(event.payload),
    )


@cache
def _load_hook(path: str) -> Callable[[RunFinished], Any]:
    return load_callable(path, "RUN_COMPLETED_HOOK")
