"""What an operator asks of a deployment: queue depths, leases, lag, dead letters.

Every figure comes from Redis itself (XLEN, XPENDING, XINFO GROUPS, ZCARD), never from per-process
counters, so any process can report on the whole deployment. Two pipelined round trips in all.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from agentstream.core.keys import WORKERS_GROUP
from agentstream.core.store import EventStore


@dataclass(frozen=True, slots=True)
class QueueStatus:
    agent_key: str
    waiting: int  # in the stream, not yet delivered to a worker
    pending: int  # delivered, not yet acknowledged: runs being worked on (leases)
    consumers: int
    oldest_pending_age_s: float


@dataclass(frozen=True, slots=True)
class GroupLag:
    group: str
    pending: int  # read, not yet applied and acknowledged
    lag: int  # in the log, not yet read by the group
    last_delivered_id: str


@dataclass(frozen=True, slots=True)
class DeploymentStatus:
    queues: list[QueueStatus]
    projections: list[GroupLag]
    delayed: int
    dead_letters: int
    log_length: int


async def deployment_status(store: EventStore) -> DeploymentStatus:
    keys = store.keys
    partitions = range(store.settings.PARTITIONS)
    async with store.redis.pipeline(transaction=False) as pipe:
        for p in partitions:
            pipe.smembers(keys.agents(p))
        agent_sets = cast(list[set[bytes]], await pipe.execute())
    agents = sorted({a.decode() for members in agent_sets for a in members})

    now_ms = time.time() * 1000
    async with store.redis.pipeline(transaction=False) as pipe:
        for p in partitions:
            for agent in agents:
                queue = keys.queue(p, agent)
                pipe.xlen(queue)
                pipe.xinfo_groups(queue)
                pipe.xpending_range(queue, WORKERS_GROUP, min="-", max="+", count=1)
            pipe.zcard(keys.delayed(p))
            pipe.xlen(keys.dead(p))
            pipe.xlen(keys.log(p))
            pipe.xinfo_groups(keys.log(p))
        replies = iter(await pipe.execute(raise_on_error=False))

    per_agent: dict[str, dict[str, float]] = {
        a: {"len": 0, "pending": 0, "consumers": 0, "age": 0.0} for a in agents
    }
    groups: dict[str, dict[str, Any]] = {}
    delayed = dead = log_length = 0
    for _ in partitions:
        for agent in agents:
            length, infos, oldest = next(replies), next(replies), next(replies)
            acc = per_agent[agent]
            acc["len"] += _int(length)
            for info in _list(infos):
                if _text(info.get("name")) == WORKERS_GROUP:
                    acc["pending"] += int(info.get("pending", 0))
                    acc["consumers"] = max(acc["consumers"], int(info.get("consumers", 0)))
            for entry in _list(oldest):
                enqueued_ms = int(_text(entry["message_id"]).split("-")[0])
                acc["age"] = max(acc["age"], (now_ms - enqueued_ms) / 1000)
        delayed += _int(next(replies))
        dead += _int(next(replies))
        log_length += _int(next(replies))
        for info in _list(next(replies)):
            name = _text(info.get("name"))
            g = groups.setdefault(name, {"pending": 0, "lag": 0, "last": "0-0"})
            g["pending"] += int(info.get("pending", 0))
            g["lag"] += int(info.get("lag") or 0)
            g["last"] = max(g["last"], _text(info.get("last-delivered-id", "0-0")), key=_id_key)

    queues = [
        QueueStatus(
            agent_key=a,
            waiting=int(v["len"] - v["pending"]),
            pending=int(v["pending"]),
            consumers=int(v["consumers"]),
            oldest_pending_age_s=round(v["age"], 3),
        )
        for a, v in per_agent.items()
    ]
    lags = [GroupLag(name, g["pending"], g["lag"], g["last"]) for name, g in sorted(groups.items())]
    return DeploymentStatus(queues, lags, delayed, dead, log_length)


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | str | bytes) else 0


def _list(value: object) -> list[Mapping[str, Any]]:
    return cast(list[Mapping[str, Any]], value) if isinstance(value, list) else []


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms or 0), int(seq or 0)
