"""The ``litellm`` provider against the local OpenAI-compatible server (when litellm is installed)."""

from __future__ import annotations

import asyncio
import sys
import time
import types
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from agentstream.consumers.errors import PermanentFailure, Retry
from agentstream.consumers.llm import get_llm_client
from agentstream.consumers.llm.types import LLMChunk, ToolCall, Usage
from agentstream.core.errors import ConfigurationError
from agentstream.core.settings import Settings
from tests.consumers.fake_openai_server import GREETING, FakeOpenAIServer, Reply


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAIServer]:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch of the cost map at import
    pytest.importorskip("litellm")
    server = FakeOpenAIServer()
    server.start()
    yield server
    server.stop()


# litellm's own pydantic models warn on import of their schemas; not ours to fix.
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
async def test_litellm_streams_text_tool_calls_and_usage_and_maps_errors(server: FakeOpenAIServer) -> None:
    llm = get_llm_client(
        "litellm", "openai/local", settings=Settings(), api_base=server.base_url, api_key="k"
    )
    server.replies.append(Reply("On it", (("add", {"a": 1, "b": 2}),)))
    chunks = [c async for c in llm.stream([{"role": "user", "content": "1+2"}])]
    assert "".join(c.delta for c in chunks) == "On it"
    assert [call for c in chunks for call in c.tool_calls] == [ToolCall("call_0", "add", '{"a": 1, "b": 2}')]
    assert [c.usage for c in chunks if c.usage] == [Usage(11, 3, 14)]
    with pytest.raises(Retry) as caught:
        await llm.generate([{"role": "user", "content": "x"}], model="openai/rate-limited")
    assert caught.value.delay_s == 7.0
    with pytest.raises(PermanentFailure):
        await llm.generate([{"role": "user", "content": "x"}], model="openai/bad-request")


def test_a_missing_extra_says_which_one_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "litellm", None)  # as if not installed
    with pytest.raises(ConfigurationError, match=r"pip install 'agentstream\[litellm\]'"):
        get_llm_client("litellm", settings=Settings())


class StubLiteLLM(types.ModuleType):
    """litellm's two entry points we call, recording each completion's arguments."""

    def __init__(self) -> None:
        super().__init__("litellm")
        self.calls: list[dict[str, Any]] = []

    def get_llm_provider(
        self, model: str, custom_llm_provider: str | None = None, **_: Any
    ) -> tuple[str, str, str | None, str | None]:
        provider, _, name = model.partition("/")
        return name, custom_llm_provider or provider, None, None

    async def acompletion(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return {"choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}


async def test_the_settings_keys_and_base_url_go_to_the_provider_litellm_routes_each_call_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stub = StubLiteLLM()
    monkeypatch.setitem(sys.modules, "litellm", stub)
    settings = Settings(
        OPENAI_API_KEY="sk-settings",
        OPENAI_BASE_URL="http://openai.local/v1",
        ANTHROPIC_API_KEY="ant-settings",
    )
    llm = get_llm_client("litellm", "openai/local", settings=settings)
    hi = [{"role": "user", "content": "hi"}]
    await llm.generate(hi)
    await llm.generate(hi, model="anthropic/claude")
    await llm.generate(hi, model="azure/gpt")  # neither: litellm's own configuration applies
    await llm.generate(hi, api_key="sk-call")  # the call's own key wins
    sent = [{k: call.get(k) for k in ("api_key", "api_base")} for call in stub.calls]
    assert sent == [
        {"api_key": "sk-settings", "api_base": "http://openai.local/v1"},
        {"api_key": "ant-settings", "api_base": None},
        {"api_key": None, "api_base": None},
        {"api_key": "sk-call", "api_base": "http://openai.local/v1"},
    ]
    bare = get_llm_client("litellm", "openai/local", settings=Settings())
    await bare.generate(hi)
    assert "api_key" not in stub.calls[-1] and "api_base" not in stub.calls[-1]


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
async def test_litellm_reaches_the_settings_base_url_with_the_settings_key(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    settings = Settings(OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-from-settings")
    llm = get_llm_client("litellm", "openai/local", settings=settings)
    response = await llm.generate([{"role": "user", "content": "hi"}])
    assert response.content == GREETING
    assert server.requests[0].headers["authorization"] == "Bearer sk-from-settings"


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
async def test_step_timeout_bounds_a_litellm_stream_that_never_stops(server: FakeOpenAIServer) -> None:
    settings = Settings(STEP_TIMEOUT_SECONDS=0.3)
    llm = get_llm_client(
        "litellm", "openai/endless", settings=settings, api_base=server.base_url, api_key="k"
    )
    started = time.monotonic()
    with pytest.raises(Retry, match=r"within 0\.3 s"):
        await _drain(llm.stream([{"role": "user", "content": "hi"}]))
    assert time.monotonic() - started < 5
    assert await asyncio.to_thread(server.disconnected.wait, 5), "the HTTP stream was left open"


async def _drain(chunks: AsyncIterator[LLMChunk]) -> None:
    async for _ in chunks:
        pass
