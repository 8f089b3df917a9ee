"""``python manage.py drop_projection [NAME ...] [--force]``: remove the log consumer groups (and
checkpoints) of projections no longer configured; without a name, list the groups on the logs.

Log trimming waits for every group on the logs, configured or not (``projections/logs.py``): a
removed projection's group holds it back forever, and dropping it is the one way to release it.
A group one of whose consumers was seen within ``STALE_GROUP_S`` (``LogGroup.stale``) is refused
without ``--force``: an old-version projector, or another service, may still run it."""

from __future__ import annotations

import asyncio
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agentstream.core.errors import ConfigurationError
from agentstream.core.settings import Settings
from agentstream.core.store import redis_from_url
from agentstream.django_app.conf import runtime_settings
from agentstream.django_app.models import ProjectionCheckpoint
from agentstream.projections.logs import LogGroup, drop_group, log_groups
from agentstream.projections.projection import GROUP_PREFIX, load_projections


class Command(BaseCommand):
    help = "Drop the log consumer groups of removed projections (no name: list the groups)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", help="projections to drop (group projection:NAME)")
        parser.add_argument("--force", action="store_true", help="drop even if a consumer was seen lately")
        parser.add_argument("--database", default="default", help="the database holding its checkpoints")

    def handle(self, *args: Any, **opts: Any) -> None:
        settings = runtime_settings()
        try:
            configured = {p.name for p in load_projections(settings)}
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from None
        groups = asyncio.run(_groups(settings))
        names: list[str] = opts["names"]
        if not names:
            for group in groups.values():
                self.stdout.write(_describe(group, configured))
            return
        for name in names:  # all checked before any is dropped
            _check(name, groups.get(GROUP_PREFIX + name), configured, opts["force"])
        for name in names:
            dropped = asyncio.run(_drop(settings, GROUP_PREFIX + name))
            ProjectionCheckpoint.objects.using(opts["database"]).filter(projection=name).delete()
            self.stdout.write(
                f"dropped {GROUP_PREFIX}{name} from {dropped} partition logs, and its checkpoints"
            )


def _check(name: str, group: LogGroup | None, configured: set[str], force: bool) -> None:
    if name in configured:
        raise CommandError(
            f"projection {name!r} is configured: remove it from AGENTSTREAM first (its projector "
            "would create the group again, from the start of the logs)"
        )
    if group is None:
        raise CommandError(f"no group {GROUP_PREFIX}{name} on the partition logs")
    if not group.stale() and not force:  # an old-version projector may still run it
        raise CommandError(
            f"a consumer of {group.name} was seen {(group.idle_ms or 0) / 1000:.0f}s ago: "
            "stop that projector first (or pass --force)"
        )


def _describe(group: LogGroup, configured: set[str]) -> str:
    name = group.name.removeprefix(GROUP_PREFIX)
    seen = "no consumer" if group.idle_ms is None else f"seen {group.idle_ms / 1000:.0f}s ago"
    if name in configured:
        state = "configured"
    elif not group.stale():
        state = "not configured, read lately: holds trimming"
    else:
        state = f"not configured, stale: holds trimming until drop_projection {name}"
    return f"{group.name:<32} {seen:<20} {group.partitions:>4} logs  {state}"


async def _groups(settings: Settings) -> dict[str, LogGroup]:
    redis = redis_from_url(settings.REDIS_URL)
    try:
        return await log_groups(redis, settings.keys)
    finally:
        await redis.aclose()


async def _drop(settings: Settings, group: str) -> int:
    redis = redis_from_url(settings.REDIS_URL)
    try:
        return await drop_group(redis, settings.keys, group)
    finally:
        await redis.aclose()
