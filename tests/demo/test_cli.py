"""The ``agentstream`` console script's own behaviour (the demo itself is tested in test_demo.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import REDIS_URL, free_port


def agentstream(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "DATABASE_URL", "DJANGO_SETTINGS_MODULE")
    }
    return subprocess.run(
        [sys.executable, "-m", "agentstream.django_app.cli", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_arguments_it_prints_every_command() -> None:
    done = agentstream()
    assert done.returncode == 0
    for command in ("demo", "serve", "worker", "projector", "status", "dead", "manage"):
        assert f"agentstream {command}" in done.stdout


@pytest.mark.parametrize("command", ["serve", "worker", "projector"])
def test_the_separate_processes_need_real_servers_and_say_so(command: str) -> None:
    done = agentstream(command)
    assert done.returncode != 0
    assert "set REDIS_URL and DATABASE_URL" in done.stderr and "agentstream demo" in done.stderr


def test_an_unknown_command_is_refused_with_the_usage() -> None:
    done = agentstream("frobnicate")
    assert done.returncode != 0 and "unknown command 'frobnicate'" in done.stderr


def test_a_bad_setting_in_the_environment_names_the_key() -> None:
    done = agentstream("manage", "check", AGENTSTREAM_PARTITIONS="many")
    assert done.returncode != 0
    assert done.stderr.strip() == "agentstream: AGENTSTREAM['PARTITIONS'] = 'many' is not a valid int"


def assert_one_line(done: subprocess.CompletedProcess[str], starts: str) -> None:
    """An operator's mistake: one line on stderr saying what to do, a non-zero exit, no traceback."""
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(starts), done.stderr


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A demo directory whose SQLite database is migrated."""
    directory = str(tmp_path_factory.mktemp("demo"))
    done = agentstream("manage", "migrate", "--verbosity", "0", AGENTSTREAM_DEMO_DIR=directory)
    assert done.returncode == 0, done.stderr
    return directory


@pytest.mark.parametrize("command", [("status",), ("dead", "list")])
def test_an_unreachable_redis_is_one_line_without_the_password(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    url = f"redis://ops:s3cret@127.0.0.1:{free_port()}/0"
    done = agentstream(*command, REDIS_URL=url, AGENTSTREAM_DEMO_DIR=str(tmp_path))
    assert_one_line(done, "CommandError: cannot reach Redis at redis://***@127.0.0.1:")
    assert "Connection refused; is it running? set REDIS_URL" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout


def test_status_on_an_unmigrated_database_says_to_migrate(tmp_path: Path) -> None:
    done = agentstream("status", AGENTSTREAM_DEMO_DIR=str(tmp_path))
    assert_one_line(done, "CommandError: the database 'default' (SQLite ")
    assert "has no agentstream tables" in done.stderr and "agentstream manage migrate" in done.stderr


def test_status_with_the_database_down_is_one_line_without_the_password() -> None:
    url = f"postgres://ops:s3cret@127.0.0.1:{free_port()}/agentstream"
    done = agentstream("status", DATABASE_URL=url)
    assert_one_line(done, "CommandError: cannot use the database 'default' (127.0.0.1:")
    assert done.stderr.strip().endswith("is it running? set DATABASE_URL") and "s3cret" not in done.stderr


@pytest.mark.parametrize("url", ["sqlite:///agentstream.db", "mysql://ops:s3cret@db/agentstream"])
def test_a_database_url_that_is_not_postgres_is_one_line_without_the_password(url: str) -> None:
    done = agentstream("projector", REDIS_URL=REDIS_URL, DATABASE_URL=url)
    assert_one_line(done, "agentstream: DATABASE_URL is a ")
    assert "use postgres://user:password@host:port/name" in done.stderr
    assert "s3cret" not in done.stderr


def test_status_without_redis_url_says_it_shows_an_empty_in_process_fakeredis(migrated: str) -> None:
    done = agentstream("status", AGENTSTREAM_DEMO_DIR=migrated)
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert "is an empty fakeredis in this process" in first and "set REDIS_URL" in first
    assert "(no queues yet)" in done.stdout


def test_ctrl_c_ends_status_watch_quietly_with_success(migrated: str) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "DATABASE_URL", "DJANGO_SETTINGS_MODULE")
    }
    env.update(AGENTSTREAM_DEMO_DIR=migrated, PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "agentstream.django_app.cli", "status", "--watch", "--interval", "0.1"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        while "dead letters:" not in proc.stdout.readline():  # a frame was drawn: it is watching
            assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert err == ""


def test_a_demo_on_a_port_in_use_is_one_line_before_it_prints_or_changes_anything(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = agentstream("demo", "--port", str(port), AGENTSTREAM_DEMO_DIR=str(tmp_path))
    assert_one_line(done, f"agentstream demo: cannot listen on 127.0.0.1:{port} (")
    assert "another demo may be running: stop it, or pass --port" in done.stderr
    assert done.stdout == ""  # no banner with a token that would replace the running demo's
    assert not (tmp_path / "agentstream.sqlite3").exists()  # nor migrated a database


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        (("worker", "--help"), "usage: agentstream worker "),
        (("projector", "--help"), "usage: agentstream projector "),
        (("status", "--help"), "usage: agentstream status "),
        (("dead", "--help"), "usage: agentstream dead "),
        (("manage", "migrate", "--help"), "usage: agentstream manage migrate "),
        (("serve", "--help"), "Usage: agentstream serve "),
    ],
)
def test_each_commands_help_works_without_servers_under_the_name_the_user_typed(
    command: tuple[str, ...], usage: str, tmp_path: Path
) -> None:
    done = agentstream(*command, AGENTSTREAM_DEMO_DIR=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(usage), done.stdout
    for internal in ("runagent", "runprojector", "agentstatus", "deadletters"):
        assert f"agentstream {internal}" not in done.stdout


def test_the_usage_is_plain_text_with_a_line_per_command() -> None:
    done = agentstream("--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: agentstream COMMAND [ARGS...]")
    assert "``" not in done.stdout and "::" not in done.stdout  # not the module's reST docstring


def test_manage_help_names_itself() -> None:
    done = agentstream("manage", "--help")
    assert "Type 'agentstream manage help <subcommand>'" in done.stdout
