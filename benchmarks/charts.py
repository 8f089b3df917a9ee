"""PNG charts in ``benchmarks/results/`` from the records (matplotlib, from the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHARTS = {"e2e": "e2e.png", "latency": "latency.png", "append": "append.png"}


def bars(path: Path, title: str, unit: str, records: list[dict[str, Any]], label_of: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label_of(r) for r in records]
    values = [r["value"] for r in records]
    low = [r["value"] - (r.get("min") if r.get("min") is not None else r["value"]) for r in records]
    high = [(r.get("max") if r.get("max") is not None else r["value"]) - r["value"] for r in records]
    colors = ["tab:blue" if r["system"].startswith("agentstream") else "tab:gray" for r in records]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(records) + 1.2))
    ax.barh(labels, values, xerr=[low, high], color=colors, capsize=3)
    ax.invert_yaxis()
    ax.set_xlabel(f"{unit} (median; whiskers: min–max of the rounds)")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write(records: list[dict[str, Any]], results_dir: Path) -> list[str]:
    """The charts this data supports; returns their file names (none when matplotlib is absent)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    made: list[str] = []
    e2e = [r for r in records if r["scenario"] == "e2e" and r["metric"] == "throughput"]
    if e2e:
        bars(
            results_dir / CHARTS["e2e"],
            "e2e: no-op runs/s, same N, processes, concurrency",
            "runs/s",
            e2e,
            lambda r: (
                r["system"].split(",")[0]
                + ("" if r.get("rounds") else " (could not run)")
                + ")" * ("," in r["system"])
            ),
        )
        made.append(CHARTS["e2e"])
    latency = [r for r in records if r["scenario"] == "latency"]
    if latency:
        bars(
            results_dir / CHARTS["latency"],
            "latency (ms)",
            "ms",
            latency,
            lambda r: f"{r['system'].removeprefix('agentstream ')} {r['metric']}",
        )
        made.append(CHARTS["latency"])
    append = [
        r for r in records if r["scenario"] in ("append", "limit") and r["unit"] in ("events/s", "entries/s")
    ]
    if append:
        bars(
            results_dir / CHARTS["append"],
            "append vs the redis-py ceiling",
            "events/s",
            append,
            lambda r: f"{r['system']}: {r['metric']}",
        )
        made.append(CHARTS["append"])
    return made
