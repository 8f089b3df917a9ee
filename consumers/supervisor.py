"""Run N worker (or projector) processes and keep them running.

Given modules to preload (``worker_main`` does), children come from a *forkserver* where the
platform has one: a clean process, started once, that imports those modules and then forks
each child, so N children start within milliseconds of each other instead of each importing
everything again (~0.3 s of CPU apiece, taken from the children already at work). Unlike a
plain fork of this process, nothing the supervisor did (threads, connections) leaks into them.
Otherwise children are *spawned*.

A child that dies unexpectedly is restarted (with a short backoff, so a crash loop does not
spin); SIGTERM/SIGINT are forwarded to every child, which drain as a single worker does, and
the supervisor returns when all have exited. In burst mode children are not restarted. A child
that exits with ``CONFIGURATION_ERROR`` (2: it printed why, e.g. an unknown agent key) is not
restarted either: every restart would fail the same way. The others are stopped and the
supervisor returns 2. A child killed by a signal counts as ``128 + signal`` (as a shell says).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable, Sequence
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

log = logging.getLogger("agentstream.worker")

CONFIGURATION_ERROR = 2  # a child's exit code for "fix the configuration": restarting cannot help


def supervise(
    target: Callable[..., Any],
    args: tuple[Any, ...],
    processes: int,
    *,
    restart: bool = True,
    preload: Sequence[str] = (),
    name: str = "worker",
) -> int:
    """Run ``target(*args)`` in ``processes`` children; returns the worst exit code.
    ``name``: what the log calls a child ("worker process 1 exited ...").
    ``preload``: the modules a forkserver imports once for all children (an ImportError there
    is ignored: the child imports the module again and reports it); none: children are
    spawned (a Django child sets itself up, nothing to share)."""
    if preload and "forkserver" in multiprocessing.get_all_start_methods():
        ctx: Any = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([target.__module__, *preload])
    else:  # pragma: no cover - Windows
        ctx = multiprocessing.get_context("spawn")
    stopping = False
    children: dict[int, BaseProcess] = {}
    restarts: dict[int, float] = {}

    def start(slot: int) -> None:
        proc = ctx.Process(
            target=_child, args=(target, args), name=f"agentstream-{name}-{slot}", daemon=False
        )
        proc.start()
        children[slot] = proc
        log.info("%s process %d started (pid %s)", name, slot, proc.pid)

    def stop_all(signum: int) -> None:
        nonlocal stopping
        stopping = True
        for proc in children.values():
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):  # it exited since is_alive()
                    os.kill(proc.pid, signum)

    def forward(signum: int, _frame: FrameType | None) -> None:
        stop_all(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    worst = 0
    try:
        for slot in range(processes):
            start(slot)
        while children:
            multiprocessing.connection.wait([p.sentinel for p in children.values()], timeout=1.0)
            for slot, proc in list(children.items()):
                if proc.is_alive():
                    continue
                proc.join()
                code = proc.exitcode or 0
                if stopping and code in (-signal.SIGTERM, -signal.SIGINT):
                    code = 0  # our forwarded signal reached it before its handlers: nothing was claimed
                elif code < 0:
                    code = 128 - code  # killed by a signal: never 0, and what a shell would say
                del children[slot]
                if code == CONFIGURATION_ERROR and not stopping:
                    log.error("%s process %d exited with a configuration error; stopping", name, slot)
                    stop_all(signal.SIGTERM)
                if stopping or not restart or code == 0:
                    worst = max(worst, code)
                    continue
                log.error("%s process %d exited with %s; restarting it", name, slot, code)
                since = time.monotonic() - restarts.get(slot, 0.0)
                if since < 5.0:
                    time.sleep(1.0)  # a crash loop: do not spin
                restarts[slot] = time.monotonic()
                if not stopping:
                    start(slot)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop_forkserver()
    return worst


def _stop_forkserver() -> None:
    """Stop and reap the forkserver (it reaped the children): no process outlives the
    supervisor, and the children's CPU time reaches ours (``getrusage(RUSAGE_CHILDREN)``)."""
    import multiprocessing.forkserver as forkserver

    stop = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)
    if callable(stop):
        with contextlib.suppress(OSError):
            stop()


def _child(target: Callable[..., Any], args: tuple[Any, ...]) -> None:
    # Own process group: a terminal's Ctrl-C reaches the supervisor only, which forwards it
    # once; a child that got it twice would skip its grace period.
    os.setpgrp()
    target(*args)
