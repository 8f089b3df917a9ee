"""Dead-lettered jobs: list them, replay one as a new run, purge them.

A run is append-only: replaying a dead letter never revives the failed run; it submits a new run
with the same input (``metadata.retry_of`` names the old one) and removes the dead letter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from agentstream.core.errors import NotFound
from agentstream.core.store import Entries, EventStore, SubmitRequest


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    entry_id: str
    run_id: str
    reason: str
    ts_ms: int
    fields: dict[str, str]


async def list_dead(store: EventStore, limit_per_partition: int = 1000) -> list[DeadLetter]:
    async with store.redis.pipeline(transaction=False) as pipe:
        for p in range(store.settings.PARTITIONS):
            pipe.xrange(store.keys.dead(p), count=limit_per_partition)
        replies = cast(list[Entries], await pipe.execute())
    found = [_letter(p, entry_id, raw) for p, entries in enumerate(replies) for entry_id, raw in entries]
    return sorted(found, key=lambda d: d.ts_ms)


def _letter(partition: int, entry_id: bytes, raw: Mapping[bytes, bytes]) -> DeadLetter:
    fields = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
    return DeadLetter(
        partition=partition,
        entry_id=entry_id.decode(),
        run_id=fields.get("r", ""),
        reason=fields.get("reason", ""),
        ts_ms=int(fields.get("ts", "0") or 0),
        fields=fields,
    )


async def _letters_of(store: EventStore, run_id: str) -> list[DeadLetter]:
    """Every dead letter of ``run_id``, however many others its partition holds (the scripts
    write it in the run's partition; the others are read only should it not be there)."""
    home = store.keys.run_partition(run_id)
    others = [p for p in range(store.settings.PARTITIONS) if p != home]
    found: list[DeadLetter] = []
    for partition in [home, *others]:
        after = "-"
        while True:
            entries = cast(
                Entries, await store.redis.xrange(store.keys.dead(partition), min=after, count=1000)
            )
            for entry_id, raw in entries:
                letter = _letter(partition, entry_id, raw)
                if letter.run_id == run_id:
                    found.append(letter)
            if len(entries) < 1000:
                break
            after = f"({entries[-1][0].decode()}"
        if found:
            return found
    return found


RETRY_KEY_PREFIX = "retry-of:"


def _replay_policy(policy: object) -> str | None:
    return "enqueue" if policy == "interrupt" else (str(policy) if policy else None)


async def retry_dead(store: EventStore, run_id: str) -> str:
    """Submit a new run with the dead run's input; returns the new run's id."""
    letters = await _letters_of(store, run_id)
    if not letters:
        raise NotFound(f"no dead letter for run {run_id}; `agentstream dead list` shows them")
    history = await store.read_run(run_id, 0, 1)
    if not history:
        raise NotFound(
            f"run {run_id} has expired from Redis (RUN_RETENTION_SECONDS); its input is in the event archive"
        )
    queued = history[0].payload
    result = await store.submit(
        SubmitRequest(
            agent_key=str(queued["agent_key"]),
            owner=str(queued["owner"]),
            messages=list(queued.get("messages") or []),
            params=dict(queued.get("params") or {}),
            metadata={**dict(queued.get("metadata") or {}), "retry_of": run_id},
            conversation_id=queued.get("conversation_id") or None,
            max_attempts=int(queued.get("max_attempts") or store.settings.MAX_RETRIES),
            timeout_s=queued.get("timeout_s") or None,
            # where it answers in its conversation, and how it waits there, as the dead run did;
            # but it waits its turn: 'interrupt' (the user's double text, then) would cancel the
            # run the conversation is running now, at the operator's replay
            policy=_replay_policy(queued.get("policy")),
            parent_message_id=queued.get("parent_message_id"),
            # two operators (or a retried command) replaying one letter make one run
            idempotency_key=f"{RETRY_KEY_PREFIX}{run_id}",
        )
    )
    for letter in letters:
        await store.redis.xdel(store.keys.dead(letter.partition), letter.entry_id)
    return result.run_id


async def purge_dead(store: EventStore) -> int:
    """Remove every dead letter; returns how many there were."""
    async with store.redis.pipeline(transaction=False) as pipe:
        for p in range(store.settings.PARTITIONS):
            pipe.xlen(store.keys.dead(p))
            pipe.delete(store.keys.dead(p))
        replies = await pipe.execute()
    return sum(int(n) for n in replies[::2])
