"""Django settings for the test suite: PostgreSQL as ``default`` (SQLite when it is absent
locally) and a second SQLite database, ``embedded``, for the embedded-default contract tests."""

from __future__ import annotations

import os
import tempfile
from urllib.parse import urlparse

from tests.services import DATABASE_URL, POSTGRES_UP

SECRET_KEY = "agentstream-tests-only"
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.admin",
    "rest_framework",
    "agentstream.django_app",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

_pg = urlparse(DATABASE_URL)
# Each pytest process gets its own test database, so parallel runs never collide.
_suffix = os.getpid()
_sqlite_dir = tempfile.mkdtemp(prefix="agentstream-tests-")
_embedded = {
    "ENGINE": "django.db.backends.sqlite3",
    # a test's subprocess (a projector, a worker) is pointed at the test's own databases by env
    "NAME": os.environ.get("AGENTSTREAM_TEST_EMBEDDED_NAME") or os.path.join(_sqlite_dir, "embedded.sqlite3"),
    "TEST": {"NAME": os.path.join(_sqlite_dir, f"test_embedded_{_suffix}.sqlite3")},
}
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("AGENTSTREAM_TEST_DEFAULT_NAME") or (_pg.path or "/test").lstrip("/"),
        "USER": _pg.username or "postgres",
        "PASSWORD": _pg.password or "",
        "HOST": _pg.hostname or "127.0.0.1",
        "PORT": str(_pg.port or 5432),
        "TEST": {"NAME": f"test_agentstream_{_suffix}"},
    }
    if POSTGRES_UP
    else dict(_embedded),
    "embedded": _embedded,
}

AGENTSTREAM = {
    "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    "KEY_PREFIX": os.environ.get("AGENTSTREAM_KEY_PREFIX", f"astest{_suffix}"),
    "PARTITIONS": 4,
}
