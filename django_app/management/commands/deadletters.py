"""``manage.py deadletters list | retry RUN_ID | purge``: inspect and replay dead-lettered runs."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agentstream.core.deadletters import list_dead, purge_dead, retry_dead
from agentstream.core.errors import NotFound
from agentstream.core.store import EventStore, redis_from_url
from agentstream.django_app.conf import runtime_settings
from agentstream.django_app.management.operator_errors import operator_errors

T = TypeVar("T")


async def _with_store(action: Callable[[EventStore], Awaitable[T]]) -> T:
    settings = runtime_settings()
    client = redis_from_url(settings.REDIS_URL)
    try:
        return await action(EventStore(client, settings))
    finally:
        await client.aclose()


class Command(BaseCommand):
    help = "List dead-lettered runs, replay one as a new run (`retry RUN_ID`), or `purge` them all."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["list", "retry", "purge"])
        parser.add_argument("run_id", nargs="?", help="with retry: the dead run to replay")

    def handle(self, *args: Any, **options: Any) -> None:
        with operator_errors():
            self._act(options)

    def _act(self, options: dict[str, Any]) -> None:
        action = options["action"]
        if action == "list":
            letters = asyncio.run(_with_store(list_dead))
            if not letters:
                self.stdout.write("no dead letters")
            for d in letters:
                when = dt.datetime.fromtimestamp(d.ts_ms / 1000, dt.UTC).isoformat(timespec="seconds")
                self.stdout.write(f"{when}  p{d.partition}  {d.run_id or '(no run)'}  {d.reason}")
        elif action == "retry":
            if not options["run_id"]:
                raise CommandError(
                    "retry needs the run id: `deadletters retry RUN_ID` (see `deadletters list`)"
                )
            try:
                new_id = asyncio.run(_with_store(lambda store: retry_dead(store, options["run_id"])))
            except NotFound as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"replayed {options['run_id']} as new run {new_id}")
        else:
            count = asyncio.run(_with_store(purge_dead))
            self.stdout.write(f"purged {count} dead letters")
