"""Hooks the notification tests configure by dotted path (called on the projector's DB thread)."""

from __future__ import annotations

import threading

from agentstream.projections.notify import RunFinished

lock = threading.Lock()
calls: list[RunFinished] = []


def record(finished: RunFinished) -> None:
    with lock:
        calls.append(finished)


def explode(finished: RunFinished) -> None:
    raise RuntimeError(f"hook failed for {finished.run_id}")


not_callable = 42
