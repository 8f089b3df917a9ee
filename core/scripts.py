"""The Lua scripts, the only writers of run keys (DESIGN §5).

Each script is ``lua/common.lua`` followed by its own body, wrapped as a Lua function of
``(KEYS, ARGV)``; it is loaded once per client and called by SHA (redis-py's ``Script`` reloads
it on NOSCRIPT, e.g. after a Redis restart).

``batch`` holds every body at once plus a dispatcher (``lua/batch.lua``): ONE EVALSHA runs many
calls in turn, each exactly as its own script would (same keys, arguments and reply). Calling a
script costs Redis far more than most commands inside it (argument tables, the prelude, the
reply), so the worker's ``ScriptBatcher`` sends the calls of one event-loop tick as one batch.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

NAMES = (
    "submit",
    "begin_attempt",
    "claim_jobs",
    "append",
    "finish",
    "schedule_retry",
    "cancel",
    "heartbeat",
    "promote_due",
    "dead_letter",
    "conversation",
    "owner_event",
    "hand_back",
)
BATCH = "batch"
# a batch reply's element for a call that raised (the call's own error, not the batch's)
BATCH_ERROR = b"agentstream:error"


def _read(name: str) -> str:
    return (files("agentstream.core") / "lua" / f"{name}.lua").read_text()


def _function(name: str) -> str:
    """The body of script ``name`` as ``local function <name>(KEYS, ARGV)``: its KEYS and ARGV are
    the call's own, which is what lets a batch run it with another call's arguments."""
    return f"local function {name}(KEYS, ARGV)\nuse_tag(ARGV[1])\n{_read(name)}\nend\n"


@cache
def source(name: str) -> str:
    if name == BATCH:
        table = ", ".join(f"{n} = {n}" for n in NAMES)
        bodies = "".join(_function(n) for n in NAMES)
        return f"{_read('common')}\n{bodies}local SCRIPTS = {{ {table} }}\n{_read('batch')}"
    if name not in NAMES:
        raise KeyError(f"no Lua script named {name!r}; scripts: {', '.join(NAMES)}")
    return f"{_read('common')}\n{_function(name)}return {name}(KEYS, ARGV)\n"
