from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.admin.utils import unquote
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from django.utils.text import Truncator

import taskhub.celery_admin  # noqa: F401  (replaces django-celery-beat's and -results' admins)
from executions.models import TaskExecution, Trigger
from taskhub.admin_lookups import OfferedFiltersOnly
from taskhub.limits import ActiveRunLimitReached
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


class EnvField(forms.JSONField):
    """Django's JSON form field, answering input nested too deep to parse with a form error."""

    too_deep = "This JSON is nested too deeply to read; the environment is one object of names to strings."

    def to_python(self, value):
        try:
            return super().to_python(value)
        except RecursionError:
            # Python's json parser gives up around 1000 levels with RecursionError, not a JSONDecodeError.
            raise ValidationError(self.too_deep, code="invalid") from None

    def bound_data(self, data, initial):
        # Redisplaying the input parses it again, and writing it back out would recurse as deep.
        try:
            value = super().bound_data(data, initial)
        except RecursionError:
            return forms.fields.InvalidJSONInput(data)
        if data is not None and not self.disabled and not _flat(value):
            return forms.fields.InvalidJSONInput(data)  # shown as typed; validate_env says what is wrong
        return value


def _flat(value: object) -> bool:
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return not any(isinstance(item, (dict, list)) for item in items)


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
class TaskAdmin(OfferedFiltersOnly, admin.ModelAdmin):
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
    actions = ("run_now", "enable", "disable", "delete_selected")
    inlines = (RecentExecutionInline,)
    formfield_overrides = {models.JSONField: {"form_class": EnvField}}
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
            except ActiveRunLimitReached as exc:
                self.message_user(request, f"Not started: {task.name}: {exc}", messages.WARNING)
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

    def delete_view(self, request: HttpRequest, object_id: str, extra_context=None) -> HttpResponse:
        task = self.get_object(request, unquote(object_id))
        if task is not None and self.has_delete_permission(request, task):
            blocker = task.deletion_blocker()
            if blocker:
                self.message_user(request, f"Not deleted: {task.name}: {blocker}.", messages.WARNING)
                return HttpResponseRedirect(reverse("admin:taskhub_task_change", args=[task.pk]))
        return super().delete_view(request, object_id, extra_context)

    @admin.action(description="Delete selected tasks", permissions=["delete"])
    def delete_selected(self, request: HttpRequest, queryset: QuerySet[Task]) -> HttpResponse | None:
        """Django's delete_selected, for the selected tasks that may be deleted (Task.deletion_blocker)."""
        refused, deletable = [], []
        for task in queryset:
            blocker = task.deletion_blocker()
            if blocker:
                refused.append(f"{task.name} ({blocker})")
            else:
                deletable.append(task.pk)
        if refused:
            self.message_user(request, f"Not deleted: {'; '.join(refused)}.", messages.WARNING)
        if not deletable:
            return None
        # Asks for confirmation first, as Django does; the confirming POST comes back here and is checked again.
        return django_delete_selected(self, request, queryset.filter(pk__in=deletable))
