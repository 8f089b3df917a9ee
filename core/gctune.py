"""Garbage-collector settings for long-running processes (workers, projectors).

A full (generation 2) collection walks every tracked object: in a worker that imported Django,
an LLM SDK and the agents, that took ~60 ms on the benchmark machine, a pause every few seconds
that every run picked up in that moment waited through (it was the submit -> run.started p99).
Objects alive once start-up is over live as long as the process: ``gc.freeze()`` moves them to
the permanent generation, so later collections walk only what the process allocated since.
The gen-0 threshold is raised as well: the hot paths allocate many short-lived containers
(stream replies, payload dicts) that reference counting frees anyway; fewer gen-0 passes is
less CPU per run.
"""

from __future__ import annotations

import gc
import threading

GEN0_THRESHOLD = 10_000  # CPython's default 700 runs a pass every few runs on a busy worker


def freeze_startup_heap() -> bool:
    """Call once start-up (imports, registries, settings) is done, before serving.

    Only from the main thread: a worker or projector embedded in another program (a thread of
    the demo, of a test run) leaves that program's collector alone. True if it froze.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(GEN0_THRESHOLD, gen0), gen1, gen2)
    return True
