"""The same no-op job on each peer, one module per peer (a peer's module imports only its library).

The job does nothing but stamp its completion time into the file ``BENCH_DONE_FILE``: one
fixed-width line (``time_ns``, 20 bytes) per job, appended with one ``write`` (atomic under
O_APPEND) — no network round trip, so the peers pay nothing our workers do not. The driver reads
the file to count finished jobs and to time the first and last of them.
"""

from __future__ import annotations

import os
import time

DONE_LINE_BYTES = 20
_fd: tuple[int, int] | None = None  # (pid, fd): a forked child opens its own


def mark_done() -> None:
    global _fd
    if _fd is None or _fd[0] != os.getpid():
        _fd = (os.getpid(), os.open(os.environ["BENCH_DONE_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT))
    os.write(_fd[1], b"%019d\n" % time.time_ns())


def redis_url() -> str:
    return os.environ["BENCH_REDIS_URL"]


def concurrency() -> int:
    return int(os.environ.get("BENCH_CONCURRENCY", "16"))
