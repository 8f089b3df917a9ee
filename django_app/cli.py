"""The ``agentstream`` command: the bundled demo project, in one process or as separate ones.

::

    agentstream demo [--host 127.0.0.1] [--port 8000]   API + SSE + workers + projector + dashboard, one process
    agentstream serve [uvicorn flags]                    the ASGI app (needs REDIS_URL and DATABASE_URL)
    agentstream worker [runagent flags]                  workers
    agentstream projector [runprojector flags]           projectors
    agentstream status [--watch]                         queues, leases, lag, dead letters, runs by status
    agentstream dead list | retry ID | purge             dead-lettered runs
    agentstream manage ARGS...                           any management command of the demo project
"""

from __future__ import annotations

import os
import sys

SETTINGS_MODULE = "agentstream.django_app.demo.settings"
ASGI_APP = "agentstream.django_app.demo.asgi:application"
USAGE = __doc__ or ""


def _django(argv: list[str]) -> None:
    """Run a management command of the demo project."""
    from django.core.management import execute_from_command_line

    execute_from_command_line(["agentstream", *argv])


def _require_servers(command: str) -> None:
    missing = [name for name in ("REDIS_URL", "DATABASE_URL") if not os.environ.get(name)]
    if missing:
        sys.exit(
            f"agentstream {command}: set {' and '.join(missing)} (separate processes share real Redis and "
            "PostgreSQL; for everything in one process on no servers, run `agentstream demo`)"
        )


def _require_noeviction() -> None:
    """The API writes runs: refuse to serve on an evicting Redis (before uvicorn binds)."""
    import django

    from agentstream.core.eviction import ensure_noeviction_at_start
    from agentstream.django_app.conf import runtime_settings

    django.setup()
    ensure_noeviction_at_start(runtime_settings())


def main(argv: list[str] | None = None) -> None:
    from agentstream.core.errors import ConfigurationError

    try:
        _dispatch(list(sys.argv[1:] if argv is None else argv))
    except ConfigurationError as exc:  # a bad AGENTSTREAM_* value: one line, not a traceback
        sys.exit(f"agentstream: {exc}")


def _dispatch(args: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE.strip())
        return
    command, rest = args[0], args[1:]
    if command == "demo":
        from agentstream.django_app.demo.embedded import main as demo_main

        demo_main(rest)
    elif command == "serve":
        _require_servers(command)
        _require_noeviction()
        import uvicorn

        sys.argv = ["agentstream serve", ASGI_APP, *rest]
        uvicorn.main()
    elif command == "worker":
        _require_servers(command)
        _django(["runagent", *rest])
    elif command == "projector":
        _require_servers(command)
        _django(["runprojector", *rest])
    elif command == "status":
        _django(["agentstatus", *rest])
    elif command == "dead":
        _django(["deadletters", *rest])
    elif command == "manage":
        _django(rest)
    else:
        sys.exit(f"agentstream: unknown command {command!r}\n\n{USAGE.strip()}")


if __name__ == "__main__":
    main()
