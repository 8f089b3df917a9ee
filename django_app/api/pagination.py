"""Page-number pagination with a bounded page size (``?page=2&page_size=50``)."""

from __future__ import annotations

from typing import Any

from django.core.paginator import Paginator
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.utils.urls import remove_query_param

# never echoed into a link: a page URL lands in logs, proxies and browser history
SECRET_PARAMS = ("anonymous_token", "token")


class AgentPagination(PageNumberPagination):
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100

    def get_page_number(self, request: Request, paginator: Paginator) -> Any:
        raw = request.query_params.get(self.page_query_param) or "1"
        if raw in self.last_page_strings:
            return paginator.num_pages
        if not (raw.isascii() and raw.isdigit() and int(raw) >= 1):
            raise ValidationError({"page": [f"must be a page number from 1, or 'last'; got {raw[:20]!r}"]})
        if int(raw) > paginator.num_pages:
            raise NotFound(f"page {raw} is past the last page ({paginator.num_pages})")
        return int(raw)

    def get_next_link(self) -> str | None:
        return _without_secrets(super().get_next_link())

    def get_previous_link(self) -> str | None:
        return _without_secrets(super().get_previous_link())


def _without_secrets(url: str | None) -> str | None:
    if url is None:
        return None
    for name in SECRET_PARAMS:
        url = remove_query_param(url, name)
    return url
