from __future__ import annotations

import pytest
from redis.crc import key_slot

from agentstream.core.ids import (
    idempotency_partition,
    is_valid_id,
    new_run_id,
    parse_owner,
    partition_of,
    user_owner,
)
from agentstream.core.keys import Keys


def test_a_run_id_drawn_for_a_partition_lands_in_it() -> None:
    for partition in range(16):
        run_id = new_run_id(16, partition)
        assert partition_of(run_id, 16) == partition
        assert is_valid_id(run_id)


def test_a_partition_outside_the_range_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        new_run_id(16, 16)


def test_every_key_of_a_run_hashes_to_one_cluster_slot() -> None:
    keys = Keys("as", 16)
    for _ in range(50):
        conversation_id = "c-" + new_run_id(16)
        partition = partition_of(conversation_id, 16)
        run_id = new_run_id(16, partition)
        touched = [
            keys.run_stream(run_id),
            keys.run_state(run_id),
            keys.conversation(conversation_id),
            keys.conversation_waiting(conversation_id),
            keys.log(partition),
            keys.queue(partition, "agent"),
            keys.delayed(partition),
            keys.dead(partition),
            keys.idempotency(partition, "user:1", "key"),
            keys.agents(partition),
            keys.sse_wake("hub", partition),  # read in the same XREAD as the partition's runs
        ]
        assert len({key_slot(k.encode()) for k in touched}) == 1


def test_an_idempotency_key_and_the_run_it_names_share_a_partition() -> None:
    partition = idempotency_partition("user:7", "order-42", 16)
    assert partition_of(new_run_id(16, partition), 16) == partition


def test_owner_strings_round_trip_and_garbage_is_refused() -> None:
    assert parse_owner(user_owner(42)) == ("user", "42")
    assert parse_owner("anon:abc") == ("anon", "abc")
    for bad in ("", "user", "user:", "admin:1", "42"):
        with pytest.raises(ValueError, match="neither"):
            parse_owner(bad)


def test_malformed_ids_are_not_valid() -> None:
    assert not is_valid_id("not-a-uuid")
    assert not is_valid_id("")
    assert not is_valid_id("6F9619FF-8B86-D011-B42D-00CF4FC964FF")  # not canonical lower-case
