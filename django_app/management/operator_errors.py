"""What an operator can fix, said in one line instead of a traceback.

A management command wraps its work in ``operator_errors()``: Redis unreachable, the database
down or not migrated become a ``CommandError`` naming what went wrong and what to do (Django
prints it as one line and exits 1). Passwords in URLs are never shown.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from urllib.parse import urlsplit

from django.core.management.base import CommandError
from django.db import OperationalError, ProgrammingError, connections
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

from agentstream.django_app.conf import runtime_settings
from agentstream.django_app.dberrors import is_not_migrated

MIGRATE = "run `agentstream manage migrate` (your project: `manage.py migrate`)"


@contextlib.contextmanager
def operator_errors(database: str = "default") -> Iterator[None]:
    """Turn the errors an operator fixes (not bugs) into a one-line ``CommandError``."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, RedisClusterException) as exc:
        url = redact_url(runtime_settings().REDIS_URL)
        raise CommandError(
            f"cannot reach Redis at {url}: {_reason(exc)}; is it running? set REDIS_URL"
        ) from None
    except (OperationalError, ProgrammingError) as exc:
        where = _database(database)
        if is_not_migrated(exc):
            raise CommandError(
                f"the database {where} has no agentstream tables ({_reason(exc)}): {MIGRATE}"
            ) from None
        if isinstance(exc, ProgrammingError):
            raise  # a bug, not the operator's to fix
        raise CommandError(
            f"cannot use the database {where}: {_reason(exc)}; is it running? set DATABASE_URL"
        ) from None


def redact_url(url: str) -> str:
    """``url`` without user, password and query (which may hold a password)."""
    parts = urlsplit(url)
    _, at, hosts = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"***@{hosts}" if at else hosts, query="").geturl()


def _reason(exc: BaseException) -> str:
    """The operating system's words when there are some ("Connection refused"), else the first line."""
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.errno and cause.errno > 0:
        return os.strerror(cause.errno)
    if isinstance(cause, OSError) and cause.strerror:
        return str(cause.strerror)  # a DNS failure: "Name or service not known"
    return str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__


def _database(alias: str) -> str:
    """Where a database is, from its settings (never its password)."""
    config = connections[alias].settings_dict
    if "sqlite" in config["ENGINE"]:
        return f"{alias!r} (SQLite {config['NAME']})"
    return f"{alias!r} ({config.get('HOST') or 'localhost'}:{config.get('PORT') or 'default port'}/{config['NAME']})"
