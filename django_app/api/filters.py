"""Query filters of the run list: ``status``, ``agent_key``, ``conversation`` (or
``conversation_id``), validated: 400."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework.exceptions import ValidationError

from agentstream.core.state import RunStatus
from agentstream.django_app.models import Run

RUN_FILTERS = [
    OpenApiParameter("status", OpenApiTypes.STR, enum=[s.value for s in RunStatus]),
    OpenApiParameter("agent_key", OpenApiTypes.STR),
    OpenApiParameter("conversation", OpenApiTypes.UUID, description="also spelled conversation_id"),
]


def filter_runs(queryset: QuerySet[Run], params: Mapping[str, str]) -> QuerySet[Run]:
    status = params.get("status")
    if status:
        if status not in RunStatus.__members__.values():
            choices = ", ".join(s.value for s in RunStatus)
            raise ValidationError({"status": [f"unknown status {status!r}; use one of {choices}"]})
        queryset = queryset.filter(status=status)
    agent_key = params.get("agent_key")
    if agent_key:
        # PostgreSQL text cannot hold NUL: no agent key has one, so nothing matches
        queryset = queryset.none() if "\x00" in agent_key else queryset.filter(agent_key=agent_key)
    # ``conversation_id`` is the field's name on a run: the filter takes it too
    conversation = params.get("conversation") or params.get("conversation_id")
    if conversation:
        try:
            queryset = queryset.filter(conversation_id=uuid.UUID(conversation))
        except ValueError:
            raise ValidationError({"conversation": ["must be a conversation id (a UUID)"]}) from None
    return queryset
