"""Redis Cluster: the client for a cluster URL, and which keys one command may span.

Every key of a partition carries the hash tag ``{p}``, so a partition is one slot and every Lua
script runs on one node. What does NOT hold on a cluster is a single command over the keys of
several partitions (XREADGROUP over every queue or log, XREAD over many runs): Redis refuses it
with CROSSSLOT even when the slots live on one node. ``SlotRouting`` is the one place that
decides how such reads are grouped:

* single Redis (and fakeredis): ONE group holding every partition, so today's single command
  (the measured fast path) stays one command;
* Redis Cluster: one group per partition. ``SlotReads`` sends one command per group, all at
  once (each on a connection of the node that serves the slot); a blocking read returns with
  the first group that answers and leaves the others in flight (``FanIn``). The connections a
  process holds grow with ``PARTITIONS``, never with the number of runs or clients.

The URL spelling ``redis+cluster://host:port[,host:port...][?query]`` (``rediss+cluster://``
for TLS) puts the topology in the one setting every process already takes (``REDIS_URL``, the
CLIs' ``--redis-url``), so a deployment switches to a cluster without a second setting that
could disagree with the address.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from redis._parsers.commands import AsyncCommandsParser
from redis.asyncio.client import PubSub, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
T = TypeVar("T")
K = TypeVar("K", bound=Hashable)
R = TypeVar("R")

# query parameters a cluster URL may carry, and how to read them
_QUERY_OPTIONS: dict[str, Callable[[str], Any]] = {
    "max_connections": int,
    "read_from_replicas": lambda v: v.lower() in ("1", "true", "yes"),
    "require_full_coverage": lambda v: v.lower() in ("1", "true", "yes"),
    "client_name": str,
}


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def cluster_from_url(url: str, **options: Any) -> RedisCluster:
    """A ``RedisCluster`` for ``redis+cluster://[user:password@]host:port[,host:port...]``.

    Any listed node is enough to discover the others; list several so a process can start while
    one of them is down. ``options`` are connection options (timeouts, connection class).
    """
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    nodes = [_node(h, url) for h in hosts.split(",") if h.strip()]
    if not nodes:
        raise ValueError(f"{_redacted(url)}: name at least one node, e.g. redis+cluster://10.0.0.1:6379")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError(
            f"{_redacted(url)}: a Redis Cluster has database 0 only; drop the /{parts.path.strip('/')}"
        )
    if userinfo:
        user, _, password = userinfo.partition(":")
        if user:
            options["username"] = unquote(user)
        if password:
            options["password"] = unquote(password)
    for name, value in parse_qsl(parts.query):
        parse = _QUERY_OPTIONS.get(name)
        if parse is None:
            raise ValueError(
                f"{_redacted(url)}: unknown option {name!r}; cluster URLs take {', '.join(_QUERY_OPTIONS)}"
            )
        options[name] = parse(value)
    if parts.scheme.lower() == "rediss+cluster":
        options["ssl"] = True
    connection_class = options.pop("connection_class", None)
    client = RedisCluster(startup_nodes=nodes, **options)
    if connection_class is not None:
        _use_connection_class(client, connection_class)
    client.commands_parser = StreamKeysParser()
    return client


class StreamKeysParser(AsyncCommandsParser):
    """Finds the keys of XREAD / XREADGROUP without asking the server.

    redis-py routes a command with "movable" keys by sending ``COMMAND GETKEYS`` first: one more
    round trip for every read of the hot paths (measured: 2.2 s of a 9 s worker profile, and a
    connection per concurrent read on the default node). Their keys are simply the first half
    of what follows ``STREAMS``. Should redis-py stop calling this hook, only the saving is lost.
    """

    async def _get_moveable_keys(self, *args: Any) -> tuple[Any, ...] | None:
        keys = stream_keys(args)
        if keys is None:
            found: tuple[Any, ...] | None = await super()._get_moveable_keys(*args)
            return found
        return keys


_OPTION_ARITY = {"GROUP": 3, "COUNT": 2, "BLOCK": 2, "NOACK": 1, "CLAIM": 2}


def stream_keys(args: Sequence[Any]) -> tuple[Any, ...] | None:
    """The keys of ``XREAD`` / ``XREADGROUP args...`` (None for another command or odd args)."""
    if not args or _word(args[0]) not in ("XREAD", "XREADGROUP"):
        return None
    i = 1
    while i < len(args):
        word = _word(args[i])
        if word == "STREAMS":
            rest = args[i + 1 :]
            return tuple(rest[: len(rest) // 2]) if rest and len(rest) % 2 == 0 else None
        step = _OPTION_ARITY.get(word)
        if step is None:
            return None
        i += step
    return None


def _word(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace").upper()
    return str(value).upper()


def _use_connection_class(client: RedisCluster, connection_class: type[Any]) -> None:
    """RedisCluster takes no ``connection_class``; set it where its node manager makes nodes
    (as redis-py itself does for its maintenance hooks). Should that change, only the faster
    packer is lost."""
    manager = getattr(client, "nodes_manager", None)
    kwargs = getattr(manager, "connection_kwargs", None)
    if not isinstance(kwargs, dict):
        return
    kwargs["connection_class"] = connection_class
    for node in getattr(manager, "startup_nodes", {}).values():
        node.connection_class = connection_class


def _node(hostport: str, url: str) -> ClusterNode:
    host, _, port = hostport.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{_redacted(url)}: {hostport!r} is not host:port")
    return ClusterNode(host.strip("[]"), int(port))


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    _, at, hosts = parts.netloc.rpartition("@")
    return f"{parts.scheme}://{'***@' if at else ''}{hosts}{parts.path}"


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


async def ready(client: object) -> None:
    """Let a cluster client learn the slot map before something needs it without a command
    (a pub/sub connection picks its node by the channel's slot); a no-op once it knows it."""
    if isinstance(client, RedisCluster):
        await client.initialize()


def subscriber(client: Redis | RedisCluster, attempt: int = 0) -> PubSub:
    """A pub/sub connection that ignores subscribe confirmations.

    On a cluster it is bound to one node, chosen in turn by ``attempt`` among the nodes the
    client knows: a classic PUBLISH reaches every node, and after a failover the slot map can
    still name the dead master, which a choice by the channel's slot would retry forever."""
    if isinstance(client, RedisCluster):
        nodes = sorted(client.get_nodes(), key=lambda n: n.name)
        if nodes:
            return client.pubsub(node=nodes[attempt % len(nodes)], ignore_subscribe_messages=True)
    return client.pubsub(ignore_subscribe_messages=True)


@dataclass(frozen=True, slots=True)
class SlotRouting:
    """Which partitions one multi-key command may span: all of them, or (cluster) one."""

    clustered: bool

    @classmethod
    def of(cls, client: object) -> SlotRouting:
        return cls(is_cluster(client))

    def shard_of(self, partition: int) -> int:
        """The group a partition's keys are read in (0 holds everything on a single Redis)."""
        return partition if self.clustered else 0

    def group(self, items: Iterable[T], partition: Callable[[T], int]) -> dict[int, list[T]]:
        """``items`` by group, each group's items in their given order."""
        groups: dict[int, list[T]] = {}
        for item in items:
            groups.setdefault(self.shard_of(partition(item)), []).append(item)
        return groups


class FanIn(Generic[K, R]):
    """Blocking reads of several groups at once, each on its own connection.

    ``wait`` returns as soon as one group answers. The others stay in flight and are collected
    by a later call instead of being cancelled: a cancelled XREADGROUP may already have been
    delivered by the server (its entries would wait in the PEL for a reclaim), and redis-py drops
    the connection of an interrupted command.
    """

    def __init__(self) -> None:
        self._in_flight: dict[K, asyncio.Task[R]] = {}

    def busy(self, group: K) -> bool:
        return group in self._in_flight

    @property
    def pending(self) -> bool:
        return bool(self._in_flight)

    def collect(self) -> list[tuple[K, R]]:
        """Answers that arrived since the last call.

        A failed read raises its error only when no other group answered: the answers must not
        be lost (their entries are delivered), and the failed group starts afresh next call."""
        done = [(g, t) for g, t in self._in_flight.items() if t.done()]
        answers: list[tuple[K, R]] = []
        errors: list[BaseException] = []
        for group, task in done:
            del self._in_flight[group]
            error = task.exception()
            if error is None:
                answers.append((group, task.result()))
            else:
                errors.append(error)
        if errors and not answers:
            raise errors[0]
        return answers

    async def wait(self, calls: Mapping[K, Callable[[], Awaitable[R]]]) -> list[tuple[K, R]]:
        """Start the groups' reads that are not in flight yet; wait for the first answer."""
        loop = asyncio.get_running_loop()
        for group, call in calls.items():
            if group not in self._in_flight:
                self._in_flight[group] = loop.create_task(_awaited(call))
        if self._in_flight:
            await asyncio.wait(set(self._in_flight.values()), return_when=asyncio.FIRST_COMPLETED)
        return self.collect()

    async def close(self) -> None:
        """Cancel what is in flight (entries a read already took stay pending for a reclaim)."""
        tasks, self._in_flight = list(self._in_flight.values()), {}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


async def _awaited(call: Callable[[], Awaitable[R]]) -> R:
    return await call()


class SlotReads(Generic[T, R]):
    """A multi-key read split by ``SlotRouting``: one command per group of items.

    ``read(items, block_ms)`` sends the command for one group. With one group (always, on a
    single Redis) it is simply awaited: the single command of old. With several, the groups are
    read concurrently; a blocking read returns the answers of the groups that answered first
    and keeps the others in flight for the next call.
    """

    def __init__(self) -> None:
        self._fan_in: FanIn[int, R] = FanIn()

    async def read(
        self,
        groups: Mapping[int, list[T]],
        read: Callable[[list[T], int | None], Awaitable[R]],
        block_ms: int | None = None,
    ) -> list[R]:
        if len(groups) == 1 and not self._fan_in.pending:
            [items] = groups.values()
            return [await read(items, block_ms)]
        if block_ms:
            calls = {g: _bind(read, items, block_ms) for g, items in groups.items()}
            return [answer for _, answer in await self._fan_in.wait(calls)]
        answers = [answer for _, answer in self._fan_in.collect()]
        idle = [items for g, items in groups.items() if not self._fan_in.busy(g)]
        answers += await asyncio.gather(*(read(items, None) for items in idle))
        return answers

    async def close(self) -> None:
        await self._fan_in.close()


def _bind(
    read: Callable[[list[T], int | None], Awaitable[R]], items: list[T], block_ms: int
) -> Callable[[], Awaitable[R]]:
    return lambda: read(items, block_ms)
