"""Mount with ``path("api/agents/", include("agentstream.django_app.urls"))``.

The default viewsets here use session and anonymous-token authentication; for your own, subclass
``BaseAgentRunViewSet`` / ``BaseAgentConversationViewSet`` and route them the same way.
"""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path
from drf_spectacular.views import SpectacularAPIView
from rest_framework.routers import DefaultRouter

from agentstream.django_app.api import BaseAgentConversationViewSet, BaseAgentRunViewSet
from agentstream.django_app.api.notfound import unknown_path_pattern
from agentstream.django_app.api.schema import ENUM_NAME_OVERRIDES
from agentstream.django_app.api.sessions import AnonymousSessionViewSet
from agentstream.django_app.api.stores import (
    BaseAgentKnowledgeViewSet,
    BaseAgentMemoryViewSet,
    BaseAgentPreferenceViewSet,
    BaseAgentTaskViewSet,
)


class AgentRunViewSet(BaseAgentRunViewSet):
    pass


class AgentConversationViewSet(BaseAgentConversationViewSet):
    pass


class AgentMemoryViewSet(BaseAgentMemoryViewSet):
    pass


class AgentPreferenceViewSet(BaseAgentPreferenceViewSet):
    pass


class AgentTaskViewSet(BaseAgentTaskViewSet):
    pass


class AgentKnowledgeViewSet(BaseAgentKnowledgeViewSet):
    pass


router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.include_format_suffixes = False  # runs/{id}.json: the views answer JSON without it
router.register("runs", AgentRunViewSet, basename="agentstream-run")
router.register("conversations", AgentConversationViewSet, basename="agentstream-conversation")
router.register("memory", AgentMemoryViewSet, basename="agentstream-memory")
router.register("preferences", AgentPreferenceViewSet, basename="agentstream-preference")
router.register("tasks", AgentTaskViewSet, basename="agentstream-task")
router.register("knowledge", AgentKnowledgeViewSet, basename="agentstream-knowledge")
router.register("anonymous-session", AnonymousSessionViewSet, basename="agentstream-anonymous-session")

urlpatterns: list[URLPattern | URLResolver] = [
    path(
        "schema/",
        SpectacularAPIView.as_view(
            custom_settings={
                "TITLE": "agentstream",
                "DESCRIPTION": "Agent runs, conversations and their event streams",
                "PREPROCESSING_HOOKS": ["agentstream.django_app.api.schema.only_agentstream"],
                "ENUM_NAME_OVERRIDES": ENUM_NAME_OVERRIDES,
            }
        ),
        name="agentstream-schema",
    ),
    *router.urls,
]
ROUTES = (*(prefix for prefix, _, _ in router.registry), "schema")
urlpatterns.append(unknown_path_pattern(ROUTES))  # last: any other path under the prefix is a JSON 404
