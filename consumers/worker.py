"""The worker engine: read jobs -> begin an attempt -> run the agent -> finish (DESIGN §6).

One readable loop and a few timers::

    claim loop    claim_jobs over the queues of the served agent keys, in every partition:
                  never more jobs than free slots (FIFO per queue), each read and begun in
                  the same script call (two claims in flight; a blocking XREADGROUP and
                  begin_attempt when the queues are empty); an ``Attempt`` runs the agent
                  and writes how it ended (that acks it)
    heartbeat     every LEASE_TTL_SECONDS/3: renews the leases (PEL idle) of current attempts;
                  'cancel' / 'fenced' / 'gone' answers cancel or stop the attempt
    reclaim       XAUTOCLAIM of jobs idle past the lease (their worker died or stalled);
                  begin_attempt then fences the old worker out
    promote       the delayed zsets (retries, scheduled runs) -> queues, per partition, when
                  the earliest run is due: the scans say when that is, the ``due`` channel
                  tells of an earlier one; at least every PROMOTE_IDLE_S without a word
    cancel        one pub/sub subscription (cancel and due channels); a request cancels the
                  run's task at once

SIGTERM/SIGINT (or ``stop()``): stop claiming, let running attempts finish for
SHUTDOWN_GRACE_SECONDS, then stop the rest and hand their jobs back (pending, marked idle, so
another worker reclaims them at once). A second signal skips the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import secrets
import signal
import socket
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis.exceptions

from agentstream.consumers.cancel_listener import CancelListener
from agentstream.consumers.errors import RegistryError
from agentstream.consumers.execution import TRANSIENT, Attempt, AttemptOptions, ride_out_redis
from agentstream.consumers.outcome import Outcome
from agentstream.consumers.queues import Job, JobWhere, Queue, QueueReader, job_from, job_problem, where
from agentstream.consumers.registry import RuntimeRegistry
from agentstream.consumers.stores import StoreBackend
from agentstream.consumers.timers import Timers
from agentstream.core.codec import as_text
from agentstream.core.eviction import ensure_noeviction
from agentstream.core.keys import WORKERS_GROUP
from agentstream.core.logfmt import run_fields
from agentstream.core.store import Claim, Dropped, EventStore

log = logging.getLogger("agentstream.worker")

# Two claims in flight keep Redis and this process busy at once (measured: more were no faster).
CLAIMS_IN_FLIGHT = 2
# The promoter sleeps until the earliest delayed run is due; the due channel tells it of an
# earlier one and a (re)subscription makes it look at once. A message lost on a live connection
# (a cluster bus hiccup) delays a run by this much at most.
PROMOTE_IDLE_S = 5.0
PROMOTE_LIMIT = 500  # runs per partition per scan; a full scan looks again at once
# XAUTOCLAIM calls per queue per reclaim pass: each looks at up to 10 x the free slots pending
# entries, going on from the last; an idle queue's first call reaches the end.
RECLAIM_CALLS = 8
# Refusals a Redis takes back by itself: out of memory (noeviction), a replica promoted or a
# slot moving, a script running past its time limit. The worker waits them out.
_REFUSED_FOR_NOW = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


def refused_for_now(exc: BaseException) -> bool:
    return isinstance(exc, _REFUSED_FOR_NOW) or (
        isinstance(exc, redis.exceptions.ResponseError) and str(exc).startswith("BUSY")
    )


def served(
    registry: RuntimeRegistry, agent_keys: Sequence[str] | None, concurrency: int
) -> tuple[list[str], int]:
    """The agent keys and concurrency a worker serves, checked: ``RegistryError`` for no key or
    an unknown one, ``ValueError`` for a concurrency below 1 (at start, not on the first job)."""
    keys = list(agent_keys) if agent_keys else registry.keys()
    if not keys:
        raise RegistryError("no agent keys to serve: register a runtime or pass agent_keys")
    for key in keys:
        registry.get(key)
    if concurrency < 1:
        raise ValueError(f"concurrency {concurrency}: it must be at least 1")
    return keys, concurrency


def new_worker_id() -> str:
    """``<hostname>:<pid>:<random>``: unique per process and host, readable in XINFO."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Worker:
    def __init__(
        self,
        store: EventStore,
        registry: RuntimeRegistry,
        *,
        agent_keys: Sequence[str] | None = None,
        concurrency: int | None = None,
        burst: bool = False,
        handle_signals: bool = True,
        block_ms: int = 1000,
        worker_id: str | None = None,
        grace_s: float | None = None,
        promote_interval_s: float = 0.1,
        promote_idle_s: float = PROMOTE_IDLE_S,
        reclaim_interval_s: float | None = None,
        flush_interval_s: float = 0.02,
        stores: StoreBackend | None = None,
    ) -> None:
        settings = store.settings
        self.stores = stores  # ctx.memory / tasks / ... of the runs (None: agents cannot use them)
        self.store = store
        self.registry = registry
        self.agent_keys, self.concurrency = served(
            registry, agent_keys, concurrency or settings.DEFAULT_CONCURRENCY
        )
        self.burst = burst
        self.handle_signals = handle_signals
        self.block_ms = block_ms
        self.worker_id = worker_id or new_worker_id()
        self.grace_s = settings.SHUTDOWN_GRACE_SECONDS if grace_s is None else grace_s
        self.lease_ms = settings.lease_ttl_ms
        self.promote_interval_s = promote_interval_s  # the shortest time between two scans
        self.promote_idle_s = promote_idle_s
        self._promote_at = 0.0  # monotonic time of the next scan (0: at once)
        self._promote_wake = asyncio.Event()  # _promote_at moved earlier
        self.promote_scans = 0
        # every second, or half a lease if shorter: a dead worker's job is taken over within a
        # lease and a half (a benchmark that counts instructions sets it longer)
        self.reclaim_interval_s = reclaim_interval_s or min(1.0, self.lease_ms / 2000)
        self.queues = [
            Queue(p, key, store.keys.queue(p, key))
            for key in self.agent_keys
            for p in range(settings.PARTITIONS)
        ]
        self.attempt_options = AttemptOptions(
            timeout_s=settings.RUN_TIMEOUT_SECONDS,
            backoff_base=settings.RETRY_BACKOFF_BASE,
            backoff_max_s=settings.RETRY_BACKOFF_MAX,
            flush_interval_s=flush_interval_s,
        )
        self._options_by_timeout: dict[float | None, AttemptOptions] = {}
        self.attempts: dict[str, tuple[Job, Attempt]] = {}  # run id -> what runs it
        self.timers = Timers()  # the attempts' timeouts and flushes, on one loop timer
        self.outcomes: dict[Outcome, int] = {}
        self.reclaims = 0  # jobs taken over from an expired lease (for --metrics-port)
        # job -> (run id, attempt): begun by a claim that came back after stop(grace=False)
        self._unstarted: dict[JobWhere, tuple[str, int]] = {}
        self._reclaim_cursors: dict[str, str] = {}  # queue key -> where the next XAUTOCLAIM goes on
        self._handling: set[JobWhere] = set()  # the jobs of the tasks started (begun or beginning)
        self._look_for_lost_claims = False  # a claim failed: it may have begun jobs unheard of
        self._jobs: set[asyncio.Task[None]] = set()
        self._ending: set[asyncio.Task[None]] = set()  # jobs whose last write is on its way
        self._backlog: deque[Job] = deque()  # read but not started (a blocking read over-delivered)
        self._claims: set[asyncio.Task[None]] = set()  # claim calls in flight
        self._claiming = 0  # the jobs those may bring
        self._claim_failure: Exception | None = None
        self._wake = asyncio.Event()  # a slot freed or a claim came back
        self._stopping = asyncio.Event()
        self._stop_now = asyncio.Event()
        self.reader = QueueReader(store.redis, self.worker_id, self.queues)
        self._closing = False
        self._handing_back = False
        self._early_cancels: dict[str, float] = {}  # cancel broadcasts for runs not started here yet
        self.cancel_listener = CancelListener(
            store.redis,
            store.keys.cancel_channel(),
            self._on_cancel,
            others={store.keys.due_channel(): self._on_due},
            on_subscribed=self._promote_soon,  # what was published while not subscribed
        )
        self.ready = asyncio.Event()  # reading jobs and listening for cancels

    # -- public ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until ``stop()``, a signal, or (``burst``) until the queues are drained."""
        self._install_signals()
        ready = False
        try:
            ready = await self._redis_ready()
        finally:
            if not ready:  # stopped (or failed) while Redis was away: nothing was claimed
                self._remove_signals()
                log.info("worker %s stopped before Redis answered", self.worker_id)
        if not ready:
            return
        timers = [
            asyncio.create_task(self.cancel_listener.run(), name="cancel-listener"),
            asyncio.create_task(self._every(self.lease_ms / 3000, self._heartbeat), name="heartbeat"),
            asyncio.create_task(self._every(self.reclaim_interval_s, self._reclaim), name="reclaim"),
            asyncio.create_task(self._promote_loop(), name="promote"),
        ]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.cancel_listener.ready.wait(), 5.0)
        log.info(
            "worker %s serving %s (concurrency %d, %d queues)",
            self.worker_id,
            ",".join(self.agent_keys),
            self.concurrency,
            len(self.queues),
        )
        claim_loop = asyncio.create_task(self._claim_loop(), name="claim-loop")
        stopping = asyncio.create_task(self._stopping.wait())
        self.ready.set()
        try:
            await asyncio.wait({claim_loop, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            claim_loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await claim_loop  # re-raises what crashed it, after the drain below
        finally:
            if self._claims:  # their jobs are begun or pending: the drain needs to know them
                await asyncio.wait(set(self._claims), timeout=10.0)
            await self.reader.close()  # before the drain: it hands back what those reads took
            await self._drain()
            self._closing = True
            self.cancel_listener.stop()
            for timer in timers:
                timer.cancel()
            # a client library may swallow one cancellation; the flag ends the loop anyway
            await asyncio.wait(timers, timeout=5.0)
            self._remove_signals()
            log.info("worker %s stopped: %s", self.worker_id, self._summary())

    async def _redis_ready(self) -> bool:
        """Check Redis (maxmemory-policy) and make the consumer groups, waiting for a Redis that
        does not answer yet (started before it, or it restarts): False if stopped meanwhile."""
        delay_s = 0.5
        while True:
            try:
                await ensure_noeviction(self.store.redis, self.store.settings)
                await self.store.ensure_groups(self.agent_keys)
                return True
            except TRANSIENT as exc:
                log.warning(
                    "cannot reach Redis (%s); the worker starts once it answers, trying again in %gs",
                    exc,
                    delay_s,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay_s)
            if self._stopping.is_set():
                return False
            delay_s = min(delay_s * 2, 5.0)

    def stop(self, *, grace: bool = True) -> None:
        """Stop claiming; running attempts get the grace period unless ``grace=False``."""
        if self._stopping.is_set() or not grace:
            self._stop_now.set()
        self._stopping.set()

    @property
    def running(self) -> int:
        return len(self._jobs)

    @property
    def _busy(self) -> int:
        """Slots taken: runs whose agent has not ended (a run's last write does not hold one)."""
        return len(self._jobs) - len(self._ending)

    @property
    def _free(self) -> int:
        """Slots neither taken, nor promised to jobs read and waiting or to claims in flight."""
        return self.concurrency - self._busy - len(self._backlog) - self._claiming

    # -- the claim loop --------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        """Keep the free slots claimed. Claims run as tasks, up to CLAIMS_IN_FLIGHT at once, and
        a slot counts as free as soon as its run's last write is sent: the next job is begun
        right behind that write, while this process runs others (claiming only after the
        write's reply, Redis and this process took turns and each idled). When a claim finds
        nothing, one blocking read waits on every queue."""
        idle_checks = 0
        while not self._stopping.is_set():
            if self._claim_failure is not None:
                raise self._claim_failure  # a bug, not an outage (those are retried in _claim)
            while self._backlog and self._busy < self.concurrency:
                self._start(self._backlog.popleft())
            if self._look_for_lost_claims and not self._claims:  # no claim in flight: none mistaken
                await self._take_up_lost_claims()
            free = self._free
            if free > 0 and not self.reader.found_nothing:
                # after a failed claim, none more until the ones in flight are back and its lost
                # jobs are looked for: a job begun by a claim still in flight looks lost too
                if len(self._claims) < CLAIMS_IN_FLIGHT and not self._look_for_lost_claims:
                    # at most half the slots per claim, one claim per wake-up: the runs come in
                    # two groups or more, one running here while Redis ends and begins another
                    self._launch_claim(min(free, max(1, self.concurrency // 2)))
            elif free > 0 and not self._claims:
                # nothing in flight and the last claim found nothing: wait on every queue
                jobs = await self._read_blocking(free)
                if jobs:
                    idle_checks = 0
                    self._take([(job, None) for job in jobs])
                elif jobs is not None and self.burst:
                    idle_checks = idle_checks + 1 if await self._drained() else 0
                    if idle_checks >= 2:  # twice in a row, a read apart: nothing was in flight
                        return
                continue
            self._wake.clear()
            await self._wake.wait()

    async def _read_blocking(self, free: int) -> list[Job] | None:
        """Up to ``free`` jobs, waiting for the first on every queue (None: Redis failed)."""
        try:
            return await self.reader.read(
                free, block_ms=min(self.block_ms, 100) if self.burst else self.block_ms
            )
        except TRANSIENT as exc:
            log.warning("cannot read jobs (%s); retrying in 1s", exc)
            await asyncio.sleep(1.0)
            return None

    def _launch_claim(self, free: int) -> None:
        self._claiming += free
        task = asyncio.get_running_loop().create_task(self._claim(free), name="claim")
        self._claims.add(task)

    async def _claim(self, free: int) -> None:
        """One claim of up to ``free`` jobs: read and begun in one script call."""
        try:
            jobs = await self.reader.claim(self.store, free)
        except TRANSIENT as exc:
            log.warning("cannot read jobs (%s); retrying in 1s", exc)
            self._look_for_lost_claims = True  # the script may have run, its reply lost
            await asyncio.sleep(1.0)
            return
        except Exception as exc:
            if refused_for_now(exc):
                log.warning("Redis refused to hand out jobs (%s); retrying in 1s", exc)
                self._look_for_lost_claims = True  # on a cluster, another partition's claim ran
                await asyncio.sleep(1.0)
            else:
                self._claim_failure = exc
            return
        finally:
            self._claiming -= free
            self._claims.discard(asyncio.current_task())
            self._wake.set()
        self._take(jobs)

    def _take(self, jobs: list[tuple[Job, Claim | Dropped | None]]) -> None:
        """Start what a claim or read brought (a begun attempt starts now: its run is running,
        and while stopping it gets the grace period). Stopping without one, nothing starts: the
        jobs stay pending and the drain hands them back."""
        for job, begun in jobs:
            if isinstance(begun, Dropped):
                self._dropped(job, begun)
            elif self._stop_now.is_set():
                if begun is not None:  # the drain gives its attempt back with the job
                    self._unstarted[where(job)] = (job.run_id, begun.attempt)
                continue
            elif begun is not None or (self._busy < self.concurrency and not self._stopping.is_set()):
                self._start(job, begun)
            else:
                self._backlog.append(job)

    async def _drained(self) -> bool:
        """Burst mode: nothing running, nothing queued for us, nothing delayed."""
        if self._jobs or self._backlog:
            return False
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for q in self.queues:
                pipe.xlen(q.key)
            for p in range(self.store.settings.PARTITIONS):
                pipe.zcard(self.store.keys.delayed(p))
            sizes = await pipe.execute()
        return not any(sizes)

    # -- one job ---------------------------------------------------------------------------

    def _start(self, job: Job, claim: Claim | None = None) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(job, claim), name=f"run {job.run_id}")
        self._jobs.add(task)
        self._handling.add(where(job))
        task.add_done_callback(functools.partial(self._job_done, job))

    async def _take_up_lost_claims(self) -> None:
        """A claim that failed on its way back (a connection cut, one partition of a cluster
        refusing) may have begun jobs that this worker never heard of: they sit in its pending
        list, running under its name. Start them as begun, rather than leave them to a reclaim
        after the lease that would count an attempt (and fail a run allowed only one)."""
        self._look_for_lost_claims = False
        known = self._handling | {where(j) for j in self._backlog} | set(self._unstarted)
        try:
            pending = [j for j in await self._pending_not_running() if where(j) not in known]
            found = await self.store.begun_by(self.worker_id, [where(j) for j in pending])
        except Exception as exc:
            log.warning("could not look for jobs a failed claim began (%s); the reclaim takes them", exc)
            return
        for (partition, agent_key, job_id), claim in found:
            job = Job(partition, agent_key, job_id, claim.run_id)
            if where(job) in self._handling:
                continue  # started meanwhile (a reclaim)
            log.warning(
                "run %s: took up attempt %d, begun by a claim whose reply was lost",
                claim.run_id,
                claim.attempt,
                extra=self._fields(job, claim.attempt),
            )
            self._start(job, claim)

    def _ending_now(self) -> None:
        """The current job's agent is done and its last write is on its way: its slot is free
        for a claim, which goes out right behind that write instead of after its reply."""
        task = asyncio.current_task()
        if task in self._jobs:
            self._ending.add(task)
            self._wake.set()

    def _job_done(self, job: Job, task: asyncio.Task[None]) -> None:
        self._jobs.discard(task)
        self._handling.discard(where(job))
        self._ending.discard(task)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "run %s: job task crashed", job.run_id, exc_info=task.exception(), extra=self._fields(job)
            )

    async def _handle(self, job: Job, claim: Claim | None) -> None:
        """Run the job's attempt: ``claim`` when it was begun as it was read, else begin it here."""
        if claim is None:
            problem = job_problem(job, self.store.settings.PARTITIONS)
            if problem:
                log.warning("job %s dead-lettered: %s", job.job_id, problem, extra=self._fields(job))
                await ride_out_redis(
                    lambda: self.store.dead_letter(job.partition, job.agent_key, job.job_id, problem),
                    log_fields=lambda: self._fields(job),
                )
                return
            # a Redis outage here must not orphan the job until its lease runs out; the token
            # makes a retry whose first send began the attempt (its reply lost) answer that one
            token = secrets.token_hex(8)
            begun = await ride_out_redis(
                lambda: self.store.begin_attempt(
                    job.run_id, job.job_id, self.worker_id, job.agent_key, token=token
                ),
                log_fields=lambda: self._fields(job),
            )
            if not isinstance(begun, Claim):
                self._dropped(job, begun)
                return
            claim = begun
        attempt = Attempt(
            self.store,
            self.registry.get(job.agent_key),
            claim,
            job.agent_key,
            self._options(claim.timeout_s),
            worker_id=self.worker_id,
            stores=self.stores,
            timers=self.timers,
            on_ending=self._ending_now,
        )
        self.attempts[job.run_id] = (job, attempt)
        if self._early_cancels.pop(job.run_id, None) is not None:
            attempt.request_cancel("cancel requested")
        if self._handing_back:  # began while the drain ended: give it straight back
            attempt.stop(Outcome.HANDED_BACK)
        # logs at INFO are off on a busy worker: build no fields for them then
        if log.isEnabledFor(logging.INFO):
            log.info(
                "run %s started: attempt %d on %s",
                job.run_id,
                claim.attempt,
                self.worker_id,
                extra=attempt.log_fields,
            )
        try:
            outcome = await attempt.execute()
        finally:
            self.attempts.pop(job.run_id, None)
        self._count(outcome)
        if outcome is Outcome.HANDED_BACK:
            await self._hand_back([job], begun={job.run_id: claim.attempt})
        elif not log.isEnabledFor(logging.INFO):
            pass
        elif outcome is Outcome.CANCELLED and attempt.cancel_requested_at is not None:
            took_ms = (time.monotonic() - attempt.cancel_requested_at) * 1000
            log.info(
                "run %s cancelled (%.1f ms after the request reached the worker)",
                job.run_id,
                took_ms,
                extra=attempt.log_fields,
            )
        elif outcome is not Outcome.RETRYING:
            log.info(
                "run %s %s (attempt %d)",
                job.run_id,
                outcome.value.replace("_", " "),
                claim.attempt,
                extra=attempt.log_fields,
            )

    def _dropped(self, job: Job, dropped: Dropped) -> None:
        level = logging.WARNING if dropped.dead_lettered else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "run %s not started: %s", job.run_id, dropped.reason, extra=self._fields(job))
        self._count(Outcome.DROPPED)

    def _options(self, timeout_s: float | None) -> AttemptOptions:
        """The attempt options for a run's own timeout (one object per timeout, not per run)."""
        options = self._options_by_timeout.get(timeout_s)
        if options is None:
            if len(self._options_by_timeout) > 100:
                self._options_by_timeout.clear()
            options = self._options_by_timeout[timeout_s] = _with_timeout(self.attempt_options, timeout_s)
        return options

    def _fields(self, job: Job, attempt: int | None = None) -> dict[str, Any]:
        return run_fields(job.run_id, attempt=attempt, agent_key=job.agent_key, worker_id=self.worker_id)

    def _count(self, outcome: Outcome) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1

    def _on_cancel(self, run_id: str) -> None:
        held = self.attempts.get(run_id)
        if held is not None:
            held[1].request_cancel("cancel requested")
            return
        # Maybe ours in a moment: its begin_attempt may be on the wire right now.
        now = time.monotonic()
        if len(self._early_cancels) > 1000:
            self._early_cancels = {r: t for r, t in self._early_cancels.items() if now - t < 10}
        self._early_cancels[run_id] = now

    # -- timers ----------------------------------------------------------------------------

    async def _every(self, interval_s: float, tick: Any) -> None:
        while not self._closing:
            await asyncio.sleep(interval_s)
            try:
                await tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "%s failed (%s); trying again in %.1fs", tick.__name__.strip("_"), exc, interval_s
                )

    async def _heartbeat(self) -> None:
        groups: dict[tuple[int, str], list[tuple[Job, Attempt]]] = {}
        for job, attempt in list(self.attempts.values()):
            groups.setdefault((job.partition, job.agent_key), []).append((job, attempt))
        calls = [
            self.store.heartbeat(
                p, key, self.worker_id, [(j.run_id, a.claim.attempt, j.job_id) for j, a in held]
            )
            for (p, key), held in groups.items()
        ]
        # one failed partition (a moving slot, a node down) keeps the others' answers
        answers = await asyncio.gather(*calls, return_exceptions=True)
        failed = [a for a in answers if isinstance(a, BaseException)]
        for held, statuses in zip(groups.values(), answers, strict=True):
            if isinstance(statuses, BaseException):
                continue
            for (job, attempt), status in zip(held, statuses, strict=True):
                if status == "cancel":
                    attempt.request_cancel("cancel requested")
                elif status == "fenced":
                    log.warning(
                        "run %s: attempt %d was taken over; stopping it",
                        job.run_id,
                        attempt.claim.attempt,
                        extra=attempt.log_fields,
                    )
                    attempt.stop(Outcome.FENCED)
                elif status == "gone":
                    attempt.stop(Outcome.GONE)
        if self._backlog:
            await self._renew([j for j in self._backlog])
        if failed:
            raise failed[0]  # _every logs it and tries again

    async def _renew(self, jobs: Iterable[Job]) -> None:
        """Reset the idle time of jobs read but not started yet, so nobody reclaims them."""
        await self._claim_again(jobs, idle_ms=0)

    async def _reclaim(self) -> None:
        """XAUTOCLAIM jobs idle past the lease, up to the free slots; they start new attempts."""
        if self._stopping.is_set():
            return
        for queue in self.queues:
            for _ in range(RECLAIM_CALLS):
                free = self._free
                if free <= 0:
                    return
                if not await self._reclaim_from(queue, free):
                    break

    async def _reclaim_from(self, queue: Queue, free: int) -> bool:
        """One XAUTOCLAIM on ``queue``, from where the last one stopped: a call looks at no more
        than ten times ``free`` pending entries, so expired jobs behind many live ones are reached
        by going on, not by starting over. False: the queue's pending list was scanned to its end."""
        start = self._reclaim_cursors.get(queue.key, "0-0")
        reply: Any = await self.store.redis.xautoclaim(
            queue.key, WORKERS_GROUP, self.worker_id, self.lease_ms, start, count=free
        )
        cursor = as_text(reply[0])
        self._reclaim_cursors[queue.key] = cursor
        self._take_reclaimed(queue, reply[1])
        return cursor != "0-0"

    def _take_reclaimed(self, queue: Queue, entries: Any) -> None:
        for entry_id, fields in entries:
            if fields is None:
                continue  # deleted meanwhile; XAUTOCLAIM drops it from the PEL
            job = job_from(queue, as_text(entry_id), fields)
            if job.run_id in self.attempts:
                continue  # ours already (a late heartbeat); the claim just renewed it
            log.info(
                "run %s reclaimed from an expired lease (job %s)",
                job.run_id,
                job.job_id,
                extra=self._fields(job),
            )
            self.reclaims += 1
            self._start(job)

    def _on_due(self, message: str) -> None:
        """The due channel: a delayed run is due in ``message`` ms, maybe before our next scan."""
        try:
            self._promote_soon(int(message) / 1000)
        except ValueError:
            log.warning("ignored a due message that is not a number of ms: %r", message[:40])

    def _promote_soon(self, in_s: float = 0.0) -> None:
        at = time.monotonic() + in_s
        if at < self._promote_at:
            self._promote_at = at
            self._promote_wake.set()

    async def _promote_loop(self) -> None:
        """Scan the delayed zsets when the earliest run is due (what the scans and the due
        channel say), at most every promote_interval_s (unless a scan left due runs behind) and
        at least every promote_idle_s: an idle worker sends Redis nothing here (it polled ten
        times a second)."""
        partitions = range(self.store.settings.PARTITIONS)
        not_before = 0.0  # the shortest interval after the last scan
        while not self._closing:
            now = time.monotonic()
            at = max(self._promote_at, not_before)
            if now < at:
                self._promote_wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._promote_wake.wait(), at - now)
                continue
            # set before the scan: a due message that arrives during it can only move it earlier
            self._promote_at = now + self.promote_idle_s
            not_before = now + self.promote_interval_s
            try:
                scans = await asyncio.gather(*(self.store.promote_due(p, PROMOTE_LIMIT) for p in partitions))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("promote failed (%s); trying again in 1s", exc)
                self._promote_at = min(self._promote_at, now + 1.0)
                continue
            self.promote_scans += 1
            for scan in scans:
                if scan.dispatched >= PROMOTE_LIMIT:  # more are due: again at once
                    self._promote_at = not_before = now
                elif scan.next_due_s is not None:  # Redis's clock, counted from the scan's start
                    self._promote_at = min(self._promote_at, now + scan.next_due_s)

    # -- shutdown --------------------------------------------------------------------------

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        if self._jobs and not self._stop_now.is_set():
            log.info(
                "worker %s draining %d running attempts (grace %gs)",
                self.worker_id,
                len(self._jobs),
                self.grace_s,
            )
            deadline = loop.time() + self.grace_s
            stop_now = asyncio.create_task(self._stop_now.wait())
            while self._jobs and not self._stop_now.is_set() and loop.time() < deadline:
                await asyncio.wait(
                    {*self._jobs, stop_now},
                    timeout=deadline - loop.time(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            stop_now.cancel()
        self._handing_back = True
        for _, attempt in list(self.attempts.values()):
            attempt.stop(Outcome.HANDED_BACK)
        if self._jobs:
            await asyncio.wait(set(self._jobs), timeout=10.0)
        self._backlog.clear()
        orphans = await self._pending_not_running()
        await self._hand_back(
            orphans, begun=dict(self._unstarted.pop(where(j)) for j in orphans if where(j) in self._unstarted)
        )

    async def _pending_not_running(self) -> list[Job]:
        """Jobs in this worker's PEL that no attempt runs (the backlog, a read cut short)."""
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for q in self.queues:
                pipe.xpending_range(
                    q.key, WORKERS_GROUP, min="-", max="+", count=10_000, consumername=self.worker_id
                )
            replies = await pipe.execute(raise_on_error=False)
        running = {where(job) for job, _ in self.attempts.values()}
        orphans: list[Job] = []
        for queue, reply in zip(self.queues, replies, strict=True):
            if isinstance(reply, Exception):
                continue
            for entry in reply:
                job = Job(queue.partition, queue.agent_key, as_text(entry["message_id"]), "")
                if where(job) not in running:  # entry ids are per queue: two queues can share one
                    orphans.append(job)
        return orphans

    async def _hand_back(self, jobs: Sequence[Job], begun: Mapping[str, int] | None = None) -> None:
        """Leave the jobs pending but idle past the lease: the next XAUTOCLAIM takes them. The
        attempts ``begun`` (run id -> attempt) are given back first, so that a deploy neither
        spends one of their runs' attempts nor counts as a reclaim."""
        if not jobs:
            return
        for run_id, attempt in (begun or {}).items():
            with contextlib.suppress(Exception):  # at worst the attempt counts, as before
                await self.store.hand_back(run_id, attempt)
        await self._claim_again(jobs, idle_ms=self.lease_ms * 10)
        for job in jobs:
            log.info("run %s handed back (job %s)", job.run_id or "?", job.job_id, extra=self._fields(job))

    async def _claim_again(self, jobs: Iterable[Job], *, idle_ms: int) -> None:
        """XCLAIM our own pending jobs, setting their idle time (0 renews, past the lease hands back)."""
        async with self.store.redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                queue = self.store.keys.queue(job.partition, job.agent_key)
                pipe.xclaim(queue, WORKERS_GROUP, self.worker_id, 0, [job.job_id], idle=idle_ms, justid=True)
            await pipe.execute(raise_on_error=False)

    def _install_signals(self) -> None:
        if not self.handle_signals:
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _remove_signals(self) -> None:
        if not self.handle_signals:
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        again = self._stopping.is_set()
        log.info("worker %s got %s: %s", self.worker_id, sig.name, "stopping now" if again else "draining")
        self.stop(grace=not again)

    def _summary(self) -> str:
        return ", ".join(f"{k.value} {v}" for k, v in sorted(self.outcomes.items())) or "no runs"


def _with_timeout(options: AttemptOptions, timeout_s: float | None) -> AttemptOptions:
    if not timeout_s:
        return options
    return dataclasses.replace(options, timeout_s=timeout_s)
