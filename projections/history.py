"""A conversation as chat messages (``Conversation.get_message_history``), from the read-models.

Messages form a tree. A run's messages are the ones it was given, then what the assistant answered
(the run's ``final_messages``, or its archived ``assistant.message`` events while it has none);
message ``n`` of run ``r`` is ``"r:n"`` and follows message ``n - 1``. A run's first message
follows its ``parent_message_id`` when it names one (an edit or a regeneration: ``"root"`` for
the very start), otherwise the last message of the conversation's previous run that did not fail.

Branches: a run continues the branch of the message it follows when it is that message's first
follower; a later follower starts a new branch named by its own run id. The branch shown is the
one a ``conversation.branch_switched`` chose, unless a run was created after that switch (the
conversation moved on: its newest run's branch). History is the path from the start to the
newest message of the branch shown. Nothing is de-duplicated: a message the user really sent
twice appears twice.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from django.apps import apps

FAILED_STATUSES = ("failed", "timed_out")
ROOT = "root"


@dataclass
class RunNode:
    run_id: str
    created_at: dt.datetime | None
    parent_message_id: str | None
    messages: list[dict[str, Any]]
    branch_id: str = ""
    follows: str | None = None  # the message id its first message follows (None: the start)

    def message_id(self, n: int) -> str:
        return f"{self.run_id}:{n}"

    @property
    def last_message_id(self) -> str | None:
        return self.message_id(len(self.messages) - 1) if self.messages else None


@dataclass(frozen=True)
class Tree:
    runs: list[RunNode]  # in creation order
    active_branch_id: str | None

    def branches(self) -> dict[str, list[RunNode]]:
        out: dict[str, list[RunNode]] = defaultdict(list)
        for node in self.runs:
            out[node.branch_id].append(node)
        return dict(out)

    def path(self) -> list[dict[str, Any]]:
        """The messages of the branch shown, from the start, each with its id, parent and branch."""
        return [
            {
                **node.messages[n],
                "id": node.message_id(n),
                "parent_message_id": node.message_id(n - 1) if n else node.follows,
                "branch_id": node.branch_id,
            }
            for node, n in self.path_positions()
        ]

    def path_positions(self) -> list[tuple[RunNode, int]]:
        """(run, index of a message of it) along the branch shown, from the start."""
        if not self.runs:
            return []
        by_id = {n.run_id: n for n in self.runs}
        members = [n for n in self.runs if n.branch_id == self.active_branch_id] or self.runs[-1:]
        leaf: RunNode | None = members[-1]
        chain: list[tuple[RunNode, int]] = []  # (run, messages of it on the path)
        upto = len(leaf.messages) if leaf else 0
        while leaf is not None:
            chain.append((leaf, upto))
            follows = leaf.follows
            leaf = None
            if follows:
                run_id, _, n = follows.rpartition(":")
                leaf, upto = by_id.get(run_id), int(n) + 1
        return [(node, n) for node, upto in reversed(chain) for n in range(min(upto, len(node.messages)))]


def conversation_tree(conversation: Any, *, include_failed_runs: bool = False) -> Tree:
    database = conversation._state.db or "default"
    runs = conversation.runs.using(database).exclude(created_at=None).order_by("created_at", "id")
    if not include_failed_runs:
        runs = runs.exclude(status__in=FAILED_STATUSES)
    rows = list(runs.only("id", "input", "final_messages", "status", "created_at", "parent_message_id"))
    answered_by_events = [r.id for r in rows if r.final_messages is None]
    assistant: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    if answered_by_events:
        event_model = apps.get_model("agentstream", "Event")
        found = (
            event_model.objects.using(database)
            .filter(run_id__in=answered_by_events, type="assistant.message")
            .order_by("run_id", "seq")
            .values_list("run_id", "payload")
        )
        for run_id, payload in found:
            assistant[run_id].append(_message(payload))
    nodes: list[RunNode] = []
    failed: set[str] = set()
    for row in rows:
        given = [_message(m) for m in (row.input or {}).get("messages", []) if isinstance(m, dict)]
        answer = row.final_messages if row.final_messages is not None else assistant.get(row.id, [])
        nodes.append(
            RunNode(
                run_id=str(row.id),
                created_at=row.created_at,
                parent_message_id=row.parent_message_id,
                messages=given + [_message(m) for m in answer if isinstance(m, dict)],
            )
        )
        if row.status in FAILED_STATUSES:
            failed.add(str(row.id))
    return link(nodes, failed, conversation.active_branch_id, conversation.active_branch_at)


def link(
    nodes: list[RunNode], failed: set[str], switched_to: str | None, switched_at: dt.datetime | None
) -> Tree:
    """Connect runs (in creation order) into the tree and name their branches (pure)."""
    known: dict[str, RunNode] = {}
    first_follower: dict[str | None, RunNode] = {}
    previous: RunNode | None = None  # the last run that did not fail and has messages
    for node in nodes:
        explicit = node.parent_message_id
        if explicit is not None and explicit != ROOT:
            run_id, _, n = explicit.rpartition(":")
            parent = known.get(run_id)
            valid = parent is not None and n.isdigit() and int(n) < len(parent.messages)
            node.follows = explicit if valid else (previous.last_message_id if previous else None)
        elif explicit == ROOT:
            node.follows = None
        else:
            node.follows = previous.last_message_id if previous else None
        parent_run = known.get(node.follows.rpartition(":")[0]) if node.follows else None
        leader = first_follower.setdefault(node.follows, node)
        # within a run, message n + 1 is message n's first follower: a run after a message
        # that is not its run's last one always branches off
        if leader is node and parent_run is not None and node.follows == parent_run.last_message_id:
            node.branch_id = parent_run.branch_id
        elif leader is node and node.follows is None:
            node.branch_id = node.run_id  # the conversation's first branch
        else:
            node.branch_id = node.run_id  # a second answer to the same message: a new branch
        known[node.run_id] = node
        if node.run_id not in failed and node.messages:
            previous = node
    if not nodes:
        return Tree([], None)
    newest = nodes[-1]
    active = newest.branch_id
    branches = {n.branch_id for n in nodes}
    if switched_to and switched_to in branches:
        moved_on = (
            switched_at is not None and newest.created_at is not None and newest.created_at > switched_at
        )
        if not moved_on:
            active = switched_to
    return Tree(nodes, active)


def message_history(conversation: Any, *, include_failed_runs: bool = False) -> list[dict[str, Any]]:
    """The branch shown, in the seed's format (``role``, ``content`` and the message's own keys)."""
    tree = conversation_tree(conversation, include_failed_runs=include_failed_runs)
    return [node.messages[n] for node, n in tree.path_positions()]


def last_assistant_message(conversation: Any) -> dict[str, Any] | None:
    history: list[dict[str, Any]] = message_history(conversation)
    return next((m for m in reversed(history) if m.get("role") == "assistant"), None)


def _message(raw: Any) -> dict[str, Any]:
    message = dict(raw or {})
    message.setdefault("role", "assistant")
    message.setdefault("content", "")
    return message
