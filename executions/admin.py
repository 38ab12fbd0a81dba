from __future__ import annotations

import shlex
import uuid

from django.contrib import admin, messages
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html

from executions.lifecycle import RetryRefused, retry_run, run_again
from executions.models import InvalidTransition, Status, TaskExecution
from taskhub.admin import status_badge
from taskhub.admin_lookups import OfferedFiltersOnly
from taskhub.models import Task, TaskDisabled


def _seconds(value) -> str:
    if value is None:
        return "—"
    total = value.total_seconds()
    if total < 60:
        return f"{total:.2f}s"
    minutes, seconds = divmod(int(total), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {seconds:02d}s" if hours else f"{minutes}m {seconds:02d}s"


class CappedCountPaginator(Paginator):
    """Count matching rows only up to CAP (+1), so no page load counts a million-row history.

    Past the cap the list says CAP+1 results and pages stop there; filters
    narrow it down.
    """

    cap = 10_000

    @cached_property
    def count(self) -> int:
        # COUNT(*) over a LIMITed subquery: stops after cap + 1 index entries.
        return self.object_list[: self.cap + 1].count()


@admin.register(TaskExecution)
class TaskExecutionAdmin(OfferedFiltersOnly, admin.ModelAdmin):
    list_display = (
        "id",
        "task_link",
        "status_display",
        "attempt",
        "trigger",
        "started_at",
        "duration_display",
        "exit_code",
        "worker",
    )
    list_filter = ("status", "trigger", "task__queue")
    extra_lookups = ("task__id__exact",)  # the task page's "history" link
    list_select_related = ("task",)
    search_fields = ("=run_id", "=celery_task_id", "task__name")
    raw_id_fields = ("task", "triggered_by")
    list_per_page = 50
    # No COUNT(*) over the whole table on every page: history grows to millions.
    show_full_result_count = False
    paginator = CappedCountPaginator
    actions = ("cancel", "retry", "run_again")
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "task_link",
                    "status_display",
                    "attempt",
                    "run_link",
                    "trigger",
                    "triggered_by",
                    "error",
                    "handed_back",
                )
            },
        ),
        (
            "What ran",
            {
                "description": "Copied from the task when the run was launched: every attempt of the run runs this, "
                "whatever the task says now.",
                "fields": ("command", "shell", "argv_display", "working_dir", "env_names", "timeout", "kill_grace"),
            },
        ),
        (
            "Timing",
            {
                "fields": (
                    "created_at",
                    "scheduled_for",
                    "enqueued_at",
                    "started_at",
                    "finished_at",
                    "duration_display",
                    "heartbeat_at",
                    "cancel_requested_at",
                )
            },
        ),
        ("Result", {"fields": ("exit_code", "signal", "truncated_display", "stdout_display", "stderr_display")}),
        ("Where", {"fields": ("worker", "pid", "celery_task_id")}),
        ("Resources", {"fields": ("max_rss_kb", "cpu_user", "cpu_system")}),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: TaskExecution | None = None):
        return [f for fieldset in self.fieldsets for f in fieldset[1]["fields"]]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TaskExecution | None = None) -> bool:
        # Executions are records: the page is read-only, operators act through actions.
        return False

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str):
        """Search by run id or Celery task id (exact), or by task name.

        Django's default would OR all three into one condition, which no
        index serves: a scan of the whole history on every search.
        """
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            run_id = uuid.UUID(term)
        except ValueError:
            # Part of a task name: find the tasks (a small table), then their executions.
            return queryset.filter(task__in=Task.objects.filter(name__icontains=term).values("pk")), False
        by_run = queryset.filter(run_id=run_id)
        if by_run.exists():
            return by_run, False
        return queryset.filter(celery_task_id=term), False

    @admin.display(description="Task", ordering="task__name")
    def task_link(self, obj: TaskExecution):
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:taskhub_task_change", args=[obj.task_id]), obj.task.name
        )

    @admin.display(description="Status", ordering="status")
    def status_display(self, obj: TaskExecution):
        label = obj.get_status_display()
        if obj.status == Status.RUNNING and obj.cancel_requested_at:
            label += " (cancelling)"
        return status_badge(obj.status, label)

    @admin.display(description="Run")
    def run_link(self, obj: TaskExecution):
        url = reverse("admin:executions_taskexecution_changelist") + f"?q={obj.run_id}"
        return format_html('<a href="{}">{}</a> (all attempts)', url, obj.run_id)

    @admin.display(description="Arguments")
    def argv_display(self, obj: TaskExecution):
        if obj.argv is None:
            return "—"
        return format_html('<code style="white-space:pre-wrap">{}</code>', shlex.join(obj.argv))

    @admin.display(description="Environment (names; values stay on the task)")
    def env_names(self, obj: TaskExecution) -> str:
        return ", ".join(sorted(obj.env or {})) or "—"

    @admin.display(description="Duration")
    def duration_display(self, obj: TaskExecution) -> str:
        return _seconds(obj.duration)

    @admin.display(description="Output truncated")
    def truncated_display(self, obj: TaskExecution) -> str:
        # Plain words: the admin's boolean icon shows a red cross for "nothing was cut", which reads as an error.
        return "yes, cut (a marker in the output says where and how much)" if obj.output_truncated else "no"

    @admin.display(description="stdout")
    def stdout_display(self, obj: TaskExecution):
        return format_html(
            '<pre style="max-height:40em;overflow:auto;white-space:pre-wrap">{}</pre>', obj.stdout or "(empty)"
        )

    @admin.display(description="stderr")
    def stderr_display(self, obj: TaskExecution):
        return format_html(
            '<pre style="max-height:40em;overflow:auto;white-space:pre-wrap">{}</pre>', obj.stderr or "(empty)"
        )

    def has_run_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("taskhub.run_task")

    @admin.action(description="Cancel selected executions", permissions=["run"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[TaskExecution]) -> None:
        done, refused = 0, []
        for execution in queryset:
            try:
                execution.request_cancel()
                done += 1
            except InvalidTransition:
                refused.append(f"#{execution.pk} ({execution.status})")
        if done:
            self.message_user(request, f"Cancellation requested for {done} execution(s).", messages.SUCCESS)
        if refused:
            self.message_user(request, f"Already finished, not cancelled: {', '.join(refused)}.", messages.WARNING)

    @admin.action(description="Retry selected executions (new attempt of the same run)", permissions=["run"])
    def retry(self, request: HttpRequest, queryset: QuerySet[TaskExecution]) -> None:
        done, refused = 0, []
        for execution in queryset.select_related("task"):
            try:
                retry_run(execution, user=request.user)
                done += 1
            except RetryRefused as exc:
                refused.append(f"#{execution.pk}: {exc}")
        if done:
            self.message_user(request, f"Started {done} new attempt(s).", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not retried: " + "; ".join(refused), messages.WARNING)

    @admin.action(description="Run again (a new run of each selected execution's task)", permissions=["run"])
    def run_again(self, request: HttpRequest, queryset: QuerySet[TaskExecution]) -> None:
        done, refused = 0, []
        for execution in queryset.select_related("task"):
            try:
                run_again(execution, user=request.user)
                done += 1
            except (TaskDisabled, ValueError) as exc:
                refused.append(f"#{execution.pk}: {exc}")
        if done:
            self.message_user(request, f"Started {done} new run(s).", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not started: " + "; ".join(refused), messages.WARNING)
