from __future__ import annotations

from django.urls import URLPattern, URLResolver, include, path

from tests.sse_page import sse_page

urlpatterns: list[URLPattern | URLResolver] = [
    path("api/agents/", include("agentstream.django_app.urls")),
    path("sse-page/", sse_page),  # the browser test's page
]

from agentstream.django_app.metrics import metrics_view  # noqa: E402

urlpatterns.append(path("metrics", metrics_view))
