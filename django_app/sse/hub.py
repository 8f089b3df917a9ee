"""The per-process SSE hub: every client of this event loop over O(1) Redis connections.

::

    subscribe(run, after_seq, buffer) --> runs[run] = cursor, buffers    --XADD--> wake stream
    tail task (one per shard):  XREAD BLOCK  {its run streams at their cursors, its wake stream}
        -> decode + encode each event ONCE -> buffer.deliver(frames) for every client of the run
    a buffer that overflows is dropped (its client is closed and resumes by Last-Event-ID)

A new subscription must not wait for the blocking read in flight to time out, so the hub XADDs
to a wake-up stream of its own that every read includes; cancelling the read instead would
cost a connection each time (redis-py drops a connection whose command was interrupted).
Unsubscribing needs no wake: a read over one stream too many is harmless.

Shards (``core.cluster.SlotRouting``): on a single Redis (or fakeredis) ONE tail task reads every
run. An XREAD may not span slots on Redis Cluster, so there the hub runs one tail task per
partition that has subscribers, each with its own wake-up stream in that partition's slot: at
most ``PARTITIONS`` blocking connections, whatever the number of clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import redis.asyncio as aioredis

from agentstream.core.cluster import SlotRouting, is_cluster_url, ready
from agentstream.core.codec import decode_entry
from agentstream.core.errors import CorruptEntry
from agentstream.core.logfmt import run_fields
from agentstream.core.settings import Settings
from agentstream.core.store import EventStore, Redis, after_seq_id, redis_from_url
from agentstream.django_app.sse.framing import Frame

log = logging.getLogger("agentstream.sse")

WAKE_STREAM_TTL_S = 3600
READ_POOL_CONNECTIONS = 8
CLIENT_NAME = "agentstream-sse"  # in CLIENT LIST: how many connections the hubs hold  # replays and wake-ups of this hub, whatever the number of clients


class Subscriber(Protocol):
    def deliver(self, frames: Sequence[Frame]) -> bool:
        """Take frames (called on the hub's loop, never blocks); False when the buffer overflowed."""
        ...

    def close(self) -> None:
        """The hub let go of this subscriber (overflow or shutdown): end the client's stream."""
        ...


@dataclass(slots=True)
class _RunTail:
    cursor: int
    key: str  # the run's stream
    shard: int  # the blocking read that tails it
    subscribers: set[Subscriber] = field(default_factory=set)
    ended: bool = False  # terminal event seen: nothing more to read


@dataclass(slots=True)
class _Shard:
    """One blocking XREAD: the runs of its partitions, plus a wake-up stream in the same slot."""

    wake_key: str
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    reading: bool = False
    wake_sent: bool = False
    wake_cursor: str = "0-0"
    task: asyncio.Task[None] | None = None


def hub_clients(url: str, block_ms: int = 10_000) -> tuple[Redis, Redis]:
    """(reads, blocking tail): a bounded pool for replays and wake-ups, and the tails' client.

    The tail's socket timeout outlasts its XREAD BLOCK (redis-py 8 defaults to 5 s, which would
    cut every longer block short and drop the connection). On a single Redis the tail holds one
    connection; on a cluster one per partition with subscribers (a node's pool hands each
    concurrent XREAD its own), however many clients there are."""
    if url.startswith("fakeredis://"):
        return redis_from_url(url), redis_from_url(url)
    tail_timeout_s = block_ms / 1000 + 5
    if is_cluster_url(url):
        return (
            redis_from_url(url, client_name=CLIENT_NAME),
            redis_from_url(url, client_name=CLIENT_NAME, socket_timeout=tail_timeout_s),
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=READ_POOL_CONNECTIONS,
        timeout=10,
        health_check_interval=30,
        client_name=CLIENT_NAME,
    )
    tail = aioredis.Redis.from_url(
        url, health_check_interval=30, client_name=CLIENT_NAME, socket_timeout=tail_timeout_s
    )
    return aioredis.Redis(connection_pool=pool), tail


class Hub:
    def __init__(
        self, settings: Settings, *, block_ms: int = 10_000, count: int = 500, url: str | None = None
    ) -> None:
        self.settings = settings
        self.hub_id = uuid.uuid4().hex
        self.block_ms = block_ms
        self.count = count
        self.reads, self._blocking = hub_clients(url or settings.REDIS_URL, block_ms)
        self.store = EventStore(self.reads, settings)
        # one shard on a single Redis; one per partition on a cluster (an XREAD spans one slot)
        self._routing = SlotRouting.of(self._blocking)
        self._runs: dict[str, _RunTail] = {}
        self._shards: dict[int, _Shard] = {}
        self._closed = False
        self.deliveries = 0  # frames handed to clients (for the benchmark and tests)
        self.dropped = 0  # clients closed because their buffer overflowed

    # -- clients ------------------------------------------------------------------------------

    @property
    def clients(self) -> int:
        return sum(len(t.subscribers) for t in self._runs.values())

    @property
    def runs(self) -> int:
        return len(self._runs)

    @property
    def shards(self) -> int:
        """Blocking reads this hub keeps (its tail connections)."""
        return len(self._shards)

    @property
    def _reading(self) -> bool:
        return any(shard.reading for shard in self._shards.values())

    async def subscribe(self, run_id: str, after_seq: int, subscriber: Subscriber) -> int:
        """Deliver the run's events to ``subscriber`` from now on; returns the seq the hub has
        read the run up to. Above ``after_seq``, the caller reads the events in between itself
        (the hub already tailed the run for other clients). ``after_seq`` must not be past the
        stream's last entry: the first client's sets the run's shared cursor, and the read would
        return nothing below it to anyone (the view refuses a resume id ahead of the run)."""
        if self._closed:
            raise RuntimeError("the SSE hub is closed")
        tail = self._runs.get(run_id)
        if tail is None:
            keys = self.store.keys
            shard_id = self._routing.shard_of(keys.run_partition(run_id))
            tail = self._runs[run_id] = _RunTail(after_seq, keys.run_stream(run_id), shard_id)
        tail.subscribers.add(subscriber)
        shard = self._shard(tail.shard)
        shard.changed.set()
        if shard.reading and not shard.wake_sent:
            shard.wake_sent = True  # one wake per read in flight, however many clients join
            try:
                await self._wake(shard)
            except asyncio.CancelledError:
                shard.wake_sent = False  # maybe never sent: the next client of this read sends one
                raise
            except Exception as exc:  # the read in flight still ends within block_ms
                log.warning("SSE hub wake-up failed (%s); the new client waits for the next read", exc)
        return tail.cursor

    def _shard(self, shard_id: int) -> _Shard:
        shard = self._shards.get(shard_id)
        if shard is None:
            # the wake stream carries the shard's tag: on a cluster it shares the runs' slot
            shard = self._shards[shard_id] = _Shard(self.store.keys.sse_wake(self.hub_id, shard_id))
        if shard.task is None or shard.task.done():
            shard.task = asyncio.get_running_loop().create_task(
                self._tail(shard_id, shard), name=f"sse-hub-{self.hub_id}-{shard_id}"
            )
        return shard

    async def _wake(self, shard: _Shard) -> None:
        async with self.reads.pipeline(transaction=False) as pipe:
            pipe.xadd(shard.wake_key, {"w": "1"}, maxlen=16, approximate=True)
            pipe.expire(shard.wake_key, WAKE_STREAM_TTL_S)
            await pipe.execute()

    def unsubscribe(self, run_id: str, subscriber: Subscriber) -> None:
        """Free the client at once (its run is dropped from the read when it was the last one)."""
        tail = self._runs.get(run_id)
        if tail is None:
            return
        tail.subscribers.discard(subscriber)
        if not tail.subscribers:
            del self._runs[run_id]

    # -- the tail loops -----------------------------------------------------------------------

    async def _tail(self, shard_id: int, shard: _Shard) -> None:
        backoff_s = 0.05
        with contextlib.suppress(Exception):  # a cluster client that knows its slots before the
            await ready(self._blocking)  # shards' first reads opens no spare connections
        while not self._closed:
            streams = self._streams(shard_id)
            if not streams:
                shard.changed.clear()
                await shard.changed.wait()
                continue
            shard.changed.clear()
            streams[shard.wake_key] = shard.wake_cursor
            shard.reading = True
            shard.wake_sent = False
            try:
                reply = await self._blocking.xread(cast(Any, streams), count=self.count, block=self.block_ms)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: clients keep their cursors; retry with backoff
                log.warning("SSE hub read failed (%s); retrying in %.2fs", exc, backoff_s)
                shard.reading = False
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
                continue
            finally:
                shard.reading = False
            backoff_s = 0.05
            self._fan_out(shard, reply or [])

    def _streams(self, shard_id: int) -> dict[str, str]:
        return {
            tail.key: after_seq_id(tail.cursor)
            for tail in self._runs.values()
            if tail.shard == shard_id and not tail.ended
        }

    def _fan_out(
        self, shard: _Shard, reply: Sequence[tuple[bytes, Sequence[tuple[bytes, dict[bytes, bytes]]]]]
    ) -> None:
        for raw_key, entries in reply:
            key = raw_key.decode()
            if key == shard.wake_key:
                if entries:
                    shard.wake_cursor = entries[-1][0].decode()
                continue
            run_id = key.rsplit(":", 1)[-1]
            tail = self._runs.get(run_id)
            if tail is None or not entries:
                continue
            frames: list[Frame] = []
            for _, fields in entries:
                try:
                    frames.append(Frame.of(decode_entry(fields, run_id)))
                except CorruptEntry as exc:
                    log.error(
                        "run %s: skipping an undecodable stream entry: %s",
                        run_id,
                        exc,
                        extra=run_fields(run_id),
                    )
            # past every entry read, decodable or not: a cursor left below a bad last entry read
            # it again at once, forever (a busy loop and thousands of log lines a second)
            tail.cursor = seq_of_entry(entries[-1][0])
            if not frames:
                continue
            tail.ended = any(f.event.is_terminal for f in frames)
            for subscriber in list(tail.subscribers):
                if subscriber.deliver(frames):
                    self.deliveries += len(frames)
                else:
                    self.dropped += 1
                    self.unsubscribe(run_id, subscriber)
                    subscriber.close()

    async def close(self) -> None:
        self._closed = True
        for tail in list(self._runs.values()):
            for subscriber in tail.subscribers:
                subscriber.close()
        self._runs.clear()
        shards = list(self._shards.values())
        for shard in shards:
            # wake the read rather than cancel it: redis-py may swallow a cancel mid-read and
            # hold on until the block times out
            shard.changed.set()
            with contextlib.suppress(Exception):
                if shard.reading:
                    await self._wake(shard)
        tasks = [s.task for s in shards if s.task is not None and not s.task.done()]
        if tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(asyncio.gather(*tasks, return_exceptions=True)), 2)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            async with self.reads.pipeline(transaction=False) as pipe:
                for shard in shards:
                    pipe.delete(shard.wake_key)
                await pipe.execute()
        await self._blocking.aclose()
        await self.reads.aclose()
        if isinstance(self.reads, aioredis.Redis):
            await self.reads.connection_pool.disconnect()  # a pool passed in is not closed with its client


def seq_of_entry(entry_id: bytes) -> int:
    """A run stream's entry id is ``0-<seq>``."""
    return int(entry_id.rpartition(b"-")[2])


# One hub per event loop (a loop's Redis connections cannot serve another loop).
_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()
_closing: set[asyncio.Task[None]] = set()


def hub_for_loop(settings: Settings) -> Hub:
    """The running loop's hub, made on first use (and again when the settings changed)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is not None and hub.settings is not settings:
        old, hub = hub, None
        closing = loop.create_task(old.close())
        _closing.add(closing)  # keep a reference until it is done
        closing.add_done_callback(_closing.discard)
    if hub is None:
        hub = _hubs[loop] = Hub(settings)
    return hub
