"""The caller's agent stores: ``memory/``, ``preferences/``, ``tasks/``, ``knowledge/`` (+ ``search/``).

Every query goes through ``django_app.stores.owned`` with the caller's owner: another owner's key
or id is a 404, and lists only ever hold the caller's records. What a user may change (set or
forget a memory or preference, update or delete a task, delete a knowledge item) is an event on
the caller's own stream (``EventStore.owner_event``), applied at once with the projector's merge,
so it replays like the agents' own writes.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from agentstream.consumers.stores import now_us
from agentstream.core.events import EventType
from agentstream.core.records import (
    MAX_KEY_CHARS,
    StoreKind,
    TaskStatus,
    check_dependencies,
    check_embedding,
    check_key,
    store_payload,
    task_fields,
)
from agentstream.django_app import hooks
from agentstream.django_app.api.base import AgentViewSet
from agentstream.django_app.api.schema import extend_schema
from agentstream.django_app.api.serializers import StrictInputSerializer
from agentstream.django_app.stores import apply_events, owned, search

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


class ValueSerializer(StrictInputSerializer):
    value = serializers.JSONField(allow_null=True)


class TaskUpdateSerializer(StrictInputSerializer):
    title = serializers.CharField(required=False, max_length=10_000)
    status = serializers.ChoiceField(choices=[s.value for s in TaskStatus], required=False)
    priority = serializers.IntegerField(required=False, min_value=-(2**31), max_value=2**31 - 1)
    task_list = serializers.CharField(required=False, max_length=MAX_KEY_CHARS)
    depends_on = serializers.ListField(
        child=serializers.CharField(max_length=MAX_KEY_CHARS), required=False, max_length=1000
    )
    notes = serializers.CharField(required=False, allow_blank=True, max_length=100_000)
    metadata = serializers.DictField(required=False)


class KnowledgeItemSerializer(serializers.Serializer):  # type: ignore[type-arg]
    item_id = serializers.CharField()
    kind = serializers.CharField()
    text = serializers.CharField(allow_blank=True)
    metadata = serializers.DictField()
    dimensions = serializers.IntegerField(help_text="length of the item's embedding; 0: none")
    updated_at = serializers.DateTimeField()


class KnowledgeSearchSerializer(StrictInputSerializer):
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

    delete_type: EventType

    def record(self, event_type: EventType, key: str, **body: Any) -> None:
        """The caller's change: an event on its own stream, then merged into the table at once.

        ``AUTHZ_HOOK`` is asked first, with the action ``<set|update|delete>_<store>``
        (``set_memory``, ``delete_task``, ...) and ``{"key": ..., **body}``."""
        verb = {"set": "set", "upserted": "update", "deleted": "delete"}[event_type.split(".", 1)[1]]
        action = f"{verb}_{self.kind.value}"
        if not hooks.authorize(self.request.user, action, {"key": key, **body}):
            raise PermissionDenied(f"AUTHZ_HOOK refused to {verb} this {self.noun}")
        owner = self.owner
        payload = store_payload(self.kind, owner, check_key("a key", key), now_us(), **body)
        store = self.backend.store
        event = self.backend.call(lambda: store.owner_event(owner, event_type, payload))
        apply_events([event])

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, pk: str) -> Response:
        self.one(pk)  # 404 unless it is the caller's
        self.record(self.delete_type, pk)
        return Response(status=204)

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

    set_type: EventType

    @extend_schema(request=ValueSerializer, responses=KeyValueSerializer)
    def update(self, request: Request, pk: str) -> Response:
        """Set the value (the caller's own record: another owner's same key is never touched)."""
        if "\x00" in pk:
            raise serializers.ValidationError({"key": "must not contain NUL"})
        body = ValueSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        self.record(self.set_type, pk, value=body.validated_data["value"])
        return Response(KeyValueSerializer(self.one(pk)).data)


class BaseAgentMemoryViewSet(_KeyValueViewSet):
    """``memory/``: what the caller's agents remember (``ctx.memory``)."""

    kind = StoreKind.MEMORY
    noun = "memory key"
    set_type = EventType.MEMORY_SET
    delete_type = EventType.MEMORY_DELETED


class BaseAgentPreferenceViewSet(_KeyValueViewSet):
    """``preferences/``: the caller's preferences as agents stored them (``ctx.preferences``)."""

    kind = StoreKind.PREFERENCE
    noun = "preference"
    set_type = EventType.PREFERENCE_SET
    delete_type = EventType.PREFERENCE_DELETED


class BaseAgentTaskViewSet(_StoreViewSet):
    """``tasks/``: the caller's task lists (``ctx.tasks``), highest priority first."""

    kind = StoreKind.TASK
    key_field = "task_id"
    noun = "task"
    delete_type = EventType.TASK_DELETED
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

    @extend_schema(request=TaskUpdateSerializer, responses=TaskSerializer)
    def partial_update(self, request: Request, pk: str) -> Response:
        """Change some fields of a task (tick it off, re-prioritise it, ...)."""
        row = self.one(pk)
        body = TaskUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        current = {
            "title": row.title,
            "status": row.status,
            "priority": row.priority,
            "depends_on": row.depends_on or [],
            "task_list": row.task_list,
            "notes": row.notes,
            "metadata": row.metadata or {},
        }
        fields = task_fields(**{**current, **body.validated_data})
        if fields["depends_on"] != sorted(set(current["depends_on"])):
            graph = {t.task_id: t.depends_on or [] for t in self.rows().only("task_id", "depends_on")}
            check_dependencies(pk, fields["depends_on"], graph)
        self.record(EventType.TASK_UPSERTED, pk, **fields)
        return Response(TaskSerializer(self.one(pk)).data)


class BaseAgentKnowledgeViewSet(_StoreViewSet):
    """``knowledge/``: facts, summaries and documents of the caller's agents; ``search/`` ranks
    them by cosine similarity to a vector (in the database)."""

    kind = StoreKind.KNOWLEDGE
    key_field = "item_id"
    noun = "knowledge item"
    delete_type = EventType.KNOWLEDGE_DELETED
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
