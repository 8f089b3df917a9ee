"""schemathesis against the OpenAPI schema (``api/agents/schema/``): generated requests, with an
anonymous session's credentials, never get a 5xx, and every response conforms to the schema."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks as st_checks

from agentstream.django_app.api.authentication import issue_token
from tests.django_app.helpers import announce_sync

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CHECK_NAMES = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
EXAMPLES_PER_OPERATION = 15


def test_generated_requests_never_5xx_and_responses_match_the_schema(agentstream: dict[str, Any]) -> None:
    from django.core.wsgi import get_wsgi_application

    announce_sync(agentstream)  # "echo" is a known agent key: some generated runs are accepted
    schema = schemathesis.openapi.from_wsgi("/api/agents/schema/?format=json", get_wsgi_application())
    checks = [getattr(st_checks, name) for name in CHECK_NAMES]
    _, token = issue_token()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12

    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: Any) -> None:
            case.call_and_validate(headers={"X-Anonymous-Token": token}, checks=checks)

        try:
            check()
        except Exception as exc:
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
