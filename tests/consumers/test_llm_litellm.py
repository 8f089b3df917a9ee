"""The ``litellm`` provider against the local OpenAI-compatible server (when litellm is installed)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agentstream.consumers.errors import PermanentFailure, Retry
from agentstream.consumers.llm import get_llm_client
from agentstream.consumers.llm.types import ToolCall, Usage
from agentstream.core.errors import ConfigurationError
from agentstream.core.settings import Settings
from tests.consumers.fake_openai_server import FakeOpenAIServer, Reply


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
    import sys

    monkeypatch.setitem(sys.modules, "litellm", None)  # as if not installed
    with pytest.raises(ConfigurationError, match=r"pip install 'agentstream\[litellm\]'"):
        get_llm_client("litellm", settings=Settings())
