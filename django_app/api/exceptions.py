"""Every error of the API as ``{"error": {"code", "message", "details"}}``, from ONE handler.

::

    core NotFound                         404 not_found
    core IdempotencyConflict              409 idempotency_conflict
    core ConversationBusy                 409 conversation_busy
    core RunTerminal / IllegalTransition  409 run_terminal / illegal_transition
    core EventEncodingError               400 invalid_payload
    core ConfigurationError               500 configuration_error (the message says what to fix)
    Redis unreachable / timed out         503 redis_unavailable
    database without the agentstream      503 database_not_migrated (run ``manage.py migrate``)
      tables (PostgreSQL undefined table
      or column, SQLite "no such table")
    database OperationalError (the rest)  503 database_unavailable
    DRF errors (validation, auth, ...)    their status; code from DRF
    anything else                         500 server_error (logged, never shown)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import redis.exceptions
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import OperationalError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

from agentstream.core import errors as core
from agentstream.django_app.dberrors import is_not_migrated

log = logging.getLogger("agentstream.api")


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "payload_too_large"
    default_detail = "the request body is too large"


class QuotaExceeded(exceptions.APIException):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_code = "quota_exceeded"
    default_detail = "quota exceeded"


_CORE: list[tuple[type[Exception], int, str]] = [
    (core.NotFound, 404, "not_found"),
    (core.IdempotencyConflict, 409, "idempotency_conflict"),
    (core.ConversationBusy, 409, "conversation_busy"),
    (core.RunTerminal, 409, "run_terminal"),
    (core.IllegalTransition, 409, "illegal_transition"),
    (core.Conflict, 409, "conflict"),
    (core.EventEncodingError, 400, "invalid_payload"),
    (core.InvalidRecord, 400, "invalid_record"),
    (core.ConfigurationError, 500, "configuration_error"),
    (redis.exceptions.ConnectionError, 503, "redis_unavailable"),
    (redis.exceptions.TimeoutError, 503, "redis_unavailable"),
    (TimeoutError, 503, "redis_unavailable"),
    (OperationalError, 503, "database_unavailable"),
]

_UNAVAILABLE = {
    "redis_unavailable": "Redis is unreachable; try again shortly",
    "database_unavailable": "the database is unreachable; try again shortly",
}


NOT_MIGRATED = "the agentstream tables are missing (or out of date): run `manage.py migrate`"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details if details is not None else {}}}


def exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER for the agentstream views (set on the base viewsets)."""
    if is_not_migrated(exc):
        log.error("database_not_migrated: %s", exc)
        return Response(error_body("database_not_migrated", NOT_MIGRATED), status=503)
    for kind, status_code, code in _CORE:
        if isinstance(exc, kind):
            if status_code >= 500:
                log.error("%s: %s", code, exc)
            message = _UNAVAILABLE.get(code, str(exc))
            headers = {"Retry-After": "1"} if status_code == 503 else None
            return Response(error_body(code, message), status=status_code, headers=headers)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if isinstance(exc, exceptions.APIException):
        headers: dict[str, str] = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = str(exc.auth_header)  # type: ignore[attr-defined]
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))  # type: ignore[attr-defined]
        detail = exc.detail
        if isinstance(exc, exceptions.ValidationError):
            message = "invalid request: " + "; ".join(_flatten(detail)[:5])
            return Response(error_body("invalid", message, detail), status=exc.status_code, headers=headers)
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else getattr(exc, "default_code", "error")
        return Response(error_body(str(code), str(detail)), status=exc.status_code, headers=headers)
    log.exception("unexpected error in the agentstream API", exc_info=exc)
    return Response(error_body("server_error", "internal server error"), status=500)


def _flatten(detail: Any, path: str = "") -> list[str]:
    """``messages[0].role: This field is required.`` — each error names its field."""
    if isinstance(detail, Mapping):
        out: list[str] = []
        for key, value in detail.items():
            if key == "non_field_errors":
                name = path
            elif isinstance(key, int) or str(key).isdigit():  # a list's item (DRF keys them by index)
                name = f"{path}[{key}]"
            else:
                name = f"{path}.{key}" if path else str(key)
            out += _flatten(value, name)
        return out
    if isinstance(detail, list):
        if all(isinstance(d, str) for d in detail):
            return [f"{path}: {d}" if path else str(d) for d in detail]
        out = []
        for index, value in enumerate(detail):
            if value:
                out += _flatten(value, f"{path}[{index}]")
        return out
    return [f"{path}: {detail}" if path else str(detail)]
