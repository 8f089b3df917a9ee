"""System check: every ``RUNTIME_REGISTRY`` entry and ``agentstream.runtimes`` entry point loads.

A registration that fails is an error of ``manage.py check`` (and of every command that runs the
checks, ``runagent`` and ``runserver`` included) with the traceback in its hint, never a log line.
"""

from __future__ import annotations

from typing import Any

from django.core import checks

from agentstream.core.errors import ConfigurationError


def check_runtime_registry(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from agentstream.consumers.registry import RuntimeRegistry
    from agentstream.django_app.conf import runtime_settings

    try:
        settings = runtime_settings()
    except ConfigurationError as exc:
        return [checks.Error(str(exc), hint="fix settings.AGENTSTREAM", id="agentstream.E002")]
    registry = RuntimeRegistry()  # a throwaway: the check must not change what workers serve
    registry.discover(settings.RUNTIME_REGISTRY)
    return [
        checks.Error(
            f"could not register agent runtimes from {error.source}: {error.message}",
            hint=error.traceback,
            obj="AGENTSTREAM['RUNTIME_REGISTRY']",
            id="agentstream.E001",
        )
        for error in registry.errors
    ]
