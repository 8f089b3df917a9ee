"""A RunContext stand-in that records what an agent emits (for LLM/tool tests without a worker)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentstream.core.events import Visibility


class RecordingContext:
    def __init__(
        self, messages: list[dict[str, Any]] | None = None, params: dict[str, Any] | None = None
    ) -> None:
        self.run_id = "run-test"
        self.conversation_id: str | None = None
        self.attempt = 1
        self.input_messages = messages or [{"role": "user", "content": "hi"}]
        self.params = params or {}
        self.metadata: dict[str, Any] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.usage: dict[str, int | float] = {}
        self._cancelled = False

    async def emit(
        self, event_type: str, payload: Mapping[str, Any], *, visibility: Visibility | None = None
    ) -> None:
        self.events.append((str(event_type), dict(payload)))

    async def emit_user_message(self, content: str) -> None:
        await self.emit("assistant.message", {"role": "assistant", "content": content})

    def record_usage(self, usage: Mapping[str, int | float]) -> None:
        for name, amount in usage.items():
            self.usage[name] = self.usage.get(name, 0) + amount

    def cancelled(self) -> bool:
        return self._cancelled

    def types(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [payload for k, payload in self.events if k == kind]
