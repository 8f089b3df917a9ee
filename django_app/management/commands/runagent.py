"""``manage.py runagent``: agent workers for this Django project.

``--processes N`` spawns N worker processes and supervises them; with one process in DEBUG the
worker reloads on code changes like ``runserver`` (``--noreload`` to turn it off). The worker
runs in the reloader's thread there, so it leaves signals to the reloader; a code change hands
its runs back before the process restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import threading
from pathlib import Path
from typing import Any

from django.conf import settings as django_settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import autoreload

from agentstream.consumers.errors import RegistryError
from agentstream.consumers.supervisor import CONFIGURATION_ERROR, supervise
from agentstream.consumers.worker import Worker, served
from agentstream.consumers.worker_main import (
    WorkerConfig,
    add_worker_arguments,
    load_registry,
    run_worker_process,
    split_keys,
)
from agentstream.core.errors import ConfigurationError
from agentstream.core.eviction import ensure_noeviction_at_start
from agentstream.django_app.conf import runtime_settings


class Command(BaseCommand):
    help = "Run agent workers: claim queued runs from Redis Streams and execute them."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_worker_arguments(parser)
        parser.add_argument("--noreload", action="store_true", help="do not reload on code changes (DEBUG)")

    def handle(self, *args: Any, **options: Any) -> None:
        settings = runtime_settings()
        try:
            ensure_noeviction_at_start(settings)
        except ConfigurationError as exc:
            raise CommandError(str(exc), returncode=CONFIGURATION_ERROR) from None
        config = WorkerConfig(
            settings=settings,
            agent_keys=split_keys(options["agent_keys"]),
            concurrency=options["concurrency"],
            burst=options["burst"],
            block_ms=max(1, int(options["queue_poll_interval"] * 1000)),
            log_level="DEBUG" if options["verbosity"] >= 3 else "INFO",
            metrics_port=options["metrics_port"],
            stores="agentstream.django_app.stores.DjangoStoreBackend",
        )
        processes = options["processes"] or settings.DEFAULT_PROCESSES
        if processes > 1 and config.metrics_port is not None:
            raise CommandError("--metrics-port serves one process; use --processes 1 per port")
        check_worker_config(config)
        if processes > 1:
            code = supervise(django_worker_process, (config,), processes, restart=not config.burst)
            if code:
                raise SystemExit(code)
            return
        if django_settings.DEBUG and not options["noreload"] and not config.burst:
            run_reloading(dataclasses.replace(config, handle_signals=False))
            return
        run_worker_process(config)


# how long a code change waits for the worker to hand its runs back before the process restarts
RELOAD_HAND_BACK_S = 10.0


def run_reloading(config: WorkerConfig) -> None:
    """``runserver``'s way: the worker in the reloader's thread. The reloader ends the process on
    a code change (``sys.exit(3)``): first the worker stops and hands its runs back, so they start
    again at once on the new code, their attempt not spent, instead of waiting out their lease
    and being reclaimed (a spent attempt each: a few saves failed a run)."""
    hand_back = HandBackOnReload()
    autoreload.file_changed.connect(hand_back.file_changed, weak=False)
    autoreload.run_with_reloader(hand_back.work, config)


class HandBackOnReload:
    """The worker of a reloading process, stopped (its runs handed back) when a code change is
    about to restart the process."""

    def __init__(self, wait_s: float = RELOAD_HAND_BACK_S) -> None:
        self.wait_s = wait_s
        self.serving: list[tuple[asyncio.AbstractEventLoop, Worker]] = []
        self.reloading = threading.Event()
        self.stopped = threading.Event()

    def work(self, config: WorkerConfig) -> None:
        """The reloader's main function (its own thread)."""
        try:
            run_worker_process(config, self.on_serving)
        finally:
            self.stopped.set()

    def on_serving(self, worker: Worker) -> None:
        self.serving.append((asyncio.get_running_loop(), worker))
        if self.reloading.is_set():  # the code changed while it started: it claims nothing
            worker.stop(grace=False)

    def file_changed(self, sender: Any, file_path: Any, **kwargs: Any) -> None:
        """Django's ``file_changed`` receiver, in the reloader's thread; returning (None) lets
        the reload go on."""
        if Path(file_path).suffix != ".py":
            return  # a template or a translation: Django's own receivers reload no process for it
        self.reloading.set()
        for loop, worker in self.serving:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nothing to hand back
                loop.call_soon_threadsafe(functools.partial(worker.stop, grace=False))
        self.stopped.wait(self.wait_s)


def check_worker_config(config: WorkerConfig) -> None:
    """Refuse here, once, what every worker would refuse at its start (an unknown agent key, a
    concurrency below 1): N supervised children would each print it and exit 2."""
    registry = load_registry([*config.settings.RUNTIME_REGISTRY, *config.registry_paths])
    try:
        served(registry, config.agent_keys, config.concurrency or config.settings.DEFAULT_CONCURRENCY)
    except (RegistryError, ValueError) as exc:
        raise CommandError(str(exc), returncode=CONFIGURATION_ERROR) from None


def django_worker_process(config: WorkerConfig) -> None:
    """A spawned child: set Django up (settings come through the environment), then work."""
    import django

    django.setup()
    run_worker_process(config)
