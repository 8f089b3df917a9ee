"""Real worker processes for fault-injection tests (kill -9, SIGSTOP, SIGTERM) on real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] | None = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            if self.proc.poll() is not None and text not in self.log():
                raise AssertionError(f"worker exited ({self.proc.returncode}) before {text!r}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the worker's log after {timeout_s}s:\n{self.log()}")
            time.sleep(0.02)

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.proc.pid, sig)

    def wait(self, timeout_s: float = 30) -> int:
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.log_file is not None:
            self.log_file.close()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def worker_env(key_prefix: str, redis_url: str, **settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSTREAM_")}
    env.update(
        {
            "REDIS_URL": redis_url,
            "AGENTSTREAM_KEY_PREFIX": key_prefix,
            "AGENTSTREAM_PARTITIONS": "4",
            "AGENTSTREAM_LEASE_TTL_SECONDS": "1",
            "AGENTSTREAM_RUNTIME_REGISTRY": "tests.consumers.agents:register",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"AGENTSTREAM_{k}": str(v) for k, v in settings.items()})
    return env


def start_worker(env: dict[str, str], tmp_path: Path, *args: str, module: str = "") -> WorkerProcess:
    """``python -m agentstream.consumers.worker_main ARGS``, logging to a file under tmp_path."""
    log_path = tmp_path / f"worker-{time.monotonic_ns()}.log"
    log_file = log_path.open("wb")
    command = [
        sys.executable,
        "-m",
        module or "agentstream.consumers.worker_main",
        "--queue-poll-interval",
        "0.2",
    ]
    proc = subprocess.Popen([*command, *args], env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=ROOT)
    return WorkerProcess(proc, log_path, log_file)
