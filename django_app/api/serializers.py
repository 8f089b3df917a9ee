"""Request validation and the documented response shapes (the seed's field names)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from agentstream.core.settings import POLICIES

ROLES = ("system", "developer", "user", "assistant", "tool")


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": {}}, {"type": "null"}]})
class MessageContentField(serializers.Field):  # type: ignore[type-arg]
    def to_internal_value(self, data: Any) -> Any:
        if data is None or isinstance(data, str | list):
            return data
        raise serializers.ValidationError("must be a string, a list of content parts, or null")

    def to_representation(self, value: Any) -> Any:
        return value


class MessageSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """A chat message; keys beyond ``role`` and ``content`` (tool_calls, name, ...) are kept."""

    role = serializers.ChoiceField(choices=ROLES)
    content = MessageContentField(required=False, allow_null=True)

    def to_internal_value(self, data: Any) -> Any:
        validated = super().to_internal_value(data)
        return {**data, **validated}


class StrictInputSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """A request body: a field it does not know is a 400 naming it, never silently ignored (a
    typo such as ``conversation`` for ``conversation_id`` would otherwise start the wrong run)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(str(name) for name in data if name not in self.fields)
            if unknown:
                valid = ", ".join(self.fields)
                raise serializers.ValidationError(
                    {name[:100]: [f"unknown field; valid fields: {valid}"] for name in unknown[:10]}
                )
        return super().to_internal_value(data)


class AgentKeyChecked(StrictInputSerializer):
    """A body whose ``agent_key`` must name an agent some worker or registry knows (a blank one,
    where allowed, names none)."""

    def __init__(self, *args: Any, known_agent_keys: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._known = known_agent_keys

    def validate_agent_key(self, value: str) -> str:
        known = self._known() if callable(self._known) else self._known
        if value and known is not None and value not in known:
            listing = ", ".join(sorted(known)) or "none (no runtime is registered and no worker has started)"
            raise serializers.ValidationError(f"unknown agent_key {value!r}; known agent keys: {listing}")
        return value


class RunCreateSerializer(AgentKeyChecked):
    agent_key = serializers.CharField(max_length=100)
    messages = MessageSerializer(many=True, required=False, default=list)
    conversation_id = serializers.UUIDField(required=False, allow_null=True, default=None)
    params = serializers.DictField(required=False, default=dict)
    metadata = serializers.DictField(required=False, default=dict)
    max_attempts = serializers.IntegerField(
        required=False, allow_null=True, default=None, min_value=1, max_value=100
    )
    idempotency_key = serializers.CharField(
        required=False, allow_null=True, default=None, max_length=255, allow_blank=False
    )
    run_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    multitask_strategy = serializers.ChoiceField(
        choices=POLICIES, required=False, allow_null=True, default=None
    )
    parent_message_id = serializers.RegexField(
        r"^(root|[0-9a-f-]{36}:[0-9]{1,6})$",
        required=False,
        allow_null=True,
        default=None,
        help_text="the message of the conversation this run follows (a new branch when it already has "
        "a follower); 'root' for the start; default: the branch shown",
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("parent_message_id") is not None and not attrs.get("conversation_id"):
            raise serializers.ValidationError({"parent_message_id": "only a run in a conversation has one"})
        return attrs

    def validate_idempotency_key(self, value: str | None) -> str | None:
        if value is not None and not value.isprintable():
            raise serializers.ValidationError("must be printable text")
        return value


class RunSerializer(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.UUIDField()
    conversation_id = serializers.UUIDField(allow_null=True)
    agent_key = serializers.CharField()
    status = serializers.ChoiceField(
        choices=["queued", "running", "succeeded", "failed", "cancelled", "timed_out"]
    )
    input = serializers.DictField()
    output = serializers.JSONField(allow_null=True)
    error = serializers.JSONField(allow_null=True)
    usage = serializers.DictField()
    attempt = serializers.IntegerField()
    max_attempts = serializers.IntegerField()
    idempotency_key = serializers.CharField(allow_null=True)
    metadata = serializers.DictField()
    cancel_requested_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class EventSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """An event in the SSE ``data`` shape."""

    run_id = serializers.UUIDField()
    seq = serializers.IntegerField()
    type = serializers.CharField()
    payload = serializers.DictField()
    ts = serializers.DateTimeField()
    visibility_level = serializers.ChoiceField(choices=["internal", "debug", "user"])
    ui_visible = serializers.BooleanField()


class RunWithEventsSerializer(RunSerializer):
    events = EventSerializer(many=True, required=False)
    events_truncated = serializers.BooleanField(
        required=False,
        help_text="more events follow the ones listed: read the rest from the stream (?from_seq=)",
    )


class CancelSerializer(StrictInputSerializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=1000)


class CancelResultSerializer(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=["cancelled", "cancel_requested"])
    seq = serializers.IntegerField()


class ConversationCreateSerializer(AgentKeyChecked):
    agent_key = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    title = serializers.CharField(max_length=255, required=False, allow_blank=True, default="")
    metadata = serializers.DictField(required=False, default=dict)


class ConversationUpdateSerializer(StrictInputSerializer):
    title = serializers.CharField(max_length=255, required=False, allow_blank=True)
    metadata = serializers.DictField(required=False)

    def validate(self, attrs: Mapping[str, Any]) -> Mapping[str, Any]:
        if not attrs:
            raise serializers.ValidationError("send title and/or metadata")
        return attrs


class ConversationSerializer(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.UUIDField()
    agent_key = serializers.CharField(allow_blank=True)
    title = serializers.CharField(allow_blank=True)
    metadata = serializers.DictField()
    run_count = serializers.IntegerField()
    created_at = serializers.DateTimeField(allow_null=True)
    updated_at = serializers.DateTimeField(allow_null=True)
    last_activity_at = serializers.DateTimeField(allow_null=True)


class BranchSerializer(serializers.Serializer):  # type: ignore[type-arg]
    branch_id = serializers.CharField()
    run_ids = serializers.ListField(child=serializers.UUIDField())
    created_at = serializers.DateTimeField(allow_null=True)


class MessagesSerializer(serializers.Serializer):  # type: ignore[type-arg]
    """The branch shown; every message carries ``id``, ``parent_message_id`` and ``branch_id``."""

    conversation_id = serializers.UUIDField()
    messages = serializers.ListField(child=serializers.DictField())
    active_branch_id = serializers.CharField(allow_null=True)
    branches = BranchSerializer(many=True)


class SwitchBranchSerializer(StrictInputSerializer):
    branch_id = serializers.CharField(max_length=64)


class EditMessageSerializer(StrictInputSerializer):
    """Edit a user message (``content``) or regenerate the answer to it (no ``content``): either
    way a new run, on a new branch, from the message's parent."""

    message_id = serializers.RegexField(r"^[0-9a-f-]{36}:[0-9]{1,6}$")
    content = MessageContentField(required=False)
    agent_key = serializers.CharField(max_length=100, required=False)
    params = serializers.DictField(required=False, default=dict)
    metadata = serializers.DictField(required=False, default=dict)
    idempotency_key = serializers.CharField(
        required=False, allow_null=True, default=None, max_length=255, allow_blank=False
    )


class AnonymousSessionSerializer(serializers.Serializer):  # type: ignore[type-arg]
    token = serializers.CharField()
    expires_in_s = serializers.IntegerField()


class ErrorDetailSerializer(serializers.Serializer):  # type: ignore[type-arg]
    code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.JSONField()


class ErrorSerializer(serializers.Serializer):  # type: ignore[type-arg]
    error = ErrorDetailSerializer()
