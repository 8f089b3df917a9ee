"""The row patches are a lattice: any order, any duplicates, any batching give the same patch."""

from __future__ import annotations

import functools
import random

from agentstream.core.events import Event
from agentstream.core.store import EventStore
from agentstream.projections.rows import (
    ConversationPatch,
    RunPatch,
    conversation_patch,
    fold_patches,
    merge_conversations,
    merge_runs,
    run_patch,
)
from agentstream.projections.verify import log_events
from tests.projections.conftest import make_workload


def reference(events: list[Event]) -> tuple[dict[str, RunPatch], dict[str, ConversationPatch]]:
    """The definition: merge the patch of every event, one at a time."""
    runs: dict[str, list[RunPatch]] = {}
    convs: dict[str, list[ConversationPatch]] = {}
    for e in events:
        if e.run_id:
            patch = run_patch(e)
            runs.setdefault(e.run_id, []).append(patch)
            if patch.conversation_id:
                touch = ConversationPatch(patch.conversation_id, last_activity_ms=e.ts_ms)
                convs.setdefault(patch.conversation_id, []).append(touch)
        else:
            convs.setdefault(e.conversation_id, []).append(conversation_patch(e))
    return (
        {k: functools.reduce(merge_runs, v) for k, v in runs.items()},
        {k: functools.reduce(merge_conversations, v) for k, v in convs.items()},
    )


async def test_the_batch_fold_equals_merging_every_events_patch_in_any_order(store: EventStore) -> None:
    await make_workload(store, runs=15)
    events = [e async for e in log_events(store.redis, store.keys)]
    expected = reference(events)

    for seed in range(20):
        rng = random.Random(seed)
        shuffled = events + rng.sample(events, len(events) // 3)
        rng.shuffle(shuffled)
        folded = fold_patches(shuffled)
        assert (folded.runs, folded.conversations) == expected, f"seed {seed}"
        # and folding the fold of two halves gives the same
        half = len(shuffled) // 2
        left, right = fold_patches(shuffled[:half]), fold_patches(shuffled[half:])
        merged = {
            k: merge_runs(left.runs[k], right.runs[k]) if k in left.runs and k in right.runs
            else left.runs.get(k) or right.runs[k]
            for k in {*left.runs, *right.runs}
        }  # fmt: skip
        assert merged == expected[0]
