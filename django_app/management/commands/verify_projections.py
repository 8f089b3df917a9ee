"""``python manage.py verify_projections [--source log|archive]``: fold the history afresh,
compare it with the read-models, print the drift, exit 1 when there is any."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from agentstream.core.store import redis_from_url
from agentstream.django_app.conf import runtime_settings
from agentstream.django_app.management.operator_errors import operator_errors
from agentstream.projections.verify import Report, archive_events, compare, verify_log


class Command(BaseCommand):
    help = "Compare the read-models with a fresh fold of the partition logs (or the archive)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--source", choices=["log", "archive"], default="log")
        parser.add_argument("--database", default="default")
        parser.add_argument("--limit", type=int, default=50, help="print at most this many drifted rows")

    def handle(self, *args: Any, **opts: Any) -> None:
        with operator_errors(opts["database"]):
            if opts["source"] == "archive":
                report = compare(archive_events(opts["database"]), opts["database"])
            else:
                report = asyncio.run(self._from_log(opts["database"]))
        self._print(report, opts["limit"])
        if not report.ok:
            sys.exit(1)

    async def _from_log(self, database: str) -> Report:
        settings = runtime_settings()
        redis = redis_from_url(settings.REDIS_URL)
        try:
            return await verify_log(redis, settings.keys, database)
        finally:
            await redis.aclose()

    def _print(self, report: Report, limit: int) -> None:
        for drift in report.drift[:limit]:
            self.stdout.write(str(drift))
        if len(report.drift) > limit:
            self.stdout.write(f"... and {len(report.drift) - limit} more")
        counts: dict[str, int] = {}
        for drift in report.drift:
            counts[drift.kind] = counts.get(drift.kind, 0) + 1
        summary = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "no drift"
        self.stdout.write(
            f"checked {report.runs_checked} runs, {report.conversations_checked} conversations: {summary}"
        )
