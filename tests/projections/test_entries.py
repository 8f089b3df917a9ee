"""The projector's inlined decoding agrees with core's codec, and its caches never let garbage through."""

from __future__ import annotations

import uuid

import pytest

from agentstream.core.codec import decode_entry, encode_payload
from agentstream.core.errors import CorruptEntry
from agentstream.projections.entries import decode_log_entry


def entry(**overrides: bytes) -> dict[bytes, bytes]:
    fields = {
        b"r": str(uuid.uuid4()).encode(),
        b"s": b"3",
        b"t": b"tool.call",
        b"p": encode_payload("tool.call", {"name": "clock", "args": [1, 2]}),
        b"ts": b"1700000000000",
        b"a": b"2",
        b"vis": b"debug",
        b"c": b"",
    }
    fields.update({k.encode(): v for k, v in overrides.items()})
    return fields


def test_a_current_entry_decodes_to_the_same_event_as_the_core_codec() -> None:
    run_entry = entry()
    conversation_entry = entry(r=b"", c=str(uuid.uuid4()).encode(), vis=b"user")
    for fields in (run_entry, conversation_entry, entry(), run_entry):  # again: through the caches
        assert decode_log_entry(fields) == decode_entry(fields)


def test_a_payload_with_a_tuple_key_decodes_as_the_core_codec_decodes_it() -> None:
    """The projector's fast decoder did not take the codec's slow path: such an event was a
    CorruptEntry to it, skipped, and a terminal one left its run unfinished in the read-model."""
    fields = entry(t=b"run.succeeded", p=encode_payload("run.succeeded", {"output": {(0, 1): [2]}}))
    event = decode_log_entry(fields)
    assert event == decode_entry(fields) and event.payload == {"output": {(0, 1): [2]}}


@pytest.mark.parametrize("field", ["r", "c"])
def test_an_id_that_is_not_a_uuid_is_refused_every_time_it_is_read(field: str) -> None:
    bad = entry(r=b"", c=b"") | {field.encode(): b"not-a-uuid"}
    for _ in range(3):
        with pytest.raises(CorruptEntry, match="not a uuid"):
            decode_log_entry(bad)


def test_an_entry_with_neither_a_run_nor_a_conversation_is_refused() -> None:
    with pytest.raises(CorruptEntry, match="neither a run id nor a conversation id"):
        decode_log_entry(entry(r=b""))


def test_an_id_that_is_not_utf8_is_refused_not_raised() -> None:
    with pytest.raises(CorruptEntry, match="does not decode"):
        decode_log_entry(entry(r=b"\xff\xfe"))
