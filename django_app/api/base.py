"""What every agentstream view shares: auth defaults, the owner, the one exception handler,
the request size limit, and JSON errors even on the event-stream endpoints."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from rest_framework import viewsets
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import NotAuthenticated, NotFound
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from agentstream.django_app.api.authentication import AnonymousSessionAuthentication, owner_of
from agentstream.django_app.api.backend import StoreThread, api_backend
from agentstream.django_app.api.exceptions import PayloadTooLarge, exception_handler
from agentstream.django_app.api.pagination import AgentPagination
from agentstream.django_app.api.parsers import AgentJSONParser
from agentstream.django_app.api.permissions import IsAuthenticatedOrAnonymousSession
from agentstream.django_app.api.schema import AgentAutoSchema
from agentstream.django_app.conf import runtime_settings


class AgentViewSet(viewsets.GenericViewSet):  # type: ignore[type-arg]
    """Subclass the Base* viewsets and set ``authentication_classes`` / ``permission_classes``."""

    authentication_classes: Any = (SessionAuthentication, AnonymousSessionAuthentication)
    permission_classes: Any = (IsAuthenticatedOrAnonymousSession,)
    renderer_classes: Any = (JSONRenderer,)
    pagination_class = AgentPagination
    schema = AgentAutoSchema()
    lookup_value_regex = "[^/.]+"
    # the body POST on the list route takes (OPTIONS describes it); None: serializer_class
    create_serializer_class: Any = None

    def get_serializer_class(self) -> Any:
        request = getattr(self, "request", None)
        creating = self.action in ("create", "metadata") and request is not None and request.method == "POST"
        if creating and self.create_serializer_class is not None:
            return self.create_serializer_class
        return super().get_serializer_class()

    def get_parsers(self) -> list[Any]:
        # the project's parser list, with DRF's JSON parser swapped for the hostile-input-proof one
        return [AgentJSONParser() if type(p) is JSONParser else p for p in super().get_parsers()]

    def get_exception_handler(self) -> Callable[..., Response | None]:
        return exception_handler

    def get_authenticate_header(self, request: Request) -> str | None:
        # 401 (not 403) without credentials whenever any authenticator can name a scheme
        for authenticator in self.get_authenticators():
            header = authenticator.authenticate_header(request)
            if header:
                return str(header)
        return None

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        limit = runtime_settings().MAX_REQUEST_BYTES
        length = request.META.get("CONTENT_LENGTH") or "0"
        if length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"the request body is {length} bytes, over MAX_REQUEST_BYTES={limit}")
        super().initial(request, *args, **kwargs)

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(response, Response) and response.status_code >= 400:
            # errors are JSON even where the endpoint streams text/event-stream
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = "application/json"
        return super().finalize_response(request, response, *args, **kwargs)

    @property
    def owner(self) -> str:
        owner = owner_of(self.request)
        if owner is None:
            raise NotAuthenticated()
        return owner

    @property
    def backend(self) -> StoreThread:
        return api_backend()

    def object_id(self) -> str:
        """The URL's id; anything but a canonical UUID is a 404 (it names nothing)."""
        raw = str(self.kwargs.get(self.lookup_url_kwarg or self.lookup_field, ""))
        try:
            return str(uuid.UUID(raw))
        except ValueError:
            raise NotFound(f"no such {self.noun} {raw[:64]!r}") from None

    noun = "object"
