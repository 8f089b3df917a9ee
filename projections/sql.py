"""Batched, idempotent SQL for the read-models, on PostgreSQL and SQLite (DESIGN §7).

The schema belongs to the migrations in ``agentstream.django_app``; this module only names its
tables. PostgreSQL gets COPY into a temporary table and one ``INSERT .. SELECT .. ON CONFLICT``
per table; SQLite gets ``executemany``. Both run the same conflict clauses, which perform the
lattice merge of ``projections.rows`` in SQL, so concurrent projectors converge.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from django.db import transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from agentstream.core.events import Event, EventType
from agentstream.core.ids import parse_owner
from agentstream.projections.rows import ConversationPatch, RunPatch

RUN = "agentstream_run"
CONVERSATION = "agentstream_conversation"
EVENT = "agentstream_event"
CONVERSATION_EVENT = "agentstream_conversationevent"
CHECKPOINT = "agentstream_checkpoint"
PROJECTION_CHECKPOINT = "agentstream_projectioncheckpoint"
SKIPPED = "agentstream_skippedentry"


def _json_default(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "replace")
    return str(value)


log = logging.getLogger("agentstream.projections")

# the key of the note stored for a payload JSON cannot hold
UNSTORABLE = "not_json"

_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def to_json(value: Any) -> str:
    text = orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS).decode()
    if "\\u0000" in text:
        # PostgreSQL's jsonb refuses NUL; one such payload must not stall the log forever
        text = _NUL_ESCAPE.sub(r"\1\\ufffd", text)
    return text


def to_stored_json(value: Any, what: Callable[[], str]) -> str:
    """``to_json``, or for a value JSON cannot hold (msgpack takes 1,024 levels of nesting,
    orjson 255) a note saying so, logged: one such event must not stall the projection for ever.
    The event itself stays whole in Redis (``EventStore.read_run``)."""
    try:
        return to_json(value)
    except orjson.JSONEncodeError as exc:
        log.warning("%s cannot be stored as JSON (%s); a note is stored in its place", what(), exc)
        return to_json(unstorable(exc))


def unstorable(exc: Exception) -> dict[str, str]:
    """The note stored in place of a value JSON cannot hold."""
    return {UNSTORABLE: f"cannot be stored as JSON: {exc}"}


def _copy_escape(text: str) -> str:
    """COPY text format: backslash, tab, newline and carriage return are escaped."""
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


def _copy_value(value: Any) -> str:
    """One value in COPY text format (what ``Copy.write_row`` does, without its per-row overhead)."""
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return _copy_escape(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return str(value)


def _event_name(e: Event) -> str:
    return f"the payload of {e.type} seq {e.seq} of {'run ' + e.run_id if e.run_id else 'conversation ' + str(e.conversation_id)}"


def _event_copy_line(e: Event) -> str:
    # orjson escapes control characters inside JSON strings, so only backslashes need doubling
    payload = to_stored_json(e.payload, functools.partial(_event_name, e)).replace("\\", "\\\\")
    conv = e.conversation_id or "\\N"
    return (
        f"{e.run_id}\t{e.seq}\t{_copy_escape(e.type)}\t{payload}\t{_ts_text(e.ts_ms or 1)}\t{e.attempt}\t"
        f"{e.visibility}\t{conv}\n"
    )


@functools.lru_cache(maxsize=8192)
def _ts_text(ms: int) -> str:
    # events of one batch share their milliseconds: format each once
    return ms_to_datetime(ms).isoformat()


def ms_to_datetime(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one engine wants uuids, times and JSON as query parameters."""

    connection: BaseDatabaseWrapper

    @property
    def postgres(self) -> bool:
        return self.connection.vendor == "postgresql"

    def uuid(self, value: str | None) -> Any:
        if not value:
            return None
        if self.connection.features.has_native_uuid_field:
            return value
        return uuid.UUID(value).hex

    def ts(self, ms: int) -> Any:
        if not ms:
            return None
        when = ms_to_datetime(ms)
        return when if self.postgres else self.connection.ops.adapt_datetimefield_value(when)

    def json(self, value: Any) -> str | None:
        return None if value is None else to_stored_json(value, lambda: "a read-model value")

    def event_json(self, e: Event) -> str:
        return to_stored_json(e.payload, functools.partial(_event_name, e))


