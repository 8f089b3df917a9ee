"""``runs/``: submit, list, retrieve, cancel, and the SSE stream. Append-only: no PUT/PATCH/DELETE."""

from __future__ import annotations

from typing import Any

from django.db import OperationalError
from django.urls import NoReverseMatch
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse

from agentstream.core.errors import NotFound as StoreNotFound
from agentstream.core.errors import RunTerminal
from agentstream.core.store import SubmitRequest
from agentstream.core.tracing import TRACEPARENT
from agentstream.django_app import hooks
from agentstream.django_app.api.agent_keys import known_agent_keys
from agentstream.django_app.api.base import AgentViewSet
from agentstream.django_app.api.filters import RUN_FILTERS, filter_runs
from agentstream.django_app.api.reads import (
    archived_event_data,
    in_deleted_conversation,
    run_from_row,
    run_from_state,
    state_is_ahead,
)
from agentstream.django_app.api.schema import extend_schema
from agentstream.django_app.api.serializers import (
    CancelResultSerializer,
    CancelSerializer,
    RunCreateSerializer,
    RunSerializer,
    RunWithEventsSerializer,
)
from agentstream.django_app.api.snapshots import run_snapshot
from agentstream.django_app.models import Event, Run
from agentstream.django_app.sse.framing import VisibilityFilter, event_data, sendable
from agentstream.django_app.sse.views import EventStreamRenderer, event_stream, stream_parameters

EVENTS_LIMIT = 5000  # ?events=true on one run: more than this, use the stream
EVENTS_PAGE = 1000  # stream entries or archive rows read at a time to find them

TRUE = ("1", "true", "yes", "on")


def flag(request: Request, name: str) -> bool:
    return str(request.query_params.get(name, "")).lower() in TRUE


def visibility_filter(request: Request, run_id: str) -> VisibilityFilter:
    """What the caller asked to see of ``run_id``; 403 for debug or internal events it may not
    (``hooks.may_view``)."""
    from agentstream.django_app.conf import runtime_settings

    include_all = flag(request, "include_all")
    include_debug = flag(request, "include_debug")
    debug_mode = runtime_settings().DEBUG_MODE
    if include_all and not hooks.may_view(request.user, "view_internal_events", run_id):
        raise PermissionDenied(
            "include_all shows internal events (checkpoints, queue and worker details) to staff "
            "users only: ask without it, or let AUTHZ_HOOK allow view_internal_events"
        )
    if include_debug and not debug_mode and not hooks.may_view(request.user, "view_debug_events", run_id):
        raise PermissionDenied(
            "include_debug shows debug events (tool calls and results, retries) to staff users "
            "only: ask without it, or let AUTHZ_HOOK allow view_debug_events"
        )
    return VisibilityFilter(include_debug=include_debug or debug_mode, include_all=include_all)


VISIBILITY_PARAMS = [
    OpenApiParameter(
        "include_debug", OpenApiTypes.BOOL, description="also debug-level events (staff, or AUTHZ_HOOK)"
    ),
    OpenApiParameter(
        "include_all", OpenApiTypes.BOOL, description="every event, internal ones too (staff, or AUTHZ_HOOK)"
    ),
]


