"""``manage.py agentstatus [--watch]``: queues, leases, projection lag, dead letters, runs by status."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import connection
from django.db.models import Count

from agentstream.core.inspect import DeploymentStatus, deployment_status
from agentstream.core.store import EventStore, redis_from_url
from agentstream.django_app.conf import runtime_settings
from agentstream.django_app.management.operator_errors import operator_errors
from agentstream.django_app.models import Run
from agentstream.projections.similarity import search_backend

# A fakeredis lives in one process: this command's is empty, whatever a running demo holds.
FAKEREDIS_NOTE = (
    "note: {url} is an empty fakeredis in this process, not a running demo's; "
    "set REDIS_URL to see a Redis server"
)


def render(status: DeploymentStatus, runs_by_status: dict[str, int], search: str = "") -> str:
    rows = [("queue", "waiting", "running", "consumers", "oldest pending")]
    rows += [
        (q.agent_key, str(q.waiting), str(q.pending), str(q.consumers), f"{q.oldest_pending_age_s:.1f}s")
        for q in status.queues
    ] or [("(no queues yet)", "", "", "", "")]
    lines = _table(rows)
    lag_rows = [("projection", "lag", "pending", "last delivered")]
    lag_rows += [(g.group, str(g.lag), str(g.pending), g.last_delivered_id) for g in status.projections] or [
        ("(no projector has run)", "", "", "")
    ]
    lines += ["", *_table(lag_rows)]
    lines += [
        "",
        f"delayed (retries, scheduled): {status.delayed}   dead letters: {status.dead_letters}   "
        f"log entries: {status.log_length}",
        f"since the start: {status.counters.log_events} events, {status.counters.retries} retries, "
        f"{status.counters.reclaims} reclaims, {status.counters.dead_letters} dead-lettered",
        "runs: " + (", ".join(f"{k} {v}" for k, v in sorted(runs_by_status.items())) or "none projected yet"),
    ]
    if search:
        lines.append(f"knowledge search: {search}")
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


class Command(BaseCommand):
    help = (
        "Queues (waiting, running, consumers, oldest pending), projection lag, dead letters, runs by status."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--watch", action="store_true", help="refresh every --interval seconds")
        parser.add_argument("--interval", type=float, default=2.0)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            with operator_errors():
                self._show(watch=options["watch"], interval_s=options["interval"])
        except KeyboardInterrupt:
            if not options["watch"]:
                raise
            self.stdout.write("")  # Ctrl-C is how --watch ends: a success (0), not a traceback

    def _show(self, *, watch: bool, interval_s: float) -> None:
        url = runtime_settings().REDIS_URL
        note = FAKEREDIS_NOTE.format(url=url) + "\n" if url.startswith("fakeredis://") else ""
        while True:
            status = asyncio.run(self._status())
            runs = dict(Run.objects.values_list("status").annotate(n=Count("id")).order_by())
            text = note + render(status, runs, search_backend(connection))
            if not watch:
                self.stdout.write(text)
                return
            self.stdout.write("\x1b[2J\x1b[H" + time.strftime("%H:%M:%S") + "\n" + text)
            time.sleep(interval_s)

    async def _status(self) -> DeploymentStatus:
        settings = runtime_settings()
        client = redis_from_url(settings.REDIS_URL)
        try:
            return await deployment_status(EventStore(client, settings))
        finally:
            await client.aclose()
