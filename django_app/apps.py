from __future__ import annotations

from django.apps import AppConfig


class AgentStreamConfig(AppConfig):
    name = "agentstream.django_app"
    label = "agentstream"
    verbose_name = "Agent runs"
    default_auto_field = "django.db.models.BigAutoField"
