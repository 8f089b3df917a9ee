"""Reading jobs from the queues a worker serves, never more than it can start.

A claim (``claim_jobs``) asks the queues in turn for what is still missing of ``free`` and
begins each job in the same script call; the starting queue moves on each call, so none is
always served last. One call covers every queue of a single Redis; on Redis Cluster a command
may not span slots, so one call per partition, concurrently, sharing ``free``.

When claims find nothing, a blocking read waits on every queue for one job each, and is woken
by the first; if several queues fill at once it can return a few more than ``free`` (the worker
keeps them in a backlog that it starts first and whose leases it renews). A plain read's COUNT
applies per stream, so reading ``free`` jobs across many queues takes a plan: with at least as
many free slots as queues, ask ``free // queues`` of each; otherwise ask ``free // n`` of
``n = free`` queues, those that had jobs last time first, then the others in rotation. On a
cluster ``core.cluster.SlotReads`` sends one read per partition; a blocking read returns with
the first partition that has a job and keeps the others in flight.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from agentstream.core.cluster import SlotReads, SlotRouting
from agentstream.core.codec import as_text
from agentstream.core.ids import is_valid_id, partition_of
from agentstream.core.keys import WORKERS_GROUP
from agentstream.core.store import Claim, Dropped, EventStore, Redis


@dataclass(frozen=True, slots=True)
class Queue:
    partition: int
    agent_key: str
    key: str


class Job(NamedTuple):
    """One queue entry: the run it names and where it came from."""

    partition: int
    agent_key: str
    job_id: str
    run_id: str
    undecodable: str = ""  # why the entry's fields do not decode, if they do not


# A job's identity: entry ids are per stream, so two queues can hold the same one.
JobWhere = tuple[int, str, str]


def where(job: Job) -> JobWhere:
    """``(partition, agent_key, job_id)``: the queue entry ``job`` is."""
    return job.partition, job.agent_key, job.job_id


@dataclass(frozen=True, slots=True)
class ReadPlan:
    queues: Sequence[Queue]
    count: int  # per queue; len(queues) * count <= free


def plan_read(queues: Sequence[Queue], hot: Sequence[Queue], rotation: int, free: int) -> ReadPlan:
    """Which queues to ask, and how many jobs of each, so that at most ``free`` come back."""
    if free >= len(queues):
        return ReadPlan(queues, free // len(queues))
    chosen = [q for q in hot if q in queues][:free]
    start = rotation % len(queues)
    for i in range(len(queues)):
        if len(chosen) >= free:
            break
        queue = queues[(start + i) % len(queues)]
        if queue not in chosen:
            chosen.append(queue)
    return ReadPlan(chosen, free // len(chosen))


class QueueReader:
    def __init__(self, client: Redis, consumer: str, queues: Sequence[Queue]) -> None:
        if not queues:
            raise ValueError("a worker needs at least one queue to read")
        self._client = client
        self._consumer = consumer
        self.queues = list(queues)
        self._hot: list[Queue] = []  # queues the last read found jobs in
        self._rotation = 0
        self._partitions = {q.partition for q in self.queues}
        self._asked_in_vain: set[int] = set()  # partitions claims found empty since a job was found
        self._by_key = {q.key: q for q in self.queues}
        # one XREADGROUP over every queue on a single Redis; one per partition on a cluster
        self._routing = SlotRouting.of(client)
        self._reads: SlotReads[Queue, list[Any]] = SlotReads()

    async def _read_queues(self, count: int, queues: list[Queue], block_ms: int | None) -> list[Any]:
        streams: dict[Any, Any] = {q.key: ">" for q in queues}
        reply: Any = await self._client.xreadgroup(
            WORKERS_GROUP, self._consumer, streams, count=count, block=block_ms or None
        )
        return list(reply or [])

    async def close(self) -> None:
        """Cancel blocking reads still in flight on a cluster (their jobs stay pending: the
        worker hands its pending jobs back when it stops)."""
        await self._reads.close()

    def _next_plan(self, free: int) -> ReadPlan:
        plan = plan_read(self.queues, self._hot, self._rotation, free)
        self._rotation += len(plan.queues)
        return plan

    async def claim(self, store: EventStore, free: int) -> list[tuple[Job, Claim | Dropped | None]]:
        """Up to ``free`` new jobs, each begun in the same script call that reads it
        (``EventStore.claim_jobs``: one call over every queue on a single Redis; on a cluster
        one per partition, sharing ``free``). The queues are asked in turn from a starting
        point that moves on each call, so that no queue is always last. A job the script only
        read comes with None: the worker checks and begins it itself."""
        start = self._rotation % len(self.queues)
        self._rotation += 1
        groups = list(self._routing.group(self.queues[start:] + self.queues[:start], _partition).values())
        shares = [free // len(groups) + (1 if i < free % len(groups) else 0) for i in range(len(groups))]
        asked = [(group, share) for group, share in zip(groups, shares, strict=True) if share > 0]
        replies = await asyncio.gather(
            *(
                store.claim_jobs([(q.partition, q.agent_key) for q in group], self._consumer, share)
                for group, share in asked
            )
        )
        out: list[tuple[Job, Claim | Dropped | None]] = []
        for (group, _), claimed in zip(asked, replies, strict=True):
            for item in claimed:
                queue = group[item.queue]
                if item.begun is None:
                    out.append((job_from(queue, item.job_id, {b"r": item.raw_run_id}), None))
                else:
                    out.append((Job(queue.partition, queue.agent_key, item.job_id, item.run_id), item.begun))
        if out:
            self._asked_in_vain.clear()
        else:
            self._asked_in_vain.update(group[0].partition for group, _ in asked)
        return out

    @property
    def found_nothing(self) -> bool:
        """Claims asked every queue since one last found a job, and none had any (a call asks
        every queue of its partitions; on a cluster with fewer free slots than partitions,
        it takes a few calls): time to wait on them all with a blocking read."""
        return len(self._asked_in_vain) >= len(self._partitions)

    async def read(self, free: int, *, block_ms: int | None = None) -> list[Job]:
        """Up to ``free`` jobs at once, or (``block_ms``) wait that long for the first."""
        plan = ReadPlan(self.queues, 1) if block_ms else self._next_plan(free)
        groups = self._routing.group(plan.queues, _partition)
        replies = await self._reads.read(groups, functools.partial(self._read_queues, plan.count), block_ms)
        jobs: list[Job] = []
        hot: list[Queue] = []
        for stream, entries in (item for reply in replies for item in reply):
            queue = self._by_key[as_text(stream)]
            if entries:
                hot.append(queue)
            jobs += [job_from(queue, as_text(entry_id), fields) for entry_id, fields in entries]
        self._hot = hot
        if jobs:
            self._asked_in_vain.clear()
        return jobs


def _partition(queue: Queue) -> int:
    return queue.partition


def job_from(queue: Queue, entry_id: str, fields: Any) -> Job:
    run_id = fields.get(b"r", b"") if fields else b""
    try:
        return Job(queue.partition, queue.agent_key, entry_id, as_text(run_id))
    except UnicodeDecodeError:  # written by hand or corrupted: dead-lettered, never a crash
        return Job(
            queue.partition, queue.agent_key, entry_id, "", undecodable="the job's run id is not UTF-8"
        )


def job_problem(job: Job, partitions: int) -> str:
    """Why a job entry cannot be run ('' when it can). Entries written by hand, corrupted, or
    from a deployment with another PARTITIONS are dead-lettered with this reason; a run id of
    another partition would make the scripts ack in the wrong queue and the job loop forever."""
    if job.undecodable:
        return job.undecodable
    if not job.run_id:
        return "job entry names no run"
    if not is_valid_id(job.run_id):
        return f"job entry's run id {job.run_id[:80]!r} is not a run id"
    home = partition_of(job.run_id, partitions)
    if home != job.partition:
        return f"run {job.run_id} belongs to partition {home}, not {job.partition} (PARTITIONS changed?)"
    return ""
