"""Any path under the API's prefix that names no endpoint is a JSON 404 (not Django's HTML page):
a mistyped route, the prefix itself, a POST. The 308 to a missing trailing slash stays, and
so do the URLs around the API: the tests' and the demo's URLconfs, and a project that mounts the
API at its root and lists its own URLs after it (this module is such a URLconf)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import URLPattern, URLResolver, include, path, resolve

from agentstream.django_app.api.notfound import UNKNOWN_PATH

pytestmark = pytest.mark.django_db(transaction=True)

API = "/api/agents/"


def mine(request: HttpRequest) -> HttpResponse:
    return HttpResponse("the project's own page")


# a project that mounts the API at its root, its own URLs after the include
urlpatterns: list[URLPattern | URLResolver] = [
    path("", include("agentstream.django_app.urls")),
    path("mine/", mine, name="mine"),
    path("rnus-of-mine/", mine, name="mine-too"),
]


def error_of(response: Any) -> dict[str, Any]:
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    return dict(response.json()["error"])


def test_a_path_under_the_prefix_outside_every_route_is_a_json_404(agentstream: dict[str, Any]) -> None:
    client = Client(enforce_csrf_checks=True)
    for method, where in (
        ("get", f"{API}rnus/"),
        ("get", f"{API}rnus"),
        ("get", API),
        ("get", f"{API}a/b/c.json"),
        ("post", f"{API}rnus/"),
        ("delete", f"{API}rnus/1/"),
    ):
        answer = getattr(client, method)(where)
        assert answer.status_code == 404, (method, where, answer.status_code)
        error = error_of(answer)
        assert error["code"] == "not_found" and error["details"] == {}, where
        assert f"no API endpoint at {where}" in error["message"] and "runs/" in error["message"]


def test_the_trailing_slash_308_and_the_urls_outside_the_prefix_are_unchanged(
    agentstream: dict[str, Any],
) -> None:
    client = Client()
    for where in (f"{API}runs", f"{API}schema", f"{API}anonymous-session"):
        answer = client.get(where)
        assert answer.status_code == 308 and answer["Location"] == f"{where}/", where
    assert client.get(f"{API}schema/").status_code == 200
    assert client.get("/sse-page/").status_code == 200
    elsewhere = client.get("/api/agentsx/")
    assert elsewhere.status_code == 404 and not elsewhere["Content-Type"].startswith("application/json")


def test_the_demo_keeps_its_api_dashboard_admin_and_metrics(settings: Any) -> None:
    settings.ROOT_URLCONF = "agentstream.django_app.demo.urls"
    run = "00000000-0000-4000-8000-000000000000"
    assert resolve(f"{API}runs/").url_name == "demo-run-list"
    assert resolve(f"{API}runs/{run}/events/").url_name == "demo-run-events"
    assert resolve(f"{API}anonymous-session/").url_name != UNKNOWN_PATH
    assert resolve(f"{API}rnus/").url_name == UNKNOWN_PATH
    assert resolve("/").url_name == "demo-dashboard"
    assert resolve("/status.json").url_name == "status"
    assert resolve("/metrics").url_name == "demo-metrics"
    assert resolve("/admin/").app_name == "admin"


def test_an_api_mounted_at_the_root_leaves_the_projects_own_urls_alone(
    agentstream: dict[str, Any], settings: Any
) -> None:
    settings.ROOT_URLCONF = __name__
    client = Client()
    assert client.get("/mine/").content == b"the project's own page"
    assert client.get("/rnus-of-mine/").content == b"the project's own page"
    assert client.get("/runs").status_code == 308
    assert error_of(client.get("/runs/x/nope/"))["code"] == "not_found"
    elsewhere = client.get("/nope/")
    assert elsewhere.status_code == 404 and not elsewhere["Content-Type"].startswith("application/json")
    assert json.loads(client.get("/runs.json").content)["error"]["code"] == "not_found"


def test_the_projects_own_urls_after_the_api_under_the_same_prefix_still_resolve(
    agentstream: dict[str, Any], settings: Any
) -> None:
    settings.ROOT_URLCONF = "tests.django_app.shared_prefix_urls"
    client = Client()
    for where in ("/api/orders/", "/api/billing/", "/api/legacy/", "/about/"):
        assert client.get(where).content == b"the project's own api", where
    assert client.get("/api/runs").status_code == 308
    assert error_of(client.get("/api/runs/x/nope/"))["code"] == "not_found"
    elsewhere = client.get("/api/nope/")  # the project's URLs may take it: Django's own 404
    assert elsewhere.status_code == 404 and not elsewhere["Content-Type"].startswith("application/json")


class RegexPrefixUrls:
    from tests.django_app.shared_prefix_urls import regex_prefix as urlpatterns


def test_the_projects_own_urls_after_an_api_under_a_regex_prefix_still_resolve(
    agentstream: dict[str, Any], settings: Any
) -> None:
    settings.ROOT_URLCONF = RegexPrefixUrls
    client = Client()
    assert client.get("/v2/orders/").content == b"the project's own api"
    assert client.get("/v2/runs").status_code == 308


def test_a_catch_all_prefix_is_kept_when_nothing_after_the_api_shares_it(settings: Any) -> None:
    """The demo lists its dashboard (at the root) after the API: a path under api/agents/ is
    still the API's JSON 404."""
    settings.ROOT_URLCONF = "agentstream.django_app.demo.urls"
    assert resolve(f"{API}nope/deeper/").url_name == UNKNOWN_PATH
    assert resolve(API).url_name == UNKNOWN_PATH
