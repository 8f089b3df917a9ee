"""The bundled demo project: ``agentstream demo`` (one process) and ``agentstream serve | worker |
projector | manage`` (the production topology without writing a Django project first).

Every runtime setting comes from an environment variable ``AGENTSTREAM_<KEY>``, parsed and
validated like the ``AGENTSTREAM`` dict (``Settings.from_env``). ``REDIS_URL`` and ``DATABASE_URL``
name the servers; unset, the demo runs on fakeredis and a SQLite file in ``AGENTSTREAM_DEMO_DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from agentstream.core.errors import ConfigurationError
from agentstream.core.settings import Settings

DEMO_DIR = Path(os.environ.get("AGENTSTREAM_DEMO_DIR", Path.cwd() / ".agentstream-demo")).resolve()

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "agentstream-demo-not-for-production")
DEBUG = os.environ.get("DJANGO_DEBUG", "").lower() in ("1", "true", "yes")
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "agentstream.django_app.demo.urls"
ASGI_APPLICATION = "agentstream.django_app.demo.asgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"
LOGIN_URL = "/admin/login/"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "agentstream.django_app",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
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
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}


def _database(url: str | None) -> dict[str, object]:
    if not url:
        DEMO_DIR.mkdir(parents=True, exist_ok=True)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DEMO_DIR / "agentstream.sqlite3"),
            # WAL: the projector writes while the API reads, without "database is locked"
            "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;", "timeout": 20},
        }
    parsed = urlparse(url)
    if parsed.scheme not in ("postgres", "postgresql"):
        # a ConfigurationError is one line from `agentstream`; the scheme only: URLs hold passwords
        raise ConfigurationError(
            f"DATABASE_URL is a {parsed.scheme or 'schemeless'} URL; use postgres://user:password@host:port/name "
            "(the bundled project's SQLite is for `agentstream demo`, with DATABASE_URL unset)"
        )
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parsed.path.lstrip("/") or "postgres",
        "USER": unquote(parsed.username or "postgres"),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": parsed.hostname or "127.0.0.1",
        "PORT": str(parsed.port or 5432),
        # 0, not persistent: under ASGI every request runs in a thread of its own, so a persistent
        # connection is never reused and lingers until garbage collection (the load test reached
        # 80 connections). The projector's connection lives in its own thread either way.
        "CONN_MAX_AGE": 0,
    }


DATABASES = {"default": _database(os.environ.get("DATABASE_URL"))}

_runtime = Settings.from_env(os.environ)
AGENTSTREAM = {
    key: getattr(_runtime, key)
    for key in Settings.names()
    if f"AGENTSTREAM_{key}" in os.environ or (key == "REDIS_URL" and "REDIS_URL" in os.environ)
}
AGENTSTREAM.setdefault("REDIS_URL", "fakeredis://agentstream-demo")
AGENTSTREAM.setdefault("RUNTIME_REGISTRY", ("agentstream.django_app.demo.agents:register",))
# OpenAI when a key is there; otherwise the fake provider streams a scripted reply.
AGENTSTREAM.setdefault("MODEL_PROVIDER", "openai" if os.environ.get("OPENAI_API_KEY") else "fake")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "agentstream": {"handlers": ["console"], "level": os.environ.get("AGENTSTREAM_LOG_LEVEL", "INFO")}
    },
}
