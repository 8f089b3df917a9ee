"""A project that mounts the API under ``api/`` and lists its own API views under the same
prefix after the include (the order a project may well write)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, URLResolver, include, path, re_path


def mine(request: HttpRequest, **kwargs: str) -> HttpResponse:
    return HttpResponse("the project's own api")


urlpatterns: list[URLPattern | URLResolver] = [
    path("api/", include("agentstream.django_app.urls")),
    path("api/", include([path("orders/", mine, name="orders")])),
    path("api/billing/", mine, name="billing"),
    re_path(r"^api/legacy/$", mine, name="legacy"),
    path("<slug:page>/", mine, name="page"),
]

# the same API under a regex prefix, the project's own view after it
regex_prefix: list[URLPattern | URLResolver] = [
    re_path(r"^v2/", include("agentstream.django_app.urls")),
    path("v2/orders/", mine, name="v2-orders"),
]
