"""Hooks the notification tests configure by dotted path (called on the projector's DB thread)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from agentstream.projections.notify import RunFinished

lock = threading.Lock()
calls: list[RunFinished] = []


def record(finished: RunFinished) -> None:
    with lock:
        calls.append(finished)


def explode(finished: RunFinished) -> None:
    raise RuntimeError(f"hook failed for {finished.run_id}")


not_callable = 42


_calls_here = 0


def recorded_in_a_file(finished: RunFinished) -> None:
    """Appends ``<pid> <run id>`` to ``$NOTIFY_LOG``. With ``$NOTIFY_BLOCK_AFTER=n`` the call after
    the n-th writes its run id to ``$NOTIFY_BLOCKED`` and never returns (the test kills us there)."""
    global _calls_here
    with lock:
        _calls_here += 1
        block_after = os.environ.get("NOTIFY_BLOCK_AFTER")
        if block_after is not None and _calls_here > int(block_after):
            Path(os.environ["NOTIFY_BLOCKED"]).write_text(finished.run_id)
            threading.Event().wait()
        with open(os.environ["NOTIFY_LOG"], "a") as out:
            out.write(f"{os.getpid()} {finished.run_id}\n")
