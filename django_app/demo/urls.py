from __future__ import annotations

from django.contrib import admin
from django.urls import URLPattern, URLResolver, include, path
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.routers import DefaultRouter

from agentstream.django_app.api import BaseAgentConversationViewSet, BaseAgentRunViewSet
from agentstream.django_app.api.authentication import AnonymousSessionAuthentication
from agentstream.django_app.api.stores import (
    BaseAgentKnowledgeViewSet,
    BaseAgentMemoryViewSet,
    BaseAgentPreferenceViewSet,
    BaseAgentTaskViewSet,
)
from agentstream.django_app.dashboard import views as dashboard
from agentstream.django_app.metrics import metrics_view

# The demo's API accepts the printed token as well (what a project does with its own viewsets).
AUTHENTICATION = (TokenAuthentication, SessionAuthentication, AnonymousSessionAuthentication)


class RunViewSet(BaseAgentRunViewSet):
    authentication_classes = AUTHENTICATION


class ConversationViewSet(BaseAgentConversationViewSet):
    authentication_classes = AUTHENTICATION


router = DefaultRouter()
router.include_root_view = False
router.register("runs", RunViewSet, basename="demo-run")
router.register("conversations", ConversationViewSet, basename="demo-conversation")
# the owner's stores answer the same token (the printed token's user is their owner)
for prefix, base in {
    "memory": BaseAgentMemoryViewSet,
    "preferences": BaseAgentPreferenceViewSet,
    "tasks": BaseAgentTaskViewSet,
    "knowledge": BaseAgentKnowledgeViewSet,
}.items():
    viewset = type(base.__name__.replace("Base", "Demo"), (base,), {"authentication_classes": AUTHENTICATION})
    router.register(prefix, viewset, basename=f"demo-{prefix}")

urlpatterns: list[URLPattern | URLResolver] = [
    path("api/agents/", include(router.urls)),
    # the rest of the app's API (schema, anonymous sessions) as shipped
    path("api/agents/", include("agentstream.django_app.urls")),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="demo-metrics"),  # Prometheus (the prometheus extra)
    # the demo logs the printed token's user in (/?token=...); then the reusable dashboard
    path("", dashboard.token_login, name="demo-dashboard"),
    path("", include("agentstream.django_app.dashboard.urls")),
]
