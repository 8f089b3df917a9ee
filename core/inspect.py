"""What an operator asks of a deployment: queue depths, leases, lag, dead letters.

Every figure comes from Redis itself (XLEN, XPENDING, XINFO GROUPS / STREAM, ZCARD, HGETALL),
never from per-process counters, so any process can report on the whole deployment. Two
pipelined round trips in all.

The deployment-wide counters (``Counters``) only ever grow, like Prometheus counters: the partition
logs' ``entries-added`` (XINFO STREAM, Redis 7.0+; ``rate()`` of it is events/s, trimming does not
lower it), and the per-partition ``stats`` hash that the Lua scripts HINCRBY inside the very
transition they count (retries, reclaims, dead letters, runs finished by status).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from agentstream.core.codec import as_text
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
class Counters:
    """Totals since the deployment's keys were created (summed over partitions)."""

    log_events: int = 0  # state events ever appended to the partition logs
    retries: int = 0  # attempts that ended in run.retrying
    reclaims: int = 0  # attempts begun on a job whose previous attempt's lease expired
    dead_letters: int = 0  # jobs written to the dead-letter streams
    finished: dict[str, int] = field(default_factory=dict)  # terminal status -> runs


@dataclass(frozen=True, slots=True)
class DeploymentStatus:
    queues: list[QueueStatus]
    projections: list[GroupLag]
    delayed: int
    dead_letters: int
    log_length: int
    counters: Counters = field(default_factory=Counters)


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
            pipe.xinfo_stream(keys.log(p))
            pipe.xinfo_groups(keys.log(p))
            pipe.hgetall(keys.stats(p))
        replies = iter(await pipe.execute(raise_on_error=False))

    per_agent: dict[str, dict[str, float]] = {
        a: {"len": 0, "pending": 0, "consumers": 0, "age": 0.0} for a in agents
    }
    groups: dict[str, dict[str, Any]] = {}
    delayed = dead = log_length = 0
    totals: dict[str, int] = {}
    for _ in partitions:
        for agent in agents:
            length, infos, oldest = next(replies), next(replies), next(replies)
            acc = per_agent[agent]
            acc["len"] += _int(length)
            for info in _list(infos):
                if as_text(info.get("name")) == WORKERS_GROUP:
                    acc["pending"] += int(info.get("pending", 0))
                    acc["consumers"] = max(acc["consumers"], int(info.get("consumers", 0)))
            for entry in _list(oldest):
                enqueued_ms = int(as_text(entry["message_id"]).split("-")[0])
                acc["age"] = max(acc["age"], (now_ms - enqueued_ms) / 1000)
        delayed += _int(next(replies))
        dead += _int(next(replies))
        log_info = next(replies)  # an error when the log does not exist yet
        if isinstance(log_info, Mapping):
            log_length += _int(log_info.get("length"))
            totals["log_events"] = totals.get("log_events", 0) + _int(log_info.get("entries-added"))
        for info in _list(next(replies)):
            name = as_text(info.get("name"))
            g = groups.setdefault(name, {"pending": 0, "lag": 0, "last": "0-0"})
            g["pending"] += int(info.get("pending", 0))
            g["lag"] += int(info.get("lag") or 0)
            g["last"] = max(g["last"], as_text(info.get("last-delivered-id", "0-0")), key=_id_key)
        stats = next(replies)
        for name, value in stats.items() if isinstance(stats, Mapping) else ():
            totals[as_text(name)] = totals.get(as_text(name), 0) + _int(value)

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
    return DeploymentStatus(queues, lags, delayed, dead, log_length, _counters(totals))


def _counters(totals: Mapping[str, int]) -> Counters:
    return Counters(
        log_events=totals.get("log_events", 0),
        retries=totals.get("retries", 0),
        reclaims=totals.get("reclaims", 0),
        dead_letters=totals.get("dead_letters", 0),
        finished={k.removeprefix("finished:"): v for k, v in totals.items() if k.startswith("finished:")},
    )


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | str | bytes) else 0


def _list(value: object) -> list[Mapping[str, Any]]:
    return cast(list[Mapping[str, Any]], value) if isinstance(value, list) else []


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms or 0), int(seq or 0)
