"""``chat-agent`` and ``tool-agent``: the examples under the demo's agent keys.

With ``OPENAI_API_KEY`` set they talk to OpenAI (``MODEL_PROVIDER=openai``); without, to the
``fake`` provider, which streams a scripted reply token by token so the dashboard shows streaming.
"""

from __future__ import annotations

from agentstream.consumers.examples.simple_chat import SimpleChatAgent
from agentstream.consumers.examples.tool_agent import ToolAgent as ExampleToolAgent
from agentstream.consumers.llm import LLMClient, get_llm_client

FAKE_TOKEN_DELAY_S = 0.03  # slow enough to watch the tokens arrive


def _llm() -> LLMClient | None:
    """A fake client with a visible per-token delay; ``None`` lets the example pick the provider."""
    from agentstream.consumers.llm import current_settings

    if current_settings().MODEL_PROVIDER == "fake":
        return get_llm_client(token_delay_s=FAKE_TOKEN_DELAY_S)
    return None


class ChatAgent(SimpleChatAgent):
    key = "chat-agent"

    def __init__(self) -> None:
        super().__init__(_llm())


class ToolAgent(ExampleToolAgent):
    key = "tool-agent"
