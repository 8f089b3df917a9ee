"""System checks: ``settings.AGENTSTREAM`` parses and everything it names loads.

* ``agentstream.E001``: a ``RUNTIME_REGISTRY`` entry or ``agentstream.runtimes`` entry point that
  fails to register, with the traceback in its hint.
* ``agentstream.E002``: the dict itself is invalid (an unknown key, a value of the wrong type).
* ``agentstream.E003``: a setting names something that is not there: a hook or ``PROJECTIONS``
  entry that does not import, an ``ANONYMOUS_SESSION_MODEL`` that is not an installed model, a
  ``MODEL_PROVIDER`` nobody registered, a ``REDIS_URL`` of a scheme no client speaks.

They are errors of ``manage.py check`` and of every command that runs the checks (``runagent``,
``runprojector``, ``runserver``, ``migrate``), so a typo stops the deployment at start-up instead
of answering 500 on the first request or failing every run.
"""

from __future__ import annotations

from typing import Any

from django.core import checks

from agentstream.core.errors import ConfigurationError
from agentstream.core.settings import Settings, load_callable

REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "fakeredis")
HOOKS = ("AUTHZ_HOOK", "QUOTA_HOOK", "RUN_COMPLETED_HOOK")


def check_runtime_registry(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from agentstream.consumers.registry import RuntimeRegistry
    from agentstream.django_app.conf import runtime_settings

    try:
        settings = runtime_settings()
    except ConfigurationError as exc:
        return [checks.Error(str(exc), hint="fix settings.AGENTSTREAM", id="agentstream.E002")]
    registry = RuntimeRegistry()  # a throwaway: the check must not change what workers serve
    registry.discover(settings.RUNTIME_REGISTRY)
    found: list[checks.CheckMessage] = [
        checks.Error(
            f"could not register agent runtimes from {error.source}: {error.message}",
            hint=error.traceback,
            obj="AGENTSTREAM['RUNTIME_REGISTRY']",
            id="agentstream.E001",
        )
        for error in registry.errors
    ]
    # after discovery: an agents module may register_provider() its own LLM provider
    return found + [
        checks.Error(message, hint="fix settings.AGENTSTREAM", id="agentstream.E003")
        for message in dict.fromkeys(named_things_missing(settings))  # PROJECTIONS loads the hook too
    ]


def named_things_missing(settings: Settings) -> list[str]:
    """One line per setting that names something this process cannot find."""
    from agentstream.consumers.llm.config import PROVIDERS
    from agentstream.projections.projection import load_projections

    missing: list[str] = []
    for name in HOOKS:
        path = getattr(settings, name)
        if path:
            try:
                load_callable(path, name)
            except ConfigurationError as exc:
                missing.append(str(exc))
    try:
        load_projections(settings)
    except ConfigurationError as exc:
        missing.append(str(exc))
    if settings.ANONYMOUS_SESSION_MODEL:
        from agentstream.django_app.api.authentication import session_model

        try:
            session_model()
        except ConfigurationError as exc:
            missing.append(str(exc))
    if settings.MODEL_PROVIDER.lower() not in PROVIDERS:
        missing.append(
            f"MODEL_PROVIDER = {settings.MODEL_PROVIDER!r} is not a provider; use one of "
            f"{', '.join(sorted(PROVIDERS))}, or register_provider() your own in a RUNTIME_REGISTRY module"
        )
    scheme = settings.REDIS_URL.split("://", 1)[0].lower() if "://" in settings.REDIS_URL else ""
    if scheme not in REDIS_SCHEMES:
        # the scheme only: a URL holds a password
        missing.append(
            f"REDIS_URL is a {scheme or 'schemeless'} URL; use one of "
            f"{', '.join(s + '://' for s in REDIS_SCHEMES)}"
        )
    return missing
