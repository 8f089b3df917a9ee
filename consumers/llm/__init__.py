"""LLM clients for agents: one OpenAI-style port, several providers, and run helpers.

::

    llm = get_llm_client()                       # MODEL_PROVIDER / DEFAULT_MODEL
    response = await stream_completion(ctx, llm, ctx.input_messages)

Providers: ``openai`` (any OpenAI-compatible server through ``OPENAI_BASE_URL``), ``anthropic``
and ``litellm`` (extras), ``fake`` (deterministic, scripted; no key).
"""

from agentstream.consumers.llm.config import configure, current_settings, get_llm_client, register_provider
from agentstream.consumers.llm.errors import ProviderFailure, classify_status, parse_retry_after
from agentstream.consumers.llm.fake import FakeLLMClient, FakeReply, FakeToolCall
from agentstream.consumers.llm.streaming import stream_completion
from agentstream.consumers.llm.types import LLMChunk, LLMClient, LLMResponse, Message, ToolCall, Usage

__all__ = [
    "FakeLLMClient",
    "FakeReply",
    "FakeToolCall",
    "LLMChunk",
    "LLMClient",
    "LLMResponse",
    "Message",
    "ProviderFailure",
    "ToolCall",
    "Usage",
    "classify_status",
    "configure",
    "current_settings",
    "get_llm_client",
    "parse_retry_after",
    "register_provider",
    "stream_completion",
]
