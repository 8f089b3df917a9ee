"""The ``agentstream`` command: the bundled demo project, in one process (``demo``) or as the
production topology's separate processes (``serve``, ``worker``, ``projector``), with ``status``,
``dead`` and ``manage`` around them. ``USAGE`` below is what ``agentstream --help`` prints."""

from __future__ import annotations

import os
import sys

SETTINGS_MODULE = "agentstream.django_app.demo.settings"
ASGI_APP = "agentstream.django_app.demo.asgi:application"
USAGE = """\
usage: agentstream COMMAND [ARGS...]      (agentstream COMMAND --help describes each)

The bundled Django project, in one process or as the production topology's separate processes:

  agentstream demo [--host H] [--port P]  API + SSE + workers + projector + dashboard in one
                                          process, on fakeredis and SQLite unless REDIS_URL /
                                          DATABASE_URL are set
  agentstream serve [uvicorn options]     the API and the event streams (ASGI)
  agentstream worker [runagent options]   workers that run the agents
  agentstream projector [options]         projectors that write the read-models
                                          (serve, worker, projector: set REDIS_URL, DATABASE_URL)
  agentstream status [--watch]            queues, leases, projector lag, dead letters, runs
  agentstream dead list | retry ID | purge
                                          dead-lettered runs
  agentstream manage ARGS...              any management command (migrate, check, shell, ...)

Settings: AGENTSTREAM_<KEY> environment variables (README, "Configuration reference")."""

# what each command runs: a management command of the demo project, shown under the user's name
COMMANDS = {"worker": "runagent", "projector": "runprojector", "status": "agentstatus", "dead": "deadletters"}


def _django(command: str, rest: list[str], shown: str) -> None:
    """Run a management command of the demo project, its usage and errors named ``agentstream
    <shown>`` (what the user typed), not the management command's own name."""
    import django
    from django.core.management import ManagementUtility

    django.setup()
    found = ManagementUtility(["agentstream", command]).fetch_command(command)
    found.run_from_argv(["agentstream", shown, *rest])


def _manage(rest: list[str]) -> None:
    from django.core.management import ManagementUtility

    ManagementUtility(["agentstream manage", *rest]).execute()


def _asks_help(rest: list[str]) -> bool:
    return any(arg in ("-h", "--help") for arg in rest)


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
        print(USAGE)
        return
    command, rest = args[0], args[1:]
    if command in ("serve", "worker", "projector") and not _asks_help(rest):
        _require_servers(command)
    if command == "demo":
        from agentstream.django_app.demo.embedded import main as demo_main

        demo_main(rest)
    elif command == "serve":
        if not _asks_help(rest):
            _require_noeviction()
        import uvicorn

        uvicorn.main(args=[ASGI_APP, *rest], prog_name="agentstream serve")
    elif command in COMMANDS:
        _django(COMMANDS[command], rest, command)
    elif command == "manage":
        _manage(rest)
    else:
        sys.exit(f"agentstream: unknown command {command!r}\n\n{USAGE}")


if __name__ == "__main__":
    main()
