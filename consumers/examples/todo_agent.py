"""``todo``: a to-do list agent that remembers its user across runs (``ctx.memory``, ``ctx.tasks``).

No model needed: one command per message::

    my name is Ada          remembered for every later run of this user
    add buy milk            a new task (``add! ...``: priority 1)
    add call Bob after 1    a task that waits for task 1
    start 1 / done 1 / drop 1
    list                    open tasks, highest priority first; which can start now

Tasks are numbered per user; the numbers and the name live in the user's stores, not the run.
"""

from __future__ import annotations

import re

from agentstream.consumers.context import RunContext
from agentstream.consumers.runtime import AgentRuntime, RunResult
from agentstream.core.errors import InvalidRecord

STATUS_OF = {"start": "in_progress", "done": "complete", "drop": "cancelled"}
ADD = re.compile(r"^add(!?)\s+(.+?)(?:\s+after\s+([\d\s,]+))?$", re.IGNORECASE)


class TodoAgent(AgentRuntime):
    key = "todo"

    async def run(self, ctx: RunContext) -> RunResult:
        text = str((ctx.input_messages or [{}])[-1].get("content") or "").strip()
        try:
            reply = await self.answer(ctx, text)
        except InvalidRecord as exc:
            reply = f"Sorry: {exc}."
        name = await ctx.memory.get("name")
        if name and reply.startswith(("Added", "Task", "Open")):
            reply = f"{name}, {reply[0].lower()}{reply[1:]}"
        await ctx.emit_user_message(reply)
        return RunResult(final_output={"reply": reply})

    async def answer(self, ctx: RunContext, text: str) -> str:
        if match := re.match(r"^my name is (.+)$", text, re.IGNORECASE):
            await ctx.memory.set("name", match[1].strip())
            return f"Nice to meet you, {match[1].strip()}."
        if match := ADD.match(text):
            number = int(await ctx.memory.get("todo.next", 1))
            after = [n for n in re.split(r"[\s,]+", match[3] or "") if n]
            await ctx.tasks.add(
                match[2], task_id=str(number), priority=1 if match[1] else 0, depends_on=after
            )
            await ctx.memory.set("todo.next", number + 1)
            return f"Added task {number}: {match[2]}."
        if match := re.match(r"^(start|done|drop)\s+(\d+)$", text, re.IGNORECASE):
            task = await ctx.tasks.set_status(match[2], STATUS_OF[match[1].lower()])
            return f"Task {task.task_id} is {task.status.replace('_', ' ')}."
        if text.lower() == "list":
            open_tasks = [t for t in await ctx.tasks.list() if t.status in ("not_started", "in_progress")]
            ready = {t.task_id for t in await ctx.tasks.ready()}
            lines = [
                f"{t.task_id}. {t.title} ({t.status.replace('_', ' ')}{', can start' if t.task_id in ready else ''})"
                for t in open_tasks
            ]
            return "Open tasks:\n" + "\n".join(lines) if lines else "Nothing to do."
        return "Say 'add <task>', 'start|done|drop <n>', 'list' or 'my name is <name>'."
