"""The Lua scripts, the only writers of run keys (DESIGN §5).

Each script is ``lua/common.lua`` followed by its own body; it is loaded once per client and
called by SHA (redis-py's ``Script`` reloads it on NOSCRIPT, e.g. after a Redis restart).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

NAMES = (
    "submit",
    "begin_attempt",
    "append",
    "finish",
    "schedule_retry",
    "cancel",
    "heartbeat",
    "promote_due",
    "dead_letter",
    "conversation",
    "owner_event",
)


@cache
def source(name: str) -> str:
    if name not in NAMES:
        raise KeyError(f"no Lua script named {name!r}; scripts: {', '.join(NAMES)}")
    lua = files("agentstream.core") / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()
