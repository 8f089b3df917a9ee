"""The start-up heap freeze of worker and projector processes (core/gctune.py)."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading

from agentstream.core.gctune import GEN0_THRESHOLD, freeze_startup_heap


def test_a_process_main_thread_freezes_its_start_up_heap_and_collects_young_objects_less_often() -> None:
    script = (
        "import gc\n"
        "from agentstream.core.gctune import freeze_startup_heap\n"
        "assert gc.get_freeze_count() == 0\n"
        "assert freeze_startup_heap() is True\n"
        "print(gc.get_freeze_count(), gc.get_threshold()[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    frozen, gen0 = (int(x) for x in out.stdout.split())
    assert frozen > 1000  # the interpreter's and our modules' objects
    assert gen0 == GEN0_THRESHOLD


def test_an_embedded_worker_thread_leaves_the_host_programs_collector_alone() -> None:
    before = (gc.get_freeze_count(), gc.get_threshold())
    answers: list[bool] = []
    thread = threading.Thread(target=lambda: answers.append(freeze_startup_heap()))
    thread.start()
    thread.join(10)

    assert answers == [False]
    assert (gc.get_freeze_count(), gc.get_threshold()) == before
