"""Django for the benchmark process: ONE configuration that serves every scenario.

Settings can be configured once per process, so a scenario that configured a partial set (e.g.
``sse`` only needs a SECRET_KEY) would leave a later one (``projector``) without DATABASES. Every
scenario therefore goes through :func:`configure`, which sets everything any scenario needs.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

# overridable so a test (or a second benchmark beside a running one) gets a database of its own
BENCH_DB = os.environ.get("AGENTSTREAM_BENCH_DB", "bench_projections")
SECRET_KEY = "agentstream-bench"

_migrated: set[str] = set()  # databases created and migrated by this process


def _pg_params(database_url: str) -> dict[str, str]:
    pg = urlparse(database_url)
    return {
        "USER": pg.username or "postgres",
        "PASSWORD": pg.password or "",
        "HOST": pg.hostname or "127.0.0.1",
        "PORT": str(pg.port or 5432),
    }


def configure(database_url: str, db_name: str = BENCH_DB) -> None:
    """Configure Django settings for every scenario; a no-op once this process configured them."""
    import django
    from django.conf import settings

    if settings.configured:
        current = settings.DATABASES.get("default", {}).get("NAME")
        if current != db_name:
            raise RuntimeError(
                f"Django is already configured for database {current!r}, not {db_name!r}: "
                "configure settings through benchmarks.django_env.configure only"
            )
        return
    settings.configure(
        SECRET_KEY=SECRET_KEY,
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "agentstream.django_app"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": db_name,
                **_pg_params(database_url),
            }
        },
    )
    django.setup()


def setup_database(database_url: str, db_name: str = BENCH_DB) -> None:
    """Configure Django and give it a fresh, migrated database of the benchmark's own (once)."""
    import psycopg

    configure(database_url, db_name)
    if db_name in _migrated:
        return
    p = _pg_params(database_url)
    admin_db = (urlparse(database_url).path or "/postgres").lstrip("/") or "postgres"
    with psycopg.connect(
        dbname=admin_db,
        user=p["USER"],
        password=p["PASSWORD"] or None,
        host=p["HOST"],
        port=p["PORT"],
        autocommit=True,
    ) as c:
        c.execute(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {db_name}")
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    _migrated.add(db_name)
