"""Django settings for ``runagent`` subprocess tests: the suite's, with AGENTSTREAM from the env."""

from __future__ import annotations

import os

from tests.django_settings import *  # noqa: F403

DEBUG = os.environ.get("TEST_DEBUG", "") == "1"
AGENTSTREAM = {
    "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    "KEY_PREFIX": os.environ["TEST_KEY_PREFIX"],
    "PARTITIONS": 4,
    "LEASE_TTL_SECONDS": 1,
    "RUNTIME_REGISTRY": ["tests.consumers.agents:register"],
}
