"""The event store on Redis Streams: the only module of ``core`` that talks to Redis.

Every write is one Lua script on one partition (see ``core/lua``); every read is a plain
stream or hash read. Works the same on Redis 7.0+, Redis Cluster (hash tags) and fakeredis.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import orjson
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import DataError, NoScriptError, ResponseError

from agentstream.core import scripts
from agentstream.core.cluster import SlotRouting, cluster_from_url, is_cluster_url
from agentstream.core.codec import as_text, decode_entry, decode_payload, encode_payload, json_default
from agentstream.core.errors import (
    ConversationBusy,
    CorruptEntry,
    EventEncodingError,
    FencedOut,
    IdempotencyConflict,
    IllegalTransition,
    NotFound,
    RunTerminal,
)
from agentstream.core.events import (
    EPHEMERAL_TYPES,
    Event,
    EventType,
    NewEvent,
    Visibility,
    visibility_of,
)
from agentstream.core.ids import idempotency_partition, new_run_id, owner_stream_id, partition_of
from agentstream.core.keys import WORKERS_GROUP, Keys
from agentstream.core.script_channel import ScriptChannel
from agentstream.core.settings import POLICIES, Settings
from agentstream.core.state import RunState, RunStatus
from agentstream.core.tracing import TRACEPARENT

log = logging.getLogger("agentstream.store")

# A single Redis (or fakeredis) or a Redis Cluster: the commands used here exist on both, and
# the reads that differ are grouped in ``core/cluster.py``.
Redis = aioredis.Redis | RedisCluster
# What the stream reads return with decode_responses=False (redis-py's stubs are looser).
Fields = dict[bytes, bytes]
Entries = list[tuple[bytes, Fields]]


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    agent_key: str
    owner: str
    messages: Sequence[Mapping[str, Any]] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    conversation_id: str | None = None
    idempotency_key: str | None = None
    max_attempts: int | None = None
    run_at_ms: int | None = None
    timeout_s: float | None = None
    policy: str | None = None
    # conversation branching: the message this run answers after (``<run id>:<n>``, or ``ROOT``);
    # None: after the conversation's latest run (see projections.history)
    parent_message_id: str | None = None
    # the API filled the parent in (the branch the conversation shows), the caller did not send
    # it: a retry after the projector moved on derives none, and is still "the same request"
    parent_is_derived: bool = False

    def fingerprint(self) -> str:
        """What makes two submits with one idempotency key "the same request"."""
        body = {
            "agent_key": self.agent_key,
            "messages": list(self.messages),
            "params": dict(self.params),
            # the caller's trace context differs per request: it is not part of "the same request"
            "metadata": {k: v for k, v in self.metadata.items() if k != TRACEPARENT},
            "conversation_id": self.conversation_id,
            "max_attempts": self.max_attempts,
            "run_at_ms": self.run_at_ms,
            "timeout_s": self.timeout_s,
        }
        if self.parent_message_id is not None and not self.parent_is_derived:
            body["parent_message_id"] = self.parent_message_id
        # the values the payload's encoder takes (Decimal, sets, int keys...) fingerprint too
        data = orjson.dumps(body, default=json_default, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
        return hashlib.sha256(data).hexdigest()[:32]


# deletes an idempotency claim only while it is still this request's
_RELEASE_RESERVATION = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


def _idempotency_conflict(request: SubmitRequest, other_run: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        f"idempotency key {request.idempotency_key!r} already names run {other_run} "
        "with a different request; use a new key for a new request"
    )


@dataclass(frozen=True, slots=True)
class SubmitResult:
    run_id: str
    created: bool


# Claim, ClaimedJob (and queues.Job): one or two per run on a worker's hot path; as NamedTuples
# they are as immutable as frozen dataclasses and cost a third to make (~0.25 vs ~0.8 µs).
class Claim(NamedTuple):
    """A run a worker may now execute, as attempt ``attempt``."""

    run_id: str
    attempt: int
    seq: int
    input: Mapping[str, Any]
    cancel_requested: bool
    timeout_s: float | None
    conversation_id: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """The job needed no run (already ended, stale, or its run expired); it was acked."""

    run_id: str
    reason: str
    dead_lettered: bool = False


class ClaimedJob(NamedTuple):
    """A job ``claim_jobs`` read: begun (a ``Claim``, or ``Dropped``), or only read (None)."""

    queue: int  # index into the queues asked
    job_id: str
    run_id: str  # '' when only read: ``raw_run_id`` is what the entry holds
    begun: Claim | Dropped | None
    raw_run_id: bytes = b""


class Promoted(NamedTuple):
    """What ``promote_due`` did in one partition, and when to look again."""

    dispatched: int
    next_due_s: float | None  # seconds until the earliest run left is due (Redis's clock); None: none


@dataclass(frozen=True, slots=True)
class AppendResult:
    first_seq: int
    last_seq: int
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    retrying: bool  # False: attempts were exhausted and the run failed (dead-lettered)
    seq: int
    due_ms: int = 0


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    cancelled: bool  # True: cancelled at once (it was queued); False: requested from its worker
    seq: int


@dataclass(frozen=True, slots=True)
class LogEntry:
    entry_id: str
    event: Event


READ_TIMEOUT_S = 60.0


def redis_from_url(url: str, **overrides: Any) -> Redis:
    """A client for ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://host:port,...``
    (Redis Cluster, see ``core/cluster.py``), or ``fakeredis://<name>``.

    ``fakeredis://`` is the embedded default: an in-process Redis with Lua, shared by every
    client in the process that names the same server. ``overrides``: connection options that
    replace the defaults below (a longer ``socket_timeout`` for a long blocking read, ...).
    """
    if url.startswith("fakeredis://"):
        import fakeredis

        server = _fake_servers.setdefault(url, fakeredis.FakeServer())
        return fakeredis.FakeAsyncRedis(server=server)
    # redis-py 8 gives up on a read after 5 s by default, which would cut every blocking XREAD /
    # XREADGROUP of 5 s or more; blocking reads here stay below READ_TIMEOUT_S, keepalive and the
    # health check find dead connections.
    options: dict[str, Any] = {
        "health_check_interval": 30,
        "socket_timeout": READ_TIMEOUT_S,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,
    }
    plain = url.startswith(("redis://", "redis+cluster://"))
    if plain and _hiredis_pack is not None:
        options["connection_class"] = HiredisPackConnection
    options.update(overrides)
    if is_cluster_url(url):
        return cluster_from_url(url, **options)
    client: Redis = aioredis.Redis.from_url(url, **options)
    return client


_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis comes with redis[hiredis]
    _hiredis_pack = None


class HiredisPackConnection(aioredis.Connection):
    """Packs commands with hiredis (C) instead of redis-py's Python packer.

    Packing was a quarter of a worker's CPU per run (EVALSHA carries a dozen arguments). Anything
    hiredis refuses (None, bool) and multi-word command names go to redis-py's packer, which
    raises its usual errors.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        first = args[0]
        multi_word = (" " in first) if isinstance(first, str) else (b" " in first)
        if _hiredis_pack is not None and not multi_word:
            try:
                return [_hiredis_pack(args)]
            except TypeError:  # None, bool, ...: redis-py's packer raises its DataError
                pass
        packed: list[bytes] = super().pack_command(*args)
        return packed


