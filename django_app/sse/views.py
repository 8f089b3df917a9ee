"""The SSE response of ``runs/{id}/events/``: replay from the run stream after ``Last-Event-ID``
(or from ``?from_seq=``), then tail it through the hub, and end after the terminal event.

The caller (a DRF action) has already authenticated and checked ownership. Under ASGI the body is
an async generator on the server's loop, served by Django together with a watch for disconnect
(Django cancels the body when the client goes, and ``finally`` frees it from the hub at once).
Under WSGI the body is a generator fed by the process's store thread. Both only run the same pure
``plan.stream`` (replay, subscribe, tail, keepalives), awaiting what it asks for or calling it
through the store thread; the run is never cancelled by a disconnect.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

from django.core.handlers.asgi import ASGIRequest
from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework.exceptions import APIException, NotFound, ValidationError
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

from agentstream.core.events import Event
from agentstream.core.settings import Settings
from agentstream.django_app.api.backend import StoreThread, api_backend
from agentstream.django_app.api.reads import in_deleted_conversation
from agentstream.django_app.conf import runtime_settings
from agentstream.django_app.sse.buffers import AsyncBuffer, ThreadBuffer
from agentstream.django_app.sse.cursor import Cursor
from agentstream.django_app.sse.framing import VisibilityFilter, retry_frame
from agentstream.django_app.sse.hub import hub_for_loop
from agentstream.django_app.sse.plan import Read, Silence, advance, frames_of, stream

ARCHIVE_LIMIT = 100_000
MAX_SEQ = 2**63 - 1  # a stream entry id part is 64-bit: beyond that Redis refuses the read


class EventStreamRenderer(BaseRenderer):
    media_type = "text/event-stream"
    format = "sse"
    charset = None

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None
    ) -> bytes:
        import orjson

        return orjson.dumps(data)


def stream_parameters() -> list[OpenApiParameter]:
    return [
        OpenApiParameter("from_seq", OpenApiTypes.INT, description="start at this seq (included)"),
        OpenApiParameter(
            "Last-Event-ID", OpenApiTypes.STR, location=OpenApiParameter.HEADER, description="resume after it"
        ),
        OpenApiParameter("anonymous_token", OpenApiTypes.STR, description="for EventSource (no headers)"),
    ]


def resume_after(request: Request) -> int:
    """The seq the stream goes on after: ``Last-Event-ID`` (the last event the client has), else
    ``?from_seq=`` less one (the first it wants, as django-agent-runtime reads it)."""
    last_id = request.META.get("HTTP_LAST_EVENT_ID")
    raw = str(last_id or request.query_params.get("from_seq") or "0").strip()
    # ASCII digits only: int() would also take "٣", "1_0" and "+3", which no SSE id of ours is
    value = int(raw) if raw.isascii() and raw.isdigit() else -1
    if not 0 <= value <= MAX_SEQ:
        raise ValidationError({"from_seq": ["must be a non-negative event seq (the SSE id)"]})
    return value if last_id else max(0, value - 1)


def event_stream(
    view: Any, request: Request, run_id: str, wanted: VisibilityFilter
) -> HttpResponse | StreamingHttpResponse:
    """Check the run is the caller's, then stream it (from the archive if the stream expired)."""
    from agentstream.django_app.models import Event as ArchivedEvent
    from agentstream.django_app.models import Run

    after = resume_after(request)
    owner = view.owner
    backend = api_backend()
    store = backend.store
    state = backend.call(lambda: store.run_state(run_id))
    archive: list[Event] | None = None
    if state is None:  # unknown, or expired after RUN_RETENTION_SECONDS: the archive has the history
        row = Run.objects.filter(id=run_id, owner=owner).select_related("conversation").first()
        if row is None or in_deleted_conversation(backend, None, row):
            raise NotFound(f"no such run {run_id!r}")
        if row.is_terminal and after >= row.last_seq:
            return _over()
        from agentstream.django_app.api.reads import archived_as_stream_event

        rows = ArchivedEvent.objects.filter(run_id=run_id, seq__gt=after).order_by("seq")[:ARCHIVE_LIMIT]
        archive = [archived_as_stream_event(r) for r in rows]
        if not archive:
            # Ended or not (a row the projector never finished, a Redis that lost the run), a run
            # without its Redis state can append nothing more (every script needs the state): a
            # stream without a terminal event would have EventSource reconnect forever.
            return _over()
    elif state.owner != owner or in_deleted_conversation(backend, state, None):
        raise NotFound(f"no such run {run_id!r}")  # another's, or its conversation was deleted
    elif state.status.is_terminal and after >= state.seq:
        return _over()
    elif after > state.seq:
        raise ResumeAhead(f"resume id {after} is ahead of the run, whose last event is seq {state.seq}")
    settings = runtime_settings()
    cursor = Cursor(after, wanted)
    if isinstance(request._request, ASGIRequest):
        body: Any = _async_body(settings, run_id, cursor, archive)
    else:
        body = _sync_body(backend, run_id, cursor, archive)
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response


