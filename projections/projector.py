"""The projector: one readable loop per projection (DESIGN §7).

    read (XAUTOCLAIM what dead consumers left, else XREADGROUP every partition log)
      -> decode (undecodable entries are recorded, never retried)
      -> apply (one transaction, in the projection's own DB thread)
      -> XACK (only after COMMIT)

A failed apply (PostgreSQL down, a deadlock, a bug in a user's projection) is retried, the same
batch, with exponential backoff and jitter: nothing is acked before it is committed, so nothing
is lost. Several processes share a group; redelivery is harmless because writes are idempotent.
Redis going away (restart, failover, a cut connection) is waited out the same way: every read,
claim and ack is retried with backoff until Redis answers again or the projector is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.db import connections, transaction
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agentstream.core.cluster import SlotReads, SlotRouting
from agentstream.core.codec import as_text
from agentstream.core.errors import CorruptEntry
from agentstream.core.events import Event
from agentstream.core.keys import Keys
from agentstream.core.store import Redis
from agentstream.projections.entries import decode_log_entry
from agentstream.projections.projection import Projection
from agentstream.projections.sql import Skipped, SqlWriter

log = logging.getLogger("agentstream.projections")
T = TypeVar("T")
# Redis down, restarting or still loading its AOF (BusyLoadingError is a ConnectionError)
REDIS_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)


@dataclass(frozen=True, slots=True)
class ProjectorOptions:
    batch: int = 500
    block_ms: int = 1000
    claim_idle_ms: int = 30_000  # an entry pending this long belongs to a dead (or stuck) consumer
    claim_every_s: float = 5.0
    sweep_every_s: float = 5.0  # how often the projection's ``sweep`` runs (its outbox, if any)
    backoff_base_s: float = 0.1
    backoff_max_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Delivery:
    """Log entries read in one go: what to apply, what to skip, and what to ack afterwards."""

    events: list[Event] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    acks: dict[int, list[str]] = field(default_factory=dict)  # partition -> entry ids

    @property
    def size(self) -> int:
        return sum(len(ids) for ids in self.acks.values())

    def last_ids(self) -> dict[int, str]:
        return {p: max(ids, key=_id_key) for p, ids in self.acks.items() if ids}


def _already_set() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


async def _stopped_within(stop: asyncio.Event, delay_s: float) -> bool:
    """Wait ``delay_s``; True as soon as ``stop`` is set (the caller gives up its retry)."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=delay_s)
    except TimeoutError:
        return False
    return True


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, n = entry_id.partition("-")
    return int(ms), int(n or 0)


def decode_delivery(partition_entries: Sequence[tuple[int, Sequence[tuple[Any, Any]]]]) -> Delivery:
    """Decode raw entries; what does not decode into a well-formed event is marked skipped."""
    delivery = Delivery()
    for partition, entries in partition_entries:
        ids = delivery.acks.setdefault(partition, [])
        for raw_id, fields in entries:
            entry_id = as_text(raw_id)
            ids.append(entry_id)
            if not fields:  # deleted while pending
                continue
            try:
                event = decode_log_entry(fields)
            except CorruptEntry as exc:
                delivery.skipped.append(Skipped(partition, entry_id, str(exc), repr(dict(fields))))
                continue
            delivery.events.append(event)
    return delivery


