"""Runtime registration: instances, classes, factories, import paths, entry points, and errors."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from agentstream.consumers import AgentRuntime, RegistryError, RunContext, RunResult, RuntimeRegistry
from agentstream.consumers.registry import default_registry, get_runtime, register_runtime
from tests.consumers import agents


class Hello(AgentRuntime):
    key = "hello"

    async def run(self, ctx: RunContext) -> RunResult:
        return RunResult()


def make_hello() -> Hello:
    return Hello()


def broken_registration() -> None:
    raise RuntimeError("the agent module is broken")


def test_an_instance_a_class_and_a_factory_all_register_under_the_runtime_key() -> None:
    for what in (Hello(), Hello, make_hello):
        registry = RuntimeRegistry()
        assert registry.register(what) is what
        assert isinstance(registry.get("hello"), Hello)


def test_register_runtime_works_as_a_class_decorator_on_the_default_registry() -> None:
    @register_runtime
    class Decorated(Hello):
        key = "decorated-for-test"

    assert isinstance(get_runtime("decorated-for-test"), Decorated)
    assert "decorated-for-test" in default_registry


def test_an_unknown_key_names_the_registered_ones() -> None:
    registry = RuntimeRegistry()
    registry.register(Hello)
    with pytest.raises(RegistryError, match=r"'nope' \(registered: hello\)"):
        registry.get("nope")


def test_a_runtime_without_a_key_is_refused_with_what_to_do() -> None:
    with pytest.raises(RegistryError, match="has no key"):
        RuntimeRegistry().register(AgentRuntime())


@pytest.mark.parametrize("path", ["tests.consumers.agents:register", "tests.consumers.agents.register"])
def test_discover_loads_both_spellings_of_an_import_path(path: str) -> None:
    registry = RuntimeRegistry()
    registry.discover([path], entry_point_group=None)
    assert registry.errors == []
    assert set(registry.keys()) == {cls.key for cls in agents.ALL}


def test_discover_accepts_a_runtime_class_path_directly() -> None:
    registry = RuntimeRegistry()
    registry.discover(["tests.consumers.test_registry:Hello"], entry_point_group=None)
    assert registry.keys() == ["hello"]


def test_a_failing_registration_is_kept_with_its_traceback() -> None:
    registry = RuntimeRegistry()
    registry.discover(
        ["tests.consumers.test_registry:broken_registration", "no.such.module:register"],
        entry_point_group=None,
    )
    assert [e.source for e in registry.errors] == [
        "tests.consumers.test_registry:broken_registration",
        "no.such.module:register",
    ]
    assert "the agent module is broken" in registry.errors[0].message
    assert "Traceback" in registry.errors[0].traceback
    assert "ModuleNotFoundError" in registry.errors[1].message


def test_a_failing_registration_is_a_django_system_check_error_with_the_traceback() -> None:
    broken = {"RUNTIME_REGISTRY": ["tests.consumers.test_registry:broken_registration"]}
    with override_settings(AGENTSTREAM=broken), pytest.raises(SystemCheckError) as raised:
        call_command("check")
    message = str(raised.value)
    assert "agentstream.E001" in message
    assert "the agent module is broken" in message and "Traceback" in message


def test_a_working_registry_passes_the_system_check() -> None:
    with override_settings(AGENTSTREAM={"RUNTIME_REGISTRY": ["tests.consumers.agents:register"]}):
        call_command("check")


def test_runtimes_are_discovered_from_the_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    from agentstream.consumers import registry as registry_module

    found = [EntryPoint("hello", "tests.consumers.test_registry:Hello", "agentstream.runtimes")]
    monkeypatch.setattr(
        registry_module, "entry_points", lambda group: found if group == "agentstream.runtimes" else []
    )
    registry = RuntimeRegistry()
    registry.discover([])
    assert registry.keys() == ["hello"] and registry.errors == []


def test_a_worker_asked_for_an_unregistered_key_exits_with_a_one_line_error() -> None:
    import os
    import subprocess
    import sys

    from tests.consumers.processes import ROOT

    env = {
        **os.environ,
        "AGENTSTREAM_RUNTIME_REGISTRY": "tests.consumers.agents:register",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-m", "agentstream.consumers.worker_main", "--agent-keys", "nope", "--burst"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "no runtime is registered for agent key 'nope'" in done.stderr
    assert "Traceback" not in done.stderr