class ResumeAhead(APIException):
    """A resume id past the run's last event, which we never sent: a client's bug, or a Redis that
    lost writes and will give those seqs to new events. Clamping would silently skip or repeat
    events under ids the client already holds, so refuse it: EventSource gives up on any status but
    200 (no reconnect loop) and the page starts over without the id. Nor may it reach the hub: the
    run's tail is shared, and a cursor past the stream's end hides what is below it from every
    client of the run in the process."""

    status_code = 400
    default_code = "resume_ahead"


def _over() -> HttpResponse:
    """Nothing more will come (resuming after the terminal event, or the archive of a run whose
    Redis state is gone): 204 tells EventSource to stop reconnecting."""
    return HttpResponse(status=204)


# -- ASGI: on the server's loop, through that loop's hub ------------------------------------------


def release_request_thread() -> None:
    """Let the request's idle sync thread go while the stream is served.

    Django runs a request's sync code (middleware, the DRF view) on a one-thread executor that
    lives as long as the request, so every open stream would pin an idle OS thread (10k clients,
    10k threads). The body never needs it again; if Django does (closing the response), asgiref
    makes a new one. This reaches into asgiref's ``SyncToAsync`` internals, so any change there
    only loses the saving, never the stream.
    """
    try:
        from asgiref.sync import SyncToAsync

        context = SyncToAsync.thread_sensitive_context.get(None)
        executor = SyncToAsync.context_to_thread_executor.pop(context, None) if context is not None else None
    except (AttributeError, TypeError):
        return
    if executor is not None:
        # The view's database connection is that thread's: close it there, or every open stream
        # holds a PostgreSQL connection until the garbage collector finds it (500 clients, 500).
        executor.submit(_close_database_connections)
        executor.shutdown(wait=False)


def _close_database_connections() -> None:
    from django.db import connections

    connections.close_all()


async def _async_body(
    settings: Settings, run_id: str, cursor: Cursor, archive: list[Event] | None
) -> AsyncIterator[bytes]:
    yield retry_frame(settings.SSE_RETRY_MS)
    release_request_thread()
    if archive is not None:
        yield cursor.feed(frames_of(archive), allow_gap=True).out
        return
    hub = hub_for_loop(settings)
    buffer = AsyncBuffer(settings.SSE_CLIENT_BUFFER)
    plan = stream(cursor, buffer, settings.SSE_KEEPALIVE_SECONDS)
    reply: Any = None  # what the last ask gave
    try:  # a disconnect while subscribing (its wake-up is awaited) must not leave the client in
        while (ask := advance(plan, reply)) is not None:
            if isinstance(ask, Silence):
                reply = await buffer.take(ask.left_s())
            elif isinstance(ask, bytes):
                yield ask
                reply = None
            elif isinstance(ask, Read):
                reply = await hub.store.read_run(run_id, ask.after, ask.count)
            else:
                reply = await hub.subscribe(run_id, ask.after, buffer)
    finally:
        hub.unsubscribe(run_id, buffer)  # nothing to do if it never subscribed


# -- WSGI: a worker thread, fed by the store thread's hub -----------------------------------------


def _sync_body(
    backend: StoreThread, run_id: str, cursor: Cursor, archive: list[Event] | None
) -> Iterator[bytes]:
    settings = backend.settings
    yield retry_frame(settings.SSE_RETRY_MS)
    if archive is not None:
        yield cursor.feed(frames_of(archive), allow_gap=True).out
        return
    store, hub = backend.store, backend.hub
    buffer = ThreadBuffer(settings.SSE_CLIENT_BUFFER)
    plan = stream(cursor, buffer, settings.SSE_KEEPALIVE_SECONDS)
    reply: Any = None  # what the last ask gave
    subscribed = False
    try:  # a subscribe that timed out may still land on the loop: the finally lets it go too
        while (ask := advance(plan, reply)) is not None:
            if isinstance(ask, Silence):
                reply = buffer.take(ask.left_s())
            elif isinstance(ask, bytes):
                yield ask
                reply = None
            elif isinstance(ask, Read):
                reply = backend.call(partial(store.read_run, run_id, ask.after, ask.count))
            else:
                subscribed = True
                reply = backend.call(partial(hub.subscribe, run_id, ask.after, buffer))
    finally:
        if subscribed:
            backend.loop.call_soon_threadsafe(hub.unsubscribe, run_id, buffer)
