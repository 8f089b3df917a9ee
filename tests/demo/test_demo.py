"""``agentstream demo`` end to end over HTTP: every demo agent, streamed, and cancelled."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.demo.live import Demo

pytestmark = pytest.mark.slow


def start(demo: Demo, agent_key: str, content: str, **params: Any) -> dict[str, Any]:
    response = httpx.post(
        f"{demo.url}/api/agents/runs/",
        headers=demo.headers,
        json={"agent_key": agent_key, "messages": [{"role": "user", "content": content}], "params": params},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def stream(
    demo: Demo, run_id: str, *, until_seq: int | None = None, query: str = "include_all=true"
) -> list[dict[str, Any]]:
    """Every event of the run from its SSE stream, until the stream ends (after the terminal event)."""
    events: list[dict[str, Any]] = []
    with httpx.stream(
        "GET", f"{demo.url}/api/agents/runs/{run_id}/events/?{query}", headers=demo.headers, timeout=30
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if until_seq is not None and events[-1]["seq"] >= until_seq:
                    break
    return events


def test_chat_agent_streams_a_reply_token_by_token(demo: Demo) -> None:
    run = start(demo, "chat-agent", "Hello demo")
    events = stream(demo, run["id"])
    types = [e["type"] for e in events]
    assert types[0] == "run.queued" and types[-1] == "run.succeeded"
    deltas = [e["payload"]["delta"] for e in events if e["type"] == "assistant.delta"]
    [message] = [e["payload"] for e in events if e["type"] == "assistant.message"]
    assert len(deltas) > 3 and "".join(deltas) == message["content"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_tool_agent_calls_the_calculator_and_answers(demo: Demo) -> None:
    run = start(demo, "tool-agent", "what is 6*7?")
    events = stream(demo, run["id"])
    [call] = [e["payload"] for e in events if e["type"] == "tool.call"]
    [result] = [e["payload"] for e in events if e["type"] == "tool.result"]
    assert call["name"] == "calculator" and result["result"] == 42
    assert events[-1]["type"] == "run.succeeded"
    final = httpx.get(f"{demo.url}/api/agents/runs/{run['id']}/", headers=demo.headers, timeout=10).json()
    assert final["status"] == "succeeded"


def test_a_sleepy_agent_run_is_cancelled_midway_with_its_progress_kept(demo: Demo) -> None:
    run = start(demo, "sleepy-agent", "sleep", steps=100, delay_ms=50)
    first = stream(demo, run["id"], until_seq=4, query="")  # a couple of progress events
    assert any(e["type"] == "progress" for e in first)
    response = httpx.post(f"{demo.url}/api/agents/runs/{run['id']}/cancel/", headers=demo.headers, timeout=10)
    assert response.status_code == 202, response.text
    events = stream(demo, run["id"])
    assert events[-1]["type"] == "run.cancelled"
    steps = [e["payload"]["step"] for e in events if e["type"] == "progress"]
    assert 1 <= len(steps) < 100 and steps == list(range(1, len(steps) + 1))


def test_the_demo_serves_prometheus_metrics_with_the_runs_it_did(demo: Demo) -> None:
    run = start(demo, "chat-agent", "count me")
    stream(demo, run["id"])
    text = httpx.get(f"{demo.url}/metrics", timeout=10).text
    assert 'agentstream_queue_waiting{agent_key="chat-agent"}' in text
    assert "agentstream_projector_lag_seconds{" in text
    assert "agentstream_sse_clients " in text


def test_the_printed_token_reaches_the_owners_stores_too(demo: Demo) -> None:
    for store in ("memory", "preferences", "tasks", "knowledge"):
        response = httpx.get(f"{demo.url}/api/agents/{store}/", headers=demo.headers, timeout=10)
        assert response.status_code == 200, (store, response.text)
    found = httpx.post(
        f"{demo.url}/api/agents/knowledge/search/",
        headers=demo.headers,
        json={"embedding": [0.1, 1.0]},
        timeout=10,
    )
    assert found.status_code == 200 and found.json() == [], found.text
