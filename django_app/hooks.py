"""The seed's policy hooks, loaded from settings by import path.

* ``AUTHZ_HOOK(user, action, data) -> bool``: False answers 403. Actions: ``create_run``,
  ``cancel_run``, ``create_conversation``, ``update_conversation``, ``delete_conversation``.
* ``QUOTA_HOOK(user, agent_key) -> bool``: False answers 429 (on ``create_run``).

Two actions decide who may look past the user-level events of a run they can read:
``view_debug_events`` (``?include_debug=true``: tool calls and results, retries) and
``view_internal_events`` (``?include_all=true``: checkpoints, queue and worker events), asked
with ``{"run_id": ...}``. Without ``AUTHZ_HOOK`` only staff users may (``DEBUG_MODE`` shows
everyone the debug ones).

``user`` is ``request.user``: for an anonymous session an ``AnonymousUser`` whose
``anonymous_session`` (``.id``; ``.obj``, the ``ANONYMOUS_SESSION_MODEL`` row) tells sessions
apart, e.g. to give each its own quota. A hook may also raise a DRF exception of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from agentstream.core.settings import load_callable
from agentstream.django_app.conf import runtime_settings


@cache
def _load(path: str, setting: str) -> Callable[..., Any]:
    return load_callable(path, setting)


def authz_hook() -> Callable[[Any, str, Any], bool] | None:
    path = runtime_settings().AUTHZ_HOOK
    return _load(path, "AUTHZ_HOOK") if path else None


def quota_hook() -> Callable[[Any, str], bool] | None:
    path = runtime_settings().QUOTA_HOOK
    return _load(path, "QUOTA_HOOK") if path else None


def authorize(user: Any, action: str, data: Any) -> bool:
    hook = authz_hook()
    return True if hook is None else bool(hook(user, action, data))


def may_view(user: Any, action: str, run_id: str) -> bool:
    """``view_debug_events`` / ``view_internal_events``: AUTHZ_HOOK's answer, else staff only
    (internal events hold an agent's checkpoints, which its end users should not read)."""
    hook = authz_hook()
    if hook is not None:
        return bool(hook(user, action, {"run_id": run_id}))
    return bool(getattr(user, "is_staff", False))


def within_quota(user: Any, agent_key: str) -> bool:
    hook = quota_hook()
    return True if hook is None else bool(hook(user, agent_key))