class BaseAgentRunViewSet(AgentViewSet):
    """Runs of the caller. Subclass it to set authentication and permissions."""

    noun = "run"
    serializer_class = RunSerializer
    create_serializer_class = RunCreateSerializer

    def get_queryset(self) -> Any:
        if getattr(self, "swagger_fake_view", False):  # schema generation: no caller
            return Run.objects.none()
        # the runs of a deleted conversation went with it (as the seed's cascade took them)
        return (
            Run.objects.filter(owner=self.owner)
            .exclude(conversation__deleted_at__isnull=False)
            .order_by("-created_at", "-id")
        )

    # -- submit -------------------------------------------------------------------------------

    @extend_schema(
        request=RunCreateSerializer,
        responses={
            201: RunSerializer,
            200: OpenApiResponse(RunSerializer, "the run this idempotency key names"),
        },
    )
    def create(self, request: Request) -> Response:
        return submit_run(self, request, request.data)

    # -- reads --------------------------------------------------------------------------------

    @extend_schema(parameters=RUN_FILTERS, responses=RunSerializer(many=True))
    def list(self, request: Request) -> Response:
        queryset = filter_runs(self.get_queryset(), request.query_params)
        page = self.paginate_queryset(queryset)
        rows = page if page is not None else list(queryset)
        data = RunSerializer([run_from_row(r) for r in rows], many=True).data
        return self.get_paginated_response(data) if page is not None else Response(data)

    @extend_schema(
        parameters=[
            OpenApiParameter("events", OpenApiTypes.BOOL, description="include the run's events"),
            *VISIBILITY_PARAMS,
        ],
        responses=RunWithEventsSerializer,
    )
    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        run_id = self.object_id()
        owner = self.owner
        store = self.backend.store
        state, queued = self.backend.call(lambda: run_snapshot(store, run_id))
        if state is not None and state.owner != owner:
            raise NotFound(f"no such run {run_id!r}")
        try:
            row = Run.objects.filter(id=run_id, owner=owner).select_related("conversation").first()
        except OperationalError:
            if state is None:
                raise  # 503: only the database knows this run
            row = None  # the database is down: a run still in Redis is answered from its state
        if in_deleted_conversation(self.backend, state, row):
            raise NotFound(f"no such run {run_id!r} (its conversation was deleted)")
        if state_is_ahead(state, row):
            assert state is not None
            run = run_from_state(state, queued, row)
        elif row is not None:
            run = run_from_row(row)
        else:
            raise NotFound(f"no such run {run_id!r}")
        body: dict[str, Any] = dict(RunSerializer(run).data)
        if flag(request, "events"):
            events, more = self._events(
                run_id, visibility_filter(request, run_id), from_stream=state is not None
            )
            body["events"], body["events_truncated"] = events, more
        return Response(body)

    def _events(
        self, run_id: str, wanted: VisibilityFilter, *, from_stream: bool
    ) -> tuple[list[dict[str, Any]], bool]:
        """Up to EVENTS_LIMIT events the caller sees, in order, and whether more follow (the
        limit counts what is shown: hidden events, deltas, do not use it up)."""
        shown: list[dict[str, Any]] = []
        if from_stream:  # the stream has every event, deltas included, until it expires
            store = self.backend.store
            after = 0
            while True:
                page = self.backend.call(lambda after=after: store.read_run(run_id, after, EVENTS_PAGE))
                for event in page:
                    if wanted.wants(event):
                        if len(shown) == EVENTS_LIMIT:
                            return shown, True
                        shown.append({**event_data(event), "payload": sendable(event.payload)})
                if len(page) < EVENTS_PAGE:
                    return shown, False
                after = page[-1].seq
        from agentstream.django_app.api.reads import archived_as_stream_event

        rows = Event.objects.filter(run_id=run_id).order_by("seq").iterator(chunk_size=EVENTS_PAGE)
        for row in rows:
            if wanted.wants(archived_as_stream_event(row)):
                if len(shown) == EVENTS_LIMIT:
                    return shown, True
                shown.append(archived_event_data(row))
        return shown, False

    # -- cancel -------------------------------------------------------------------------------

    @extend_schema(request=CancelSerializer, responses={202: CancelResultSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        run_id = self.object_id()
        owner = self.owner
        serializer = CancelSerializer(data=request.data or {})
        serializer.is_valid(raise_exception=True)
        if not hooks.authorize(request.user, "cancel_run", {"run_id": run_id}):
            raise PermissionDenied("AUTHZ_HOOK refused to cancel this run")
        store = self.backend.store
        reason = serializer.validated_data["reason"]
        try:
            outcome = self.backend.call(lambda: store.cancel(run_id, owner=owner, reason=reason))
        except StoreNotFound:
            row = Run.objects.filter(id=run_id, owner=owner).first()
            if row is not None and row.is_terminal:  # its Redis state expired; the row remembers
                raise RunTerminal(f"run {run_id} already ended ({row.status})") from None
            raise
        result = {
            "id": run_id,
            "status": "cancelled" if outcome.cancelled else "cancel_requested",
            "seq": outcome.seq,
        }
        return Response(CancelResultSerializer(result).data, status=status.HTTP_202_ACCEPTED)

    # -- the event stream ---------------------------------------------------------------------

    @extend_schema(
        parameters=[*stream_parameters(), *VISIBILITY_PARAMS],
        responses={(200, "text/event-stream"): OpenApiTypes.STR},
    )
    @action(
        detail=True, methods=["get"], url_path="events", renderer_classes=[EventStreamRenderer, JSONRenderer]
    )
    def events(self, request: Request, pk: str | None = None) -> Any:
        run_id = self.object_id()
        return event_stream(self, request, run_id, visibility_filter(request, run_id))

    @extend_schema(
        parameters=[*stream_parameters(), *VISIBILITY_PARAMS],
        responses={(200, "text/event-stream"): OpenApiTypes.STR},
    )
    @action(
        detail=True,
        methods=["get"],
        url_path="events/stream",
        renderer_classes=[EventStreamRenderer, JSONRenderer],
    )
    def events_stream(self, request: Request, pk: str | None = None) -> Any:
        """The seed's async path: the same stream."""
        run_id = self.object_id()
        return event_stream(self, request, run_id, visibility_filter(request, run_id))


def with_trace_context(metadata: dict[str, Any], request: Any) -> dict[str, Any]:
    """The caller's W3C ``traceparent`` header rides in the run's metadata, so the worker's span
    of each attempt joins the caller's trace (agentstream.core.tracing)."""
    traceparent = request.META.get("HTTP_TRACEPARENT")
    if isinstance(traceparent, str) and traceparent and TRACEPARENT not in metadata:
        return {**metadata, TRACEPARENT: traceparent[:128]}
    return metadata


def submit_run(view: AgentViewSet, request: Request, payload: Any) -> Response:
    """Validate, authorize and submit a run (``POST runs/``, and the conversations' ``edit/``)."""
    owner = view.owner
    backend = view.backend
    serializer = RunCreateSerializer(data=payload, known_agent_keys=lambda: known_agent_keys(backend))
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    if not hooks.authorize(request.user, "create_run", data):
        raise PermissionDenied("AUTHZ_HOOK refused to create this run")
    if not hooks.within_quota(request.user, data["agent_key"]):
        from agentstream.django_app.api.exceptions import QuotaExceeded

        raise QuotaExceeded(f"quota exceeded for agent {data['agent_key']!r}; try again later")
    run_at = data["run_at"]
    parent = data["parent_message_id"]
    if parent:
        _check_parent(backend, owner, str(data["conversation_id"]), parent)
    shown = None if parent else _shown_branch_end(owner, data["conversation_id"])
    submit = SubmitRequest(
        agent_key=data["agent_key"],
        owner=owner,
        messages=data["messages"],
        params=data["params"],
        metadata=with_trace_context(data["metadata"], request),
        conversation_id=str(data["conversation_id"]) if data["conversation_id"] else None,
        idempotency_key=data["idempotency_key"],
        max_attempts=data["max_attempts"],
        run_at_ms=int(run_at.timestamp() * 1000) if run_at else None,
        policy=data["multitask_strategy"],
        parent_message_id=parent or shown,
        parent_is_derived=shown is not None,
    )
    store = backend.store
    result = backend.call(lambda: store.submit(submit))
    state, queued = backend.call(lambda: run_snapshot(store, result.run_id))
    if state is None:  # expired between the two calls: only an idempotent replay can see this
        raise NotFound(f"run {result.run_id} has expired")
    body = RunSerializer(run_from_state(state, queued, None)).data
    location = _location(view, request, result.run_id)
    return Response(
        body,
        status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK,
        headers={"Location": location} if location else None,
    )


def _check_parent(backend: Any, owner: str, conversation_id: str, parent: str) -> None:
    """``parent_message_id`` names a message of a run of this conversation (or ``root``): a
    parent the tree cannot find would silently continue the newest branch instead."""
    from agentstream.projections.history import ROOT

    if parent == ROOT:
        return
    run_id = parent.rpartition(":")[0]
    store = backend.store
    state = backend.call(lambda: store.run_state(run_id))
    if state is not None:
        found = state.owner == owner and state.conversation_id == conversation_id
    else:  # expired from Redis: the read-model remembers
        found = Run.objects.filter(id=run_id, owner=owner, conversation_id=conversation_id).exists()
    if not found:
        raise ValidationError(
            {"parent_message_id": [f"no message {parent!r} in conversation {conversation_id}"]}
        )


def _shown_branch_end(owner: str, conversation_id: Any) -> str | None:
    """After a branch switch, a run without a parent continues the branch shown (its last
    message), not the newest run. Only conversations that switched cost a query."""
    if not conversation_id:
        return None
    from agentstream.django_app.models import Conversation
    from agentstream.projections.history import conversation_tree

    try:
        row = Conversation.objects.filter(
            id=conversation_id, owner=owner, active_branch_id__isnull=False
        ).first()
        if row is None:
            return None
        later = Run.objects.filter(conversation_id=conversation_id, created_at__gt=row.active_branch_at)
        if row.active_branch_at is None or later.exists():
            return None  # a run after the switch shows its own branch: follow the newest run
        path = conversation_tree(row).path()
    except OperationalError:  # the database is down: runs go on (on the newest branch)
        return None
    return str(path[-1]["id"]) if path else None


def _location(view: AgentViewSet, request: Request, run_id: str) -> str | None:
    """The run's URL: reversed by name, else (a router with another basename) next to the runs
    list this request was made to. None when neither is known (``edit/`` on such a router)."""
    name = (
        f"{request.resolver_match.namespace}:"
        if request.resolver_match and request.resolver_match.namespace
        else ""
    )
    try:
        return str(reverse(f"{name}agentstream-run-detail", kwargs={"pk": run_id}, request=request))
    except NoReverseMatch:
        pass
    if isinstance(view, BaseAgentRunViewSet) and view.basename:
        try:
            return str(reverse(f"{name}{view.basename}-detail", kwargs={"pk": run_id}, request=request))
        except NoReverseMatch:
            return request.build_absolute_uri(f"{run_id}/")
    return None
