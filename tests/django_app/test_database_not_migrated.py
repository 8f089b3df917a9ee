"""A database without the agentstream tables is reachable: the API says to migrate, in one JSON
line, and keeps "unreachable" for a database it cannot connect to — on PostgreSQL (an undefined
table is a ``ProgrammingError``) and SQLite (``OperationalError`` "no such table") alike."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from agentstream.django_app.models import Run
from tests.django_app.conftest import anon_client
from tests.services import free_port

pytestmark = pytest.mark.django_db(transaction=True)

RUNS = "/api/agents/runs/"
HIDDEN = "agentstream_run_s12_hidden"


@pytest.fixture
def runs_table_missing() -> Iterator[None]:
    """The runs table renamed away (as in a database never migrated), renamed back afterwards."""
    table = Run._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {HIDDEN}")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {HIDDEN} RENAME TO {table}")


@pytest.fixture
def database_unreachable() -> Iterator[None]:
    """The default connection pointed where nothing answers (a port nobody listens on; for
    SQLite a file in a directory that does not exist), put back afterwards."""
    config = connection.settings_dict
    saved = dict(config)
    connection.close()
    if connection.vendor == "sqlite":
        config["NAME"] = "/nonexistent-agentstream-dir/db.sqlite3"
    else:
        config["HOST"], config["PORT"] = "127.0.0.1", str(free_port())
    try:
        yield
    finally:
        connection.close()
        config.clear()
        config.update(saved)


def test_a_database_without_the_agentstream_tables_is_503_saying_to_run_migrate(
    agentstream: dict[str, Any], runs_table_missing: None
) -> None:
    client, _ = anon_client()
    response = client.get(RUNS)
    assert response.status_code == 503, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "database_not_migrated"
    assert "manage.py migrate" in error["message"] and "\n" not in error["message"]
    for leaked in ("SELECT", "relation", "no such table", HIDDEN, "password"):
        assert leaked not in response.content.decode(), leaked


def test_a_database_that_cannot_be_reached_is_still_503_unreachable(
    agentstream: dict[str, Any], database_unreachable: None
) -> None:
    client, _ = anon_client()
    response = client.get(RUNS)
    assert response.status_code == 503, response.content[:300]
    error = response.json()["error"]
    assert error["code"] == "database_unavailable"
    assert error["message"] == "the database is unreachable; try again shortly"
    assert response["Retry-After"] == "1"
