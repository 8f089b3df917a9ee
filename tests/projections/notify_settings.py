"""Django settings for ``runprojector`` subprocesses of the notification tests: the suite's, with a
hook that records each call in a file and a one-second outbox lease."""

from __future__ import annotations

from tests.django_settings import *  # noqa: F403
from tests.django_settings import AGENTSTREAM as _SUITE

AGENTSTREAM = {
    **_SUITE,
    "RUN_COMPLETED_HOOK": "tests.projections.notify_hooks.recorded_in_a_file",
    "RUN_COMPLETED_LEASE_SECONDS": 1.0,
}