_fake_servers: dict[str, Any] = {}


class EventStore:
    """Submit, claim, append, finish, cancel and read runs. One instance per process is plenty."""

    def __init__(
        self, client: Redis, settings: Settings | None = None, *, pipeline_scripts: bool = False
    ) -> None:
        self.redis = client
        self.settings = settings or Settings()
        self.keys: Keys = self.settings.keys
        self._scripts: dict[str, AsyncScript] = {
            name: client.register_script(scripts.source(name)) for name in scripts.NAMES
        }
        # Workers turn this on: the script calls of many concurrent runs share round trips.
        self._batcher = ScriptBatcher(client, self._scripts) if pipeline_scripts else None
        overrides = self.settings.EVENT_VISIBILITY
        self._vis: dict[str, str] = {t.value: visibility_of(t, overrides).value for t in EventType}
        self._retention = str(self.settings.RUN_RETENTION_SECONDS)
        # encoded once: begin_attempt sends them with every claim
        self._attempts_exhausted = self._encode(
            EventType.RUN_FAILED,
            {
                "error": {
                    "type": "MaxAttemptsExceeded",
                    "message": "every allowed attempt started and none finished "
                    "(the run keeps killing or stalling its workers); dead-lettered",
                    "retriable": False,
                }
            },
        )
        self._started_payloads: dict[str, bytes] = {}

    async def aclose(self) -> None:
        """Close what the store opened itself (the script batches' connection); the client
        stays the caller's to close."""
        if self._batcher is not None:
            await self._batcher.aclose()

    # -- helpers ---------------------------------------------------------------------------

    def visibility(self, event_type: str) -> str:
        found = self._vis.get(event_type)
        if found is None:
            found = visibility_of(event_type, self.settings.EVENT_VISIBILITY).value
        return found

    def _encode(self, event_type: str, payload: Mapping[str, Any]) -> bytes:
        return encode_payload(event_type, payload, self.settings.MAX_EVENT_BYTES)

    def _started_payload(self, worker_id: str) -> bytes:
        payload = self._started_payloads.get(worker_id)
        if payload is None:
            if len(self._started_payloads) > 1000:
                self._started_payloads.clear()
            payload = self._started_payloads[worker_id] = self._encode(
                EventType.RUN_STARTED, {"worker": worker_id}
            )
        return payload

    def _begin_args(self, worker_id: str) -> list[Any]:
        """What begin_job (common.lua) takes to start an attempt, as its table ``b``: worker,
        run.started's visibility and payload, run.failed's (attempts exhausted), retention."""
        return [
            worker_id,
            self.visibility(EventType.RUN_STARTED),
            self._started_payload(worker_id),
            self.visibility(EventType.RUN_FAILED),
            self._attempts_exhausted,
            self._retention,
        ]

    async def _run_script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if self._batcher is not None:
            return await self._batcher.call(name, keys, args)
        return await self._scripts[name](keys=list(keys), args=list(args))

    @staticmethod
    def _raise_refusal(run_id: str, reply: Sequence[Any]) -> None:
        word = as_text(reply[0])
        detail = as_text(reply[1]) if len(reply) > 1 else ""
        if word == "no_run":
            raise NotFound(f"run {run_id} does not exist")
        if word == "terminal":
            raise RunTerminal(f"run {run_id} already ended ({detail})")
        if word == "fenced":
            raise FencedOut(
                f"run {run_id}: this worker's attempt was superseded by attempt {detail}; "
                "its lease expired and another worker took the run over"
            )
        if word == "not_running":
            raise IllegalTransition(f"run {run_id} is {detail}, not running")
        if word == "illegal":
            raise IllegalTransition(f"run {run_id}: {detail} is written by the runtime itself, not appended")
        raise IllegalTransition(f"run {run_id}: unexpected reply {reply!r}")

    # -- submit and conversations --------------------------------------------------------------

    async def submit(self, request: SubmitRequest) -> SubmitResult:
        """Create a queued run (or find the one its idempotency key names)."""
        s = self.settings
        policy = request.policy or s.DEFAULT_CONVERSATION_POLICY
        if policy not in POLICIES:
            raise ValueError(f"multitask_strategy {policy!r}; use one of {', '.join(POLICIES)}")
        conv = request.conversation_id or ""
        if conv:
            partition = partition_of(conv, s.PARTITIONS)
        elif request.idempotency_key:
            partition = idempotency_partition(request.owner, request.idempotency_key, s.PARTITIONS)
        else:
            partition = None
        run_id = new_run_id(s.PARTITIONS, partition)
        max_attempts = request.max_attempts or s.MAX_RETRIES
        timeout_s = request.timeout_s or s.RUN_TIMEOUT_SECONDS
        payload = self._encode(
            EventType.RUN_QUEUED,
            {
                "agent_key": request.agent_key,
                "owner": request.owner,
                "conversation_id": request.conversation_id,
                "messages": list(request.messages),
                "params": dict(request.params),
                "metadata": dict(request.metadata),
                "max_attempts": max_attempts,
                "run_at_ms": request.run_at_ms,
                "timeout_s": timeout_s,
                "idempotency_key": request.idempotency_key,
                "policy": policy,
                **(
                    {"parent_message_id": request.parent_message_id}
                    if request.parent_message_id is not None
                    else {}
                ),
            },
        )
        reserved = ""  # encoded first: a request refused as too large claims no key
        if conv and request.idempotency_key:
            run_id, reserved = await self._reserve_idempotency_key(request, run_id)
        try:
            reply = await self._submit_script(request, run_id, conv, policy, max_attempts, timeout_s, payload)
        except BaseException:
            if reserved:
                await self._release_reservation(reserved, request, run_id)
            raise
        word = as_text(reply[0])
        if word == "created":
            return SubmitResult(run_id, created=True)
        if word == "existing":
            return SubmitResult(as_text(reply[1]), created=False)
        if word == "idem_conflict":
            raise _idempotency_conflict(request, as_text(reply[1]))
        if reserved:  # refused: the key names no run, so the next request may use it
            await self._release_reservation(reserved, request, run_id)
        if word == "busy":
            raise ConversationBusy(
                f"conversation {conv} has an active run {as_text(reply[1])} and the policy is "
                "'reject'; wait for it, cancel it, or submit with 'enqueue' or 'interrupt'"
            )
        if word == "conversation_deleted":
            raise NotFound(f"conversation {conv} was deleted")
        raise NotFound(f"conversation {conv} does not exist")

    async def _submit_script(
        self,
        request: SubmitRequest,
        run_id: str,
        conv: str,
        policy: str,
        max_attempts: int,
        timeout_s: float,
        payload: bytes,
    ) -> Any:
        s = self.settings
        tag, (state_key, stream_key) = self.keys.run_keys(run_id)
        idem_key = (
            self.keys.idempotency(self.keys.run_partition(run_id), request.owner, request.idempotency_key)
            if request.idempotency_key
            else state_key
        )
        conv_key = self.keys.conversation(conv) if conv else state_key
        interrupt_payload = self._encode(
            EventType.RUN_CANCELLED, {"reason": "interrupted by a newer run", "by": run_id}
        )
        return await self._run_script(
            "submit",
            [state_key, stream_key, idem_key, conv_key],
            [
                tag,
                run_id,
                request.owner,
                request.agent_key,
                conv,
                policy,
                max_attempts,
                request.run_at_ms or 0,
                int(timeout_s * 1000),
                payload,
                request.fingerprint() if request.idempotency_key else "",
                s.IDEMPOTENCY_TTL_SECONDS,
                1 if request.idempotency_key else 0,
                self.visibility(EventType.RUN_QUEUED),
                self.visibility(EventType.RUN_CANCELLED),
                self.visibility(EventType.RUN_CANCEL_REQUESTED),
                interrupt_payload,
                self.keys.cancel_channel(),
                self._retention,
            ],
        )

    async def _release_reservation(self, key: str, request: SubmitRequest, run_id: str) -> None:
        """Delete this request's claim of its idempotency key (only while it is still this
        request's). At worst, Redis away, it stays: its retry then creates the run it names."""
        with contextlib.suppress(Exception):
            await self.redis.eval(_RELEASE_RESERVATION, 1, key, f"{run_id}|{request.fingerprint()}")

    async def _reserve_idempotency_key(self, request: SubmitRequest, run_id: str) -> tuple[str, str]:
        """A run of a conversation lives in the conversation's partition, which is seldom its
        idempotency key's (``crc32(owner:key)``), where the key of every submit of this owner is
        first claimed: so one key names one run across conversations, with or without one. The
        submit script checks the key again in the run's own partition, atomically with the run:
        a crash between the two leaves a claim whose retry creates the run it names.
        Returns the run id to submit, and the claim's key when this call made one."""
        assert request.idempotency_key
        home = idempotency_partition(request.owner, request.idempotency_key, self.settings.PARTITIONS)
        if home == self.keys.run_partition(run_id):
            return run_id, ""  # the script's own check is the claim
        key = self.keys.idempotency(home, request.owner, request.idempotency_key)
        fingerprint = request.fingerprint()
        claimed = await self.redis.set(
            key, f"{run_id}|{fingerprint}", nx=True, get=True, ex=self.settings.IDEMPOTENCY_TTL_SECONDS
        )
        if claimed is None:
            return run_id, key
        other_run, _, other_fingerprint = as_text(claimed).partition("|")
        if other_fingerprint != fingerprint:
            raise _idempotency_conflict(request, other_run)
        return other_run, ""  # the same request: submit (or find) the run the key names

    async def create_conversation(
        self,
        owner: str,
        *,
        agent_key: str = "",
        title: str = "",
        metadata: Mapping[str, Any] | None = None,
        conversation_id: str | None = None,
    ) -> str:
        from agentstream.core.ids import new_conversation_id

        conv = conversation_id or new_conversation_id()
        payload = {"owner": owner, "agent_key": agent_key, "title": title, "metadata": dict(metadata or {})}
        reply = await self._conversation_event(
            conv, owner, EventType.CONVERSATION_CREATED, payload, agent_key
        )
        if as_text(reply[0]) == "exists":
            raise IllegalTransition(f"conversation {conv} already exists")
        return conv

    async def update_conversation(
        self,
        conversation_id: str,
        owner: str,
        *,
        title: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> int:
        payload: dict[str, Any] = {}
        if title is not None:
            payload["title"] = title
        if metadata is not None:
            payload["metadata"] = dict(metadata)
        return await self._conversation_change(
            conversation_id, owner, EventType.CONVERSATION_UPDATED, payload
        )

    async def switch_branch(self, conversation_id: str, owner: str, branch_id: str) -> int:
        """Show another branch of the conversation (``conversation.branch_switched``)."""
        return await self._conversation_change(
            conversation_id, owner, EventType.CONVERSATION_BRANCH_SWITCHED, {"branch_id": branch_id}
        )

    async def owner_event(self, owner: str, event_type: str, payload: Mapping[str, Any]) -> Event:
        """Record a change ``owner`` made outside any run (editing its agents' stores) on the
        owner's own stream; returns the event as the projector will see it."""
        stream_id = owner_stream_id(owner)
        partition = partition_of(stream_id, self.settings.PARTITIONS)
        reply = await self._run_script(
            "owner_event",
            [self.keys.owner_stream(stream_id), self.keys.log(partition)],
            [
                self.keys.tag(partition) + ":",
                stream_id,
                event_type,
                self._encode(event_type, payload),
                self.visibility(event_type),
            ],
        )
        return Event(
            run_id="", seq=int(reply[1]), type=event_type, payload=payload, conversation_id=stream_id
        )

    async def delete_conversation(self, conversation_id: str, owner: str) -> int:
        return await self._conversation_change(conversation_id, owner, EventType.CONVERSATION_DELETED, {})

    async def _conversation_change(
        self, conversation_id: str, owner: str, event_type: str, payload: Mapping[str, Any]
    ) -> int:
        reply = await self._conversation_event(conversation_id, owner, event_type, payload, "")
        word = as_text(reply[0])
        if word == "ok":
            return int(reply[1])
        if word == "conversation_deleted":
            raise NotFound(f"conversation {conversation_id} was deleted")
        raise NotFound(f"conversation {conversation_id} does not exist")

    async def _conversation_event(
        self, conv: str, owner: str, event_type: str, payload: Mapping[str, Any], agent_key: str
    ) -> Any:
        partition = partition_of(conv, self.settings.PARTITIONS)
        encoded = self._encode(event_type, payload)  # first: it refuses what JSON could not hold either
        return await self._run_script(
            "conversation",
            [self.keys.conversation(conv), self.keys.log(partition)],
            [
                self.keys.tag(partition) + ":",
                conv,
                owner,
                event_type,
                encoded,
                self.visibility(event_type),
                agent_key,
                *_kept_fields(event_type, payload),
            ],
        )

    async def conversation_owner(self, conversation_id: str) -> str | None:
        owner = await self.redis.hget(self.keys.conversation(conversation_id), "owner")
        return as_text(owner) if owner is not None else None

    # -- the worker's side -----------------------------------------------------------------

    async def begin_attempt(
        self, run_id: str, job_id: str, worker_id: str, agent_key: str, *, token: str = ""
    ) -> Claim | Dropped:
        """Start the next attempt of a claimed job; its number fences every older attempt out.

        ``token``, unique to this begin: the call sent again with it (its reply was lost) answers
        with the attempt it began, instead of beginning another."""
        tag, keys = self.keys.run_keys(run_id)
        reply = await self._run_script(
            "begin_attempt",
            [*keys, self.keys.queue(self.keys.run_partition(run_id), agent_key)],
            [tag, run_id, job_id, *self._begin_args(worker_id), token],
        )
        return _begun(run_id, reply)

    async def begun_by(
        self, worker_id: str, jobs: Sequence[tuple[int, str, str]]
    ) -> list[tuple[tuple[int, str, str], Claim]]:
        """Of the jobs ``(partition, agent_key, job_id)`` in ``worker_id``'s pending list, those
        whose attempt that worker began (running, its worker, that job), each with its Claim.
        Read-only, for a worker whose claim failed on the way back after Redis had begun them."""
        if not jobs:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for partition, agent_key, job_id in jobs:
                pipe.xrange(self.keys.queue(partition, agent_key), min=job_id, max=job_id)
            entries = await pipe.execute()
        named = [(job, as_text(e[0][1].get(b"r", b""))) for job, e in zip(jobs, entries, strict=True) if e]
        named = [(job, run_id) for job, run_id in named if run_id]
        async with self.redis.pipeline(transaction=False) as pipe:
            for _, run_id in named:
                pipe.hmget(
                    self.keys.run_state(run_id),
                    "status",
                    "worker",
                    "job",
                    "attempt",
                    "seq",
                    "cancel",
                    "timeout_ms",
                    "conv",
                )
                pipe.xrange(self.keys.run_stream(run_id), min="0-1", count=1)
            replies = await pipe.execute()
        out: list[tuple[tuple[int, str, str], Claim]] = []
        for i, (where, run_id) in enumerate(named):
            fields, first = replies[2 * i], replies[2 * i + 1]
            status, worker, job, attempt, seq, cancel, timeout_ms, conv = (as_text(f or b"") for f in fields)
            if status != "running" or worker != worker_id or job != where[2] or not first:
                continue
            timeout = int(timeout_ms or 0)
            claim = Claim(
                run_id=run_id,
                attempt=int(attempt),
                seq=int(seq),
                input=decode_payload(first[0][1].get(b"p", b"")) if first[0][1].get(b"p") else {},
                cancel_requested=cancel == "1",
                timeout_s=timeout / 1000 if timeout else None,
                conversation_id=conv,
            )
            out.append((where, claim))
        return out

    async def hand_back(self, run_id: str, attempt: int) -> bool:
        """A stopping worker gives ``attempt`` back unfinished: the run's next attempt does not
        count it against ``max_attempts``, nor as a reclaim. False: it had ended or been fenced."""
        tag, (state_key, _) = self.keys.run_keys(run_id)
        reply = await self._run_script("hand_back", [state_key], [tag, run_id, attempt])
        return as_text(reply[0]) == "given"

    async def claim_jobs(
        self, queues: Sequence[tuple[int, str]], worker_id: str, count: int
    ) -> list[ClaimedJob]:
        """Read up to ``count`` new jobs in all from the queues ``(partition, agent_key)``, asking
        each in turn for what is still missing, and begin an attempt of each, in one script call
        (on a cluster the queues must share a partition).

        A job the script could not vouch for comes back only read (``begun`` None): check it and
        ``begin_attempt`` it, or dead-letter it, as any job read with XREADGROUP."""
        if not queues:
            return []
        tags = [self.keys.tag(p) + ":" for p, _ in queues]
        reply = await self._run_script(
            "claim_jobs",
            [self.keys.queue(p, key) for p, key in queues],
            [tags[0], count, *self._begin_args(worker_id), *tags],
        )
        jobs: list[ClaimedJob] = []
        for row in reply:
            run_id = as_text(row[2]) if row[3] != b"read" else ""
            begun = _begun(run_id, row[3:]) if run_id else None
            jobs.append(ClaimedJob(int(row[0]) - 1, as_text(row[1]), run_id, begun, row[2]))
        return jobs

    async def append(
        self,
        run_id: str,
        attempt: int,
        event_type: str,
        payload: Mapping[str, Any] | None = None,
        visibility: Visibility | None = None,
    ) -> int:
        result = await self.append_many(run_id, attempt, [NewEvent(event_type, payload or {}, visibility)])
        return result.last_seq

    async def append_many(
        self, run_id: str, attempt: int, events: Iterable[NewEvent], *, first_index: int = 0
    ) -> AppendResult:
        """Append a batch of one attempt's events in one call; seqs are consecutive.

        ``first_index``: the number of the batch's first event within the attempt (1, 2, ...).
        With it, sending a batch again after its reply was lost (Redis died after writing it)
        writes only the events not written yet: each event lands exactly once."""
        n, event_args = self._event_args(events)
        if n == 0:
            raise ValueError("append_many needs at least one event")
        tag, keys = self.keys.run_keys(run_id)
        reply = await self._run_script("append", keys, [tag, run_id, attempt, n, *event_args, first_index])
        if as_text(reply[0]) != "ok":
            self._raise_refusal(run_id, reply)
        return AppendResult(int(reply[1]), int(reply[2]), as_text(reply[3]) == "1")

    def _event_args(self, events: Iterable[NewEvent]) -> tuple[int, list[Any]]:
        """(n, n x (type, visibility, payload, to_log)) as append and finish take them."""
        args: list[Any] = []
        persist_deltas = self.settings.PERSIST_TOKEN_DELTAS
        n = 0
        for event in events:
            kind = str(event.type)
            vis = event.visibility.value if event.visibility else self.visibility(kind)
            to_log = persist_deltas or kind not in EPHEMERAL_TYPES
            args += [kind, vis, self._encode(kind, event.payload), 1 if to_log else 0]
            n += 1
        return n, args

    async def finish(
        self,
        run_id: str,
        attempt: int,
        event_type: str,
        payload: Mapping[str, Any] | None = None,
        *,
        events: Iterable[NewEvent] = (),
        first_index: int = 0,
    ) -> int:
        """The attempt's terminal event: succeeded, failed, cancelled or timed_out.

        ``events``: the attempt's last events, written just before it in the same call
        (``first_index``: as in ``append_many``)
        """
        n, event_args = self._event_args(events)
        tag, keys = self.keys.run_keys(run_id)
        reply = await self._run_script(
            "finish",
            keys,
            [
                tag,
                run_id,
                attempt,
                str(event_type),
                self.visibility(event_type),
                self._encode(event_type, payload or {}),
                self._retention,
                n,
                *event_args,
                first_index,
            ],
        )
        if as_text(reply[0]) != "ok":
            self._raise_refusal(run_id, reply)
        return int(reply[1])

    async def schedule_retry(
        self,
        run_id: str,
        attempt: int,
        delay_s: float,
        error: Mapping[str, Any],
        *,
        cancelled: Mapping[str, Any] | None = None,
    ) -> RetryOutcome | CancelOutcome:
        """Back to queued after ``delay_s``; or run.failed + dead letter when attempts ran out;
        or, if a cancel was requested meanwhile, run.cancelled with payload ``cancelled``
        (``CancelOutcome``)."""
        tag, keys = self.keys.run_keys(run_id)
        reply = await self._run_script(
            "schedule_retry",
            keys,
            [
                tag,
                run_id,
                attempt,
                max(0, int(delay_s * 1000)),
                self.visibility(EventType.RUN_RETRYING),
                self._encode(EventType.RUN_RETRYING, {"error": dict(error), "delay_s": delay_s}),
                self.visibility(EventType.RUN_FAILED),
                self._encode(EventType.RUN_FAILED, {"error": dict(error)}),
                self._retention,
                self.visibility(EventType.RUN_CANCELLED),
                self._cancel_instead(cancelled),
            ],
        )
        word = as_text(reply[0])
        if word == "retrying":
            return RetryOutcome(True, int(reply[1]), int(reply[2]))
        if word == "failed":
            return RetryOutcome(False, int(reply[1]))
        if word == "cancelled":
            return CancelOutcome(True, int(reply[1]))
        self._raise_refusal(run_id, reply)
        raise AssertionError("unreachable")

    def _cancel_instead(self, cancelled: Mapping[str, Any] | None) -> bytes:
        """run.cancelled's payload, should a retry find the run's cancel flag set. Sent with
        every retry and seldom used: one too large to encode (a long partial output) falls back
        to its reason alone, so it never fails the retry it rides along with."""
        payload = dict(cancelled or {"reason": "cancel requested"})
        try:
            return self._encode(EventType.RUN_CANCELLED, payload)
        except EventEncodingError:
            return self._encode(EventType.RUN_CANCELLED, {"reason": str(payload.get("reason", ""))[:1000]})

    async def cancel(self, run_id: str, *, owner: str | None = None, reason: str = "") -> CancelOutcome:
        """Cancel a run: at once if queued, through its worker if running (``RunTerminal`` if over)."""
        tag, keys = self.keys.run_keys(run_id)
        reply = await self._run_script(
            "cancel",
            keys,
            [
                tag,
                run_id,
                owner or "",
                self.visibility(EventType.RUN_CANCELLED),
                self.visibility(EventType.RUN_CANCEL_REQUESTED),
                self._encode(EventType.RUN_CANCEL_REQUESTED, {"reason": reason}),
                self.keys.cancel_channel(),
                self._retention,
            ],
        )
        word = as_text(reply[0])
        if word == "cancelled":
            return CancelOutcome(True, int(reply[1]))
        if word == "requested":
            return CancelOutcome(False, int(reply[1]))
        self._raise_refusal(run_id, reply)
        raise AssertionError("unreachable")

    async def heartbeat(
        self, partition: int, agent_key: str, worker_id: str, jobs: Sequence[tuple[str, int, str]]
    ) -> list[str]:
        """Renew leases of ``(run_id, attempt, job_id)``; per job: ok | cancel | fenced | gone."""
        if not jobs:
            return []
        args: list[Any] = [self.keys.tag(partition) + ":", worker_id, len(jobs)]
        for run_id, attempt, job_id in jobs:
            args += [run_id, attempt, job_id]
        reply = await self._run_script("heartbeat", [self.keys.queue(partition, agent_key)], args)
        return [as_text(r) for r in reply]

    async def promote_due(self, partition: int, limit: int = 500) -> Promoted:
        """Dispatch the partition's retries and scheduled runs whose time has come (up to
        ``limit``), and say when the next one is due."""
        tag = self.keys.tag(partition) + ":"
        n, wait_ms = await self._run_script("promote_due", [self.keys.delayed(partition)], [tag, limit])
        return Promoted(int(n), wait_ms / 1000 if wait_ms >= 0 else None)

    async def dead_letter(
        self,
        partition: int,
        agent_key: str,
        job_id: str,
        reason: str,
        *,
        deliveries: int = 0,
        run_id: str = "",
        raw_entry: Mapping[bytes, bytes] | None = None,
    ) -> int:
        """Ack and record a job that cannot run; its run (if any) fails with ``reason``."""
        error = {"type": "DeadLettered", "message": reason, "retriable": False}
        reply = await self._run_script(
            "dead_letter",
            [self.keys.queue(partition, agent_key), self.keys.dead(partition)],
            [
                self.keys.tag(partition) + ":",
                job_id,
                reason,
                deliveries,
                run_id,
                self.visibility(EventType.RUN_FAILED),
                self._encode(EventType.RUN_FAILED, {"error": error}),
                self._retention,
                repr(dict(raw_entry or {}))[:4096],
            ],
        )
        return int(reply[1])

    async def ensure_groups(self, agent_keys: Iterable[str]) -> None:
        """Create the ``workers`` group on every queue of these agent keys (idempotent)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for agent_key in agent_keys:
                for partition in range(self.settings.PARTITIONS):
                    pipe.xgroup_create(
                        self.keys.queue(partition, agent_key), WORKERS_GROUP, id="0", mkstream=True
                    )
                    pipe.sadd(self.keys.agents(partition), agent_key)
            for result in await pipe.execute(raise_on_error=False):
                if isinstance(result, Exception) and "BUSYGROUP" not in str(result):
                    raise result

    # -- reads ------------------------------------------------------------------------------

    async def run_state(self, run_id: str) -> RunState | None:
        """The run's folded state as Redis holds it (``None`` when unknown or expired)."""
        raw = cast(Fields, await self.redis.hgetall(self.keys.run_state(run_id)))
        return _state_from_hash(run_id, raw) if raw else None

    async def read_run(self, run_id: str, after_seq: int = 0, count: int | None = None) -> list[Event]:
        """The run's events with seq > ``after_seq``, in order. An entry that does not decode
        (written by hand into the stream) is logged and left out: the run's other events, and
        every reader of them (SSE, the API, the agent's history), go on."""
        key = self.keys.run_stream(run_id)
        entries = cast(Entries, await self.redis.xrange(key, min=f"({after_seq_id(after_seq)}", count=count))
        events: list[Event] = []
        for entry_id, fields in entries:
            try:
                events.append(decode_entry(fields, run_id))
            except CorruptEntry as exc:
                log.error("run %s: left out undecodable stream entry %s: %s", run_id, as_text(entry_id), exc)
        return events

    async def tail(
        self, cursors: Mapping[str, int], *, block_ms: int = 5000, count: int = 500
    ) -> dict[str, list[Event]]:
        """One blocking XREAD over many runs: ``{run_id: events after its cursor}``."""
        if not cursors:
            return {}
        groups = SlotRouting.of(self.redis).group(cursors.items(), lambda c: self.keys.run_partition(c[0]))

        async def read(group: list[tuple[str, int]]) -> list[tuple[bytes, Entries]]:
            streams: dict[Any, Any] = {self.keys.run_stream(r): after_seq_id(seq) for r, seq in group}
            reply = await self.redis.xread(streams, count=count, block=block_ms)
            return cast(list[tuple[bytes, Entries]], reply or [])

        if len(groups) == 1:
            [only] = groups.values()
            reply = await read(only)
        else:  # a cluster: one XREAD per slot; the first answer wins (XREAD takes nothing away)
            reads = {asyncio.ensure_future(read(g)) for g in groups.values()}
            done, rest = await asyncio.wait(reads, return_when=asyncio.FIRST_COMPLETED)
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            reply = [item for task in done for item in task.result()]
        out: dict[str, list[Event]] = {}
        for key, entries in reply:
            run_id = as_text(key).rsplit(":", 1)[-1]
            out[run_id] = [decode_entry(fields, run_id) for _, fields in entries]
        return out

    async def read_log(self, partition: int, after_id: str = "0-0", count: int = 1000) -> list[LogEntry]:
        """Partition log entries after ``after_id`` (state events of every run, in order)."""
        entries = cast(
            Entries, await self.redis.xrange(self.keys.log(partition), min=f"({after_id}", count=count)
        )
        return [LogEntry(as_text(entry_id), decode_entry(fields)) for entry_id, fields in entries]


Call = tuple[str, Sequence[str], Sequence[Any], "asyncio.Future[Any]"]
# One EVALSHA runs at most this many calls: Redis serves nobody else while a script runs
# (a call costs it ~15-30 µs, so a full batch holds it for a few milliseconds at most).
MAX_BATCH_CALLS = 128
# With a channel, a batch leaves as soon as it holds this many calls, before the tick ends: Redis
# works on it while the worker goes on with the runs that woke up with it (measured: the two
# CPUs overlap instead of taking turns).
EAGER_CALLS = 16


class ScriptBatcher:
    """Sends the script calls made during one event-loop tick as ONE script call.

    The calls of a tick become one EVALSHA of ``batch`` (``core/scripts.py``), which runs each as
    its own script would: the per-call cost of scripting (argument tables, the prelude, a reply
    to parse on both sides) is paid once per batch instead of once per run. A single Redis takes
    every call in one batch; a cluster one batch per slot (each script's keys share a slot), all
    in one pipeline (no MULTI). Calls keep their order; a caller that awaits one call before
    making the next (append, then finish) is ordered by causality. An error of one call reaches
    its caller only; an error of the whole EVALSHA (connection lost, OOM, failover) reaches every
    caller of the batch. A script the server does not know (NOSCRIPT: a restarted or different
    Redis) is loaded and the batch sent again (NOSCRIPT means nothing of it ran).
    """

    def __init__(
        self,
        client: Redis,
        named_scripts: Mapping[str, AsyncScript],
        max_batch: int = 2000,
        eager_calls: int = EAGER_CALLS,
    ) -> None:
        self._client = client
        self._scripts = named_scripts
        self._batch_script = client.register_script(scripts.source(scripts.BATCH))
        self._clustered = SlotRouting.of(client).clustered
        # a single Redis: batches go out on a connection of their own, written at once
        self._channel = ScriptChannel.of(client, READ_TIMEOUT_S)
        self._max_batch = max_batch if self._channel is None else min(max_batch, eager_calls)
        self._pending: list[Call] = []
        self._flush_scheduled = False
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._loading: asyncio.Task[None] | None = None  # SCRIPT LOAD after a NOSCRIPT, shared

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((name, keys, args, future))
        if len(self._pending) >= self._max_batch:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        calls, self._pending = self._pending, []
        chunks = self._chunks(calls)
        if self._channel is not None:
            try:
                self._channel.send(
                    [self._evalsha(chunk) for chunk in chunks],
                    [functools.partial(self._deliver, chunk) for chunk in chunks],
                )
            except Exception as exc:  # an argument that does not pack: its callers hear why
                for *_, future in calls:
                    _settle(future, DataError(f"cannot send a script call: {exc}"))
            return
        self._background(self._send(calls, chunks))

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._in_flight.add(task)  # keep a reference until it is done
        task.add_done_callback(self._in_flight.discard)

    def _chunks(self, calls: list[Call]) -> list[list[Call]]:
        """The calls of each EVALSHA: by slot on a cluster, at most MAX_BATCH_CALLS each."""
        if self._clustered:
            by_slot: dict[str, list[Call]] = {}
            for call in calls:
                by_slot.setdefault(_hash_tag(call[1][0]), []).append(call)
            groups = list(by_slot.values())
        else:
            groups = [calls]
        return [g[i : i + MAX_BATCH_CALLS] for g in groups for i in range(0, len(g), MAX_BATCH_CALLS)]

    def _command(self, chunk: list[Call]) -> tuple[list[str], list[Any]]:
        """The batch script's KEYS and ARGV for ``chunk``."""
        keys: list[str] = []
        args: list[Any] = [len(chunk)]
        for name, call_keys, call_args, _ in chunk:
            keys += call_keys
            args += (name, len(call_keys), len(call_args), *call_args)
        return keys, args

    def _evalsha(self, chunk: list[Call]) -> tuple[Any, ...]:
        if len(chunk) == 1:
            name, keys, args, _ = chunk[0]
            return ("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)
        keys, args = self._command(chunk)
        return ("EVALSHA", self._batch_script.sha, len(keys), *keys, *args)

    async def _send(self, calls: list[Call], chunks: list[list[Call]]) -> None:
        """The chunks as one redis-py pipeline (a cluster, fakeredis)."""
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for chunk in chunks:
                    pipe.execute_command(*self._evalsha(chunk))
                results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection failed: every caller sees it
            for *_, future in calls:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else ConnectionError(str(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        for chunk, result in zip(chunks, results, strict=True):
            if isinstance(result, NoScriptError):
                result = await self._again(chunk)
            self._deliver(chunk, result)

    def _deliver(self, chunk: list[Call], result: Any, *, reloaded: bool = False) -> None:
        """Hand each caller of ``chunk`` its reply (the EVALSHA's ``result``)."""
        if isinstance(result, NoScriptError) and not reloaded:  # only from the channel
            self._background(self._send_after_loading(chunk))
        elif len(chunk) == 1:
            _settle(chunk[0][3], result)
        elif isinstance(result, Exception):
            for *_, future in chunk:
                _settle(future, result)
        else:
            for (*_, future), reply in zip(chunk, result, strict=True):
                _settle(future, _batch_reply(reply))

    async def _send_after_loading(self, chunk: list[Call]) -> None:
        """A restarted Redis forgot the scripts: load them all once (however many chunks were
        refused at once), then send the chunk again on the channel."""
        try:
            await self._loaded()
        except Exception as exc:
            self._deliver(chunk, exc, reloaded=True)
            return
        assert self._channel is not None
        self._channel.send([self._evalsha(chunk)], [functools.partial(self._deliver, chunk, reloaded=True)])

    async def _loaded(self) -> None:
        if self._loading is None or self._loading.done():
            self._loading = asyncio.get_running_loop().create_task(self._load_scripts())
        await asyncio.shield(self._loading)

    async def _load_scripts(self) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for script in (self._batch_script, *self._scripts.values()):
                pipe.script_load(script.script)
            await pipe.execute()

    async def _again(self, chunk: list[Call]) -> Any:
        """Send a chunk the server refused with NOSCRIPT, loading the script first."""
        try:
            if len(chunk) == 1:
                name, keys, args, _ = chunk[0]
                return await self._scripts[name](keys=list(keys), args=list(args))
            keys, args = self._command(chunk)
            return await self._batch_script(keys=keys, args=args)
        except Exception as exc:
            return exc


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if future.done():  # its caller was cancelled meanwhile
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


def _batch_reply(reply: Any) -> Any:
    """One call's reply in a batch: its own, or the error it raised as a ResponseError."""
    if isinstance(reply, list) and len(reply) == 2 and reply[0] == scripts.BATCH_ERROR:
        return ResponseError(as_text(reply[1]))
    return reply


def _kept_fields(event_type: str, payload: Mapping[str, Any]) -> list[str | bytes]:
    """What a conversation's hash keeps of a create or update (``conversation.lua``): its title
    and metadata as they are now, for reads that come before the projector."""
    kept: list[str | bytes] = []
    if event_type not in (EventType.CONVERSATION_CREATED, EventType.CONVERSATION_UPDATED):
        return kept
    if "title" in payload:
        kept += ["title", str(payload["title"])]
    if "metadata" in payload:
        try:
            meta = orjson.dumps(payload["metadata"], default=json_default, option=orjson.OPT_NON_STR_KEYS)
            kept += ["meta", meta]
        except TypeError as exc:  # bytes, say: msgpack takes them, the API's JSON cannot
            raise EventEncodingError(
                f"{event_type}: metadata cannot be encoded as JSON ({exc}); use JSON values "
                "(str, int, float, bool, None, list, dict)"
            ) from None
    return kept


def _hash_tag(key: str) -> str:
    """What decides a key's cluster slot: the part between the first ``{`` and the next ``}``."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if start >= 0 and end > start + 1 else key


def _begun(run_id: str, reply: Sequence[Any]) -> Claim | Dropped:
    """begin_attempt's reply (also each begun job of claim_jobs)."""
    word = as_text(reply[0])
    if word == "started":
        timeout_ms = int(reply[5])
        return Claim(
            run_id=run_id,
            attempt=int(reply[1]),
            seq=int(reply[2]),
            input=decode_payload(reply[3]) if reply[3] else {},
            cancel_requested=as_text(reply[4]) == "1",
            timeout_s=timeout_ms / 1000 if timeout_ms else None,
            conversation_id=as_text(reply[6]),
        )
    if word == "dead":
        return Dropped(run_id, "max attempts exceeded", dead_lettered=True)
    return Dropped(run_id, as_text(reply[1]), dead_lettered=as_text(reply[1]) == "no_run")


def after_seq_id(seq: int) -> str:
    """The stream entry id of seq ``seq`` in a run stream."""
    return f"0-{seq}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _state_from_hash(run_id: str, raw: Mapping[bytes, bytes]) -> RunState:
    h = {as_text(k): as_text(v) for k, v in raw.items()}
    return RunState(
        run_id=run_id,
        status=RunStatus(h["status"]),
        seq=int(h.get("seq", 0)),
        attempt=int(h.get("attempt", 0)),
        agent_key=h.get("agent", ""),
        owner=h.get("owner", ""),
        conversation_id=h.get("conv", ""),
        max_attempts=int(h.get("max_attempts", 1)),
        cancel_requested=h.get("cancel") == "1",
        created_ms=int(h.get("created", 0)),
        started_ms=int(h.get("started", 0)),
        finished_ms=int(h.get("finished", 0)),
    )
