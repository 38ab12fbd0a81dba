from __future__ import annotations

import json

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.text import Truncator

from executions.models import TaskExecution, Trigger
from taskhub.models import Task, TaskDisabled
from taskhub.services import launch

STATUS_COLOURS = {
    "pending": "#6c757d",
    "running": "#0d6efd",
    "succeeded": "#198754",
    "failed": "#dc3545",
    "timeout": "#fd7e14",
    "cancelled": "#6c757d",
    "lost": "#6f42c1",
}


def status_badge(status: str, label: str | None = None):
    return format_html(
        '<span style="color:#fff;background:{};border-radius:3px;padding:1px 6px;white-space:nowrap">{}</span>',
        STATUS_COLOURS.get(status, "#6c757d"),
        label or status,
    )


def masked_env(env: dict[str, str]) -> str:
    """Show variable names with their values hidden (for people who cannot change the task)."""
    return json.dumps({name: "••••" for name in env}, indent=2)


class RecentExecutionInline(admin.TabularInline):
    model = TaskExecution
    fk_name = "task"
    verbose_name_plural = "Recent executions"
    fields = ("link", "attempt", "status_display", "trigger", "started_at", "finished_at", "exit_code")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = False

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # Only the newest ten; the inline formset cannot slice, so filter by ids.
        qs = super().get_queryset(request)
        object_id = request.resolver_match.kwargs.get("object_id") if request.resolver_match else None
        if object_id is None:
            return qs.none()
        ids = list(qs.filter(task_id=object_id).order_by("-id").values_list("id", flat=True)[:10])
        return qs.filter(id__in=ids).order_by("-id")

    @admin.display(description="Execution")
    def link(self, obj: TaskExecution):
        return format_html(
            '<a href="{}">#{}</a>', reverse("admin:executions_taskexecution_change", args=[obj.pk]), obj.pk
        )

    @admin.display(description="Status")
    def status_display(self, obj: TaskExecution):
        return status_badge(obj.status, obj.get_status_display())


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "command_short",
        "queue",
        "priority",
        "timeout",
        "retry_count",
        "enabled",
        "executions_link",
    )
    list_filter = ("enabled", "queue", "shell")
    search_fields = ("name", "command", "description")
    list_per_page = 50
    actions = ("run_now", "enable", "disable")
    inlines = (RecentExecutionInline,)
    readonly_fields = ("created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "description", "enabled")}),
        ("Command", {"fields": ("command", "shell", "env", "working_dir")}),
        ("Limits", {"fields": ("timeout", "kill_grace")}),
        ("Retries", {"fields": ("retry_count", "retry_delay", "retry_backoff", "retry_delay_max", "retry_jitter")}),
        ("Routing", {"fields": ("queue", "priority")}),
        ("History", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
    )

    @admin.display(description="Command")
    def command_short(self, obj: Task) -> str:
        return Truncator(obj.command).chars(60)

    @admin.display(description="Executions")
    def executions_link(self, obj: Task):
        url = reverse("admin:executions_taskexecution_changelist") + f"?task__id__exact={obj.pk}"
        return format_html('<a href="{}">history</a>', url)

    def get_readonly_fields(self, request: HttpRequest, obj: Task | None = None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and not self.has_change_permission(request, obj):
            fields.append("env_masked")
        return fields

    def get_fieldsets(self, request: HttpRequest, obj: Task | None = None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None and not self.has_change_permission(request, obj):
            # Viewers see which variables exist, not their values (they may be secrets).
            return [
                (title, {**opts, "fields": tuple("env_masked" if f == "env" else f for f in opts["fields"])})
                for title, opts in fieldsets
            ]
        return fieldsets

    @admin.display(description="Environment")
    def env_masked(self, obj: Task):
        return format_html("<pre>{}</pre>", masked_env(obj.env))

    @admin.action(description="Run selected tasks now", permissions=["run"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        started, refused = [], []
        for task in queryset:
            try:
                launch(task, trigger=Trigger.MANUAL, user=request.user)
                started.append(task.name)
            except TaskDisabled:
                refused.append(task.name)
        if started:
            self.message_user(request, f"Started {len(started)} task(s): {', '.join(started)}.", messages.SUCCESS)
        if refused:
            self.message_user(
                request, f"Not started, disabled: {', '.join(refused)}. Enable them first.", messages.WARNING
            )

    def has_run_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("taskhub.run_task")

    @admin.action(description="Enable selected tasks", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        count = queryset.update(enabled=True)
        self.message_user(request, f"Enabled {count} task(s).", messages.SUCCESS)

    @admin.action(description="Disable selected tasks", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        count = queryset.update(enabled=False)
        self.message_user(request, f"Disabled {count} task(s).", messages.SUCCESS)
