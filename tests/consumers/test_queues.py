"""The read plan: never more jobs than free slots; every queue gets its turn; busy queues first."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agentstream.consumers.queues import Queue, plan_read


def queues(n: int) -> list[Queue]:
    return [Queue(p, "a", f"q{p}") for p in range(n)]


@given(
    n=st.integers(1, 64), free=st.integers(1, 500), rotation=st.integers(0, 10_000), hot=st.integers(0, 64)
)
def test_a_read_plan_never_asks_for_more_jobs_than_free_slots(
    n: int, free: int, rotation: int, hot: int
) -> None:
    all_queues = queues(n)
    plan = plan_read(all_queues, all_queues[: min(hot, n)], rotation, free)
    assert len(plan.queues) * plan.count <= free
    assert plan.count >= 1 and len(set(plan.queues)) == len(plan.queues)


@given(n=st.integers(2, 64), free=st.integers(1, 63))
def test_every_queue_is_read_within_a_few_rounds_when_none_is_busy(n: int, free: int) -> None:
    all_queues, seen, rotation = queues(n), set(), 0
    for _ in range(-(-n // min(free, n))):  # ceil(n / queues per read)
        plan = plan_read(all_queues, [], rotation, free)
        rotation += len(plan.queues)
        seen.update(plan.queues)
    assert seen == set(all_queues)


def test_queues_that_had_jobs_are_read_first() -> None:
    all_queues = queues(16)
    plan = plan_read(all_queues, [all_queues[9], all_queues[3]], rotation=0, free=4)
    assert plan.queues[:2] == [all_queues[9], all_queues[3]] and plan.count == 1
