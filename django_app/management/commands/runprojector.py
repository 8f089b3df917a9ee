"""``python manage.py runprojector [--projections a,b] [--processes N] [--burst]``: project the
partition logs into the read-models (and users' projections) until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agentstream.consumers.supervisor import CONFIGURATION_ERROR, supervise
from agentstream.core.errors import ConfigurationError
from agentstream.core.eviction import ensure_noeviction_at_start, ensure_noeviction_when_reachable
from agentstream.core.gctune import freeze_startup_heap
from agentstream.core.logfmt import configure_logging
from agentstream.core.store import redis_from_url
from agentstream.django_app.conf import runtime_settings
from agentstream.django_app.management.operator_errors import operator_errors
from agentstream.projections.logs import lag, trim_logs
from agentstream.projections.projection import load_projections
from agentstream.projections.projector import Projector, ProjectorOptions

log = logging.getLogger("agentstream.projections")


class Command(BaseCommand):
    help = "Project the partition logs into the read-models (and every PROJECTIONS entry)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--projections", default="", help="comma-separated names (default: all configured)"
        )
        parser.add_argument("--processes", type=int, default=1, help="projector processes sharing the groups")
        parser.add_argument("--burst", action="store_true", help="drain the logs, then exit")
        parser.add_argument("--database", default="default", help="the Django database alias to write")
        parser.add_argument(
            "--batch", type=int, default=None, help="entries per read (default PROJECTOR_BATCH)"
        )
        parser.add_argument("--block-ms", type=int, default=1000, help="how long an idle read blocks")
        parser.add_argument(
            "--claim-idle-ms",
            type=int,
            default=30_000,
            help="take over entries pending this long (dead consumers)",
        )
        parser.add_argument("--claim-every-s", type=float, default=5.0, help="how often to look for them")
        parser.add_argument(
            "--sweep-every-s",
            type=float,
            default=5.0,
            help="how often to deliver run_finished notices a dead projector left undelivered",
        )
        parser.add_argument(
            "--trim-every-s", type=float, default=60.0, help="how often to trim the logs (0: never)"
        )
        parser.add_argument(
            "--lag", action="store_true", help="print each group's lag per partition and exit"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["processes"] > 1 and not opts["lag"]:
            code = self._supervise(opts)
            if code:
                raise SystemExit(code)
            return
        try:
            configure_logging(logging.INFO, runtime_settings().LOG_FORMAT)
            freeze_startup_heap()  # full collections of Django's start-up heap stalled batches
            with operator_errors(opts["database"]):
                asyncio.run(self._main(opts))
        except ConfigurationError as exc:  # 2: a supervisor does not restart what cannot start
            raise CommandError(str(exc), returncode=CONFIGURATION_ERROR) from None

    def _supervise(self, opts: dict[str, Any]) -> int:
        """N children, each a one-process projector on the same groups, restarted when they
        crash, as ``runagent``'s workers are; SIGTERM reaches them all."""
        settings = runtime_settings()
        try:  # here, not N times in the children
            load_projections(settings, _names(opts))
            ensure_noeviction_at_start(settings)
        except ConfigurationError as exc:
            raise CommandError(str(exc), returncode=CONFIGURATION_ERROR) from None
        configure_logging(logging.INFO, settings.LOG_FORMAT)
        # the parsed options, not sys.argv (which holds `projector` under the CLI, nothing
        # under call_command); the output streams stay behind
        child = {k: v for k, v in opts.items() if k not in ("stdout", "stderr")} | {"processes": 1}
        return supervise(
            projector_process, (child,), opts["processes"], restart=not opts["burst"], name="projector"
        )

    async def _main(self, opts: dict[str, Any]) -> None:
        settings = runtime_settings()
        projections = load_projections(settings, _names(opts))
        all_groups = [p.group for p in load_projections(settings)]
        redis = redis_from_url(settings.REDIS_URL)
        keys = settings.keys
        try:
            if opts["lag"]:
                for projection in projections:
                    for row in await lag(redis, keys, projection.group):
                        self.stdout.write(str(row))
                return
            await ensure_noeviction_when_reachable(redis, settings)  # --lag (read-only) skips it
            options = ProjectorOptions(
                batch=opts["batch"] or settings.PROJECTOR_BATCH,
                block_ms=opts["block_ms"],
                claim_idle_ms=opts["claim_idle_ms"],
                claim_every_s=opts["claim_every_s"],
                sweep_every_s=opts["sweep_every_s"],
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            if threading.current_thread() is threading.main_thread():  # embedded (a thread): no signals
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(signum, stop.set)
            workers = [
                Projector(redis, keys, p, database=opts["database"], options=options) for p in projections
            ]
            tasks = [asyncio.create_task(w.run(burst=opts["burst"], stop=stop)) for w in workers]
            if not opts["burst"] and opts["trim_every_s"] > 0:
                tasks.append(
                    asyncio.create_task(
                        self._trim(redis, keys, all_groups, settings.LOG_RETENTION_SECONDS, opts, stop)
                    )
                )
            log.info("projecting %s into %r", ", ".join(p.name for p in projections), opts["database"])
            if opts["burst"]:
                await asyncio.gather(*tasks[: len(workers)])
            else:
                await asyncio.gather(*tasks)
            self.stdout.write(f"applied {sum(w.applied for w in workers)} entries")
        finally:
            await redis.aclose()

    @staticmethod
    async def _trim(
        redis: Any,
        keys: Any,
        groups: list[str],
        retention_s: float,
        opts: dict[str, Any],
        stop: asyncio.Event,
    ) -> None:
        while not stop.is_set():
            try:
                removed = await trim_logs(redis, keys, groups, retention_s)
                if removed:
                    log.info("trimmed %d log entries every group acknowledged", removed)
            except Exception as exc:  # trimming is housekeeping: never let it stop the projector
                log.warning("trimming the logs failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=opts["trim_every_s"])


def _names(opts: dict[str, Any]) -> list[str] | None:
    return [n.strip() for n in opts["projections"].split(",") if n.strip()] or None


def projector_process(opts: dict[str, Any]) -> None:
    """A spawned child: set Django up (settings come through the environment), then project."""
    import django

    django.setup()
    command = Command()
    try:
        command.handle(**opts)
    except CommandError as exc:  # one line, as manage.py prints it, and its exit code
        command.stderr.write(f"CommandError: {exc}")
        raise SystemExit(exc.returncode) from None
