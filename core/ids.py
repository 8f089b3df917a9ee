"""Run and conversation identifiers, and the partition each one lives in (DESIGN §2).

A partition is derivable from an id alone: ``crc32(id) % partitions``. Runs of a conversation
must live in the conversation's partition, so their ids are drawn until one lands there
(uuid4, rejection-sampled: about ``partitions`` draws, a few microseconds).
"""

from __future__ import annotations

import re
import uuid
import zlib


def partition_of(identifier: str, partitions: int) -> int:
    """The partition an id (or an ``owner:key`` idempotency scope) belongs to."""
    return zlib.crc32(identifier.encode()) % partitions


def new_conversation_id() -> str:
    return str(uuid.uuid4())


def new_run_id(partitions: int, partition: int | None = None) -> str:
    """A fresh run id; with ``partition`` set, one whose partition is exactly that."""
    if partition is None:
        return str(uuid.uuid4())
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} is outside 0..{partitions - 1}")
    while True:
        candidate = str(uuid.uuid4())
        if partition_of(candidate, partitions) == partition:
            return candidate


def idempotency_partition(owner: str, key: str, partitions: int) -> int:
    """Where a submit with an idempotency key and no conversation lives: key and run share it."""
    return partition_of(f"{owner}:{key}", partitions)


# what str(uuid.UUID(...)) writes: 8-4-4-4-12 lower-case hex digits
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def is_valid_id(value: str) -> bool:
    """True for the canonical uuid text form the API accepts as a run or conversation id
    (``str(uuid.UUID(value)) == value``, without building the UUID: every job checks it)."""
    return isinstance(value, str) and _CANONICAL_UUID.fullmatch(value) is not None


# Owners: every run and conversation has exactly one, a user or an anonymous session.
# Stored as text in Redis and in the events: "user:<pk>" or "anon:<session id>".
USER_OWNER = "user"
ANONYMOUS_OWNER = "anon"


def user_owner(user_pk: object) -> str:
    return f"{USER_OWNER}:{user_pk}"


def anonymous_owner(session_id: object) -> str:
    return f"{ANONYMOUS_OWNER}:{session_id}"


# An owner's own stream (changes made outside runs) has a conversation-shaped id derived from the
# owner, so it is archived and replayed like a conversation's events. Never a real conversation.
OWNER_STREAM_NAMESPACE = uuid.UUID("0f6a4d1e-5b0c-4f7e-9a53-6c1d2e8b7a41")


def owner_stream_id(owner: str) -> str:
    return str(uuid.uuid5(OWNER_STREAM_NAMESPACE, owner))


def parse_owner(owner: str) -> tuple[str, str]:
    """``("user", pk)`` or ``("anon", session id)``; ValueError for anything else."""
    kind, sep, ident = owner.partition(":")
    if not sep or not ident or kind not in (USER_OWNER, ANONYMOUS_OWNER):
        raise ValueError(f"owner {owner!r} is neither 'user:<pk>' nor 'anon:<session id>'")
    return kind, ident
