"""``simple_chat``: stream one reply from the configured model into the run."""

from __future__ import annotations

from agentstream.consumers.context import RunContext
from agentstream.consumers.llm import LLMClient, get_llm_client, stream_completion
from agentstream.consumers.runtime import AgentRuntime, RunResult

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly."


class SimpleChatAgent(AgentRuntime):
    """Params: ``model`` (default: DEFAULT_MODEL), ``system_prompt``."""

    key = "simple_chat"

    def __init__(self, llm: LLMClient | None = None, *, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> None:
        self.llm = llm
        self.system_prompt = system_prompt

    async def run(self, ctx: RunContext) -> RunResult:
        llm = self.llm or get_llm_client()
        prompt = str(ctx.params.get("system_prompt") or self.system_prompt)
        messages = [{"role": "system", "content": prompt}, *ctx.input_messages]
        response = await stream_completion(ctx, llm, messages, model=ctx.params.get("model"))
        # Usage is already on ctx (stream_completion records it); RunResult.usage would count it twice.
        return RunResult(
            final_output={"response": response.content, "model": response.model},
            final_messages=[*ctx.input_messages, response.message],
        )
