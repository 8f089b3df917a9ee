"""``agentstream demo``: API + SSE + workers + projector + dashboard in ONE process and event loop.

No server to install: fakeredis and a SQLite file, unless ``REDIS_URL`` / ``DATABASE_URL`` are set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import Coroutine
from typing import Any

DESCRIPTION = """\
The API, the event streams, the workers, the projector and a live dashboard in one process. On
fakeredis and a SQLite file in ./.agentstream-demo (AGENTSTREAM_DEMO_DIR) unless REDIS_URL /
DATABASE_URL name real servers. AGENTSTREAM_DEMO_TOKEN sets the printed API token."""


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="agentstream demo", description=DESCRIPTION)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    parser.add_argument(
        "--concurrency", type=int, default=50, help="runs at once in the embedded worker (default 50)"
    )
    return parser.parse_args(argv)


def ensure_port_free(host: str, port: int) -> None:
    """Refuse, in one line, a port another process holds: before the banner and the token, which
    a second demo on the same directory would otherwise replace under the first one's feet."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SystemExit(
                f"agentstream demo: cannot listen on {host}:{port} ({exc.strerror}); "
                "another demo may be running: stop it, or pass --port"
            ) from None


def demo_token() -> str:
    """The demo user's API token (``AGENTSTREAM_DEMO_TOKEN`` sets it); creates user and token.

    The user is staff: the demo is its operator's own, and its event inspector (and the README's
    ``?include_debug=true``) shows the debug and internal events that only staff may see."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    users = get_user_model().objects
    user, _ = users.get_or_create(username="demo")
    users.filter(pk=user.pk).update(is_staff=True)
    wanted = os.environ.get("AGENTSTREAM_DEMO_TOKEN")
    token = Token.objects.filter(user=user).first()
    if token is not None and wanted and token.key != wanted:
        token.delete()
        token = None
    if token is None:
        token = Token.objects.create(user=user, key=wanted) if wanted else Token.objects.create(user=user)
    return str(token.key)


async def serve(host: str, port: int, concurrency: int) -> None:
    import uvicorn

    from agentstream.consumers import RuntimeRegistry, Worker
    from agentstream.consumers.llm import configure
    from agentstream.core.eviction import ensure_noeviction
    from agentstream.core.store import EventStore, redis_from_url
    from agentstream.django_app.conf import runtime_settings
    from agentstream.django_app.demo.asgi import application
    from agentstream.projections.projection import load_projections
    from agentstream.projections.projector import Projector

    settings = runtime_settings()
    configure(settings)
    redis = redis_from_url(settings.REDIS_URL)
    await ensure_noeviction(redis, settings)
    store = EventStore(redis, settings, pipeline_scripts=True)
    registry = RuntimeRegistry()
    registry.discover(settings.RUNTIME_REGISTRY)
    if registry.errors:
        for error in registry.errors:
            print(f"agentstream demo: could not register {error.source}: {error.message}", file=sys.stderr)
        raise SystemExit(1)
    from agentstream.django_app.stores import DjangoStoreBackend

    worker = Worker(
        store, registry, concurrency=concurrency, handle_signals=False, stores=DjangoStoreBackend()
    )
    projectors = [Projector(redis, settings.keys, p) for p in load_projections(settings)]
    server = uvicorn.Server(
        uvicorn.Config(application, host=host, port=port, lifespan="off", log_level="warning")
    )
    stop = asyncio.Event()
    background: list[Coroutine[Any, Any, None]] = [worker.run(), *(p.run(stop=stop) for p in projectors)]
    tasks = [asyncio.create_task(c) for c in background]
    try:
        await server.serve()  # returns on Ctrl-C / SIGTERM (uvicorn handles the signals)
    finally:
        worker.stop()
        stop.set()
        done, _ = await asyncio.wait(tasks, timeout=settings.SHUTDOWN_GRACE_SECONDS)
        for task in tasks:
            if task not in done:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await redis.aclose()


def main(argv: list[str]) -> None:
    args = _parse(argv)
    ensure_port_free(args.host, args.port)
    import django
    from django.conf import settings as django_settings
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    token = demo_token()
    runtime = django_settings.AGENTSTREAM
    redis_url = runtime["REDIS_URL"]
    database = django_settings.DATABASES["default"]
    where = "http" + f"://{args.host}:{args.port}"
    print(
        "\n".join(
            [
                "agentstream demo — API, SSE, workers, projector and dashboard in one process",
                f"  dashboard  {where}/?token={token}",
                f"  API        {where}/api/agents/   (header: Authorization: Token {token})",
                f"  shell      export AGENTSTREAM_DEMO_TOKEN={token}   (for the README's curl lines)",
                f"  schema     {where}/api/agents/schema/",
                f"  redis      {'fakeredis (in this process)' if redis_url.startswith('fakeredis') else redis_url}",
                f"  database   {database['NAME']}",
                "  agents     chat-agent, tool-agent, sleepy-agent      (Ctrl-C stops)",
            ]
        ),
        flush=True,
    )
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform but Windows
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port, args.concurrency))
