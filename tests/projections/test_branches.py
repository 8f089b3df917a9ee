"""The message tree of a conversation (pure): who follows whom, branch names, the branch shown."""

from __future__ import annotations

import datetime as dt

from agentstream.projections.history import ROOT, RunNode, link

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def node(run_id: str, minute: int, *texts: str, parent: str | None = None) -> RunNode:
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]
    return RunNode(run_id, T0 + dt.timedelta(minutes=minute), parent, messages)


def shown(
    nodes: list[RunNode], failed: set[str] = frozenset(), switched: str | None = None, at: int = 0
) -> list[str]:  # type: ignore[assignment]
    tree = link(nodes, set(failed), switched, T0 + dt.timedelta(minutes=at) if switched else None)
    return [str(m["content"]) for m in tree.path()]


def test_runs_follow_the_previous_run_and_a_second_follower_starts_a_branch() -> None:
    a, b = node("a", 1, "hi", "hello"), node("b", 2, "more", "sure")
    c = node("c", 3, "other", "ok", parent="a:1")  # a second follower of "hello"
    tree = link([a, b, c], set(), None, None)
    assert [n.branch_id for n in tree.runs] == ["a", "a", "c"]
    assert tree.active_branch_id == "c"
    assert [m["content"] for m in tree.path()] == ["hi", "hello", "other", "ok"]
    assert [m["parent_message_id"] for m in tree.path()] == [None, "a:0", "a:1", "c:0"]


def test_a_switch_shows_its_branch_until_a_later_run_moves_on() -> None:
    a, b = node("a", 1, "hi", "hello"), node("b", 2, "more", "sure")
    c = node("c", 3, "edited", "ok", parent=ROOT)
    assert shown([a, b, c]) == ["edited", "ok"]
    assert shown([a, b, c], switched="a", at=4) == ["hi", "hello", "more", "sure"]
    d = node("d", 5, "new", "fine")  # created after the switch, following the newest good run
    assert shown([a, b, c, d], switched="a", at=4) == ["edited", "ok", "new", "fine"]
    assert shown([a, b, c], switched="nope", at=4) == ["edited", "ok"]  # unknown branch: ignored


def test_failed_runs_get_no_implicit_followers_and_bad_parents_fall_back() -> None:
    a, bad = node("a", 1, "hi", "hello"), node("bad", 2, "explode")
    b = node("b", 3, "again", "fine")
    assert shown([a, bad, b], failed={"bad"}) == ["hi", "hello", "again", "fine"]
    c = node("c", 4, "x", "y", parent="a:7")  # no such message: after the previous run instead
    assert link([a, c], set(), None, None).runs[1].follows == "a:1"


def test_regenerating_mid_run_shows_the_prefix_of_the_parent_run() -> None:
    a = node("a", 1, "q1", "a1", "q2", "a2")  # a run given several messages
    b = node("b", 2, "q2", "a2 again", parent="a:1")
    assert shown([a, b]) == ["q1", "a1", "q2", "a2 again"]
    assert shown([a, b], switched="a", at=3) == ["q1", "a1", "q2", "a2"]
