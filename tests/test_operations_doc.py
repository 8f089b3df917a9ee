"""``docs/operations.md`` claims nothing without a test: every test it names exists, and the Redis
ACL rule it recommends is the one ``tests/faults/test_redis_acl.py`` runs the topology with."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "operations.md").read_text()


def named_tests() -> list[tuple[str, str | None]]:
    """(file, test or None) for every `tests/...py[::name]` and each following `::name`."""
    out: list[tuple[str, str | None]] = []
    for cell in re.findall(r"`(tests/[^`]+\.py(?:::\w+)?)`((?:,\s*`::\w+`)*)", DOC):
        first, rest = cell
        path, _, name = first.partition("::")
        out.append((path, name or None))
        out += [(path, extra) for extra in re.findall(r"`::(\w+)`", rest)]
    return out


def test_every_test_the_operations_doc_names_exists() -> None:
    named = named_tests()
    assert len(named) >= 25
    missing = []
    for path, name in named:
        source = ROOT / path
        if not source.exists() or (name and f"def {name}(" not in source.read_text()):
            missing.append(f"{path}::{name}" if name else path)
    assert not missing, missing


def test_the_documented_acl_rule_is_the_tested_one() -> None:
    from tests.faults.test_redis_acl import ACL_RULE

    documented = re.search(r"ACL SETUSER agentstream (.+)", DOC)
    assert documented is not None
    assert documented.group(1).strip() == ACL_RULE.format(prefix="as", password="PASSWORD")
