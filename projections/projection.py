"""Projections: a name, the event types they take, and a batch handler run inside the transaction.

The built-in ``ReadModelProjection`` is one of them; users add theirs with the ``PROJECTIONS``
setting (dotted paths to ``Projection`` subclasses). Each has its own consumer group on the
partition logs (``projection:<name>``) and its own checkpoints, so each can lag, fail or be
replayed alone.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from django.core.exceptions import ValidationError
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils.module_loading import import_string

from agentstream.core.errors import ConfigurationError
from agentstream.core.events import Event
from agentstream.core.settings import Settings
from agentstream.projections.rows import Patches, fold_patches
from agentstream.projections.sql import CONVERSATION, RUN, SqlWriter

GROUP_PREFIX = "projection:"
READ_MODEL = "read_model"


class Projection:
    """Subclass it: set ``name`` and ``event_types``, implement ``handle``.

    ``handle`` gets a batch of events (several runs, in log order within a partition, but a
    batch may repeat an event or miss one that another process applies), inside the
    projector's transaction, with the Django connection to write through. It must be
    idempotent and order-insensitive: key your rows on ``(run_id, seq)`` or keep the seq
    that set a value and let only a newer one replace it.
    """

    name: ClassVar[str] = ""
    # None: every type in the logs
    event_types: ClassVar[frozenset[str] | None] = None

    @property
    def group(self) -> str:
        return GROUP_PREFIX + self.name

    def wants(self, event_type: str) -> bool:
        return self.event_types is None or event_type in self.event_types

    def handle(self, events: Sequence[Event], connection: BaseDatabaseWrapper) -> None:
        raise NotImplementedError(f"{type(self).__name__}.handle(events, connection) is not implemented")

    def reset(self, connection: BaseDatabaseWrapper) -> None:
        """Called (in the replay's transaction) before a full replay from the archive: remove
        what the projection built, so history is applied to a clean slate."""

    def sweep(self, connection: BaseDatabaseWrapper) -> int:
        """Called by the projector every ``sweep_every_s`` on its DB thread, outside any batch and
        transaction: finish what another (dead) process left undone after its COMMIT, e.g. the
        ``run_finished`` outbox. Returns how many items it handled."""
        return 0


class ReadModelProjection(Projection):
    """Runs, conversations, the event archive and state checkpoints (the models of django_app)."""

    name: ClassVar[str] = READ_MODEL
    event_types: ClassVar[frozenset[str] | None] = None

    def __init__(self, *, write_archive: bool = True) -> None:
        # replay from the archive reads what is there: it must not write it again
        self.write_archive = write_archive

    def handle(self, events: Sequence[Event], connection: BaseDatabaseWrapper) -> None:
        self.write(fold_patches(events), connection, events if self.write_archive else ())

    def write(self, patches: Patches, connection: BaseDatabaseWrapper, archive: Sequence[Event] = ()) -> None:
        """Merge folded patches into the rows (and archive ``archive``), in the caller's transaction."""
        writer = SqlWriter(connection, user_id_of=_user_id_of)
        recount = {p.conversation_id for p in patches.runs.values() if p.queued and p.conversation_id}
        recount |= {c.conversation_id for c in patches.conversations.values() if c.created_ms}
        writer.lock_conversations(recount)
        if archive:
            writer.archive(archive)
        writer.upsert_conversations(patches.conversations.values())
        writer.upsert_runs(patches.runs.values())
        writer.recount_runs(recount)

    def reset(self, connection: BaseDatabaseWrapper) -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"DELETE FROM {RUN}")
            cursor.execute(f"DELETE FROM {CONVERSATION}")


@functools.lru_cache(maxsize=4096)
def _user_id_of(ident: str) -> Any:
    """The user pk an owner string names, in the pk's own type (None when it cannot be one)."""
    from django.contrib.auth import get_user_model

    try:
        return get_user_model()._meta.pk.to_python(ident)
    except (ValidationError, ValueError, TypeError):
        return None


def load_projections(settings: Settings, names: Iterable[str] | None = None) -> list[Projection]:
    """The built-ins (read-model, agent stores) plus every ``PROJECTIONS`` entry; ``names`` keeps
    only those."""
    from agentstream.projections.stores import StoresProjection

    found: list[Projection] = [ReadModelProjection(), StoresProjection()]
    for path in settings.PROJECTIONS:
        try:
            cls = import_string(path)
        except ImportError as exc:
            raise ConfigurationError(
                f"AGENTSTREAM['PROJECTIONS'] entry {path!r} does not import: {exc}"
            ) from None
        if not (isinstance(cls, type) and issubclass(cls, Projection)) or not cls.name:
            raise ConfigurationError(
                f"AGENTSTREAM['PROJECTIONS'] entry {path!r} must be a Projection subclass with a name"
            )
        found.append(cls())
    from agentstream.projections.notify import RunFinishedProjection

    listed = any(isinstance(p, RunFinishedProjection) for p in found)
    if settings.RUN_COMPLETED_HOOK or listed:  # configured here: the hook and the outbox lease
        found = [p for p in found if not isinstance(p, RunFinishedProjection)]
        found.append(
            RunFinishedProjection(settings.RUN_COMPLETED_HOOK, lease_s=settings.RUN_COMPLETED_LEASE_SECONDS)
        )
    by_name: dict[str, Projection] = {}
    for projection in found:
        if projection.name in by_name:
            raise ConfigurationError(f"two projections are named {projection.name!r}; names must be unique")
        by_name[projection.name] = projection
    if names is None:
        return found
    wanted = list(names)
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ConfigurationError(f"unknown projection {', '.join(unknown)}; configured: {', '.join(by_name)}")
    return [by_name[n] for n in wanted]
