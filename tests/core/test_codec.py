from __future__ import annotations

import datetime as dt
import uuid

import pytest

from agentstream.core import codec
from agentstream.core.codec import decode_entry, encode_payload
from agentstream.core.errors import CorruptEntry, EventEncodingError
from agentstream.core.events import Visibility


def entry(**overrides: bytes) -> dict[bytes, bytes]:
    fields = {
        b"r": b"run-1",
        b"s": b"3",
        b"t": b"tool.call",
        b"p": encode_payload("tool.call", {"name": "clock"}),
        b"ts": b"1700000000000",
        b"a": b"2",
        b"vis": b"debug",
        b"v": b"1",
        b"c": b"",
    }
    fields.update({k.encode(): v for k, v in overrides.items()})
    return fields


def test_an_entry_decodes_to_its_envelope() -> None:
    event = decode_entry(entry())
    assert (event.run_id, event.seq, event.type, event.attempt) == ("run-1", 3, "tool.call", 2)
    assert event.payload == {"name": "clock"}
    assert event.visibility is Visibility.DEBUG


def test_common_python_values_encode_to_their_obvious_form() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    ident = uuid.uuid4()
    decoded = codec.decode_payload(encode_payload("x", {"when": when, "id": ident, "tags": {"b", "a"}}))
    assert decoded == {"when": when.isoformat(), "id": str(ident), "tags": ["a", "b"]}


def test_a_payload_with_a_tuple_key_reads_back_with_its_lists_still_lists() -> None:
    """The encoder takes a tuple key (an array in msgpack), which did not decode: the event was
    written, then skipped by every read and a CorruptEntry to the SSE hub."""
    payload = {"grid": {(0, 1): [1, [2, 3]]}, "rows": [[1], {"a": [2]}]}
    event = decode_entry(entry(p=encode_payload("progress", payload)))
    assert event.payload == {"grid": {(0, 1): [1, [2, 3]]}, "rows": [[1], {"a": [2]}]}
    assert isinstance(event.payload["rows"][1]["a"], list)


def test_an_unencodable_payload_names_the_event_type_and_the_key() -> None:
    with pytest.raises(EventEncodingError, match=r"tool\.result: payload\['result'\]\['handle'\]"):
        encode_payload("tool.result", {"result": {"handle": object()}})


def nested(depth: int, leaf: object = 1) -> dict[str, object]:
    root: dict[str, object] = {}
    node = root
    for _ in range(depth - 1):
        child: dict[str, object] = {}
        node["a"] = child
        node = child
    node["a"] = leaf
    return root


def test_a_payload_nested_deeper_than_msgpack_allows_is_an_encoding_error() -> None:
    """It was a RecursionError out of the search for the bad key: not an EventEncodingError, so a
    tool result nested too deep crashed the run instead of becoming an error the model reads."""
    encode_payload("tool.result", nested(codec.MAX_NESTING - 1))
    with pytest.raises(EventEncodingError, match=r"tool\.result: payload is nested more than 1024 levels"):
        encode_payload("tool.result", nested(codec.MAX_NESTING + 10))


def test_a_bad_value_nested_deep_is_an_encoding_error() -> None:
    with pytest.raises(EventEncodingError, match=r"tool\.result: payload.* cannot be encoded"):
        encode_payload("tool.result", nested(990, object()))


def test_an_integer_beyond_64_bits_says_so() -> None:
    with pytest.raises(EventEncodingError, match=r"payload\['n'\] .*integer outside -2\*\*63 \.\. 2\*\*64-1"):
        encode_payload("x", {"n": 2**64})


def test_a_payload_that_is_not_a_dict_is_refused() -> None:
    with pytest.raises(EventEncodingError, match="must be a dict"):
        encode_payload("x", ["a"])  # type: ignore[arg-type]


def test_a_payload_over_the_size_limit_is_refused() -> None:
    with pytest.raises(EventEncodingError, match="MAX_EVENT_BYTES=2048"):
        encode_payload("assistant.message", {"content": "x" * 4096}, max_bytes=2048)


@pytest.mark.parametrize(
    "fields",
    [
        {b"t": b"x"},
        entry(p=b"\xc1\xc1"),
        entry(s=b"not-a-number"),
        entry(vis=b"secret"),
        entry(p=b"\x93\x01\x02\x03"),  # a msgpack array, not a map
    ],
)
def test_garbage_entries_raise_corrupt_entry(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(CorruptEntry):
        decode_entry(fields)


def test_old_versions_are_upcast_on_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(codec.UPCASTERS, 1, lambda kind, payload: (kind, {**payload, "upcast": True}))
    event = decode_entry(entry(v=b"1"))
    assert event.payload == {"name": "clock", "upcast": True}
    assert event.v == 2


def test_event_of_builds_the_same_event_as_the_constructor_for_every_field() -> None:
    import dataclasses

    from agentstream.core.events import Event, event_of

    values = ("run-1", 3, "tool.call", {"name": "clock"}, 1700000000000, 2, Visibility.DEBUG, 7, "conv-1")
    assert len(values) == len(dataclasses.fields(Event))  # a new field must be added to event_of too
    fast, slow = event_of(*values), Event(*values)
    assert fast == slow
    assert [getattr(fast, f.name) for f in dataclasses.fields(Event)] == list(values)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.seq = 4  # type: ignore[misc]


def test_a_packed_payload_is_encoded_once_and_is_a_plain_dict_snapshot_to_everyone_else() -> None:
    from agentstream.core.codec import pack_payload

    source = {"role": "assistant", "content": "hi"}
    packed = pack_payload("assistant.message", source)
    source["content"] = "changed after emit"
    assert packed == {"role": "assistant", "content": "hi"}
    assert encode_payload("assistant.message", packed) is packed.data
    assert codec.decode_payload(packed.data) == packed
    with pytest.raises(EventEncodingError, match="MAX_EVENT_BYTES=4"):
        encode_payload("assistant.message", packed, max_bytes=4)
