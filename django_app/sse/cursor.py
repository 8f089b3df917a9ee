"""One client's position in a run's stream, sans I/O: what to send, what is missing, when to stop.

The replay and the hub may hand the same event twice (a client joins while the hub reads) or skip
some (the hub's cursor for the run was ahead of the client's replay): the cursor drops what it
already sent and reports a gap for the shell to fill from the stream, so a client sees every
event exactly once, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from agentstream.django_app.sse.framing import Frame, VisibilityFilter


@dataclass(frozen=True, slots=True)
class Step:
    out: bytes  # frames to write now
    missing: tuple[int, int] | None = None  # (after_seq, before_seq): read these, feed them, then ``rest``
    rest: Sequence[Frame] = ()


@dataclass(slots=True)
class Cursor:
    last_seq: int
    filter: VisibilityFilter = field(default_factory=VisibilityFilter)
    done: bool = False  # the terminal event was sent: close the stream

    def feed(self, frames: Sequence[Frame], *, allow_gap: bool = False) -> Step:
        """Frames in seq order; stops at the first gap unless ``allow_gap`` (the gap is gone for
        good: trimmed from the stream)."""
        out: list[bytes] = []
        for index, frame in enumerate(frames):
            seq = frame.event.seq
            if self.done or seq <= self.last_seq:
                continue
            if seq > self.last_seq + 1 and not allow_gap:
                return Step(b"".join(out), (self.last_seq, seq), frames[index:])
            self.last_seq = seq
            if self.filter.wants(frame.event):
                out.append(frame.data)
            if frame.event.is_terminal:
                self.done = True
        return Step(b"".join(out))