class Projector:
    """Applies the partition logs to one projection through its consumer group."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        projection: Projection,
        *,
        database: str = "default",
        options: ProjectorOptions | None = None,
        consumer: str | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.projection = projection
        self.database = database
        self.options = options or ProjectorOptions()
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.logs = {keys.log(p): p for p in range(keys.partitions)}
        # one XREADGROUP over every log on a single Redis; one per partition on a cluster
        self._log_groups = SlotRouting.of(redis).group(self.logs, self.logs.__getitem__)
        self._reads: SlotReads[str, list[Any]] = SlotReads()
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"projector-{projection.name}")
        self._claim_cursors = dict.fromkeys(range(keys.partitions), "0-0")
        self._next_claim_at = 0.0
        self._next_sweep_at = 0.0  # at once: a restarted projector delivers what is overdue first
        self.applied = 0  # entries applied and acked by this process
        self.failures = 0  # failed apply attempts (each retried)

    @property
    def group(self) -> str:
        return self.projection.group

    async def ensure_groups(self) -> None:
        """Create the group on every partition log, from the start of the log (idempotent)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for log_key in self.logs:
                pipe.xgroup_create(log_key, self.group, id="0", mkstream=True)
            for result in await pipe.execute(raise_on_error=False):
                if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                    raise result

    async def run(self, *, burst: bool = False, stop: asyncio.Event | None = None) -> None:
        """Project until ``stop`` is set; ``burst``: until the logs are drained, then return."""
        stop = stop or asyncio.Event()
        prefetch: asyncio.Task[Delivery | None] | None = None
        try:
            if not await self._until_redis_answers("creating its groups", self._ensure_groups, stop):
                return
            while not stop.is_set():
                await self._sweep_if_due()
                delivery = await (prefetch or self._next_delivery_or_stop(burst, stop))
                prefetch = None
                if delivery is None:
                    return  # stopped while Redis was away
                if delivery.size == 0:
                    if burst:
                        return
                    continue
                # read and decode the next batch while this one commits (the DB waits are long)
                prefetch = asyncio.create_task(self._next_delivery_or_stop(burst, stop))
                if not await self.apply(delivery, stop):
                    return  # stopped while retrying: the batch stays pending for the next consumer
                # committed: an ack lost to a Redis outage only means a harmless redelivery
                await self._until_redis_answers("acking", functools.partial(self._ack_true, delivery), stop)
        finally:
            if prefetch is not None:
                await self._finish_prefetched(prefetch)
            await self.close()

    async def _ensure_groups(self) -> bool:
        await self.ensure_groups()
        return True

    async def _ack_true(self, delivery: Delivery) -> bool:
        await self.ack(delivery)
        return True

    async def _next_delivery_or_stop(self, burst: bool, stop: asyncio.Event) -> Delivery | None:
        return await self._until_redis_answers("reading the logs", lambda: self.next_delivery(burst), stop)

    async def _until_redis_answers(
        self, doing: str, call: Callable[[], Awaitable[T]], stop: asyncio.Event
    ) -> T | None:
        """``call()``, retried with exponential backoff and jitter while Redis is unreachable;
        None when ``stop`` is set first."""
        failures = 0
        while True:
            try:
                return await call()
            except REDIS_UNAVAILABLE as exc:
                failures += 1
                delay_s = self._backoff_s(failures)
                log.warning(
                    "projection %s: Redis unavailable while %s (%s); retry %d in %.2fs",
                    self.projection.name, doing, exc, failures, delay_s,
                )  # fmt: skip
                if await _stopped_within(stop, delay_s):
                    return None

    def _backoff_s(self, failures: int) -> float:
        """Exponential backoff with jitter, so projectors do not retry in lockstep."""
        delay_s: float = min(self.options.backoff_max_s, self.options.backoff_base_s * 2 ** min(failures, 16))
        return delay_s * random.uniform(0.5, 1.5)

    async def next_delivery(self, burst: bool) -> Delivery:
        delivery = await self.claim_stale()
        if delivery.size == 0:
            delivery = await self.read(block_ms=None if burst else self.options.block_ms)
        return delivery

    async def _finish_prefetched(self, prefetch: asyncio.Task[Delivery | None]) -> None:
        """Stopping with a batch already read: apply it once (no retries) rather than leave it to
        wait ``claim_idle_ms`` for another consumer."""
        try:
            delivery = await prefetch
        except Exception:
            return
        if delivery is not None and delivery.size and await self.apply(delivery, _already_set()):
            with contextlib.suppress(*REDIS_UNAVAILABLE):
                await self.ack(delivery)

    async def _sweep_if_due(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep_at:
            return
        self._next_sweep_at = now + self.options.sweep_every_s
        try:
            await self.sweep()
        except Exception as exc:  # PostgreSQL away: the next sweep tries again; batches go on
            log.warning("projection %s: sweep failed (%s: %s)", self.projection.name, type(exc).__name__, exc)

    async def sweep(self) -> int:
        """Run the projection's ``sweep`` on the DB thread (between batches, never inside one)."""
        return await asyncio.get_running_loop().run_in_executor(self._db, self._sweep_sync)

    def _sweep_sync(self) -> int:
        connection = connections[self.database]
        try:
            return self.projection.sweep(connection)
        except Exception:
            connection.close()  # a broken connection is replaced on the next attempt
            raise

    async def read(self, *, block_ms: int | None) -> Delivery:
        replies = await self._reads.read(self._log_groups, self._read_logs, block_ms)
        return decode_delivery(
            [(self.logs[as_text(key)], entries) for reply in replies for key, entries in reply]
        )

    async def _read_logs(self, log_keys: list[str], block_ms: int | None) -> list[Any]:
        streams: dict[Any, Any] = dict.fromkeys(log_keys, ">")
        reply: Any = await self.redis.xreadgroup(
            self.group, self.consumer, streams, count=self.options.batch, block=block_ms
        )
        return list(reply or [])

    async def claim_stale(self, *, force: bool = False) -> Delivery:
        """Take over entries pending past ``claim_idle_ms`` (their consumer died mid-batch)."""
        now = time.monotonic()
        if not force and now < self._next_claim_at:
            return Delivery()
        self._next_claim_at = now + self.options.claim_every_s
        async with self.redis.pipeline(transaction=False) as pipe:
            for log_key, partition in self.logs.items():
                pipe.xautoclaim(
                    log_key,
                    self.group,
                    self.consumer,
                    self.options.claim_idle_ms,
                    start_id=self._claim_cursors[partition],
                    count=self.options.batch,
                )
            replies = await pipe.execute()
        found: list[tuple[int, Sequence[tuple[Any, Any]]]] = []
        for (_, partition), reply in zip(self.logs.items(), replies, strict=True):
            self._claim_cursors[partition] = as_text(reply[0])
            if reply[1]:
                found.append((partition, reply[1]))
        if found:
            log.info(
                "projection %s: took over %d stale entries",
                self.projection.name,
                sum(len(e) for _, e in found),
            )
        return decode_delivery(found)

    async def apply(self, delivery: Delivery, stop: asyncio.Event | None = None) -> bool:
        """Commit the delivery in one transaction; on failure back off and retry the same one.

        False when ``stop`` was set while backing off (nothing committed, nothing to ack)."""
        loop = asyncio.get_running_loop()
        stop = stop or asyncio.Event()
        failures = 0
        while True:
            try:
                await loop.run_in_executor(self._db, self._apply_sync, delivery)
                return True
            except Exception as exc:
                failures += 1
                self.failures += 1
                delay_s = self._backoff_s(failures)
                log.warning(
                    "projection %s: applying %d entries failed (%s: %s); retry %d in %.2fs",
                    self.projection.name, delivery.size, type(exc).__name__, exc, failures, delay_s,
                )  # fmt: skip
                if await _stopped_within(stop, delay_s):
                    return False

    def _apply_sync(self, delivery: Delivery) -> None:
        connection = connections[self.database]
        try:
            with transaction.atomic(using=self.database):
                wanted = [e for e in delivery.events if self.projection.wants(e.type)]
                if wanted:
                    self.projection.handle(wanted, connection)
                writer = SqlWriter(connection)
                writer.record_skipped(self.projection.name, delivery.skipped)
                writer.save_checkpoints(self.projection.name, delivery.last_ids())
        except Exception:
            # a broken connection is replaced on the next attempt
            connection.close()
            raise

    async def ack(self, delivery: Delivery) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition, ids in delivery.acks.items():
                if ids:
                    pipe.xack(self.keys.log(partition), self.group, *ids)
            await pipe.execute()
        self.applied += delivery.size

    def _close_sync(self) -> None:
        connections[self.database].close()  # the DB thread's own connection

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await self._reads.close()  # what a cut read took stays pending: claimed after claim_idle_ms
        try:
            await loop.run_in_executor(self._db, self._close_sync)
        finally:
            self._db.shutdown(wait=False)
