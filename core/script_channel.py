"""A connection of its own for the worker's script batches, written the moment a batch is ready.

Why: redis-py sends a pipeline from a coroutine, and a coroutine starts on the event loop's next
turn, after every callback already queued. In a worker that is after all the runs that just woke
up: the worker computes while Redis idles, then Redis computes while the worker idles (measured:
the two CPU costs per run added up instead of overlapping). Here a batch is written to the socket
synchronously, and replies are handed to their callbacks in order as they arrive (hiredis parses
them; no coroutine, timeout or callback chain per reply).

The connection is one of the client's pool, made by redis-py (every URL option, TLS, unix sockets,
AUTH, SELECT, client name), checked out for good and driven directly through its stream pair;
closing the client closes it. Should redis-py stop exposing that pair,
``ScriptChannel.of`` returns None and the batcher keeps using pipelines: only the saving is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("agentstream.store")

Reply = Callable[[Any], None]  # gets the reply, or the exception that stands for it


class ScriptChannel:
    """Commands written at once, in order; each reply goes to the callback sent with it.

    On a lost connection every callback still waiting gets a ``ConnectionError`` (the caller
    decides whether to retry: a script's effects are unknown then, exactly as with any client);
    the next send connects again. A reply that takes longer than ``timeout_s`` counts as a lost
    connection. Nothing runs while nothing is owed: the reading task ends with the last reply,
    so an idle channel leaves no task behind.
    """

    def __init__(self, client: aioredis.Redis, timeout_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._connection: Any = None  # redis-py's, connected and authenticated
        self._writer: asyncio.StreamWriter | None = None
        self._stream: asyncio.StreamReader | None = None
        self._parser: Any = None
        self._waiting: deque[Reply] = deque()
        self._unsent: list[tuple[bytes, list[Reply]]] = []  # while (re)connecting
        self._connecting: asyncio.Task[None] | None = None
        self._reading: asyncio.Task[None] | None = None
        self._giving_back: set[asyncio.Task[None]] = set()

    @classmethod
    def of(cls, client: object, timeout_s: float) -> ScriptChannel | None:
        """A channel for a plain asyncio ``Redis`` client (not a cluster, not fakeredis)."""
        if type(client) is not aioredis.Redis:
            return None
        if not {"_reader", "_writer"} <= set(getattr(AbstractConnection, "__slots__", ())):
            return None
        return cls(client, timeout_s)

    def send(self, commands: list[tuple[Any, ...]], replies: list[Reply]) -> None:
        """Write ``commands`` now (or once connected); ``replies[i]`` gets command i's reply."""
        data = b"".join(hiredis.pack_command(c) for c in commands)
        if self._went_away():
            self._drop(RedisConnectionError("Redis closed the connection of the script channel"))
        if self._writer is not None and not self._unsent:
            self.send_packed(data, replies)
            return
        self._unsent.append((data, replies))
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())

    def _went_away(self) -> bool:
        """An idle connection that Redis closed meanwhile (a restart): noticed before writing."""
        writer, stream = self._writer, self._stream
        if writer is None or stream is None or self._waiting:
            return False
        return stream.at_eof() or writer.is_closing()

    async def close(self) -> None:
        for task in (self._connecting, self._reading):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._connecting = None
        failure = RedisConnectionError("the script channel was closed")
        unsent, self._unsent = self._unsent, []
        for _, replies in unsent:
            for reply in replies:
                reply(failure)
        self._drop(failure)
        if self._giving_back:
            await asyncio.wait(set(self._giving_back))

    async def _connect(self) -> None:
        try:
            # checked out of the client's pool for good: closing the client closes it too
            connection: Any = await self._client.connection_pool.get_connection()  # type: ignore[no-untyped-call, unused-ignore]
            if (
                connection._reader is None or connection._reader.at_eof()
            ):  # idle in the pool while Redis restarted
                await connection.disconnect()
                await connection.connect()
            if connection._writer is None or connection._reader is None:
                raise RedisConnectionError("redis-py made no stream pair for the script channel")
        except Exception as exc:  # every unsent command learns why
            unsent, self._unsent = self._unsent, []
            self._connecting = None
            failure = exc if isinstance(exc, RedisConnectionError) else RedisConnectionError(str(exc))
            for _, replies in unsent:
                for reply in replies:
                    reply(failure)
            return
        self._connection = connection
        self._writer, self._stream = connection._writer, connection._reader
        self._parser = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)
        self._connecting = None
        unsent, self._unsent = self._unsent, []
        for data, replies in unsent:
            self.send_packed(data, replies)

    def send_packed(self, data: bytes, replies: list[Reply]) -> None:
        assert self._writer is not None
        self._waiting.extend(replies)
        self._writer.write(data)
        if self._reading is None:
            self._reading = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        stream, parser, waiting = self._stream, self._parser, self._waiting
        assert stream is not None and parser is not None
        try:
            while waiting:
                try:
                    async with asyncio.timeout(self._timeout_s):
                        data = await stream.read(1 << 16)
                except TimeoutError:
                    raise RedisTimeoutError(
                        f"Redis did not answer a script batch within {self._timeout_s:g}s"
                    ) from None
                if not data:
                    raise RedisConnectionError("Redis closed the connection of the script channel")
                parser.feed(data)
                while waiting and (reply := parser.gets()) is not False:
                    waiting.popleft()(reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("script channel lost (%s); connecting again for the next batch", exc)
            transient = isinstance(exc, RedisConnectionError | RedisTimeoutError)
            self._drop(exc if transient else RedisConnectionError(str(exc)))
        finally:
            if self._reading is asyncio.current_task():
                self._reading = None

    async def _give_back(self, connection: Any) -> None:
        with contextlib.suppress(Exception):
            await connection.disconnect()
        await self._client.connection_pool.release(connection)

    def _drop(self, exc: Exception) -> None:
        """Forget the connection; every reply still owed gets ``exc``."""
        connection = self._connection
        self._connection = self._writer = self._stream = self._parser = None
        if connection is not None:
            task = asyncio.get_running_loop().create_task(self._give_back(connection))
            self._giving_back.add(task)  # a reference until it is done
            task.add_done_callback(self._giving_back.discard)
        waiting, self._waiting = self._waiting, deque()
        for reply in waiting:
            reply(exc)
