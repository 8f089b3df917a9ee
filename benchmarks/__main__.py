"""``python -m benchmarks [SCENARIO ...] [--quick] [--n N] [--rounds R]``; no scenario: all."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from pathlib import Path

from benchmarks import report
from benchmarks.common import RESULTS_DIR, Options, Record, save, table

# A smoke run's numbers are no results: by default they go here, not over the measured ones
QUICK_RESULTS_DIR = Path(__file__).resolve().parents[1] / "build" / "bench-quick"

SCENARIOS = [
    "limit",
    "append",
    "projector",
    "replay",
    "sse",
    "e2e",
    "latency",
    "worker-memory",
    "redis-cost",
    "worker-cost",
    "knowledge",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("scenarios", nargs="*", help=f"any of: {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="small sizes; finishes in under 2 minutes")
    parser.add_argument("--n", type=int, default=None, help="override the scenario's size")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per system (>= 3)")
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="where latest.json, the charts and RESULTS.md go (default: benchmarks/results and "
        "benchmarks/RESULTS.md; with --quick, build/bench-quick)",
    )
    args = parser.parse_args(argv)
    results_dir: Path = args.results_dir or (QUICK_RESULTS_DIR if args.quick else RESULTS_DIR)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    if args.rounds < 3:  # a median of fewer says nothing on a noisy machine (--quick runs one: a smoke run)
        parser.error(
            f"--rounds {args.rounds}: at least 3 alternating rounds make a result; --quick for a smoke run"
        )
    opts = Options(quick=args.quick, n=args.n, rounds=args.rounds)
    records: list[Record] = []
    for name in args.scenarios or SCENARIOS:
        module = importlib.import_module(f"benchmarks.{name.replace('-', '_')}")
        got: list[Record] = asyncio.run(module.main(opts))
        print(table(got), flush=True)
        records += got
    save(records, opts, results_dir)
    # RESULTS.md is the repository's report: regenerated only from the repository's results
    md = report.RESULTS_MD if results_dir == RESULTS_DIR else results_dir / "RESULTS.md"
    report.write(results_dir, md)
    if results_dir != RESULTS_DIR:
        print(f"results: {md}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
