"""A conversation as chat messages (``Conversation.get_message_history``), from the read-models.

Per run, oldest first: the messages the run was given, then what the assistant answered (the
run's ``final_messages``, or its archived ``assistant.message`` events while it has none). Nothing
is de-duplicated: a message the user really sent twice appears twice.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.apps import apps

FAILED_STATUSES = ("failed", "timed_out")


def message_history(conversation: Any, *, include_failed_runs: bool = False) -> list[dict[str, Any]]:
    database = conversation._state.db or "default"
    runs = conversation.runs.using(database).exclude(created_at=None).order_by("created_at", "id")
    if not include_failed_runs:
        runs = runs.exclude(status__in=FAILED_STATUSES)
    runs = list(runs.only("id", "input", "final_messages", "status"))
    answered_by_events = [r.id for r in runs if r.final_messages is None]
    assistant: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    if answered_by_events:
        event_model = apps.get_model("agentstream", "Event")
        found = (
            event_model.objects.using(database)
            .filter(run_id__in=answered_by_events, type="assistant.message")
            .order_by("run_id", "seq")
            .values_list("run_id", "payload")
        )
        for run_id, payload in found:
            assistant[run_id].append(_message(payload))
    history: list[dict[str, Any]] = []
    for run in runs:
        history.extend(_message(m) for m in (run.input or {}).get("messages", []) if isinstance(m, dict))
        answer = run.final_messages if run.final_messages is not None else assistant.get(run.id, [])
        history.extend(_message(m) for m in answer if isinstance(m, dict))
    return history


def last_assistant_message(conversation: Any) -> dict[str, Any] | None:
    history: list[dict[str, Any]] = message_history(conversation)
    return next((m for m in reversed(history) if m.get("role") == "assistant"), None)


def _message(raw: Any) -> dict[str, Any]:
    message = dict(raw or {})
    message.setdefault("role", "assistant")
    message.setdefault("content", "")
    return message
