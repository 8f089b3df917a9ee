"""drf-spectacular's AutoSchema, plus the JSON error responses every operation can answer."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema

from agentstream.django_app.api.serializers import ErrorSerializer

ERROR_STATUSES = {
    "400": "invalid request",
    "401": "no or invalid credentials",
    "403": "refused by AUTHZ_HOOK or the permissions",
    "404": "no such resource, or not yours",
    "405": "method not allowed (runs are append-only)",
    "406": "not acceptable",
    "409": "conflict (idempotency key, conversation busy, run already ended)",
    "413": "request body over MAX_REQUEST_BYTES",
    "415": "unsupported media type",
    "429": "refused by QUOTA_HOOK",
    "500": "server misconfigured (the message says what to fix)",
    "503": "Redis or the database is unreachable; retry",
}


class AgentAutoSchema(AutoSchema):
    def _map_serializer(self, serializer: Any, direction: Any, bypass_extensions: bool = False) -> Any:
        from drf_spectacular.plumbing import force_instance

        from agentstream.django_app.api.serializers import StrictInputSerializer

        schema = super()._map_serializer(serializer, direction, bypass_extensions)
        if isinstance(force_instance(serializer), StrictInputSerializer):
            schema["additionalProperties"] = False  # an unknown field is a 400
        return schema

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        for code, description in ERROR_STATUSES.items():
            if code not in responses:
                body = self._get_response_for_code(ErrorSerializer, code, direction=direction)
                body["description"] = description
                responses[code] = body
        return responses


def only_agentstream(endpoints: list[tuple[str, str, str, Any]]) -> list[tuple[str, str, str, Any]]:
    """Schema preprocessing hook: the agentstream endpoints only, wherever they are mounted."""
    from agentstream.django_app.api.base import AgentViewSet

    return [
        e
        for e in endpoints
        if isinstance(getattr(e[3], "cls", None), type) and issubclass(e[3].cls, AgentViewSet)
    ]


def extend_schema(**kwargs: Any) -> Any:
    """drf-spectacular's ``extend_schema`` on top of ``AgentAutoSchema`` (not the project's
    DEFAULT_SCHEMA_CLASS, which need not be spectacular's)."""
    from drf_spectacular.utils import extend_schema as spectacular_extend_schema

    def decorate(f: Any) -> Any:
        if not hasattr(f, "schema") and "schema" not in getattr(f, "kwargs", {}):
            f.schema = AgentAutoSchema
        return spectacular_extend_schema(**kwargs)(f)

    return decorate


class AnonymousTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[misc]
    target_class = "agentstream.django_app.api.authentication.AnonymousSessionAuthentication"
    name = "anonymousToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "header", "name": "X-Anonymous-Token"}


ENUM_NAME_OVERRIDES = {
    "RunStatusEnum": ["queued", "running", "succeeded", "failed", "cancelled", "timed_out"],
    "CancelStatusEnum": ["cancelled", "cancel_requested"],
    "VisibilityLevelEnum": ["internal", "debug", "user"],
}
