"""The runtime's settings inside Django: ``settings.AGENTSTREAM`` parsed once into ``Settings``."""

from __future__ import annotations

from functools import cache

from django.conf import settings as django_settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from agentstream.core.settings import Settings


@cache
def runtime_settings() -> Settings:
    """The parsed ``AGENTSTREAM`` dict; raises ``ConfigurationError`` naming a bad key."""
    return Settings.from_mapping(getattr(django_settings, "AGENTSTREAM", {}))


@receiver(setting_changed)
def _reset(setting: str, **_: object) -> None:
    # override_settings(AGENTSTREAM=...) in tests takes effect at once
    if setting == "AGENTSTREAM":
        runtime_settings.cache_clear()
