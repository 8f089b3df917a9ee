"""Benchmarks: programs, not timed tests. ``python -m benchmarks SCENARIO ... [--quick]``."""
