"""Who may call the API at all; who may see WHAT is ownership (every query filters by owner)."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from agentstream.django_app.api.authentication import owner_of


class IsAuthenticatedOrAnonymousSession(BasePermission):
    message = "authenticate, or send an anonymous session token (X-Anonymous-Token)"

    def has_permission(self, request: Request, view: Any) -> bool:
        return owner_of(request) is not None
