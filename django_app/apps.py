from __future__ import annotations

from django.apps import AppConfig


class AgentStreamConfig(AppConfig):
    name = "agentstream.django_app"
    label = "agentstream"
    verbose_name = "Agent runs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.core import checks

        from agentstream.django_app.checks import check_runtime_registry

        checks.register(check_runtime_registry, "agentstream")
