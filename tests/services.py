"""Real services for tests: found at REDIS_URL / DATABASE_URL, skipped locally when absent,
and a failure (never a skip) when CI is set."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from urllib.parse import urlparse

import pytest

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=1
        ):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A TCP port nothing listens on now (for a server a test starts, or a URL that must fail)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


REDIS_UP = reachable(REDIS_URL, 6379)
POSTGRES_UP = reachable(DATABASE_URL, 5432)


def require(service: str, up: bool) -> None:
    """Skip (locally) or fail (in CI) when a real service the test needs is not there."""
    if up:
        return
    message = f"{service} is not reachable; start it or set its URL (see README)"
    if IN_CI:
        pytest.fail(f"CI requires real services: {message}")
    pytest.skip(message)


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll a condition (a server up, a process serving); the deadline is a backstop, never the
    synchronisation itself."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)
