"""The partition logs seen from the projection groups: lag per partition, and trimming.

Trimming (``XTRIM MINID``) removes only entries that EVERY group on the log has acknowledged
and that are older than ``LOG_RETENTION_SECONDS``. A configured projection whose group does not
exist yet gets it first (from the start of the log), so its history is kept for it.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agentstream.core.codec import as_text
from agentstream.core.keys import Keys
from agentstream.core.store import Redis


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


async def safe_trim_id(redis: Redis, log_key: str) -> str | None:
    """The lowest id some group still needs (None: no group, trim nothing)."""
    groups = await group_info(redis, log_key)
    if not groups:
        return None
    floor: tuple[int, int] | None = None
    for name, info in groups.items():
        needed = await group_floor(redis, log_key, name, info)
        floor = needed if floor is None or needed < floor else floor
    assert floor is not None
    return f"{floor[0]}-{floor[1]}"


async def trim_logs(
    redis: Redis, keys: Keys, groups: Iterable[str], retention_s: float, now_ms: int | None = None
) -> int:
    """Trim every partition log below what all groups acknowledged and the retention; returns
    the number of entries removed."""
    await ensure_groups(redis, keys, groups)
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
    return removed


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
