"""agentstream.core: the pure event-sourced domain and the Redis Streams event store.

Pure modules (``ids``, ``keys``, ``events``, ``codec``, ``state``, ``settings``, ``errors``)
import neither redis nor Django; only ``store`` and ``scripts`` talk to Redis.
"""

from agentstream.core.events import TERMINAL_TYPES, Event, EventType, Visibility
from agentstream.core.state import ConversationState, RunState, RunStatus, evolve

__all__ = [
    "TERMINAL_TYPES",
    "ConversationState",
    "Event",
    "EventType",
    "RunState",
    "RunStatus",
    "Visibility",
    "evolve",
]
