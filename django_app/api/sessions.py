"""``POST anonymous-session/``: a signed token for a new anonymous session (no account needed)."""

from __future__ import annotations

from typing import Any

from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from agentstream.django_app.api.authentication import issue_token, session_model
from agentstream.django_app.api.base import AgentViewSet
from agentstream.django_app.api.schema import extend_schema
from agentstream.django_app.api.serializers import AnonymousSessionSerializer
from agentstream.django_app.conf import runtime_settings


class AnonymousSessionViewSet(AgentViewSet):
    authentication_classes: Any = ()
    permission_classes: Any = (AllowAny,)
    serializer_class = AnonymousSessionSerializer

    @extend_schema(request=None, responses={201: AnonymousSessionSerializer})
    def create(self, request: Request) -> Response:
        if session_model() is not None:
            raise NotFound("ANONYMOUS_SESSION_MODEL is set: anonymous sessions come from that model")
        _, token = issue_token()
        ttl = runtime_settings().ANONYMOUS_SESSION_TTL_SECONDS
        return Response({"token": token, "expires_in_s": ttl}, status=status.HTTP_201_CREATED)
