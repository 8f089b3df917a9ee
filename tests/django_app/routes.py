"""Every route of ``agentstream.django_app.urls``, read from the URLconf itself: tests that must
cover every endpoint enumerate these, so a new endpoint cannot be forgotten."""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "/api/agents/"
UNSAFE = ("post", "put", "patch", "delete")


@dataclass(frozen=True)
class Route:
    regex: str  # as the router wrote it, e.g. ^runs/(?P<pk>[^/.]+)/cancel/$
    viewset: str  # the viewset class's name
    actions: tuple[tuple[str, str], ...]  # (http method, viewset action)

    @property
    def detail(self) -> bool:
        return "(?P<pk>" in self.regex

    def path(self, pk: str = "") -> str:
        body = re.sub(r"\(\?P<pk>[^)]*\)", pk, self.regex).lstrip("^").rstrip("$")
        return PREFIX + body.replace("\\", "")

    def name(self, method: str) -> str:
        return f"{method.upper()} {self.regex.lstrip('^').rstrip('$')}"


def routes() -> list[Route]:
    from django.urls import URLPattern

    from agentstream.django_app.urls import urlpatterns

    out = []
    for pattern in urlpatterns:
        actions = getattr(getattr(pattern, "callback", None), "actions", None)
        if not isinstance(pattern, URLPattern) or not actions:
            continue  # the schema view
        regex = pattern.pattern.regex.pattern
        if "(?P<format>" in regex:
            continue  # the router's format-suffix twins
        viewset = pattern.callback.cls.__name__  # type: ignore[attr-defined]
        # DRF adds "head" to a view's actions on its first call: leave it out, or the list changes
        out.append(Route(regex, viewset, tuple(sorted((m, a) for m, a in actions.items() if m != "head"))))
    return out


def unsafe_operations() -> list[tuple[Route, str, str]]:
    """(route, http method, action) of every operation that changes something."""
    return [(r, m, a) for r in routes() for m, a in r.actions if m in UNSAFE]


def operations() -> list[tuple[Route, str, str]]:
    return [(r, m, a) for r in routes() for m, a in r.actions]
