"""The caller's agent stores: ``memory/``, ``preferences/``, ``tasks/``, ``knowledge/`` (+ ``search/``).

Read-only, like runs: what an agent remembers changes through the agent's runs (events, so it
replays). Every query goes through ``django_app.stores.owned`` with the caller's owner: another
owner's key or id is a 404, and lists only ever hold the caller's records.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from agentstream.core.records import MAX_KEY_CHARS, StoreKind, TaskStatus, check_embedding
from agentstream.django_app.api.base import AgentViewSet
from agentstream.django_app.api.schema import extend_schema
from agentstream.django_app.stores import owned, search

MAX_DIMENSIONS = 16_384
MAX_MATCHES = 100


class KeyValueSerializer(serializers.Serializer):  # type: ignore[type-arg]
    key = serializers.CharField()
    value = serializers.JSONField(allow_null=True)
    updated_at = serializers.DateTimeField()


class TaskSerializer(serializers.Serializer):  # type: ignore[type-arg]
    task_id = serializers.CharField()
    task_list = serializers.CharField()
    title = serializers.CharField()
    status = serializers.ChoiceField(choices=[s.value for s in TaskStatus])
    priority = serializers.IntegerField()
    depends_on = serializers.ListField(child=serializers.CharField())
    notes = serializers.CharField(allow_blank=True)
    metadata = serializers.DictField()
    updated_at = serializers.DateTimeField()


class KnowledgeItemSerializer(serializers.Serializer):  # type: ignore[type-arg]
    item_id = serializers.CharField()
    kind = serializers.CharField()
    text = serializers.CharField(allow_blank=True)
    metadata = serializers.DictField()
    dimensions = serializers.IntegerField(help_text="length of the item's embedding; 0: none")
    updated_at = serializers.DateTimeField()


class KnowledgeSearchSerializer(serializers.Serializer):  # type: ignore[type-arg]
    embedding = serializers.ListField(
        child=serializers.FloatField(), min_length=1, max_length=MAX_DIMENSIONS, help_text="the query vector"
    )
    k = serializers.IntegerField(min_value=1, max_value=MAX_MATCHES, default=5)
    kind = serializers.CharField(required=False, max_length=MAX_KEY_CHARS)


class KnowledgeMatchSerializer(serializers.Serializer):  # type: ignore[type-arg]
    item = KnowledgeItemSerializer()
    score = serializers.FloatField(help_text="cosine similarity, -1..1")


class _StoreViewSet(AgentViewSet):
    kind: StoreKind
    key_field: str
    lookup_value_regex = "[^/]+"

    def rows(self) -> Any:
        return owned(self.kind, self.owner)

    def get_queryset(self) -> Any:
        if getattr(self, "swagger_fake_view", False):  # schema generation: no caller
            return None
        return self.rows()

    def one(self, key: str) -> Any:
        if "\x00" in key:  # PostgreSQL text cannot hold NUL: such a key names nothing
            raise NotFound(f"no such {self.noun}")
        row = self.rows().filter(**{self.key_field: key}).first()
        if row is None:
            raise NotFound(f"no such {self.noun} {key[:64]!r}")
        return row

    def text_filter(self, rows: Any, request: Request, name: str, column: str) -> Any:
        value = request.query_params.get(name)
        if value is None:
            return rows
        return rows.none() if "\x00" in value else rows.filter(**{column: value})

    def page(self, rows: Any, serializer: type[serializers.Serializer]) -> Response:  # type: ignore[type-arg]
        found = self.paginate_queryset(rows)
        data = serializer(found if found is not None else list(rows), many=True).data
        return self.get_paginated_response(data) if found is not None else Response(data)


class _KeyValueViewSet(_StoreViewSet):
    key_field = "key"
    serializer_class = KeyValueSerializer

    @extend_schema(responses=KeyValueSerializer(many=True))
    def list(self, request: Request) -> Response:
        return self.page(self.rows().order_by("key"), KeyValueSerializer)

    @extend_schema(responses=KeyValueSerializer)
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(KeyValueSerializer(self.one(pk)).data)


class BaseAgentMemoryViewSet(_KeyValueViewSet):
    """``memory/``: what the caller's agents remember (``ctx.memory``)."""

    kind = StoreKind.MEMORY
    noun = "memory key"


class BaseAgentPreferenceViewSet(_KeyValueViewSet):
    """``preferences/``: the caller's preferences as agents stored them (``ctx.preferences``)."""

    kind = StoreKind.PREFERENCE
    noun = "preference"


class BaseAgentTaskViewSet(_StoreViewSet):
    """``tasks/``: the caller's task lists (``ctx.tasks``), highest priority first."""

    kind = StoreKind.TASK
    key_field = "task_id"
    noun = "task"
    serializer_class = TaskSerializer

    @extend_schema(
        responses=TaskSerializer(many=True),
        parameters=[
            OpenApiParameter("task_list", OpenApiTypes.STR),
            OpenApiParameter("status", OpenApiTypes.STR, enum=[s.value for s in TaskStatus]),
        ],
    )
    def list(self, request: Request) -> Response:
        rows = self.text_filter(self.rows(), request, "task_list", "task_list")
        wanted = request.query_params.get("status")
        if wanted is not None:
            if wanted not in {s.value for s in TaskStatus}:
                raise serializers.ValidationError(
                    {"status": f"one of {', '.join(s.value for s in TaskStatus)}"}
                )
            rows = rows.filter(status=wanted)
        return self.page(rows.order_by("-priority", "task_id"), TaskSerializer)

    @extend_schema(responses=TaskSerializer)
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(TaskSerializer(self.one(pk)).data)


class BaseAgentKnowledgeViewSet(_StoreViewSet):
    """``knowledge/``: facts, summaries and documents of the caller's agents; ``search/`` ranks
    them by cosine similarity to a vector (in the database)."""

    kind = StoreKind.KNOWLEDGE
    key_field = "item_id"
    noun = "knowledge item"
    serializer_class = KnowledgeItemSerializer

    def rows(self) -> Any:
        return super().rows().defer("embedding")

    @extend_schema(
        responses=KnowledgeItemSerializer(many=True), parameters=[OpenApiParameter("kind", OpenApiTypes.STR)]
    )
    def list(self, request: Request) -> Response:
        rows = self.text_filter(self.rows(), request, "kind", "kind")
        return self.page(rows.order_by("item_id"), KnowledgeItemSerializer)

    @extend_schema(responses=KnowledgeItemSerializer)
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(KnowledgeItemSerializer(self.one(pk)).data)

    @extend_schema(request=KnowledgeSearchSerializer, responses=KnowledgeMatchSerializer(many=True))
    @action(detail=False, methods=["post"], pagination_class=None)
    def search(self, request: Request) -> Response:
        query = KnowledgeSearchSerializer(data=request.data)
        query.is_valid(raise_exception=True)
        vector = check_embedding(query.validated_data["embedding"])
        assert vector is not None
        kind = query.validated_data.get("kind")
        if kind is not None and "\x00" in kind:
            return Response([])  # no item's kind holds a NUL
        matches = search(self.owner, vector, k=query.validated_data["k"], kind=kind)
        rows = {r.item_id: r for r in self.rows().filter(item_id__in=[m.record.key for m in matches])}
        data = [{"item": rows[m.record.key], "score": m.score} for m in matches if m.record.key in rows]
        return Response(KnowledgeMatchSerializer(data, many=True).data)
