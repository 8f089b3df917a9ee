"""Who is calling: a Django user, or an anonymous session proven by a token.

Tokens come in the ``X-Anonymous-Token`` header, or the ``anonymous_token`` query parameter
(EventSource cannot set headers). Without ``ANONYMOUS_SESSION_MODEL`` a token is a signed,
timestamped session id that ``POST anonymous-session/`` issues (max age
``ANONYMOUS_SESSION_TTL_SECONDS``); with it, the token is looked up in that model, which has a
``token`` field and ``is_expired``. A token is never echoed back nor logged.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any

from django.apps import apps
from django.core import signing
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from agentstream.core.errors import ConfigurationError
from agentstream.core.ids import anonymous_owner, user_owner
from agentstream.django_app.conf import runtime_settings

HEADER = "X-Anonymous-Token"
QUERY_PARAM = "anonymous_token"
_SALT = "agentstream.anonymous-session"


@dataclass(frozen=True, slots=True)
class AnonymousSession:
    """The principal of an anonymous caller (``request.auth``); ``id`` names its owner."""

    id: str
    obj: Any = None  # the ANONYMOUS_SESSION_MODEL row, when that setting is used


def issue_token() -> tuple[AnonymousSession, str]:
    """A new anonymous session and its signed token (only without ANONYMOUS_SESSION_MODEL)."""
    session = AnonymousSession(secrets.token_urlsafe(16))
    return session, signing.TimestampSigner(salt=_SALT).sign(session.id)


def session_model() -> Any:
    label = runtime_settings().ANONYMOUS_SESSION_MODEL
    if not label:
        return None
    try:
        return apps.get_model(label)
    except (LookupError, ValueError) as exc:
        raise ConfigurationError(
            f"ANONYMOUS_SESSION_MODEL = {label!r} is not an installed model ({exc}); use 'app_label.Model'"
        ) from None


def resolve_token(token: str) -> AnonymousSession:
    """The session a token proves, or ``AuthenticationFailed`` (401) that never repeats the token."""
    model = session_model()
    if model is None:
        max_age = runtime_settings().ANONYMOUS_SESSION_TTL_SECONDS
        try:
            session_id = signing.TimestampSigner(salt=_SALT).unsign(token, max_age=max_age)
        except signing.SignatureExpired:
            raise AuthenticationFailed(
                "the anonymous session has expired; create a new one with POST anonymous-session/"
            ) from None
        except signing.BadSignature:
            raise AuthenticationFailed("the anonymous token is not valid") from None
        return AnonymousSession(session_id)
    # no token has a NUL or is that long; PostgreSQL text refuses NUL (a 500, not a 401)
    obj = None if "\x00" in token or len(token) > 1000 else model.objects.filter(token=token).first()
    if obj is None:
        raise AuthenticationFailed("the anonymous token is not valid")
    expired = getattr(obj, "is_expired", False)
    if callable(expired):
        expired = expired()
    if expired:
        raise AuthenticationFailed("the anonymous session has expired; start a new one")
    return AnonymousSession(str(obj.pk), obj)


def token_of(request: Request) -> str | None:
    return request.META.get("HTTP_X_ANONYMOUS_TOKEN") or request.query_params.get(QUERY_PARAM) or None


class AnonymousSessionAuthentication(BaseAuthentication):
    """``request.user`` stays anonymous (an ``AnonymousUser`` whose ``anonymous_session`` is the
    session, so AUTHZ_HOOK and QUOTA_HOOK can tell callers apart); ``request.auth`` is the
    ``AnonymousSession`` too."""

    def authenticate(self, request: Request) -> tuple[Any, AnonymousSession] | None:
        token = token_of(request)
        if not token:
            return None
        session = resolve_token(token)
        return session_user(session), session

    def authenticate_header(self, request: Request) -> str:
        return 'AnonymousToken header="X-Anonymous-Token"'


def session_user(session: AnonymousSession) -> Any:
    from django.contrib.auth.models import AnonymousUser

    user = AnonymousUser()
    user.anonymous_session = session  # type: ignore[attr-defined]
    return user


def owner_of(request: Request) -> str | None:
    """The owner string of the caller: ``user:<pk>``, ``anon:<session id>``, or None."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return user_owner(user.pk)
    if isinstance(request.auth, AnonymousSession):
        return anonymous_owner(request.auth.id)
    return None


_TOKEN_IN_TEXT = re.compile(r"(anonymous(?:_|%5f)token=)[^&\s\"']+", re.IGNORECASE)


class RedactTokenFilter(logging.Filter):
    """Add to the access-log handler of your server: hides ``anonymous_token=`` values."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(
                _TOKEN_IN_TEXT.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                for a in (record.args if isinstance(record.args, tuple) else (record.args,))
            )
        if isinstance(record.msg, str):
            record.msg = _TOKEN_IN_TEXT.sub(r"\1[redacted]", record.msg)
        return True
