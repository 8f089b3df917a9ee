"""Read-models: what Django reads. Written by projectors only (plain SQL, ``agentstream.projections``);
the partition logs in Redis are the source of truth (DESIGN §7).

Foreign keys carry no database constraint: projectors in several processes commit batches in any
order, so an event may land before its run row, and a run before its conversation row.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

from agentstream.core.state import RunStatus

# The statuses of a run that has not ended: /metrics counts these runs on every scrape, from the
# partial index ``as_run_active_by_agent`` alone (see agentstream.django_app.metrics).
ACTIVE_STATUSES: tuple[str, ...] = tuple(s.value for s in RunStatus if not s.is_terminal)

# Fields of Run/Conversation set by one kind of event keep the seq of the event that set them, so a
# late, redelivered or reordered event never overwrites a newer value (see projections.rows).


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True)
    owner = models.CharField(max_length=255, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="agentstream_conversations",
    )
    anonymous_session_id = models.CharField(max_length=255, null=True, blank=True)
    agent_key = models.CharField(max_length=100, blank=True, default="")
    title = models.CharField(max_length=255, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    # Null only while a conversation.updated/deleted arrived before its conversation.created.
    created_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True)
    run_count = models.IntegerField(default=0)
    last_activity_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    last_seq = models.BigIntegerField(default=0)
    # seq of the conversation event that last set title / metadata (the highest one wins).
    title_seq = models.BigIntegerField(default=0)
    metadata_seq = models.BigIntegerField(default=0)
    # the branch shown (conversation.branch_switched); null: the newest run's (projections.history)
    active_branch_id = models.CharField(max_length=64, null=True, blank=True)
    active_branch_seq = models.BigIntegerField(default=0)
    active_branch_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        indexes = (models.Index(fields=["owner", "created_at"], name="as_conv_owner_created"),)

    def __str__(self) -> str:
        return self.title or str(self.id)

    def get_message_history(self, include_failed_runs: bool = False) -> list[dict[str, Any]]:
        """The conversation as chat messages, oldest first, in the seed's format."""
        from agentstream.projections.history import message_history

        return message_history(self, include_failed_runs=include_failed_runs)

    def get_last_assistant_message(self) -> dict[str, Any] | None:
        from agentstream.projections.history import last_assistant_message

        return last_assistant_message(self)


class Run(models.Model):
    id = models.UUIDField(primary_key=True)
    owner = models.CharField(max_length=255, db_index=True, default="")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="agentstream_runs",
    )
    anonymous_session_id = models.CharField(max_length=255, null=True, blank=True)
    conversation = models.ForeignKey(
        Conversation,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="runs",
    )
    agent_key = models.CharField(max_length=100, default="")
    status = models.CharField(
        max_length=16, choices=[(s.value, s.value.replace("_", " ")) for s in RunStatus], default="queued"
    )
    input = models.JSONField(default=dict, blank=True)  # {"messages": [...], "params": {...}}
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    attempt = models.IntegerField(default=0)
    max_attempts = models.IntegerField(default=1)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # Null only while a later event of the run arrived before its run.queued.
    created_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    usage = models.JSONField(default=dict, blank=True)
    # The terminal payload's messages (run.succeeded / run.cancelled final_messages).
    final_messages = models.JSONField(null=True, blank=True)
    last_seq = models.BigIntegerField(default=0)
    # seq of the lifecycle event that set ``status`` (the highest one wins).
    status_seq = models.BigIntegerField(default=0)
    # the message this run follows in its conversation's tree (``<run id>:<n>`` or "root");
    # null: the conversation's previous run (see projections.history)
    parent_message_id = models.CharField(max_length=100, null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = (
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="as_run_owner_idempotency_key",
            ),
        )
        indexes = (
            models.Index(fields=["owner", "created_at"], name="as_run_owner_created"),
            models.Index(fields=["owner", "status"], name="as_run_owner_status"),
            models.Index(fields=["conversation", "created_at"], name="as_run_conv_created"),
            # only the runs not ended (a few among millions): an index-only scan counts them
            models.Index(
                fields=["agent_key", "status", "attempt"],
                condition=Q(status__in=ACTIVE_STATUSES),
                name="as_run_active_by_agent",
            ),
        )

    def __str__(self) -> str:
        return f"{self.agent_key} {self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return RunStatus(self.status).is_terminal


