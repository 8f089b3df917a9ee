"""Example agents, importable and tested: register them with ``RUNTIME_REGISTRY`` entries such as
``agentstream.consumers.examples.simple_chat:SimpleChatAgent``.

- ``simple_chat``: streams one reply to the conversation.
- ``tool_agent``: the tool loop with a calculator (an AST walk, never ``eval``) and a clock.
- ``todo_agent``: a to-do list that remembers its user across runs (``ctx.memory``, ``ctx.tasks``).
- ``langgraph_agent``: runs a compiled LangGraph graph as an agent (extra ``agentstream[langgraph]``).

Without an API key, set ``MODEL_PROVIDER='fake'``: the agents then run on the deterministic fake model.
"""
