"""A user's own projection, as a user would write one: tool calls per run, in a table of its own."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import ClassVar

from django.db.backends.base.base import BaseDatabaseWrapper

from agentstream.core.events import Event
from agentstream.projections.projection import Projection

TABLE = "test_tool_calls"


def create_table(connection: BaseDatabaseWrapper) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (run_id varchar(36), seq bigint, name varchar(100), "
            "PRIMARY KEY (run_id, seq))"
        )


def drop_table(connection: BaseDatabaseWrapper) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {TABLE}")


def tool_calls(connection: BaseDatabaseWrapper) -> list[tuple[str, int, str]]:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT run_id, seq, name FROM {TABLE} ORDER BY run_id, seq")
        return [(str(r), int(s), str(n)) for r, s, n in cursor.fetchall()]


class ToolCalls(Projection):
    name: ClassVar[str] = "tool_calls"
    event_types: ClassVar[frozenset[str] | None] = frozenset({"tool.call"})

    def handle(self, events: Sequence[Event], connection: BaseDatabaseWrapper) -> None:
        with connection.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {TABLE} (run_id, seq, name) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                [(e.run_id, e.seq, str(e.payload.get("name", ""))) for e in events],
            )

    def reset(self, connection: BaseDatabaseWrapper) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {TABLE}")


class FailingUntilAllowed(ToolCalls):
    """Fails every batch until ``allowed`` is set (a database that is down, a bug being fixed)."""

    name: ClassVar[str] = "failing"

    def __init__(self) -> None:
        self.allowed = threading.Event()
        self.failed_thrice = threading.Event()
        self.failures = 0

    def handle(self, events: Sequence[Event], connection: BaseDatabaseWrapper) -> None:
        if not self.allowed.is_set():
            self.failures += 1
            if self.failures >= 3:
                self.failed_thrice.set()
            raise ConnectionError("the database went away (injected)")
        super().handle(events, connection)
