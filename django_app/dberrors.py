"""Database errors the operator fixes, told apart from outages: free of DRF and of the app
registry, so management commands can import it before Django is set up."""

from __future__ import annotations

from django.db import OperationalError, ProgrammingError

# PostgreSQL's SQLSTATEs for a table or column the query names and the database does not have
_UNDEFINED = {"42P01", "42703"}  # undefined_table, undefined_column
# SQLite's words for the same (its errors carry no code); "has no column named" is an INSERT's
_SQLITE_UNDEFINED = ("no such table", "no such column", "has no column named")


def is_not_migrated(exc: BaseException) -> bool:
    """A query failed because the schema is missing or behind the models: the operator's to fix
    with ``migrate``, not a database that is down (PostgreSQL says ``ProgrammingError``, SQLite
    ``OperationalError``; PostgreSQL is told by SQLSTATE, as its messages may be translated)."""
    if not isinstance(exc, (OperationalError, ProgrammingError)):
        return False
    cause = exc.__cause__
    sqlstate = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if sqlstate is not None:
        return sqlstate in _UNDEFINED
    return any(words in str(exc) for words in _SQLITE_UNDEFINED)
