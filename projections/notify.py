"""``run_finished`` (a Django signal) and ``RUN_COMPLETED_HOOK``, once per run, driven by the logs.

The worker never notifies: it can die between writing the terminal event and calling anything.
This projection reads the terminal events from the partition logs and claims each run with an
insert-or-ignore into ``agentstream_runnotice`` (the outbox) inside the batch's transaction; only
the runs it newly claimed are notified, after COMMIT, and each row gets ``notified_at`` as soon as
its receivers returned. A redelivered batch, a second projector process, a replay, or a run
reclaimed from a killed worker (one terminal event however many attempts) never notify twice.

The guarantee: **exactly once, unless a projector process dies after the receivers of a run were
called and before its ``notified_at`` was written; then at least once.** A row inserted with a lease
(``RUN_COMPLETED_LEASE_SECONDS``) and still undelivered when the lease ends — its projector was
killed between COMMIT and the hook, or inside it — is claimed again by any running projector's
periodic ``sweep`` (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, so two projectors never
deliver one notice at once; SQLite's single writer serialises the claim) and delivered with the
same ``RunFinished``. So receivers get the run id to be idempotent on. Keep them shorter than the
lease: one still running when it ends is delivered a second time. A notice that was claimed
``MAX_DELIVERIES`` times (a hook that kills its process) is left undelivered and logged.

Enabled when ``RUN_COMPLETED_HOOK`` is set, or by listing
``agentstream.projections.notify.RunFinishedProjection`` in ``PROJECTIONS`` (signal only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, ClassVar

import orjson
from django.db import transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.dispatch import Signal

from agentstream.core.events import TERMINAL_TYPES, Event
from agentstream.core.logfmt import run_fields
from agentstream.core.settings import load_callable
from agentstream.core.state import RunStatus
from agentstream.projections.projection import Projection
from agentstream.projections.sql import to_json, unstorable

NAME = "run_finished"
TABLE = "agentstream_runnotice"
DEFAULT_LEASE_S = 300.0
MAX_DELIVERIES = 5  # claims of one notice; past it a hook that kills its process stops being retried
SWEEP_LIMIT = 100  # notices one sweep claims
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

    def __init__(self, hook_path: str | None = None, *, lease_s: float = DEFAULT_LEASE_S) -> None:
        # loaded now: a bad path stops the projector at start, not after a commit
        self.hook = _load_hook(hook_path) if hook_path else None
        self.lease = timedelta(seconds=lease_s)

    def handle(self, events: Sequence[Event], connection: BaseDatabaseWrapper) -> None:
        first: dict[str, Event] = {}
        for event in events:
            if event.type in _STATUS_OF and event.run_id not in first:
                first[event.run_id] = event  # a run has one terminal event; a batch may repeat it
        if not first:
            return
        finished = {run_id: _finished(event) for run_id, event in first.items()}
        claimed = _insert(connection, list(finished.values()), datetime.now(UTC) + self.lease)
        if claimed:
            due = [finished[run_id] for run_id in claimed]
            transaction.on_commit(lambda: self.notify(due, connection), using=connection.alias)

    def sweep(self, connection: BaseDatabaseWrapper) -> int:
        """Deliver the notices whose lease ran out undelivered (their projector died); the claim
        commits before any receiver is called."""
        with transaction.atomic(using=connection.alias):
            due = _claim_expired(connection, datetime.now(UTC), self.lease)
        for item, deliveries in due:
            log.warning(
                "run %s: delivering its run_finished notice again (claim %d of at most %d): "
                "the projector that claimed it before did not confirm it",
                item.run_id, deliveries, MAX_DELIVERIES, extra=run_fields(item.run_id, attempt=item.attempt),
            )  # fmt: skip
        if due:
            self.notify([item for item, _ in due], connection)
        return len(due)

    def notify(self, finished: Sequence[RunFinished], connection: BaseDatabaseWrapper) -> None:
        """Call the hook and the signal's receivers (after COMMIT), then confirm that run, one run
        at a time: a process killed mid-list redelivers only the run it was in and those after it
        (one UPDATE per run, the price of that; this projection has its own group, so it never
        slows the read-model). One failing receiver is logged and never stops the others."""
        if self.hook is None and not run_finished.has_listeners(RunFinishedProjection):
            _confirm(connection, [item.run_id for item in finished])  # nobody to call twice
            return
        for item in finished:
            self._deliver(item)
            _confirm(connection, [item.run_id])

    def _deliver(self, item: RunFinished) -> None:
        if self.hook is not None:
            try:
                self.hook(item)
            except Exception:
                log.exception(
                    "RUN_COMPLETED_HOOK raised for run %s",
                    item.run_id,
                    extra=run_fields(item.run_id, attempt=item.attempt),
                )
        for receiver, result in run_finished.send_robust(sender=RunFinishedProjection, finished=item):
            if isinstance(result, Exception):
                log.error(
                    "run_finished receiver %r raised for run %s: %r",
                    receiver,
                    item.run_id,
                    result,
                    extra=run_fields(item.run_id, attempt=item.attempt),
                )


def _insert(
    connection: BaseDatabaseWrapper, finished: Sequence[RunFinished], lease_until: datetime
) -> list[str]:
    """Insert-or-ignore one outbox row per run, leased to this process; the run ids this call
    inserted (one statement)."""
    now = datetime.now(UTC)
    rows = ", ".join(["(%s, %s, %s, %s, %s, %s, 1)"] * len(finished))
    params: list[Any] = []
    for item in finished:
        params += [item.run_id, item.status.value, item.seq, now, _dump(item), lease_until]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} (run_id, status, seq, created_at, finished, lease_until, deliveries) "
            f"VALUES {rows} ON CONFLICT (run_id) DO NOTHING RETURNING run_id",
            params,
        )
        return [str(row[0]) for row in cursor.fetchall()]


def _confirm(connection: BaseDatabaseWrapper, run_ids: Sequence[str]) -> None:
    marks = ", ".join(["%s"] * len(run_ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {TABLE} SET notified_at = %s, finished = NULL WHERE run_id IN ({marks})",
            [datetime.now(UTC), *run_ids],
        )


def _claim_expired(
    connection: BaseDatabaseWrapper, now: datetime, lease: timedelta
) -> list[tuple[RunFinished, int]]:
    """Lease to this process the undelivered notices whose lease ran out (one statement)."""
    skip_locked = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {TABLE} SET lease_until = %s, deliveries = deliveries + 1 "
            f"WHERE run_id IN (SELECT run_id FROM {TABLE} WHERE notified_at IS NULL "
            f"AND lease_until < %s AND deliveries < %s ORDER BY lease_until LIMIT %s{skip_locked}) "
            "RETURNING finished, deliveries",
            [now + lease, now, MAX_DELIVERIES, SWEEP_LIMIT],
        )
        return [(_load(str(finished)), int(deliveries)) for finished, deliveries in cursor.fetchall()]


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


def _dump(item: RunFinished) -> str:
    """The outbox's copy, as the read-model stores a payload: int keys as strings, and a payload
    JSON cannot hold (msgpack nests to 1,024 levels, orjson to 255) as a note, so that one such
    run cannot stall the projection for ever (shallow: ``asdict`` would deep-copy the payload)."""
    data = {f.name: getattr(item, f.name) for f in fields(item)}
    try:
        return to_json(data)
    except orjson.JSONEncodeError as exc:
        log.warning(
            "the payload of run %s's %s cannot be stored as JSON (%s); its run_finished notice "
            "holds a note in its place", item.run_id, item.status.value, exc,
            extra=run_fields(item.run_id, attempt=item.attempt),
        )  # fmt: skip
        return to_json({**data, "payload": unstorable(exc)})


def _load(text: str) -> RunFinished:
    data = orjson.loads(text)
    return RunFinished(**{**data, "status": RunStatus(data["status"])})


@cache
def _load_hook(path: str) -> Callable[[RunFinished], Any]:
    return load_callable(path, "RUN_COMPLETED_HOOK")
