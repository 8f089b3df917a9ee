"""Every code block in the README runs as written.

``python`` blocks are executed (the settings are parsed, the URLconf is built, the agents run
through a real worker); ``sh`` blocks are checked command by command: make targets exist, management
commands accept the flags shown, and the ``curl`` lines run against a live ``agentstream demo``.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest

from agentstream.consumers import registry as registry_module
from agentstream.consumers.llm import configure
from agentstream.consumers.registry import RuntimeRegistry
from agentstream.consumers.worker import Worker
from agentstream.core.settings import Settings
from agentstream.core.state import fold
from agentstream.core.store import EventStore, SubmitRequest, redis_from_url
from tests.demo.live import Demo

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, re.S)
PYTHON = [body for lang, body in BLOCKS if lang == "python"]
SHELL = [body for lang, body in BLOCKS if lang == "sh"]


def commands(block: str) -> list[str]:
    joined = block.replace("\\\n", " ")
    lines = [line.split("  #")[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_the_readme_has_the_blocks_this_test_expects() -> None:
    assert len(PYTHON) == 3 and len(SHELL) >= 4
    assert any("make demo" in b for b in SHELL) and any("make test" in b for b in SHELL)


def test_the_settings_block_parses_and_its_apps_import() -> None:
    namespace: dict[str, Any] = {}
    exec(PYTHON[0], namespace)
    Settings.from_mapping(namespace["AGENTSTREAM"])
    for app in namespace["INSTALLED_APPS"]:
        importlib.import_module(app)


def test_the_urls_block_builds_the_api_routes() -> None:
    namespace: dict[str, Any] = {}
    exec(PYTHON[1], namespace)
    routes = {str(p.pattern) for p in namespace["urlpatterns"]}
    assert routes == {"api/agents/"}
    names = {u.name for u in namespace["router"].urls}
    assert {"run-list", "run-detail", "run-cancel", "conversation-list"} <= names


def test_the_settings_block_installs_the_token_table_the_urls_block_authenticates_with() -> None:
    # without rest_framework.authtoken every request with "Authorization: Token ..." was a 500
    # (Token.DoesNotExist on a model of no installed app)
    settings: dict[str, Any] = {}
    exec(PYTHON[0], settings)
    assert "TokenAuthentication" in PYTHON[1]
    assert "rest_framework.authtoken" in settings["INSTALLED_APPS"]
    assert "drf_create_token" in README  # and says how to get a token


async def test_the_agent_block_runs_through_a_real_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = RuntimeRegistry()
    monkeypatch.setattr(registry_module, "default_registry", fresh)
    settings = Settings(KEY_PREFIX="readme", MODEL_PROVIDER="fake", PARTITIONS=2)
    configure(settings)
    try:
        namespace: dict[str, Any] = {"__name__": "readme_agents"}
        exec(PYTHON[2], namespace)
        for runtime in namespace["register_agents"]():
            fresh.register(runtime)
        assert fresh.keys() == ["chat", "greeter"]
        store = EventStore(redis_from_url(f"fakeredis://{uuid.uuid4().hex}"), settings)
        greet = await store.submit(SubmitRequest(agent_key="greeter", owner="user:1", params={"name": "Ada"}))
        chat = await store.submit(
            SubmitRequest(agent_key="chat", owner="user:1", messages=[{"role": "user", "content": "hi"}])
        )
        await Worker(store, fresh, burst=True, handle_signals=False).run()
        greeted = fold(await store.read_run(greet.run_id))
        chatted = await store.read_run(chat.run_id)
    finally:
        configure(None)
    assert greeted is not None and greeted.status == "succeeded" and greeted.output == {"greeted": "Ada"}
    assert chatted[-1].type == "run.succeeded"
    assert any(e.type == "assistant.delta" for e in chatted)


def test_every_shell_command_exists_with_the_flags_shown(tmp_path: Path) -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # the bundled project: it installs what the README's settings do (rest_framework.authtoken)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "DATABASE_URL", "DJANGO_SETTINGS_MODULE")
    }
    env["AGENTSTREAM_DEMO_DIR"] = str(tmp_path)
    agentstream = [sys.executable, "-m", "agentstream.django_app.cli"]
    for block in SHELL:
        for command in commands(block):
            words = shlex.split(command)
            flags = [w.split("=")[0] for w in words if w.startswith("--")]
            if words[0] == "make":
                subprocess.run(["make", "-n", *words[1:]], cwd=ROOT, check=True, capture_output=True)
                continue
            if words[0] == "pip":
                for extra in re.findall(r"\[(\w+)\]", " ".join(words) + " " + command):
                    assert extra in extras, f"README mentions the extra [{extra}] that pyproject.toml lacks"
                continue
            if "curl" in command:
                continue  # run against a live demo below
            if words[:2] == ["python", "manage.py"]:
                argv = [*agentstream, "manage", words[2], "--help"]
            elif words[0] == "uvicorn":
                argv = [sys.executable, "-m", "uvicorn", "--help"]
            else:
                pytest.fail(f"README command this test does not know how to check: {command}")
            shown = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout
            for flag in flags:
                assert flag in shown, f"{command}: {flag} is not an option of {' '.join(argv[-2:])}"


@pytest.mark.slow
def test_the_curl_lines_work_against_the_demo_with_the_export_line_it_printed(demo: Demo) -> None:
    # as a user does: paste the printed export line, then run the block as written
    [export] = [line.strip() for line in demo.log.read_text().splitlines() if "export AGENTSTREAM" in line]
    export = export.removeprefix("shell").split("  (")[0].strip()
    [block] = [b for b in SHELL if "curl" in b]
    script = f"set -eo pipefail\n{export}\n" + block.replace("http://127.0.0.1:8000", demo.url)
    env = {k: v for k, v in os.environ.items() if k not in ("AGENTSTREAM_DEMO_TOKEN", "RUN_ID")}
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    stream, _, last = done.stdout.rstrip().rpartition("\n")
    assert "event: tool.call" in stream and "event: run.succeeded" in stream, done.stdout
    run = json.loads(last)
    assert run["agent_key"] == "tool-agent" and run["status"] == "succeeded"
    assert run["output"]["response"] == "The answer is 42."


def test_the_configuration_reference_lists_every_setting_with_its_default() -> None:
    import dataclasses

    rows = dict(re.findall(r"^\| `([A-Z_]+)`[^|]*\| `([^`]*)`", README, re.M))
    for field in dataclasses.fields(Settings):
        if field.name.startswith("LANGFUSE_"):
            assert "LANGFUSE_ENABLED" in README
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        assert field.name in rows, f"README's configuration reference lacks {field.name}"
        assert rows[field.name] == str(default), (
            f"{field.name}: README says {rows[field.name]}, the code {default}"
        )


def test_the_event_fields_the_readme_lists_are_those_the_stream_sends() -> None:
    from agentstream.core.events import Event, Visibility
    from agentstream.django_app.sse.framing import event_data

    event = Event(run_id="r", seq=1, type="progress", payload={}, ts_ms=0, visibility=Visibility.USER)
    [paragraph] = [p for p in README.split("\n\n") if p.startswith("An event's SSE frame")]
    listed = re.findall(r"`(\w+)`", paragraph.split("; `GET")[0])
    assert [name for name in listed if name in event_data(event)] == list(event_data(event))