class Event(models.Model):
    """The event archive: every state event of every run (complete history; logs are trimmed)."""

    run = models.ForeignKey(
        Run, on_delete=models.DO_NOTHING, db_constraint=False, related_name="events", db_index=False
    )
    seq = models.BigIntegerField()
    type = models.CharField(max_length=100)
    payload = models.JSONField(default=dict, blank=True)
    ts = models.DateTimeField()
    attempt = models.IntegerField(default=0)
    visibility = models.CharField(max_length=16, default="user")
    conversation_id = models.UUIDField(null=True, blank=True)

    class Meta:
        ordering = ("run_id", "seq")
        constraints = (models.UniqueConstraint(fields=["run", "seq"], name="as_event_run_seq"),)

    def __str__(self) -> str:
        return f"{self.run_id}#{self.seq} {self.type}"


class ConversationEvent(models.Model):
    """The archive of ``conversation.*`` events (they have no run)."""

    conversation_id = models.UUIDField()
    seq = models.BigIntegerField()
    type = models.CharField(max_length=100)
    payload = models.JSONField(default=dict, blank=True)
    ts = models.DateTimeField()

    class Meta:
        ordering = ("conversation_id", "seq")
        constraints = (
            models.UniqueConstraint(fields=["conversation_id", "seq"], name="as_conv_event_conv_seq"),
        )


class Checkpoint(models.Model):
    """State snapshots a run saved (``state.checkpoint`` events)."""

    run = models.ForeignKey(
        Run, on_delete=models.DO_NOTHING, db_constraint=False, related_name="checkpoints", db_index=False
    )
    seq = models.BigIntegerField()
    state = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ("run_id", "seq")
        constraints = (models.UniqueConstraint(fields=["run", "seq"], name="as_checkpoint_run_seq"),)


class ProjectionCheckpoint(models.Model):
    """Per projection and partition: the last log entry id applied (for lag and replay)."""

    projection = models.CharField(max_length=100)
    partition = models.IntegerField()
    last_id = models.CharField(max_length=40, default="0-0")
    # last_id's two parts, so "newer" is a plain comparison in SQL on every engine
    last_ms = models.BigIntegerField(default=0)
    last_n = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField()

    class Meta:
        constraints = (
            models.UniqueConstraint(fields=["projection", "partition"], name="as_projection_checkpoint"),
        )


class SkippedEntry(models.Model):
    """A log entry a projector could not decode: recorded and acked, so it never stalls a partition."""

    projection = models.CharField(max_length=100)
    partition = models.IntegerField()
    entry_id = models.CharField(max_length=40)
    reason = models.TextField()
    raw = models.TextField(blank=True, default="")
    created_at = models.DateTimeField()

    class Meta:
        constraints = (
            models.UniqueConstraint(fields=["projection", "partition", "entry_id"], name="as_skipped_entry"),
        )


class RunNotice(models.Model):
    """The outbox of ``run_finished`` / ``RUN_COMPLETED_HOOK``: one row per terminal run.

    Inserted (insert-or-ignore on the run id) by the ``run_finished`` projection in its batch's
    transaction, with ``finished`` (what the receivers get) and a lease: the inserting projector
    delivers it after COMMIT and sets ``notified_at``. A row still undelivered when its lease runs
    out (its projector died) is claimed again by any running projector (``deliveries`` + 1, a new
    lease) and delivered; ``finished`` is cleared once delivered.
    """

    run_id = models.CharField(max_length=64, primary_key=True)
    status = models.CharField(max_length=16)
    seq = models.BigIntegerField()
    created_at = models.DateTimeField()
    notified_at = models.DateTimeField(null=True, blank=True)
    finished = models.TextField(null=True, blank=True)  # JSON of RunFinished, until delivered
    lease_until = models.DateTimeField(null=True, blank=True)
    deliveries = models.IntegerField(default=0)

    class Meta:
        indexes = (
            # the sweep's query: undelivered rows by lease, without scanning every run ever notified
            models.Index(fields=["lease_until"], condition=Q(notified_at__isnull=True), name="as_notice_due"),
        )

    def __str__(self) -> str:
        return f"{self.run_id} {self.status}"


