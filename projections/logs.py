"""The partition logs seen from the projection groups: lag per partition, and trimming.

Trimming (``XTRIM MINID``) removes only entries that EVERY group on the log has acknowledged
and that are older than ``LOG_RETENTION_SECONDS``. A configured projection whose group does not
exist yet gets it first (from the start of the log), so its history is kept for it. A group no
configured projection owns holds trimming too, however long its consumers have been quiet: it
may be a projection another service runs with its own settings, or an old-version projector
held up by an outage, and an entry trimmed before it acknowledged it is lost for good. Such a
group gone stale (``LogGroup.stale``) is named in one warning per process; only the operator
releases it, with ``manage.py drop_projection NAME``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from agentstream.core.codec import as_text
from agentstream.core.keys import Keys
from agentstream.core.store import Redis

log = logging.getLogger("agentstream.projections")
# a projector reads (XREADGROUP) every block_ms, about a second: a group whose consumers have been
# silent for an hour is worth a warning (it still holds trimming) and may be dropped without --force
STALE_GROUP_S = 3600.0


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n or 0)


def next_id(entry_id: str) -> str:
    ms, n = parse_id(entry_id)
    return f"{ms}-{n + 1}"


@dataclass(frozen=True, slots=True)
class PartitionLag:
    partition: int
    group: str
    pending: int  # delivered, not yet acknowledged
    undelivered: int  # in the log, not yet read by the group
    last_delivered_id: str
    seconds_behind: float  # age of the oldest entry the group has not acknowledged (0: caught up)

    def __str__(self) -> str:
        return (
            f"{self.group:<28} p{self.partition:<3} pending {self.pending:>7} unread {self.undelivered:>7} "
            f"last {self.last_delivered_id:<22} behind {self.seconds_behind:8.2f}s"
        )


def _info(entry: Any) -> dict[str, Any]:
    if isinstance(entry, dict):
        return {as_text(k): v for k, v in entry.items()}
    items = list(entry)
    return {as_text(items[i]): items[i + 1] for i in range(0, len(items), 2)}


async def group_info(redis: Redis, log_key: str) -> dict[str, dict[str, Any]]:
    try:
        groups: Any = await redis.xinfo_groups(log_key)
    except Exception as exc:  # no such key: no groups
        if "no such key" in str(exc).lower():
            return {}
        raise
    out: dict[str, dict[str, Any]] = {}
    for g in groups:
        info = _info(g)
        out[as_text(info["name"])] = info
    return out


async def oldest_pending_id(redis: Redis, log_key: str, group: str) -> str | None:
    summary: Any = await redis.xpending(log_key, group)
    if not summary or not summary.get("pending"):
        return None
    return as_text(summary["min"])


async def lag(redis: Redis, keys: Keys, group: str, now_ms: int | None = None) -> list[PartitionLag]:
    """Per partition: pending, unread, last delivered id, and how far behind the group is."""
    now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    out: list[PartitionLag] = []
    for partition in range(keys.partitions):
        log_key = keys.log(partition)
        info = (await group_info(redis, log_key)).get(group)
        if info is None:
            length = int(await redis.xlen(log_key))
            first: Any = await redis.xrange(log_key, count=1)
            behind = (now_ms - parse_id(as_text(first[0][0]))[0]) / 1000 if first else 0.0
            out.append(PartitionLag(partition, group, 0, length, "-", max(0.0, behind)))
            continue
        last_delivered = as_text(info["last-delivered-id"])
        pending = int(info["pending"])
        unread_entries: Any = await redis.xrange(log_key, min="(" + last_delivered, count=1)
        unread = info.get("lag")
        undelivered = int(unread) if unread is not None else len(unread_entries)
        oldest = await oldest_pending_id(redis, log_key, group) if pending else None
        if oldest is None and unread_entries:
            oldest = as_text(unread_entries[0][0])
        behind = max(0.0, (now_ms - parse_id(oldest)[0]) / 1000) if oldest else 0.0
        out.append(PartitionLag(partition, group, pending, undelivered, last_delivered, behind))
    return out


async def ensure_groups(redis: Redis, keys: Keys, groups: Iterable[str]) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        for group in groups:
            for partition in range(keys.partitions):
                pipe.xgroup_create(keys.log(partition), group, id="0", mkstream=True)
        for result in await pipe.execute(raise_on_error=False):
            if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                raise result


async def group_floor(redis: Redis, log_key: str, group: str, info: Mapping[str, Any]) -> tuple[int, int]:
    """The lowest id ``group`` still needs: its oldest pending entry, else the next unread one."""
    oldest = await oldest_pending_id(redis, log_key, group) if int(info["pending"]) else None
    return parse_id(oldest or next_id(as_text(info["last-delivered-id"])))


async def idle_ms(redis: Redis, log_key: str, group: str) -> int | None:
    """Milliseconds since a consumer of ``group`` last read or claimed (None: it has none)."""
    consumers: Any = await redis.xinfo_consumers(log_key, group)
    return min((int(_info(c)["idle"]) for c in consumers), default=None)


async def safe_trim_id(redis: Redis, log_key: str) -> str | None:
    """The lowest id some group on the log still needs (None: no group, trim nothing)."""
    floor: tuple[int, int] | None = None
    for name, info in (await group_info(redis, log_key)).items():
        needed = await group_floor(redis, log_key, name, info)
        floor = needed if floor is None or needed < floor else floor
    return None if floor is None else f"{floor[0]}-{floor[1]}"


@dataclass(frozen=True, slots=True)
class LogGroup:
    name: str
    partitions: int  # how many partition logs it is on
    idle_ms: int | None  # since any consumer of it last read or claimed (None: it has none)

    def stale(self, after_s: float = STALE_GROUP_S) -> bool:
        """No consumer of it has read or claimed for ``after_s`` (or it has none). A stale group
        still holds trimming; this only decides what is said about it and what may drop it."""
        return self.idle_ms is None or self.idle_ms >= after_s * 1000


async def log_groups(redis: Redis, keys: Keys, *, excluding: Collection[str] = ()) -> dict[str, LogGroup]:
    """Every consumer group on the partition logs (but ``excluding``), with when a consumer of it
    was last seen."""
    seen: dict[str, tuple[int, int | None]] = {}
    for partition in range(keys.partitions):
        log_key = keys.log(partition)
        for name in await group_info(redis, log_key):
            if name in excluding:
                continue
            count, least = seen.get(name, (0, None))
            idles = [i for i in (least, await idle_ms(redis, log_key, name)) if i is not None]
            seen[name] = (count + 1, min(idles, default=None))
    return {name: LogGroup(name, count, idle) for name, (count, idle) in sorted(seen.items())}


# trimming runs every minute: a stale group is named once per process, not in every pass
_warned: set[tuple[str, str]] = set()


async def warn_stale_groups(
    redis: Redis, keys: Keys, configured: Collection[str], stale_after_s: float = STALE_GROUP_S
) -> list[str]:
    """Name, in one warning, the groups no ``configured`` projection owns that went stale since
    the last warning of this process; returns them."""
    unowned = await log_groups(redis, keys, excluding=configured)
    stale = [g.name for g in unowned.values() if g.stale(stale_after_s)]
    new = [name for name in stale if (keys.prefix, name) not in _warned]
    if new:
        _warned.update((keys.prefix, name) for name in new)
        log.warning(
            "log groups %s belong to no configured projection and none of their consumers was seen "
            "for %.0fs: trimming of the partition logs waits for them, so the logs keep growing. If "
            "another service or an old release still runs them, start it; if the projection was "
            "removed for good, `manage.py drop_projection NAME` (the group less 'projection:') releases it",
            ", ".join(new), stale_after_s,
        )  # fmt: skip
    return new


async def trim_logs(
    redis: Redis,
    keys: Keys,
    groups: Iterable[str],
    retention_s: float,
    now_ms: int | None = None,
    *,
    stale_after_s: float = STALE_GROUP_S,
) -> int:
    """Trim every partition log below what every group on it acknowledged (``groups``, the
    configured ones, are created first) and the retention; returns the number of entries removed.
    Groups no configured projection owns hold it too; the stale ones are named once."""
    configured = set(groups)
    await ensure_groups(redis, keys, configured)
    now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    retention_floor = (now_ms - int(retention_s * 1000), 0)
    removed = 0
    for partition in range(keys.partitions):
        log_key = keys.log(partition)
        acked_floor = await safe_trim_id(redis, log_key)
        if acked_floor is None:
            continue
        floor = min(parse_id(acked_floor), retention_floor)
        if floor <= (0, 0):
            continue
        removed += int(await redis.xtrim(log_key, minid=f"{floor[0]}-{floor[1]}", approximate=False))
    await warn_stale_groups(redis, keys, configured, stale_after_s)
    return removed


async def drop_group(redis: Redis, keys: Keys, group: str) -> int:
    """``XGROUP DESTROY`` on every partition log; returns how many logs had the group."""
    dropped = 0
    for partition in range(keys.partitions):
        with contextlib.suppress(ResponseError):  # no such log: nothing to drop
            dropped += int(await redis.xgroup_destroy(keys.log(partition), group))
    return dropped


async def entries_ahead(
    redis: Redis, keys: Keys, *, behind: str, ahead: Collection[str], page: int = 5000
) -> list[tuple[int, list[Any]]]:
    """Per partition, the entries from ``behind``'s oldest unacknowledged one up to the furthest
    any of ``ahead`` has read: what those groups may have applied and ``behind`` not yet (all of
    it from the start of the log when ``behind`` has no group there)."""
    out: list[tuple[int, list[Any]]] = []
    for partition in range(keys.partitions):
        log_key = keys.log(partition)
        groups = await group_info(redis, log_key)
        reads = [parse_id(as_text(groups[g]["last-delivered-id"])) for g in ahead if g in groups]
        end = max(reads, default=(0, 0))
        start = await group_floor(redis, log_key, behind, groups[behind]) if behind in groups else (0, 0)
        if end == (0, 0) or start > end:
            continue
        low, high = f"{start[0]}-{start[1]}", f"{end[0]}-{end[1]}"
        entries: list[Any] = []
        while True:
            chunk: Any = await redis.xrange(log_key, min=low, max=high, count=page)
            entries.extend(chunk)
            if len(chunk) < page:
                break
            low = "(" + as_text(chunk[-1][0])
        if entries:
            out.append((partition, entries))
    return out
