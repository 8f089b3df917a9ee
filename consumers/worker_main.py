"""``python -m agentstream.consumers.worker_main``: a worker without Django.

Settings come from ``AGENTSTREAM_<KEY>`` environment variables (``REDIS_URL`` too); runtimes
from ``AGENTSTREAM_RUNTIME_REGISTRY`` and ``--registry``. ``runagent`` is the Django way to
start the same worker.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agentstream.consumers.errors import RegistryError
from agentstream.consumers.llm.config import configure as configure_llm
from agentstream.consumers.registry import RuntimeRegistry, default_registry
from agentstream.consumers.supervisor import supervise
from agentstream.consumers.tracing import current_tracer, tracer_for, tracer_name, use_tracer
from agentstream.consumers.worker import Worker
from agentstream.core.errors import ConfigurationError
from agentstream.core.eviction import ensure_noeviction_at_start
from agentstream.core.gctune import freeze_startup_heap
from agentstream.core.logfmt import configure_logging
from agentstream.core.settings import Settings, load_callable
from agentstream.core.store import EventStore, redis_from_url

log = logging.getLogger("agentstream.worker")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What one worker process needs; picklable, so spawned children get it as is."""

    settings: Settings
    agent_keys: tuple[str, ...] = ()
    concurrency: int | None = None
    burst: bool = False
    block_ms: int = 1000
    registry_paths: tuple[str, ...] = ()
    log_level: str = "INFO"
    handle_signals: bool = True
    metrics_port: int | None = None  # serve this process's counters for Prometheus
    # a zero-argument factory of the runs' StoreBackend, as a dotted path (picklable); "": none
    stores: str = ""


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--processes", type=int, default=None, help="worker processes (default DEFAULT_PROCESSES)"
    )
    parser.add_argument("--concurrency", type=int, default=None, help="agents running at once per process")
    parser.add_argument("--agent-keys", default="", help="comma-separated agent keys to serve (default: all)")
    parser.add_argument(
        "--queue-poll-interval", type=float, default=1.0, help="seconds a blocking read waits for a job"
    )
    parser.add_argument("--burst", action="store_true", help="drain the queues, then exit")
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="serve this worker's Prometheus counters on this port"
    )


def split_keys(value: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in value.split(",") if k.strip())


def load_registry(paths: Sequence[str], registry: RuntimeRegistry = default_registry) -> RuntimeRegistry:
    """Discover runtimes; exit with every registration error (and its traceback) printed."""
    registry.discover(paths)
    if registry.errors:
        for error in registry.errors:
            print(
                f"agentstream: could not register runtimes from {error.source}: {error.message}",
                file=sys.stderr,
            )
            print(error.traceback, file=sys.stderr)
        raise SystemExit(1)
    return registry


def run_worker_process(config: WorkerConfig, on_serving: Callable[[Worker], None] | None = None) -> None:
    """The body of one worker process (also a spawned child's target). ``on_serving`` is given
    the worker once it exists, on its event loop's thread (the DEBUG reloader stops it there)."""
    configure_logging(config.log_level, config.settings.LOG_FORMAT)
    use_tracer(tracer_for(tracer_name(config.settings), config.settings))
    configure_llm(config.settings)  # get_llm_client() in agents reads MODEL_PROVIDER etc. from here
    registry = load_registry([*config.settings.RUNTIME_REGISTRY, *config.registry_paths])
    freeze_startup_heap()  # a full collection of the start-up heap paused every run (core/gctune.py)
    try:
        run_async(serve(config, registry, on_serving))
    finally:
        current_tracer().flush()  # spans an exporter still buffers (Langfuse batches them)


async def serve(
    config: WorkerConfig, registry: RuntimeRegistry, on_serving: Callable[[Worker], None] | None = None
) -> Worker:
    client = redis_from_url(config.settings.REDIS_URL)
    store = EventStore(client, config.settings, pipeline_scripts=True)
    stores = load_callable(config.stores, "the worker's stores factory")() if config.stores else None
    try:
        worker = Worker(
            store,
            registry,
            agent_keys=config.agent_keys or None,
            concurrency=config.concurrency,
            burst=config.burst,
            handle_signals=config.handle_signals,
            block_ms=config.block_ms,
            stores=stores,
        )
    except (RegistryError, ValueError) as exc:  # a bad --agent-keys / --concurrency: say so, no traceback
        await client.aclose()
        print(f"agentstream: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if config.metrics_port is not None:
        start_metrics(worker, config.metrics_port)
    if on_serving is not None:
        on_serving(worker)
    try:
        await worker.run()
    except ConfigurationError as exc:  # e.g. an evicting Redis found once it answered: no restart loop
        print(f"agentstream: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        await store.aclose()
        await client.aclose()
    return worker


def start_metrics(worker: Worker, port: int) -> None:
    try:
        from agentstream.consumers.worker_metrics import serve_worker_metrics
    except ImportError:
        print(
            "agentstream: --metrics-port needs prometheus-client: pip install 'agentstream[prometheus]'",
            file=sys.stderr,
        )
        raise SystemExit(2) from None
    serve_worker_metrics(worker, port)
    log.info("worker %s: metrics on port %d", worker.worker_id, port)


def run_async(main: object) -> None:
    """``asyncio.run`` on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        asyncio.run(main)  # type: ignore[arg-type]
        return
    uvloop.run(main)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentstream.consumers.worker_main", description=__doc__)
    add_worker_arguments(parser)
    parser.add_argument("--registry", action="append", default=[], help="pkg.mod:attr registering runtimes")
    parser.add_argument("--log-level", default=os.environ.get("AGENTSTREAM_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    settings = Settings.from_env(os.environ)
    try:
        ensure_noeviction_at_start(settings)  # before spawning: a supervisor would restart children in a loop
    except ConfigurationError as exc:
        print(f"agentstream: {exc}", file=sys.stderr)
        return 2
    config = WorkerConfig(
        settings=settings,
        agent_keys=split_keys(args.agent_keys),
        concurrency=args.concurrency,
        burst=args.burst,
        block_ms=max(1, int(args.queue_poll_interval * 1000)),
        registry_paths=tuple(args.registry),
        log_level=args.log_level,
        metrics_port=args.metrics_port,
    )
    processes = args.processes or settings.DEFAULT_PROCESSES
    if processes > 1 and args.metrics_port is not None:
        print("agentstream: --metrics-port serves one process; use --processes 1 per port", file=sys.stderr)
        return 2
    if processes > 1:
        configure_logging(config.log_level, config.settings.LOG_FORMAT)
        paths = [*settings.RUNTIME_REGISTRY, *config.registry_paths]
        load_registry(paths)  # fail here, not N times
        modules = [path.split(":", 1)[0] for path in paths]
        return supervise(run_worker_process, (config,), processes, restart=not args.burst, preload=modules)
    run_worker_process(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
