"""``supervise`` as ``runagent`` / ``runprojector --processes N`` use it: real child processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.consumers.processes import ROOT
from tests.consumers.supervised import MESSAGE


def supervised(case: str, processes: int, restart: bool, log: Path) -> subprocess.CompletedProcess[str]:
    args = [case, str(processes), str(int(restart)), str(log)]
    return subprocess.run(
        [sys.executable, "-m", "tests.consumers.supervised", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,  # a backstop: a supervisor restarting in a loop never returns
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_a_child_with_a_configuration_error_is_not_restarted_and_the_supervisor_exits_2(
    processes: int, tmp_path: Path
) -> None:
    log = tmp_path / "starts"
    done = supervised("configuration_error", processes, True, log)
    assert done.returncode == 2, done.stderr
    starts = log.read_text().count("started")
    # each child started once at most (the others may be stopped first) and said why once
    assert 1 <= starts <= processes
    assert done.stderr.count(MESSAGE) == starts
    assert "restarting" not in done.stderr and "Traceback" not in done.stderr


def test_a_child_killed_by_a_signal_is_not_a_success(tmp_path: Path) -> None:
    done = supervised("killed", 1, False, tmp_path / "starts")
    assert done.returncode == 128 + 9, done.stderr


def test_a_crashed_child_is_restarted(tmp_path: Path) -> None:
    log = tmp_path / "starts"
    done = supervised("killed_once", 1, True, log)
    assert done.returncode == 0, done.stderr
    assert log.read_text().count("started") == 2
    assert "worker process 0 exited with 137; restarting it" in done.stderr
