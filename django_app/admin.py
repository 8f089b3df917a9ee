"""Admin for the read-models: everything read-only (projectors are their only writers)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from agentstream.django_app.models import (
    Checkpoint,
    Conversation,
    Event,
    KnowledgeItem,
    MemoryItem,
    Preference,
    ProjectionCheckpoint,
    Run,
    SkippedEntry,
    Task,
)

STATUS_COLOURS = {
    "queued": "#6c757d",
    "running": "#0d6efd",
    "succeeded": "#198754",
    "failed": "#dc3545",
    "cancelled": "#fd7e14",
    "timed_out": "#6f42c1",
}


class ReadOnly:
    """No add, change or delete: a row edited here would be overwritten by the next event."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EventInline(ReadOnly, admin.TabularInline):  # type: ignore[type-arg]
    model = Event
    fields = ("seq", "type", "visibility", "attempt", "ts", "payload")
    readonly_fields = fields
    ordering = ("seq",)
    extra = 0
    show_change_link = False


@admin.register(Run)
class RunAdmin(ReadOnly, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("id", "agent_key", "status_badge", "owner", "attempt", "created_at", "duration")
    list_filter = ("status", "agent_key", "created_at")
    search_fields = ("id", "owner", "agent_key", "idempotency_key", "conversation__id")
    date_hierarchy = "created_at"
    list_select_related = False
    readonly_fields = tuple(f.name for f in Run._meta.fields)
    inlines = (EventInline,)

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: Run) -> str:
        colour = STATUS_COLOURS.get(run.status, "#6c757d")
        return format_html(
            '<span style="background:{};color:#fff;padding:2px 8px;border-radius:8px">{}</span>',
            colour,
            run.get_status_display(),
        )

    @admin.display(description="duration")
    def duration(self, run: Run) -> str:
        if not run.started_at:
            return "-"
        if not run.finished_at:
            return "running"
        return f"{(run.finished_at - run.started_at).total_seconds():.2f}s"


@admin.register(Conversation)
class ConversationAdmin(ReadOnly, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("id", "title", "owner", "agent_key", "run_count", "last_activity_at", "deleted_at")
    list_filter = ("agent_key", "created_at")
    search_fields = ("id", "title", "owner")
    readonly_fields = tuple(f.name for f in Conversation._meta.fields)


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnly, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("run", "seq", "created_at")
    search_fields = ("run__id",)


@admin.register(ProjectionCheckpoint)
class ProjectionCheckpointAdmin(ReadOnly, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("projection", "partition", "last_id", "updated_at")
    list_filter = ("projection",)


@admin.register(SkippedEntry)
class SkippedEntryAdmin(ReadOnly, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("projection", "partition", "entry_id", "reason", "created_at")
    list_filter = ("projection", "partition")


# -- the agents' stores: read-only too (a change is an event of a run; a row edited here would be
# undone by the next replay)


@admin.register(MemoryItem)
class MemoryItemAdmin(ReadOnly, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("owner", "key", "deleted", "version_run", "updated_at")
    list_filter = ("deleted",)
    search_fields = ("owner", "key")


@admin.register(Preference)
class PreferenceAdmin(ReadOnly, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("owner", "key", "deleted", "version_run", "updated_at")
    list_filter = ("deleted",)
    search_fields = ("owner", "key")


@admin.register(Task)
class TaskAdmin(ReadOnly, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("title", "owner", "task_list", "status", "priority", "deleted", "updated_at")
    list_filter = ("status", "deleted")
    search_fields = ("owner", "task_id", "title", "task_list")


@admin.register(KnowledgeItem)
class KnowledgeItemAdmin(ReadOnly, admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("item_id", "owner", "kind", "dimensions", "deleted", "updated_at")
    list_filter = ("kind", "deleted")
    search_fields = ("owner", "item_id", "text")
    exclude = ("embedding",)  # thousands of floats: not for a page
