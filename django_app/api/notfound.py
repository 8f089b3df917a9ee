"""JSON answers for paths under the API's routes that name no endpoint.

A missing trailing slash is a 308 to the same path with it: unlike Django's ``APPEND_SLASH``
301, a 308 makes clients send the POST again, body and all (a 301 turns it into a GET, so a
create became a list). Anything else under a route is a JSON 404 that lists the endpoints.
Only paths that start with one of the routes are taken, so a project that mounts the API at its
root keeps its own URLs.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, resolve
from django.views.decorators.csrf import csrf_exempt

from agentstream.django_app.api.exceptions import error_body

UNKNOWN_PATH = "agentstream-unknown-path"


def routes_pattern(routes: list[str]) -> str:
    names = "|".join(r.replace("-", r"\-") for r in routes)
    return rf"^(?P<rest>(?:{names})(?:[/.].*)?)$"


@csrf_exempt  # it writes nothing; a POST without its slash must reach the 308, not a CSRF 403
def unknown_path(request: HttpRequest, rest: str, routes: tuple[str, ...] = ()) -> HttpResponse:
    path = request.path
    if not path.endswith("/") and _is_endpoint(request.path_info + "/"):
        query = request.META.get("QUERY_STRING", "")
        target = path + "/" + (f"?{query}" if query else "")
        body = error_body(
            "trailing_slash", f"the endpoint is {path}/ (with a trailing slash); redirecting there"
        )
        response = JsonResponse(body, status=308)
        response["Location"] = target
        return response
    listing = ", ".join(f"{r}/" for r in routes)
    message = f"no API endpoint at {path}; the endpoints start with {listing}"
    return JsonResponse(error_body("not_found", message), status=404)


def _is_endpoint(path: str) -> bool:
    try:
        return resolve(path).url_name != UNKNOWN_PATH
    except Resolver404:
        return False
