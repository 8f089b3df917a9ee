"""What one client's SSE body does after its ``retry:`` frame, sans I/O and written once.

``stream`` is a generator: it yields what to do next and is sent back what that gave.

* ``bytes``: write them (sent back: ``None``);
* ``Read(after, count)``: read up to ``count`` of the run's events after seq ``after`` (the events);
* ``Subscribe(after)``: subscribe the client's buffer to the run in the hub (the seq the hub is at);
* ``Silence``: wait for the buffer, ``left_s()`` at the most (its frames, or ``None``).

The ASGI body awaits each of these on the server's loop, the WSGI body calls them through the
store thread: that is all the two differ in. The order (replay in pages, subscribe, catch up to
the hub, tail, fill gaps, a keepalive after ``keepalive_s`` without a write, end after the
terminal event or when the buffer overflows) is decided here only. The tail allocates nothing
per batch beyond the cursor's step: a wait yields the one ``Silence``, a write the bytes.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentstream.core.events import Event
from agentstream.django_app.sse.cursor import Cursor, Step
from agentstream.django_app.sse.framing import KEEPALIVE, Frame

REPLAY_PAGE = 500


@dataclass(frozen=True, slots=True)
class Read:
    after: int  # seq
    count: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    after: int  # seq: the client has every event up to it


@dataclass(slots=True)
class Silence:
    """Time since the stream last wrote. A keepalive is due after ``interval_s`` without a byte,
    however many events arrived meanwhile: those the client's filter hides write nothing, and a
    wait restarted by each of them let a busy tool loop starve the keepalive (proxies then cut
    the idle-looking connection)."""

    interval_s: float
    since: float = field(default_factory=time.monotonic)

    def left_s(self) -> float:
        return max(0.0, self.since + self.interval_s - time.monotonic())

    def is_over(self) -> bool:
        return self.left_s() == 0.0

    def restart(self) -> None:
        self.since = time.monotonic()


Ask = bytes | Read | Subscribe | Silence
Plan = Generator[Ask, Any, None]


class Buffer(Protocol):
    """The client's buffer as the plan sees it: closed when it overflowed."""

    @property
    def closed(self) -> bool: ...


def frames_of(events: Sequence[Event]) -> list[Frame]:
    return [Frame.of(e) for e in events]


def advance(plan: Plan, reply: Any) -> Ask | None:
    """The plan's next ask, given the last one's reply; ``None`` when the stream is over."""
    try:
        return plan.send(reply)
    except StopIteration:
        return None


def stream(cursor: Cursor, buffer: Buffer, keepalive_s: float, page: int = REPLAY_PAGE) -> Plan:
    read = page
    while read == page and not cursor.done:  # the replay, a page at a time
        read = yield from _read_on(cursor, page)
    if cursor.done:
        return
    hub_seq: int = yield Subscribe(cursor.last_seq)
    if hub_seq > cursor.last_seq:  # the hub tails this run for others already: catch up to it
        yield from _read_on(cursor, hub_seq - cursor.last_seq)
    quiet = Silence(keepalive_s)
    while not cursor.done:
        frames: list[Frame] | None = yield quiet
        out = b""
        if frames is not None:
            step = cursor.feed(frames)
            out = step.out if step.missing is None else (yield from _fill(cursor, step))
        if out or quiet.is_over():
            yield out or KEEPALIVE
            quiet.restart()
        if buffer.closed and not cursor.done:
            return  # overflowed: the client reconnects with Last-Event-ID


def _read_on(cursor: Cursor, count: int) -> Generator[Ask, Any, int]:
    """Read up to ``count`` events after the cursor and write what the client sees of them;
    returns how many were read."""
    events: list[Event] = yield Read(cursor.last_seq, count)
    out = cursor.feed(frames_of(events), allow_gap=True).out
    if out:
        yield out
    return len(events)


def _fill(cursor: Cursor, step: Step) -> Generator[Ask, Any, bytes]:
    """``step``'s bytes, with the events its gaps say are missing read from the stream first
    (a gap the stream no longer holds is skipped: trimmed for good)."""
    out = [step.out]
    while step.missing is not None:
        after, before = step.missing
        filled: list[Event] = yield Read(after, before - after - 1)
        out.append(cursor.feed(frames_of(filled), allow_gap=True).out)
        step = cursor.feed(step.rest, allow_gap=not filled)
        out.append(step.out)
    return b"".join(out)
