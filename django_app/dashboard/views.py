"""The dashboard: a live page over the runtime, reusable in any project that mounts the API.

``path("agents/", include("agentstream.django_app.dashboard.urls"))`` next to the API at
``api/agents/``. The page needs a logged-in user (the API and the event streams it calls use the
session); the demo adds ``?token=<api token>`` login on top.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import redis.exceptions
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET

from agentstream.core.inspect import deployment_status
from agentstream.django_app.api.backend import api_backend
from agentstream.django_app.models import Run


@require_GET
@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    context = {"api_root": request.GET.get("api", "/api/agents/"), "agent_keys": agent_keys()}
    return render(request, "agentstream/dashboard.html", context)


def agent_keys() -> list[str]:
    """The keys a run may name, as the API checks them: those registered in this process and
    those workers announced in Redis (or only the first while Redis does not answer)."""
    from agentstream.django_app.api.agent_keys import known_agent_keys, registered_keys

    try:
        return sorted(known_agent_keys(api_backend()))
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, TimeoutError):
        return sorted(registered_keys())


@require_GET
@login_required
def status(request: HttpRequest) -> JsonResponse:
    """Queues, leases, lag and dead letters from Redis; runs by status from the read-model."""
    return JsonResponse(collect_status())


def collect_status() -> dict[str, Any]:
    backend = api_backend()
    found = backend.call(lambda: deployment_status(backend.store))
    by_status = dict(Run.objects.values_list("status").annotate(n=Count("id")).order_by())
    return {**dataclasses.asdict(found), "runs_by_status": by_status}


@require_GET
def token_login(request: HttpRequest) -> HttpResponse:
    """Demo convenience: ``/?token=<api token>`` logs the token's user into a session."""
    from rest_framework.authtoken.models import Token

    key = request.GET.get("token", "")
    token = Token.objects.select_related("user").filter(key=key).first() if key else None
    if token is not None:
        login(request, token.user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect(request.path)
    return dashboard(request)
