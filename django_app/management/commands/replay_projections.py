"""``python manage.py replay_projections [NAME ...] [--source archive|log]``: rebuild projections
from history, beside the live read-model, switched in at one commit."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agentstream.core.errors import ConfigurationError
from agentstream.core.events import Event
from agentstream.core.store import redis_from_url
from agentstream.django_app.conf import runtime_settings
from agentstream.django_app.management.operator_errors import operator_errors
from agentstream.projections.projection import load_projections
from agentstream.projections.replay import Progress, replay_archive, replay_events
from agentstream.projections.verify import log_events


class Command(BaseCommand):
    help = "Rebuild projections from the event archive (complete) or the partition logs (recent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", help="projections to rebuild (default: all configured)")
        parser.add_argument("--source", choices=["archive", "log"], default="archive")
        parser.add_argument("--database", default="default")
        parser.add_argument("--page", type=int, default=5000, help="events per page")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            projections = load_projections(runtime_settings(), opts["names"] or None)
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from None
        names = ", ".join(p.name for p in projections)
        self.stdout.write(f"replaying {names} from the {opts['source']} into {opts['database']!r}")
        last_draw = [0.0]

        def show(progress: Progress) -> None:
            now = time.monotonic()
            if now - last_draw[0] >= 0.2 or progress.done >= progress.total:
                last_draw[0] = now
                self.stderr.write("\r" + progress.bar(), ending="")
                self.stderr.flush()

        started = time.perf_counter()
        with operator_errors(opts["database"]):
            if opts["source"] == "archive":
                done = replay_archive(projections, opts["database"], page=opts["page"], progress=show)
            else:
                pages = asyncio.run(self._log_pages(opts["page"]))
                done = replay_events(projections, pages, opts["database"], progress=show)
        self.stderr.write("")
        elapsed = time.perf_counter() - started
        rate = done / elapsed if elapsed else 0.0
        self.stdout.write(f"replayed {done:,} events in {elapsed:.1f}s ({rate:,.0f}/s)")

    async def _log_pages(self, page: int) -> list[list[Event]]:
        settings = runtime_settings()
        redis = redis_from_url(settings.REDIS_URL)
        try:
            events = [e async for e in log_events(redis, settings.keys)]
        finally:
            await redis.aclose()
        return [events[i : i + page] for i in range(0, len(events), page)]