# -- the owner-scoped agent stores (core.records; written by the stores projection and, at once,
# by the worker that made the change, with the same merge: the newest version wins) -------------


class EmbeddingField(models.Field):  # type: ignore[type-arg]
    """A float vector: ``double precision[]`` on PostgreSQL (cosine in SQL over it), float64 bytes
    elsewhere (SQLite computes cosine with a registered function). Python sees ``list[float]``."""

    description = "A vector of floats"

    def db_type(self, connection: Any) -> str:
        return "double precision[]" if connection.vendor == "postgresql" else "blob"

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> list[float] | None:
        from agentstream.projections.stores import vector_from_db

        return vector_from_db(value)

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        from agentstream.projections.stores import vector_to_db

        return vector_to_db(value, connection.vendor == "postgresql")


class StoreRecordModel(models.Model):
    """What every store table shares: the owner, a tombstone flag and the version that set the row."""

    owner = models.CharField(max_length=255)
    deleted = models.BooleanField(default=False)
    version_us = models.BigIntegerField(default=0)
    version_run = models.CharField(max_length=64, default="")
    version_seq = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField()

    class Meta:
        abstract = True


class MemoryItem(StoreRecordModel):
    """``ctx.memory``: a JSON value per key and owner."""

    key = models.CharField(max_length=255)
    value = models.JSONField(null=True, blank=True)

    class Meta:
        db_table = "agentstream_memory"
        constraints = (models.UniqueConstraint(fields=["owner", "key"], name="as_memory_owner_key"),)

    def __str__(self) -> str:
        return f"{self.owner} {self.key}"


class Preference(StoreRecordModel):
    """``ctx.preferences``: a JSON value per key and owner."""

    key = models.CharField(max_length=255)
    value = models.JSONField(null=True, blank=True)

    class Meta:
        db_table = "agentstream_preference"
        constraints = (models.UniqueConstraint(fields=["owner", "key"], name="as_preference_owner_key"),)

    def __str__(self) -> str:
        return f"{self.owner} {self.key}"


class Task(StoreRecordModel):
    """``ctx.tasks``: tasks of an owner's lists, with states, priorities and dependencies."""

    task_id = models.CharField(max_length=255)
    task_list = models.CharField(max_length=255, default="default")
    title = models.TextField(default="")
    status = models.CharField(
        max_length=16,
        default="not_started",
        choices=[(s, s.replace("_", " ")) for s in ("not_started", "in_progress", "complete", "cancelled")],
    )
    priority = models.IntegerField(default=0)
    depends_on = models.JSONField(default=list, blank=True)
    notes = models.TextField(default="", blank=True)
    metadata = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "agentstream_task"
        constraints = (models.UniqueConstraint(fields=["owner", "task_id"], name="as_task_owner_task"),)
        indexes = (models.Index(fields=["owner", "task_list", "status"], name="as_task_owner_list"),)

    def __str__(self) -> str:
        return f"{self.title} ({self.status})"


class KnowledgeItem(StoreRecordModel):
    """``ctx.knowledge``: facts, summaries, documents; similarity search over ``embedding``."""

    item_id = models.CharField(max_length=255)
    kind = models.CharField(max_length=255, default="fact")
    text = models.TextField(default="")
    metadata = models.JSONField(default=dict, blank=True)
    embedding = EmbeddingField(null=True, blank=True)
    embedding_norm = models.FloatField(null=True, blank=True)  # precomputed: cosine = dot / norms
    dimensions = models.IntegerField(default=0)  # items of another dimension never match

    class Meta:
        db_table = "agentstream_knowledge"
        constraints = (models.UniqueConstraint(fields=["owner", "item_id"], name="as_knowledge_owner_item"),)
        indexes = (models.Index(fields=["owner", "dimensions"], name="as_knowledge_owner_dims"),)

    def __str__(self) -> str:
        return f"{self.kind}: {self.text[:60]}"
