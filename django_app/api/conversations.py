"""``conversations/``: create, list, retrieve, rename / metadata (PATCH), delete, messages, and
branching: ``edit/`` (edit a user message or regenerate its answer: a new run on a new branch)
and ``switch-branch/`` (a ``conversation.branch_switched`` event).

Every change is an event (``conversation.*``) written by the store and projected; answers after a
write come from what was written, so they never wait for the projector.
"""

from __future__ import annotations

from typing import Any

from rest_framework import status
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from agentstream.django_app import hooks
from agentstream.django_app.api.agent_keys import known_agent_keys
from agentstream.django_app.api.base import AgentViewSet
from agentstream.django_app.api.reads import conversation_from_row, conversation_read
from agentstream.django_app.api.runs import submit_run
from agentstream.django_app.api.schema import extend_schema
from agentstream.django_app.api.serializers import (
    ConversationCreateSerializer,
    ConversationSerializer,
    ConversationUpdateSerializer,
    EditMessageSerializer,
    MessagesSerializer,
    RunSerializer,
    SwitchBranchSerializer,
)
from agentstream.django_app.api.snapshots import conversation_snapshot
from agentstream.django_app.models import Conversation
from agentstream.projections.history import ROOT, Tree, conversation_tree, link


class BaseAgentConversationViewSet(AgentViewSet):
    """Conversations of the caller. Subclass it to set authentication and permissions."""

    noun = "conversation"
    serializer_class = ConversationSerializer
    create_serializer_class = ConversationCreateSerializer

    def get_queryset(self) -> Any:
        if getattr(self, "swagger_fake_view", False):  # schema generation: no caller
            return Conversation.objects.none()
        return Conversation.objects.filter(owner=self.owner, deleted_at__isnull=True).order_by(
            "-created_at", "-id"
        )

    def _current(self, conversation_id: str) -> dict[str, Any]:
        """The conversation as it is now: its row, completed from its Redis state where the
        projector has not caught up (a create or an update reads back as written at once)."""
        owner = self.owner
        store = self.backend.store
        state = self.backend.call(lambda: conversation_snapshot(store, conversation_id))
        row = Conversation.objects.filter(id=conversation_id, owner=owner).first()
        if state is not None and (state.get("owner") != owner or state.get("deleted") == "1"):
            raise NotFound(f"no such conversation {conversation_id!r}")
        if (row is None and state is None) or (row is not None and row.deleted_at is not None):
            raise NotFound(f"no such conversation {conversation_id!r}")
        return conversation_read(conversation_id, row, state)

    @extend_schema(responses=ConversationSerializer(many=True))
    def list(self, request: Request) -> Response:
        queryset = self.get_queryset()
        page = self.paginate_queryset(queryset)
        rows = page if page is not None else list(queryset)
        data = ConversationSerializer([conversation_from_row(r) for r in rows], many=True).data
        return self.get_paginated_response(data) if page is not None else Response(data)

    @extend_schema(request=ConversationCreateSerializer, responses={201: ConversationSerializer})
    def create(self, request: Request) -> Response:
        owner = self.owner
        backend = self.backend
        serializer = ConversationCreateSerializer(
            data=request.data, known_agent_keys=lambda: known_agent_keys(backend)
        )
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if not hooks.authorize(request.user, "create_conversation", data):
            raise PermissionDenied("AUTHZ_HOOK refused to create this conversation")
        store = self.backend.store
        conversation_id = self.backend.call(
            lambda: store.create_conversation(
                owner, agent_key=data["agent_key"], title=data["title"], metadata=data["metadata"]
            )
        )
        # read back, so its times are the event's (Redis's clock), as every later read has them
        return Response(
            ConversationSerializer(self._current(conversation_id)).data, status=status.HTTP_201_CREATED
        )

    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        return Response(ConversationSerializer(self._current(self.object_id())).data)

    @extend_schema(request=ConversationUpdateSerializer, responses=ConversationSerializer)
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        conversation_id = self.object_id()
        owner = self.owner
        serializer = ConversationUpdateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if not hooks.authorize(request.user, "update_conversation", {"id": conversation_id, **data}):
            raise PermissionDenied("AUTHZ_HOOK refused to change this conversation")
        store = self.backend.store
        self.backend.call(
            lambda: store.update_conversation(
                conversation_id, owner, title=data.get("title"), metadata=data.get("metadata")
            )
        )
        return Response(ConversationSerializer(self._current(conversation_id)).data)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, pk: str | None = None) -> Response:
        conversation_id = self.object_id()
        owner = self.owner
        if not hooks.authorize(request.user, "delete_conversation", {"id": conversation_id}):
            raise PermissionDenied("AUTHZ_HOOK refused to delete this conversation")
        store = self.backend.store
        self.backend.call(lambda: store.delete_conversation(conversation_id, owner))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(responses=MessagesSerializer)
    @action(detail=True, methods=["get"])
    def messages(self, request: Request, pk: str | None = None) -> Response:
        conversation_id = self.object_id()
        self._current(conversation_id)  # 404 unless it is the caller's and not deleted
        row = Conversation.objects.filter(id=conversation_id, owner=self.owner).first()
        return Response(MessagesSerializer(self._messages(conversation_id, row)).data)

    def _messages(
        self, conversation_id: str, row: Conversation | None, tree: Tree | None = None
    ) -> dict[str, Any]:
        if tree is None:
            tree = conversation_tree(row) if row is not None else Tree([], None)
        branches = [
            {"branch_id": branch, "run_ids": [n.run_id for n in nodes], "created_at": nodes[0].created_at}
            for branch, nodes in tree.branches().items()
        ]
        return {
            "conversation_id": conversation_id,
            "messages": tree.path(),
            "active_branch_id": tree.active_branch_id,
            "branches": branches,
        }

    @extend_schema(request=SwitchBranchSerializer, responses=MessagesSerializer)
    @action(detail=True, methods=["post"], url_path="switch-branch")
    def switch_branch(self, request: Request, pk: str | None = None) -> Response:
        conversation_id = self.object_id()
        self._current(conversation_id)
        serializer = SwitchBranchSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        branch_id = serializer.validated_data["branch_id"]
        row = Conversation.objects.filter(id=conversation_id, owner=self.owner).first()
        tree = conversation_tree(row) if row is not None else Tree([], None)
        if branch_id not in tree.branches():
            raise ValidationError({"branch_id": f"no branch {branch_id[:64]!r} in this conversation"})
        if not hooks.authorize(
            request.user, "switch_branch", {"id": conversation_id, "branch_id": branch_id}
        ):
            raise PermissionDenied("AUTHZ_HOOK refused to switch this conversation's branch")
        owner = self.owner
        store = self.backend.store
        self.backend.call(lambda: store.switch_branch(conversation_id, owner, branch_id))
        shown = link(tree.runs, set(), branch_id, None)  # what the projector will show once it applies it
        return Response(MessagesSerializer(self._messages(conversation_id, row, shown)).data)

    @extend_schema(request=EditMessageSerializer, responses={201: RunSerializer})
    @action(detail=True, methods=["post"])
    def edit(self, request: Request, pk: str | None = None) -> Response:
        """Edit a user message (with ``content``) or regenerate the answer to it (without)."""
        conversation_id = self.object_id()
        current = self._current(conversation_id)
        serializer = EditMessageSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        row = Conversation.objects.filter(id=conversation_id, owner=self.owner).first()
        tree = conversation_tree(row) if row is not None else Tree([], None)
        target = self._user_message(tree, data["message_id"])
        content = data["content"] if "content" in data else target["message"].get("content")
        body = {
            "agent_key": data.get("agent_key") or current.get("agent_key") or "",
            "conversation_id": conversation_id,
            "messages": [{**target["message"], "role": "user", "content": content}],
            "params": data["params"],
            "metadata": data["metadata"],
            "parent_message_id": target["parent"] or ROOT,
            "idempotency_key": data["idempotency_key"],
        }
        return submit_run(self, request, body)  # the runs endpoint's own checks and hooks

    @staticmethod
    def _user_message(tree: Tree, message_id: str) -> dict[str, Any]:
        """The user message to edit: ``message_id`` itself, or the one an assistant message answers."""
        by_run = {n.run_id: n for n in tree.runs}
        run_id, _, raw = message_id.rpartition(":")
        node = by_run.get(run_id)
        n = int(raw)
        if node is None or n >= len(node.messages):
            raise ValidationError({"message_id": f"no message {message_id!r} in this conversation"})
        while n >= 0 and node.messages[n].get("role") != "user":
            n -= 1
        if n < 0:
            raise ValidationError({"message_id": "no user message to edit or regenerate at or before it"})
        parent = node.message_id(n - 1) if n else node.follows
        return {"message": node.messages[n], "parent": parent}
