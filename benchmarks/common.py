"""What every scenario shares: options, records, the side-by-side rounds, and the results file.

A scenario is a module ``benchmarks/<name>.py`` (dashes become underscores) with
``async def main(opts: Options) -> list[Record]``. It measures our system and its comparison in
ONE run, alternating, for ``opts.rounds`` rounds, and reports medians with min and max.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

RESULTS_DIR = Path(__file__).parent / "results"
LATEST = RESULTS_DIR / "latest.json"


@dataclass(frozen=True, slots=True)
class Options:
    quick: bool = False
    n: int | None = None
    rounds: int = 3
    redis_url: str = field(default_factory=lambda: os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    database_url: str = field(
        default_factory=lambda: os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
    )

    def size(self, full: int, quick: int) -> int:
        """The scenario's N: ``--n`` if given, else its full or quick default."""
        return self.n or (quick if self.quick else full)


@dataclass(frozen=True, slots=True)
class Record:
    scenario: str
    system: str
    metric: str
    value: float
    unit: str
    n: int
    when: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    min: float | None = None
    max: float | None = None
    rounds: int = 1
    note: str = ""  # e.g. why a peer could not run


def not_run(scenario: str, system: str, metric: str, unit: str, n: int, reason: str) -> Record:
    """The record of a measurement that could not be made, and why (no rounds, no value)."""
    return Record(scenario, system, metric, 0.0, unit, n, rounds=0, note=f"could not run: {reason}")


def summarize(scenario: str, system: str, metric: str, unit: str, n: int, samples: Iterable[float]) -> Record:
    """Median of the rounds, with their min and max."""
    values = list(samples)
    return Record(
        scenario=scenario,
        system=system,
        metric=metric,
        value=round(statistics.median(values), 3),
        unit=unit,
        n=n,
        min=round(min(values), 3),
        max=round(max(values), 3),
        rounds=len(values),
    )


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, str | int]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count() or 0,
        "cpu": cpu_model(),
        "load average (1/5/15 min) at save": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
        "packages": ", ".join(f"{name} {version}" for name, version in versions().items()),
    }


class RedisClock(NamedTuple):
    """Read before and after a drain, by ours (async client) and the peers' (sync) alike: the
    server's CPU, and (a server on this machine) how long it sat runnable but waiting for a
    core, which the workers of a 2-core box take from it."""

    cpu_s: float  # user + system
    waiting_s: float | None  # None: not a local process (or no /proc)

    @classmethod
    def read(cls, info: Mapping[str, object]) -> RedisClock:
        """From ``INFO`` (its default sections: ``server`` names the pid, ``cpu`` the times)."""
        cpu_s = float(str(info["used_cpu_user"])) + float(str(info["used_cpu_sys"]))
        return cls(cpu_s, _waiting_s(int(str(info.get("process_id", 0)))))

    def cpu_us_per_run(self, before: RedisClock, runs: int) -> float:
        """µs of Redis CPU per run since ``before``."""
        return (self.cpu_s - before.cpu_s) / runs * 1e6

    def waiting_us_per_run(self, before: RedisClock, runs: int) -> float | None:
        """µs per run that Redis waited for a core since ``before`` (it waits only while it has
        work, so a round's start-up and exit do not dilute it as they would a share of the time)."""
        if self.waiting_s is None or before.waiting_s is None or runs <= 0:
            return None
        return (self.waiting_s - before.waiting_s) / runs * 1e6


def _waiting_s(pid: int) -> float | None:
    """Run-queue wait of a local redis-server (the second field of /proc/<pid>/schedstat, ns)."""
    try:
        if not Path(f"/proc/{pid}/comm").read_text().startswith("redis-server"):
            return None
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat (None off Linux): read around a run."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    steal = fields[7] if len(fields) > 7 else 0
    return steal, sum(fields[:8])  # guest time is counted in user already


def steal_percent(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of CPU time the hypervisor gave to other machines between two ``cpu_times``:
    on a shared VM, the rounds it hit ran on less than the machine's cores."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now (for a server a scenario starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def versions() -> dict[str, str]:
    """Ours and the peers' installed versions (``bench`` extra): the settings include them."""
    from importlib import metadata

    found: dict[str, str] = {}
    for name in ("redis", "hiredis", "arq", "dramatiq", "celery", "rq", "taskiq", "taskiq-redis"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def settings_of(opts: Options) -> dict[str, object]:
    """The exact settings of a scenario's run (URLs without credentials)."""
    return {
        "quick": opts.quick,
        "n": opts.n,
        "rounds": opts.rounds,
        "redis": opts.redis_url.rsplit("@", 1)[-1],
        "postgres": opts.database_url.rsplit("@", 1)[-1],
    }


def save(records: list[Record], opts: Options | None = None, results_dir: Path = RESULTS_DIR) -> Path:
    """Merge into <results_dir>/latest.json: this run's scenarios replace their older records."""
    results_dir.mkdir(parents=True, exist_ok=True)
    latest = results_dir / LATEST.name
    old: dict[str, object] = json.loads(latest.read_text()) if latest.exists() else {}
    old_records: list[dict[str, object]] = old.get("records", [])  # type: ignore[assignment]
    settings: dict[str, object] = dict(old.get("settings", {}))  # type: ignore[call-overload]
    fresh = {r.scenario for r in records}
    for scenario in fresh:
        settings[scenario] = settings_of(opts or Options())
    # a re-measured scenario keeps its place, so RESULTS.md's diff is that scenario's numbers only
    merged = [r for r in old_records if r.get("scenario") not in fresh] + [asdict(r) for r in records]
    place = {str(r.get("scenario")): i for i, r in reversed(list(enumerate(old_records)))}
    merged.sort(
        key=lambda r: place.get(str(r["scenario"]), len(old_records))
    )  # stable: in-scenario order kept
    data = {"machine": machine(), "settings": settings, "records": merged}
    latest.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return latest


def table(records: list[Record]) -> str:
    rows = [("scenario", "system", "metric", "median", "min–max", "unit", "n", "note")]
    for r in records:
        spread = f"{r.min:g}–{r.max:g}" if r.min is not None and r.max is not None else ""
        rows.append((r.scenario, r.system, r.metric, f"{r.value:g}", spread, r.unit, str(r.n), r.note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
