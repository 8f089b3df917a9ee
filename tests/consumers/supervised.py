"""Children for ``test_supervisor.py``: ``python -m tests.consumers.supervised CASE PROCESSES
RESTART FILE`` supervises ``CASE`` and exits with what ``supervise`` returns. Each child appends
a line to FILE first, so the test counts how many were started."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from agentstream.consumers.supervisor import supervise

MESSAGE = "agentstream: no runtime is registered for agent key 'nope'"


def _started(path: str) -> int:
    """Record this start; how many there were before it."""
    before = Path(path).read_text().count("started") if Path(path).exists() else 0
    with open(path, "a") as file:
        file.write("started\n")
    return before


def configuration_error(path: str) -> None:
    _started(path)
    print(MESSAGE, file=sys.stderr, flush=True)
    raise SystemExit(2)


def killed(path: str) -> None:
    _started(path)
    os.kill(os.getpid(), signal.SIGKILL)


def killed_once(path: str) -> None:
    if _started(path) == 0:
        os.kill(os.getpid(), signal.SIGKILL)


CASES = {"configuration_error": configuration_error, "killed": killed, "killed_once": killed_once}

if __name__ == "__main__":
    case, processes, restart, path = sys.argv[1:]
    sys.exit(supervise(CASES[case], (path,), int(processes), restart=restart == "1"))