def _newer(table: str, column: str, condition: str) -> str:
    return f"{column} = CASE WHEN {condition} THEN excluded.{column} ELSE {table}.{column} END"


def _greatest(table: str, column: str) -> str:
    return _newer(table, column, f"excluded.{column} > {table}.{column}")


def _earliest_set(table: str, column: str) -> str:
    cond = f"{table}.{column} IS NULL OR excluded.{column} < {table}.{column}"
    return _newer(table, column, cond)


def _latest_set(table: str, column: str) -> str:
    cond = f"{table}.{column} IS NULL OR excluded.{column} > {table}.{column}"
    return _newer(table, column, cond)


RUN_COLUMNS = (
    "id", "owner", "user_id", "anonymous_session_id", "conversation_id", "agent_key", "status",
    "input", "output", "error", "attempt", "max_attempts", "idempotency_key", "cancel_requested_at",
    "created_at", "started_at", "finished_at", "metadata", "usage", "final_messages", "last_seq",
    "status_seq", "parent_message_id",
)  # fmt: skip
_QUEUED_COLUMNS = (
    "owner", "user_id", "anonymous_session_id", "agent_key", "input", "metadata", "max_attempts",
    "idempotency_key", "created_at", "parent_message_id",
)  # fmt: skip
_TERMINAL_COLUMNS = ("finished_at", "output", "error", "usage", "final_messages")
RUN_CONFLICT = "ON CONFLICT (id) DO UPDATE SET " + ", ".join(
    [
        *(_newer(RUN, c, "excluded.created_at IS NOT NULL") for c in _QUEUED_COLUMNS),
        f"conversation_id = COALESCE({RUN}.conversation_id, excluded.conversation_id)",
        _newer(RUN, "status", f"excluded.status_seq > {RUN}.status_seq"),
        _greatest(RUN, "status_seq"),
        _greatest(RUN, "attempt"),
        _greatest(RUN, "last_seq"),
        _earliest_set(RUN, "started_at"),
        _earliest_set(RUN, "cancel_requested_at"),
        *(_newer(RUN, c, "excluded.finished_at IS NOT NULL") for c in _TERMINAL_COLUMNS),
    ]
)

CONVERSATION_COLUMNS = (
    "id", "owner", "user_id", "anonymous_session_id", "agent_key", "title", "metadata", "created_at",
    "updated_at", "run_count", "last_activity_at", "deleted_at", "last_seq", "title_seq", "metadata_seq",
    "active_branch_id", "active_branch_seq", "active_branch_at",
)  # fmt: skip
_CREATED_COLUMNS = ("owner", "user_id", "anonymous_session_id", "agent_key", "created_at")
CONVERSATION_CONFLICT = "ON CONFLICT (id) DO UPDATE SET " + ", ".join(
    [
        *(_newer(CONVERSATION, c, "excluded.created_at IS NOT NULL") for c in _CREATED_COLUMNS),
        _newer(CONVERSATION, "title", f"excluded.title_seq > {CONVERSATION}.title_seq"),
        _greatest(CONVERSATION, "title_seq"),
        _newer(CONVERSATION, "metadata", f"excluded.metadata_seq > {CONVERSATION}.metadata_seq"),
        _greatest(CONVERSATION, "metadata_seq"),
        _newer(
            CONVERSATION, "active_branch_id", f"excluded.active_branch_seq > {CONVERSATION}.active_branch_seq"
        ),
        _newer(
            CONVERSATION, "active_branch_at", f"excluded.active_branch_seq > {CONVERSATION}.active_branch_seq"
        ),
        _greatest(CONVERSATION, "active_branch_seq"),
        _greatest(CONVERSATION, "last_seq"),
        _latest_set(CONVERSATION, "updated_at"),
        _latest_set(CONVERSATION, "last_activity_at"),
        _earliest_set(CONVERSATION, "deleted_at"),
    ]
)

EVENT_COLUMNS = ("run_id", "seq", "type", "payload", "ts", "attempt", "visibility", "conversation_id")
CONVERSATION_EVENT_COLUMNS = ("conversation_id", "seq", "type", "payload", "ts")
CHECKPOINT_COLUMNS = ("run_id", "seq", "state", "created_at")
PROJECTION_CHECKPOINT_COLUMNS = ("projection", "partition", "last_id", "last_ms", "last_n", "updated_at")
SKIPPED_COLUMNS = ("projection", "partition", "entry_id", "reason", "raw", "created_at")
IGNORE = "ON CONFLICT DO NOTHING"
UNIQUE_VIOLATION = "23505"  # SQLSTATE


