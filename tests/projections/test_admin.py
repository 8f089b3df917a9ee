"""The admin shows the read-models (badges, durations, filters, search, inline events), read-only."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings

from agentstream.core.store import EventStore
from tests.projections.conftest import in_thread, make_workload, projector_for

pytestmark = pytest.mark.django_db(databases=["default", "embedded"], transaction=True)


@override_settings(ROOT_URLCONF="tests.projections.admin_urls")
async def test_the_admin_lists_runs_with_badges_filters_and_inline_events_and_allows_no_edits(
    store: EventStore,
) -> None:
    work = await make_workload(store, runs=5)
    await projector_for(store, "default").run(burst=True)

    def browse() -> dict[str, tuple[int, str]]:
        admin_user = get_user_model().objects.create_superuser("admin", "a@example.com", "pw")
        client = Client()
        client.force_login(admin_user)
        pages = {
            "list": "/admin/agentstream/run/",
            "filtered": "/admin/agentstream/run/?status__exact=failed",
            "search": f"/admin/agentstream/run/?q={work.run_ids[0]}",
            "detail": f"/admin/agentstream/run/{work.run_ids[0]}/change/",
            "conversations": "/admin/agentstream/conversation/",
            "add": "/admin/agentstream/run/add/",
        }
        out = {}
        for name, url in pages.items():
            response = client.get(url)
            out[name] = (response.status_code, response.content.decode())
        delete = client.post(f"/admin/agentstream/run/{work.run_ids[0]}/delete/", {"post": "yes"})
        out["delete"] = (delete.status_code, "")
        return out

    pages = await in_thread(browse)

    assert pages["list"][0] == 200 and "border-radius" in pages["list"][1]  # the status badge
    assert pages["filtered"][0] == 200 and "failed" in pages["filtered"][1]
    assert pages["search"][0] == 200 and work.run_ids[0] in pages["search"][1]
    assert pages["detail"][0] == 200 and "run.queued" in pages["detail"][1]  # the inline events
    assert pages["conversations"][0] == 200
    assert pages["add"][0] == 403 and pages["delete"][0] == 403
