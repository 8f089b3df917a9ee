"""Refuse to write to a Redis that evicts keys.

Redis holds the truth: an evicting ``maxmemory-policy`` (``allkeys-lru``, ``volatile-ttl``, ...)
silently deletes runs, queues and partition logs when memory fills. Every process that writes
(API, workers, projectors, the demo) checks the policy at start and refuses anything but
``noeviction``. The policy is read with ``CONFIG GET``; a managed Redis that renames or denies
``CONFIG`` is asked ``INFO memory``; if neither answers, one warning and the process goes on.
``ALLOW_EVICTING_REDIS = True`` skips the refusal for those who accept losing runs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster

from agentstream.core.codec import as_text
from agentstream.core.errors import ConfigurationError
from agentstream.core.settings import Settings
from agentstream.core.store import Redis, redis_from_url

log = logging.getLogger("agentstream")

SAFE_POLICY = "noeviction"

_warned: set[str] = set()  # one warning per process and Redis, not one per client


async def eviction_policy(client: Redis) -> str | None:
    """The server's ``maxmemory-policy``, or None when both CONFIG and INFO are refused.

    On a cluster every node is asked (a command would reach just one) and the first evicting
    policy found is the answer: one evicting master loses the runs of its partitions."""
    if isinstance(client, RedisCluster):
        await client.initialize()  # learn the nodes before naming them
        policies = [await _policy(client, node) for node in client.get_nodes()]
        known = [p for p in policies if p is not None]
        evicting = [p for p in known if p != SAFE_POLICY]
        return evicting[0] if evicting else (SAFE_POLICY if known else None)
    return await _policy(client)


async def _policy(client: Redis, node: ClusterNode | None = None) -> str | None:
    target: dict[str, Any] = {} if node is None else {"target_nodes": node}
    try:
        config = await client.execute_command("CONFIG GET", "maxmemory-policy", **target)
        value = dict(config).get("maxmemory-policy")  # redis-py decodes the keys of this reply
        if value:
            return as_text(value)
    except redis.exceptions.ResponseError:  # renamed (unknown command) or denied by an ACL
        pass
    try:
        info = await client.execute_command("INFO", "memory", **target)
    except redis.exceptions.ResponseError:
        return None
    value = info.get("maxmemory_policy")
    return as_text(value) if value else None


async def ensure_noeviction(client: Redis, settings: Settings) -> None:
    """Raise ``ConfigurationError`` unless the Redis behind ``client`` never evicts keys."""
    if settings.ALLOW_EVICTING_REDIS or type(client).__module__.startswith("fakeredis"):
        return
    policy = await eviction_policy(client)
    if policy is None:
        if settings.REDIS_URL not in _warned:
            _warned.add(settings.REDIS_URL)
            log.warning(
                "could not read Redis' maxmemory-policy (CONFIG and INFO are denied); make sure it is "
                "noeviction, or an evicting Redis will silently lose runs"
            )
        return
    if policy != SAFE_POLICY:
        raise ConfigurationError(
            f"Redis has maxmemory-policy {policy!r}: it evicts keys and would silently lose runs; "
            f"set 'maxmemory-policy noeviction' in redis.conf (or CONFIG SET), or set "
            f"ALLOW_EVICTING_REDIS = True to accept losing runs"
        )


UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def ensure_noeviction_at_start(settings: Settings) -> None:
    """The check from a command's sync start, before it spawns processes or binds a port.

    An unreachable Redis is not refused here: what the command starts checks again once Redis
    answers (each worker in ``Worker.run``, the API on its first request), as it did before.
    """

    async def check() -> None:
        client = redis_from_url(settings.REDIS_URL)
        try:
            await ensure_noeviction(client, settings)
        finally:
            await client.aclose()

    try:
        asyncio.run(check())
    except UNREACHABLE as exc:
        log.warning("Redis is unreachable (%s); maxmemory-policy is checked once it answers", exc)


async def ensure_noeviction_when_reachable(
    client: Redis, settings: Settings, max_delay_s: float = 10.0
) -> None:
    """The check, retried with capped backoff while Redis is unreachable (a projector may start
    before Redis and must wait for it, not exit)."""
    delay_s = 0.1
    while True:
        try:
            return await ensure_noeviction(client, settings)
        except UNREACHABLE as exc:
            log.warning("Redis is unreachable (%s); checking maxmemory-policy again in %.1fs", exc, delay_s)
            await asyncio.sleep(delay_s)
            delay_s = min(max_delay_s, delay_s * 2)