def _idempotency_holders(patches: Iterable[RunPatch]) -> dict[tuple[str, str], RunPatch]:
    """Per (owner, key): the newest run of the batch holds it (a key is reused once its TTL ends)."""
    holders: dict[tuple[str, str], RunPatch] = {}
    for p in patches:
        q = p.queued
        if q is None or not q.idempotency_key:
            continue
        scope = (q.owner, q.idempotency_key)
        other = holders.get(scope)
        if other is None or (other.queued is not None and other.queued.created_ms <= q.created_ms):
            holders[scope] = p
    return holders


def split_entry_id(entry_id: str) -> tuple[int, int]:
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n or 0)


@dataclass(frozen=True, slots=True)
class Skipped:
    partition: int
    entry_id: str
    reason: str
    raw: str


class SqlWriter:
    """Writes read-model rows through one Django connection, inside the caller's transaction."""

    def __init__(
        self, connection: BaseDatabaseWrapper, user_id_of: Callable[[str], Any] | None = None
    ) -> None:
        self.connection = connection
        self.d = Dialect(connection)
        self._user_id_of = user_id_of or (lambda ident: ident)
        self._temp_tables_on: object | None = None

    # -- the generic bulk insert ----------------------------------------------------------

    def bulk(
        self,
        table: str,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        conflict: str,
        order_by: str = "",
    ) -> None:
        if not rows:
            return
        cols = ", ".join(columns)
        with self.connection.cursor() as cursor:
            if not self.d.postgres:
                marks = ", ".join(["%s"] * len(columns))
                cursor.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks}) {conflict}", rows)
                return
            temp = self._temp_table(cursor, table, columns)
            raw = cursor.cursor
            with raw.copy(f"COPY {temp} ({cols}) FROM STDIN") as copy:
                copy.write("".join(["\t".join([_copy_value(v) for v in row]) + "\n" for row in rows]))
            order = f" ORDER BY {order_by}" if order_by else ""
            cursor.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {temp}{order} {conflict}")
            cursor.execute(f"TRUNCATE {temp}")  # no dead rows piling up in long replays

    def _temp_table(self, cursor: Any, table: str, columns: Sequence[str]) -> str:
        temp = f"_as_in_{table.removeprefix('agentstream_')}"
        raw_connection = self.connection.connection
        if self._temp_tables_on is not raw_connection:
            # temp tables live as long as the session: create them once per (re)connection
            self._temp_tables_on = raw_connection
            self._made: set[str] = set()
        if temp not in self._made:
            cursor.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {temp} ON COMMIT DELETE ROWS AS "
                f"SELECT {', '.join(columns)} FROM {table} WITH NO DATA"
            )
            self._made.add(temp)
        return temp

    # -- the archive --------------------------------------------------------------------------

    def archive(self, events: Iterable[Event]) -> None:
        """Insert-or-ignore every event into the archive (run events, conversation events, snapshots)."""
        d = self.d
        run_events: list[Event] = []
        conv_rows: list[tuple[Any, ...]] = []
        checkpoint_rows: list[tuple[Any, ...]] = []
        for e in events:
            if e.run_id:
                run_events.append(e)
                if e.type == EventType.STATE_CHECKPOINT:
                    state = e.payload.get("state", e.payload)
                    checkpoint_rows.append(
                        (
                            d.uuid(e.run_id),
                            e.seq,
                            to_stored_json(state, functools.partial(_event_name, e)),
                            d.ts(e.ts_ms) or d.ts(1),
                        )
                    )
            elif e.conversation_id:
                conv_rows.append(
                    (d.uuid(e.conversation_id), e.seq, e.type, d.event_json(e), d.ts(e.ts_ms) or d.ts(1))
                )
        ignore = IGNORE
        if d.postgres:
            # the hot table: COPY text built in one pass, no per-row adaptation
            self.copy_text(EVENT, EVENT_COLUMNS, [_event_copy_line(e) for e in run_events], ignore)
        else:
            rows = [
                (
                    d.uuid(e.run_id), e.seq, e.type, d.event_json(e), d.ts(e.ts_ms) or d.ts(1),
                    e.attempt, e.visibility.value, d.uuid(e.conversation_id),
                )
                for e in run_events
            ]  # fmt: skip
            self.bulk(EVENT, EVENT_COLUMNS, rows, ignore)
        self.bulk(CONVERSATION_EVENT, CONVERSATION_EVENT_COLUMNS, conv_rows, ignore)
        self.bulk(CHECKPOINT, CHECKPOINT_COLUMNS, checkpoint_rows, ignore)

    def copy_text(self, table: str, columns: Sequence[str], lines: Sequence[str], conflict: str) -> None:
        """PostgreSQL only: COPY ready-made text-format lines into ``table``.

        Insert-or-ignore first tries a COPY straight into the table, in a savepoint: half the
        database time of COPY into a temp table + ``INSERT .. ON CONFLICT`` (whose speculative
        insertion doubles the cost per row). Only a redelivered batch meets rows that are there
        already; its unique violation rolls the savepoint back and it takes the conflict path.
        """
        if not lines:
            return
        cols = ", ".join(columns)
        if conflict == IGNORE and self._copy_unless_duplicate(table, cols, lines):
            return
        with self.connection.cursor() as cursor:
            temp = self._temp_table(cursor, table, columns)
            with cursor.cursor.copy(f"COPY {temp} ({cols}) FROM STDIN") as copy:
                copy.write("".join(lines))
            cursor.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {temp} {conflict}")
            cursor.execute(f"TRUNCATE {temp}")  # no dead rows piling up in long replays

    def _copy_unless_duplicate(self, table: str, cols: str, lines: Sequence[str]) -> bool:
        """COPY into ``table`` itself; False (nothing written) if a row is there already."""
        try:
            with (
                transaction.atomic(using=self.connection.alias),
                self.connection.cursor() as cursor,
                cursor.cursor.copy(f"COPY {table} ({cols}) FROM STDIN") as copy,
            ):
                copy.write("".join(lines))
        except Exception as exc:
            if getattr(exc, "sqlstate", None) == UNIQUE_VIOLATION:
                return False
            raise
        return True

    # -- runs and conversations ----------------------------------------------------------------

    def _owner_columns(self, owner: str) -> tuple[Any, str | None]:
        try:
            kind, ident = parse_owner(owner)
        except ValueError:
            return None, None
        if kind == "user":
            return self._user_id_of(ident), None
        return None, ident

    def upsert_runs(self, patches: Iterable[RunPatch]) -> None:
        d = self.d
        patches = list(patches)
        holders = _idempotency_holders(patches)
        rows: list[tuple[Any, ...]] = []
        for p in patches:
            q, t = p.queued, p.terminal
            user_id, anon = self._owner_columns(q.owner) if q else (None, None)
            holds_key = q is not None and q.idempotency_key and holders.get((q.owner, q.idempotency_key)) is p
            rows.append(
                (
                    d.uuid(p.run_id),
                    q.owner if q else "",
                    user_id,
                    anon,
                    d.uuid(p.conversation_id),
                    q.agent_key if q else "",
                    str(p.status or "queued"),
                    d.json(q.input if q else {}),
                    d.json(t.output if t else None),
                    d.json(t.error if t else None),
                    p.attempt,
                    q.max_attempts if q else 1,
                    q.idempotency_key if q and holds_key else None,
                    d.ts(p.cancel_requested_ms),
                    d.ts(q.created_ms) if q else None,
                    d.ts(p.started_ms),
                    d.ts(t.finished_ms) if t else None,
                    d.json(q.metadata if q else {}),
                    d.json(t.usage if t else {}),
                    d.json(t.final_messages if t else None),
                    p.last_seq,
                    p.status_seq,
                    q.parent_message_id if q else None,
                )
            )
        if holders:
            self._release_idempotency_keys(holders)
        rows.sort(key=lambda r: str(r[0]))  # one lock order for every projector: no deadlocks
        self.bulk(RUN, RUN_COLUMNS, rows, RUN_CONFLICT, order_by="id")

    def _release_idempotency_keys(self, holders: Mapping[tuple[str, str], RunPatch]) -> None:
        params = [(owner, key, self.d.uuid(p.run_id)) for (owner, key), p in holders.items()]
        with self.connection.cursor() as cursor:
            cursor.executemany(
                f"UPDATE {RUN} SET idempotency_key = NULL WHERE owner = %s AND idempotency_key = %s AND id <> %s",
                params,
            )

    def upsert_conversations(self, patches: Iterable[ConversationPatch]) -> None:
        d = self.d
        rows: list[tuple[Any, ...]] = []
        for p in patches:
            created = bool(p.created_ms)
            user_id, anon = self._owner_columns(p.owner) if created else (None, None)
            rows.append(
                (
                    d.uuid(p.conversation_id),
                    p.owner,
                    user_id,
                    anon,
                    p.agent_key,
                    p.title,
                    d.json(p.metadata),
                    d.ts(p.created_ms),
                    d.ts(p.updated_ms),
                    0,
                    d.ts(p.last_activity_ms),
                    d.ts(p.deleted_ms),
                    p.last_seq,
                    p.title_seq,
                    p.metadata_seq,
                    p.active_branch_id or None,
                    p.active_branch_seq,
                    d.ts(p.active_branch_ms),
                )
            )
        rows.sort(key=lambda r: str(r[0]))
        self.bulk(CONVERSATION, CONVERSATION_COLUMNS, rows, CONVERSATION_CONFLICT, order_by="id")

    def lock_conversations(self, conversation_ids: Iterable[str]) -> None:
        """Serialise projectors that change the same conversations' run counts (PostgreSQL only:
        SQLite has one writer at a time anyway). Taken first, in one order: no deadlocks."""
        keys = sorted({zlib.crc32(c.encode()) for c in conversation_ids})
        if not keys or not self.d.postgres:
            return
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT unnest(%s::bigint[]) AS k ORDER BY 1) s",
                [keys],
            )

    def recount_runs(self, conversation_ids: Iterable[str]) -> None:
        ids = [self.d.uuid(c) for c in sorted(set(conversation_ids))]
        if not ids:
            return
        with self.connection.cursor() as cursor:
            cursor.executemany(
                f"UPDATE {CONVERSATION} SET run_count = (SELECT COUNT(*) FROM {RUN} "
                f"WHERE {RUN}.conversation_id = {CONVERSATION}.id) WHERE id = %s",
                [(i,) for i in ids],
            )

    # -- bookkeeping ------------------------------------------------------------------------

    def save_checkpoints(self, projection: str, last_ids: Mapping[int, str]) -> None:
        now = self.d.ts(int(dt.datetime.now(dt.UTC).timestamp() * 1000))
        rows = [(projection, p, i, *split_entry_id(i), now) for p, i in sorted(last_ids.items())]
        t = PROJECTION_CHECKPOINT
        newer = f"(excluded.last_ms > {t}.last_ms OR (excluded.last_ms = {t}.last_ms AND excluded.last_n > {t}.last_n))"
        conflict = (
            f"ON CONFLICT (projection, partition) DO UPDATE SET "
            f"last_id = CASE WHEN {newer} THEN excluded.last_id ELSE {t}.last_id END, "
            f"last_n = CASE WHEN {newer} THEN excluded.last_n ELSE {t}.last_n END, "
            f"last_ms = CASE WHEN {newer} THEN excluded.last_ms ELSE {t}.last_ms END, "
            f"updated_at = excluded.updated_at"
        )
        # small (one row per partition): executemany on both engines
        marks = ", ".join(["%s"] * len(PROJECTION_CHECKPOINT_COLUMNS))
        with self.connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {t} ({', '.join(PROJECTION_CHECKPOINT_COLUMNS)}) VALUES ({marks}) {conflict}",
                rows,
            )

    def record_skipped(self, projection: str, skipped: Iterable[Skipped]) -> None:
        now = self.d.ts(int(dt.datetime.now(dt.UTC).timestamp() * 1000))
        rows = [(projection, s.partition, s.entry_id, s.reason, s.raw[:10_000], now) for s in skipped]
        if not rows:
            return
        marks = ", ".join(["%s"] * len(SKIPPED_COLUMNS))
        with self.connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {SKIPPED} ({', '.join(SKIPPED_COLUMNS)}) VALUES ({marks}) ON CONFLICT DO NOTHING",
                rows,
            )
