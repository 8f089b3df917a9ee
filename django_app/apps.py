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
        redact_tokens_in_access_logs()


ACCESS_LOGGERS = ("uvicorn.access",)  # its records carry the request line, query string included


def redact_tokens_in_access_logs() -> None:
    """EventSource sends the anonymous token in the query string (it cannot set headers): keep
    it out of the ASGI server's access log. Idempotent."""
    import logging

    from agentstream.django_app.api.authentication import RedactTokenFilter

    for name in ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokenFilter) for f in logger.filters):
            logger.addFilter(RedactTokenFilter())
