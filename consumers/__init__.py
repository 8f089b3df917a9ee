"""agentstream.consumers: the worker runtime (agents, RunContext, the job queue engine).

An agent author needs only what this module exports::

    from agentstream.consumers import AgentRuntime, RunContext, RunResult, register_runtime

    @register_runtime
    class Echo(AgentRuntime):
        key = "echo"

        async def run(self, ctx: RunContext) -> RunResult:
            await ctx.emit_user_message(ctx.input_messages[-1]["content"])
            return RunResult(final_output={"echoed": True})
"""

from agentstream.consumers.context import RunContext
from agentstream.consumers.errors import AgentFailure, ConsumerError, PermanentFailure, RegistryError, Retry
from agentstream.consumers.llm import LLMClient, get_llm_client, stream_completion
from agentstream.consumers.registry import RuntimeRegistry, default_registry, get_runtime, register_runtime
from agentstream.consumers.runtime import AgentRuntime, ErrorInfo, RunResult
from agentstream.consumers.tools import Tool, ToolDefinition, ToolRegistry, run_tool_loop
from agentstream.consumers.worker import Worker
from agentstream.core.events import EventType

__all__ = [
    "AgentFailure",
    "AgentRuntime",
    "ConsumerError",
    "ErrorInfo",
    "EventType",
    "LLMClient",
    "PermanentFailure",
    "RegistryError",
    "Retry",
    "RunContext",
    "RunResult",
    "RuntimeRegistry",
    "Tool",
    "ToolDefinition",
    "ToolRegistry",
    "Worker",
    "default_registry",
    "get_llm_client",
    "get_runtime",
    "register_runtime",
    "run_tool_loop",
    "stream_completion",
]
