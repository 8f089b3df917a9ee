"""Every Redis key agentstream uses. Nothing else in the code base spells a key.

Prefix ``P`` = setting ``KEY_PREFIX`` (default ``as``); ``{p}`` is the partition number used as
the Redis Cluster hash tag, so every key one run touches hashes to one slot.

========================== ======== ==========================================================
key                        type     what
========================== ======== ==========================================================
P:{p}:run:<id>             stream   the run's events; entry id ``0-<seq>``, so seq IS the SSE id
P:{p}:run:<id>:s           hash     the run's folded state (status, attempt, seq, owner, ...)
P:{p}:conv:<id>            hash     conversation state (owner, active run, seq, deleted; title,
                                    meta, updated: what reads need before the projector)
P:{p}:conv:<id>:w          list     runs of the conversation waiting for the active one
P:{p}:log                  stream   partition log: every state event of the partition, in order
P:{p}:q:<agent_key>        stream   job queue of one agent key; consumer group ``workers``
P:{p}:delayed              zset     retries and scheduled runs (member run id, score due ms)
P:{p}:dead                 stream   dead-lettered jobs with reason and delivery count
P:{p}:idem:<owner>:<key>   string   idempotency key -> ``run_id|fingerprint`` (TTL)
P:{p}:agents               set      agent keys that have a queue in this partition
P:{p}:stats                hash     deployment-wide counters (retries, reclaims, dead_letters,
                                    finished:<status>), HINCRBY'd by the transition's script
P:{p}:owner:<id>           string   seq counter of an owner's own stream (edits outside runs)
P:cancel                   channel  pub/sub: run ids whose cancellation was requested
P:due                      channel  pub/sub: ms until a delayed run due before its partition's
                                    others (the promoters sleep until the earliest)
P:{p}:sse:wake:<hub>       stream   wakes one SSE hub's blocking XREAD of partition p (its shard)
========================== ======== ==========================================================

The Lua scripts in ``core/lua`` receive these names from here (KEYS / ARGV); they never build a
key themselves except the few per-run keys derived from a prefix passed in ARGV, which
carry the same hash tag and so stay on the same slot.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentstream.core.ids import partition_of

WORKERS_GROUP = "workers"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "as"
    partitions: int = 16

    def tag(self, partition: int) -> str:
        return f"{self.prefix}:{{{partition}}}"

    def run_partition(self, run_id: str) -> int:
        return partition_of(run_id, self.partitions)

    def run_stream(self, run_id: str) -> str:
        return f"{self.tag(self.run_partition(run_id))}:run:{run_id}"

    def run_state(self, run_id: str) -> str:
        return f"{self.run_stream(run_id)}:s"

    def run_keys(self, run_id: str) -> tuple[str, list[str]]:
        """A run's script arguments at once: its tag (``<prefix>:{p}:``) and KEYS (state, stream)."""
        tag = f"{self.tag(self.run_partition(run_id))}:"
        stream = f"{tag}run:{run_id}"
        return tag, [f"{stream}:s", stream]

    def conversation(self, conversation_id: str) -> str:
        return f"{self.tag(partition_of(conversation_id, self.partitions))}:conv:{conversation_id}"

    def owner_stream(self, stream_id: str) -> str:
        return f"{self.tag(partition_of(stream_id, self.partitions))}:owner:{stream_id}"

    def conversation_waiting(self, conversation_id: str) -> str:
        return f"{self.conversation(conversation_id)}:w"

    def log(self, partition: int) -> str:
        return f"{self.tag(partition)}:log"

    def queue(self, partition: int, agent_key: str) -> str:
        return f"{self.tag(partition)}:q:{agent_key}"

    def queue_prefix(self, partition: int) -> str:
        """What ``queue()`` puts before the agent key; the scripts append the key themselves."""
        return f"{self.tag(partition)}:q:"

    def delayed(self, partition: int) -> str:
        return f"{self.tag(partition)}:delayed"

    def dead(self, partition: int) -> str:
        return f"{self.tag(partition)}:dead"

    def idempotency(self, partition: int, owner: str, key: str) -> str:
        return f"{self.tag(partition)}:idem:{owner}:{key}"

    def agents(self, partition: int) -> str:
        return f"{self.tag(partition)}:agents"

    def stats(self, partition: int) -> str:
        return f"{self.tag(partition)}:stats"

    def run_prefix(self, partition: int) -> str:
        """What ``run_stream()`` puts before the run id, for scripts that touch sibling runs."""
        return f"{self.tag(partition)}:run:"

    def cancel_channel(self) -> str:
        return f"{self.prefix}:cancel"

    def due_channel(self) -> str:
        """Where the scripts tell workers' promoters of a delayed run due before the others
        of its partition (the wait in ms); ``common.lua`` spells it from the tag."""
        return f"{self.prefix}:due"

    def sse_wake(self, hub_id: str, shard: int = 0) -> str:
        """The wake-up stream of one of a hub's blocking reads; the read of partition ``shard``
        on a cluster (on a single Redis the one read of shard 0), so it shares their slot."""
        return f"{self.tag(shard)}:sse:wake:{hub_id}"
