"""JSON answers for paths under the API's prefix that name no endpoint.

A missing trailing slash is a 308 to the same path with it: unlike Django's ``APPEND_SLASH``
301, a 308 makes clients send the POST again, body and all (a 301 turns it into a GET, so a
create became a list). Any other path under the prefix the API is mounted at (``/api/agents/``,
``/api/agents/rnus/``) is a JSON 404 that lists the endpoints. A project that mounts the API at
its root keeps its own URLs: there only the paths under the API's routes are taken.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import Resolver404, URLPattern, URLResolver, get_resolver, get_urlconf, resolve
from django.urls.resolvers import RegexPattern, RoutePattern
from django.views.decorators.csrf import csrf_exempt

from agentstream.django_app.api.exceptions import error_body

UNKNOWN_PATH = "agentstream-unknown-path"


def routes_pattern(routes: Sequence[str]) -> str:
    names = "|".join(r.replace("-", r"\-") for r in routes)
    return rf"^(?P<rest>(?:{names})(?:[/.].*)?)$"


class UnderThePrefix(RegexPattern):
    """Every path left under the prefix the API is included at, unless a URL pattern listed after
    that include may take paths under the same prefix (the API at the site's root, or a project's
    own ``path("api/", ...)`` after ``path("api/", include(...))``): then only the paths under the
    API's routes, so that the project's own URLs still resolve."""

    def __init__(self, routes: Sequence[str]) -> None:
        super().__init__(r"^(?P<rest>.*)$", name=UNKNOWN_PATH, is_endpoint=True)
        self.under_routes = re.compile(routes_pattern(routes))

    def match(self, path: str) -> tuple[str, tuple[object, ...], dict[str, object]] | None:
        found = super().match(path)
        if found is None or self.under_routes.match(path):
            return found
        # read when a path matched nothing else, so a 404's cost; get_urlconf is the request's own
        return None if _shared_after(get_resolver(get_urlconf()).url_patterns, self) is not False else found


def _shared_after(patterns: Sequence[URLPattern | URLResolver], target: UnderThePrefix) -> bool | None:
    """Whether a pattern listed after the includes that lead to ``target`` may take a path under
    their prefix (None: ``target`` is not in ``patterns``)."""
    for i, entry in enumerate(patterns):
        if isinstance(entry, URLPattern):
            if entry.pattern is target:
                return False
            continue
        inner = _shared_after(entry.url_patterns, target)
        if inner is None:
            continue
        prefix = str(entry.pattern)
        if not (isinstance(entry.pattern, RoutePattern) and prefix and "<" not in prefix):
            # the site's root (every path is under it), a regex or a converter: only the routes
            return inner or prefix in ("", "^") or bool(patterns[i + 1 :])
        return inner or any(_may_take(later, prefix) for later in patterns[i + 1 :])
    return None


def _may_take(entry: URLPattern | URLResolver, prefix: str) -> bool:
    """Whether ``entry`` may resolve a path that starts with ``prefix`` (a route string); a regex
    or a converter may match anything, so it may."""
    own = str(entry.pattern)
    if not isinstance(entry.pattern, RoutePattern) or "<" in own:
        return True
    if own.startswith(prefix):
        return True
    if isinstance(entry, URLResolver) and prefix.startswith(own):
        return any(_may_take(inner, prefix[len(own) :]) for inner in entry.url_patterns)
    return False


def unknown_path_pattern(routes: Sequence[str]) -> URLPattern:
    """The last of the API's URL patterns: the 308s and JSON 404s of this module."""
    return URLPattern(UnderThePrefix(routes), unknown_path, {"routes": tuple(routes)}, name=UNKNOWN_PATH)


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
