"""The ``agentstream`` console script's own behaviour (the demo itself is tested in test_demo.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


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
