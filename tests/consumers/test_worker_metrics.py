"""A worker's own Prometheus counters: LLM tokens by model (the rest is tested on real processes in
test_worker_processes.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agentstream.consumers.llm import get_llm_client
from agentstream.consumers.llm.traced import TracedLLMClient, token_meter
from agentstream.consumers.worker_metrics import WorkerCollector
from agentstream.core.settings import Settings
from agentstream.core.store import EventStore
from tests.consumers.helpers import make_worker


@pytest.fixture
def metering() -> Iterator[None]:
    token_meter.enabled = True
    token_meter.tokens.clear()
    yield
    token_meter.enabled = False
    token_meter.tokens.clear()


async def test_llm_tokens_are_counted_by_model_and_kind_and_exported_with_the_workers_counters(
    wstore: EventStore, metering: None
) -> None:
    tiny = get_llm_client("fake", "tiny", settings=Settings())
    assert isinstance(tiny, TracedLLMClient)
    first = await tiny.generate([{"role": "user", "content": "one two three"}])
    async for _ in get_llm_client("fake", "big", settings=Settings()).stream(
        [{"role": "user", "content": "x"}]
    ):
        pass
    assert first.usage is not None and first.usage.prompt_tokens > 0

    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(make_worker(wstore)))
    samples = {
        (s.name, s.labels.get("model"), s.labels.get("kind")): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    assert samples[("agentstream_llm_tokens_total", "tiny", "input")] == first.usage.prompt_tokens
    assert samples[("agentstream_llm_tokens_total", "tiny", "output")] == first.usage.completion_tokens
    assert samples[("agentstream_llm_tokens_total", "big", "output")] > 0
    assert ("agentstream_worker_reclaims_total", None, None) in samples


def test_without_metrics_or_tracing_the_client_is_not_wrapped() -> None:
    assert not isinstance(get_llm_client("fake", settings=Settings()), TracedLLMClient)
