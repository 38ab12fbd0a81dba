from __future__ import annotations

import calendar
import shlex
import signal
import uuid
from datetime import date

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Max, Min, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.timezone import localdate, localtime, now

from executions import console
from executions.api import artifact_response
from executions.lifecycle import RetryRefused, rerun_exhausted, retry_run, run_again
from executions.models import Artifact, InvalidTransition, Status, TaskExecution, WorkflowRun
from taskhub.admin import STATUS_COLOURS, ago, can_run, status_badge
from taskhub.admin_lookups import OfferedFiltersOnly
from taskhub.limits import ActiveRunLimitReached
from taskhub.models import Task, TaskDisabled

VIEW_EXECUTION = "executions.view_taskexecution"
# While it runs, the page shows (and the live endpoint sends) the end of the output only.
LIVE_TAIL_CHARS = 64 * 1024


def _seconds(value) -> str:
    return console.duration_words(value)


def exit_words(execution: TaskExecution) -> str:
    """Say what the exit code is, or why there is none."""
    status = execution.status
    if execution.exit_code is not None:
        ok = execution.status == Status.SUCCEEDED
        return f"Exit code {execution.exit_code}" + (" (success)." if ok else ".")
    if status == Status.PENDING:
        return "No exit code yet: the attempt has not started."
    if status == Status.RUNNING:
        return "No exit code yet: the command is still running."
    if status == Status.SKIPPED:
        return "No exit code: the launch was skipped, nothing ran."
    if execution.signal:
        try:
            name = signal.Signals(execution.signal).name
        except ValueError:
            name = "unknown"
        why = {
            Status.TIMEOUT: " after its timeout",
            Status.CANCELLED: " on cancellation",
        }.get(status, "")
        return f"No exit code: the command was killed by signal {execution.signal} ({name}){why}."
    if status == Status.LOST:
        return "No exit code: its worker died or stopped answering, so the command's end was not seen."
    if status == Status.CANCELLED and execution.started_at is None:
        return "No exit code: cancelled before it started."
    if execution.started_at is not None and execution.pid is None and execution.error:
        return "No exit code: the command could not be started (see the error)."
    return "No exit code recorded" + (" (see the error)." if execution.error else ".")


def _when(value) -> str:
    return str(localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z")) if value else "—"


def live_fields(execution: TaskExecution) -> dict[str, str]:
    """The facts of the page that change while an execution runs, as the page shows them."""

    def shown(value) -> str:
        return "—" if value in (None, "") else str(value)

    return {
        "started_at": _when(execution.started_at),
        "finished_at": _when(execution.finished_at),
        "heartbeat_at": _when(execution.heartbeat_at),
        "cancel_requested_at": _when(execution.cancel_requested_at),
        "exit_code": shown(execution.exit_code),
        "signal": shown(execution.signal),
        "worker": shown(execution.worker),
        "pid": shown(execution.pid),
        "error": shown(execution.error),
        "decided_by": shown(execution.decided_by),
    }


def _live_field(name: str, label: str):
    """A read-only field of the execution page that its live updates keep current."""

    @admin.display(description=label)
    def show(self, obj: TaskExecution):
        return format_html('<span data-live="f-{}" class="th-pre">{}</span>', name, live_fields(obj)[name])

    return show


def live_state(execution: TaskExecution, at=None) -> dict[str, object]:
    """What the execution page shows and keeps up to date while the execution runs."""
    at = at or now()
    terminal = execution.is_terminal
    label = execution.get_status_display()
    if execution.status == Status.RUNNING and execution.cancel_requested_at:
        label += " (cancelling)"
    stdout, stderr = execution.stdout or "", execution.stderr or ""
    tail = not terminal and (len(stdout) > LIVE_TAIL_CHARS or len(stderr) > LIVE_TAIL_CHARS)
    return {
        "id": execution.pk,
        "status": execution.status,
        "status_label": label,
        "badge_html": str(status_badge(execution.status, label)),
        "terminal": terminal,
        "duration": console.duration_words(execution.duration),
        "heartbeat": console.ago_words(execution.heartbeat_at, at) if execution.heartbeat_at else "—",
        "exit": exit_words(execution),
        "stdout_html": console.output_html(stdout[-LIVE_TAIL_CHARS:] if tail else stdout) or "(empty)",
        "stderr_html": console.output_html(stderr[-LIVE_TAIL_CHARS:] if tail else stderr) or "(empty)",
        "tail_only": tail,
        "error": execution.error,
        "cancellable": execution.status in (Status.PENDING, Status.RUNNING) and not execution.cancel_requested_at,
        "fields": live_fields(execution),
    }


def date_links(request: HttpRequest, field: str) -> dict[str, object]:
    """Links of a date hierarchy (years, months, days) worked out from the calendar, not from the rows.

    Django's own asks the database for every distinct year, month or day
    among the rows shown, a scan of a month of history on each page load;
    these need the table's first and last dates only (two index probes).
    """
    params = request.GET.copy()
    parts = {}
    for part in ("year", "month", "day"):
        raw = params.pop(f"{field}__{part}", [None])[-1]
        if raw is not None and raw.isdigit():
            parts[part] = int(raw)
    params.pop("p", None)

    def link(**chosen: int) -> str:
        query = params.copy()
        for part, value in chosen.items():
            query[f"{field}__{part}"] = str(value)
        return "?" + query.urlencode()

    today = localdate()
    year, month, day = parts.get("year"), parts.get("month"), parts.get("day")
    if year and month and day:
        return {"back": {"link": link(year=year, month=month), "title": f"{calendar.month_name[month]} {year}"}}
    if year and month and 1 <= month <= 12:
        last = calendar.monthrange(year, month)[1]
        days = [d for d in range(1, last + 1) if date(year, month, d) <= today]
        return {
            "back": {"link": link(year=year), "title": str(year)},
            "choices": [
                {"link": link(year=year, month=month, day=d), "title": f"{calendar.month_abbr[month]} {d}"}
                for d in days
            ],
        }
    if year:
        months = [m for m in range(1, 13) if (year, m) <= (today.year, today.month)]
        return {
            "back": {"link": link(), "title": "All dates"},
            "choices": [
                {"link": link(year=year, month=m), "title": f"{calendar.month_name[m]} {year}"} for m in months
            ],
        }
    bounds = TaskExecution.objects.aggregate(first=Min(field), last=Max(field))
    if bounds["first"] is None:
        return {}
    first, last = localtime(bounds["first"]).year, localtime(bounds["last"]).year
    return {"choices": [{"link": link(year=y), "title": str(y)} for y in range(first, last + 1)]}


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
        "run_short",
        "attempt_of",
        "status_display",
        "trigger",
        "who",
        "started",
        "duration_display",
        "exit_display",
        "worker_short",
    )
    list_display_links = ("id",)
    list_filter = ("status", "trigger", "exhausted", "task", "task__queue")
    extra_lookups = ("task__id__exact",)  # the task page's "history" link
    list_select_related = ("task", "triggered_by")
    search_fields = ("=run_id", "=celery_task_id", "task__name")
    search_help_text = "A task's name (or part of it), a run id or a Celery task id."
    raw_id_fields = ("task", "triggered_by")
    date_hierarchy = "created_at"
    list_per_page = 50
    # No COUNT(*) over the whole table on every page: history grows to millions.
    show_full_result_count = False
    paginator = CappedCountPaginator
    actions = ("cancel", "retry", "run_again", "rerun_exhausted")
    change_form_template = "admin/executions/taskexecution/change_form.html"
    change_list_template = "admin/executions/taskexecution/change_list.html"
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "task_link",
                    "status_live",
                    "attempt_of",
                    "run_link",
                    "trigger",
                    "triggered_by",
                    "live_error",
                    "live_decided_by",
                    "exhausted_words",
                    "handed_back_words",
                    "workflow_link",
                )
            },
        ),
        (
            "What ran",
            {
                "description": "Copied from the task when the run was launched: every attempt of the run runs this, "
                "whatever the task says now (a run started with overrides shows them here).",
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
                    "live_started_at",
                    "live_finished_at",
                    "duration_live",
                    "live_heartbeat_at",
                    "live_cancel_requested_at",
                )
            },
        ),
        ("Result", {"fields": ("exit_explained", "live_exit_code", "live_signal", "truncated_display")}),
        ("Where", {"fields": ("live_worker", "live_pid", "celery_task_id")}),
        ("Resources", {"fields": ("max_rss_kb", "cpu_user", "cpu_system")}),
        ("Artifacts", {"fields": ("artifacts_list",)}),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: TaskExecution | None = None):
        return [f for fieldset in self.fieldsets for f in fieldset[1]["fields"]]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TaskExecution | None = None) -> bool:
        # Executions are records: the page is read-only, operators act through actions.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: TaskExecution | None = None) -> bool:
        # The record of what ran stays; retention is purge_executions' job.
        return False

    def get_urls(self):
        own = [
            path(
                "<path:object_id>/cancel/",
                self.admin_site.admin_view(self.cancel_view),
                name="executions_taskexecution_cancel",
            ),
            path(
                "<path:object_id>/artifacts/<int:artifact_id>/",
                self.admin_site.admin_view(self.artifact_view),
                name="executions_taskexecution_artifact",
            ),
            path(
                "<path:object_id>/run-again/",
                self.admin_site.admin_view(self.run_again_view),
                name="executions_taskexecution_run_again",
            ),
        ]
        return own + super().get_urls()

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

    # -- columns

    @admin.display(description="Task", ordering="task__name")
    def task_link(self, obj: TaskExecution):
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:taskhub_task_change", args=[obj.task_id]), obj.task.name
        )

    @admin.display(description="Run")
    def run_short(self, obj: TaskExecution):
        return format_html(
            '<a href="{}" title="Run {} (all its attempts)"><code>{}</code></a>',
            reverse("console:run", args=[obj.run_id]),
            obj.run_id,
            str(obj.run_id)[:8],
        )

    @admin.display(description="Attempt")
    def attempt_of(self, obj: TaskExecution) -> str:
        return f"{obj.attempt} of {max(obj.task.attempts, obj.attempt)}"

    @admin.display(description="Status", ordering="status")
    def status_display(self, obj: TaskExecution):
        label = obj.get_status_display()
        if obj.status == Status.RUNNING and obj.cancel_requested_at:
            label += " (cancelling)"
        return status_badge(obj.status, label)

    @admin.display(description="Who")
    def who(self, obj: TaskExecution) -> str:
        if obj.triggered_by is not None:
            return obj.triggered_by.get_username()
        return "—"

    @admin.display(description="Started", ordering="started_at")
    def started(self, obj: TaskExecution):
        return ago(obj.started_at)

    @admin.display(description="Exit")
    def exit_display(self, obj: TaskExecution):
        if obj.exit_code is not None:
            return str(obj.exit_code)
        if obj.signal:
            return format_html('<span title="killed by signal {}">sig {}</span>', obj.signal, obj.signal)
        return "—"

    @admin.display(description="Worker", ordering="worker")
    def worker_short(self, obj: TaskExecution):
        if not obj.worker:
            return "—"
        return format_html('<span title="{}">{}</span>', obj.worker, obj.worker.split("@")[0][:18])

    # -- the page's facts (those that change while it runs are kept current by its live updates)

    live_started_at = _live_field("started_at", "Started at")
    live_finished_at = _live_field("finished_at", "Finished at")
    live_heartbeat_at = _live_field("heartbeat_at", "Heartbeat at")
    live_cancel_requested_at = _live_field("cancel_requested_at", "Cancel requested at")
    live_exit_code = _live_field("exit_code", "Exit code")
    live_signal = _live_field("signal", "Signal")
    live_worker = _live_field("worker", "Worker")
    live_pid = _live_field("pid", "Pid")
    live_error = _live_field("error", "Error")
    live_decided_by = _live_field("decided_by", "Decided by")

    @admin.display(description="Status")
    def status_live(self, obj: TaskExecution):
        return format_html('<span data-live="badge">{}</span>', self.status_display(obj))

    @admin.display(description="Duration")
    def duration_live(self, obj: TaskExecution):
        return format_html('<span data-live="duration">{}</span>', _seconds(obj.duration))

    @admin.display(description="Exhausted")
    def exhausted_words(self, obj: TaskExecution) -> str:
        return "yes: the last attempt of a run that used every attempt without success" if obj.exhausted else "no"

    @admin.display(description="Handed back")
    def handed_back_words(self, obj: TaskExecution) -> str:
        if obj.handed_back:
            return "yes: stopped by its worker's warm shutdown and run again (not counted against the retries)"
        return "no"

    @admin.display(description="Run")
    def run_link(self, obj: TaskExecution):
        return format_html(
            '<a href="{}">{}</a> (its attempts side by side)', reverse("console:run", args=[obj.run_id]), obj.run_id
        )

    @admin.display(description="Files left in $TASKHUB_ARTIFACTS_DIR")
    def artifacts_list(self, obj: TaskExecution):
        rows = list(Artifact.objects.filter(execution=obj).listing())
        if not rows:
            return "none"
        items = [
            format_html(
                '<li><a href="{}">{}</a> ({} bytes)</li>',
                reverse("admin:executions_taskexecution_artifact", args=[obj.pk, a.pk]),
                a.name,
                a.size,
            )
            if a.is_kept
            else format_html("<li>{} ({} bytes): not kept, past the attempt's cap</li>", a.name, a.size)
            for a in rows
        ]
        return format_html('<ul class="th-artifacts">{}</ul>', format_html_join("", "{}", ((i,) for i in items)))

    def artifact_view(self, request: HttpRequest, object_id: str, artifact_id: int) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied("Artifacts need the “Can view task execution” permission.")
        execution = self._execution_or_404(request, object_id)
        artifact = Artifact.objects.filter(execution=execution, pk=artifact_id, content__isnull=False).first()
        if artifact is None:
            raise Http404(f"Execution {execution.pk} kept no artifact #{artifact_id}.")
        return artifact_response(artifact)

    @admin.display(description="Workflow run")
    def workflow_link(self, obj: TaskExecution):
        if obj.workflow_run_id is None:
            return "—"
        page = reverse("console:workflow", args=[obj.workflow_run_id])
        if obj.upstream_execution_id is None:
            return format_html('<a href="{}">{}</a> (this run is its root)', page, obj.workflow_run_id)
        return format_html(
            '<a href="{}">{}</a>, launched by the end of <a href="{}">execution #{}</a>',
            page,
            obj.workflow_run_id,
            reverse("admin:executions_taskexecution_change", args=[obj.upstream_execution_id]),
            obj.upstream_execution_id,
        )

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

    @admin.display(description="Exit code, in words")
    def exit_explained(self, obj: TaskExecution):
        return format_html('<span data-live="exit">{}</span>', exit_words(obj))

    @admin.display(description="Output truncated")
    def truncated_display(self, obj: TaskExecution) -> str:
        # Plain words: the admin's boolean icon shows a red cross for "nothing was cut", which reads as an error.
        return "yes, cut (a marker in the output says where and how much)" if obj.output_truncated else "no"

    # -- the pages

    def changelist_view(self, request: HttpRequest, extra_context=None):
        extra_context = {**(extra_context or {}), "date_links": date_links(request, self.date_hierarchy)}
        return super().changelist_view(request, extra_context)

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        execution = self.get_object(request, object_id)
        if execution is not None:
            extra_context = {**(extra_context or {}), **self._page_context(request, execution)}
        return super().change_view(request, object_id, form_url, extra_context)

    def _page_context(self, request: HttpRequest, execution: TaskExecution) -> dict[str, object]:
        at = now()
        attempts = list(
            TaskExecution.objects.filter(run_id=execution.run_id)
            .only("id", "attempt", "status", "scheduled_for", "task_id")
            .order_by("attempt")
        )
        upcoming = [a for a in attempts if a.attempt > execution.attempt and a.status == Status.PENDING]
        return {
            "live": live_state(execution, at),
            "attempts": [(a, STATUS_COLOURS.get(a.status, "#6c757d")) for a in attempts],
            "next_retry": upcoming[0] if upcoming else None,
            "next_retry_in": console.ago_words(upcoming[0].scheduled_for, at) if upcoming else "",
            "can_run": can_run(request, VIEW_EXECUTION),
        }

    def _execution_or_404(self, request: HttpRequest, object_id: str) -> TaskExecution:
        execution = self.get_object(request, object_id)
        if execution is None:
            raise Http404(f"No execution with id {object_id!r}.")
        return execution

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not can_run(request, VIEW_EXECUTION) or request.method != "POST":
            raise PermissionDenied("Cancelling needs the “Can run tasks” and “Can view task execution” permissions.")
        execution = self._execution_or_404(request, object_id)
        self._cancel_one(request, execution)
        return HttpResponseRedirect(reverse("admin:executions_taskexecution_change", args=[execution.pk]))

    def _cancel_one(self, request: HttpRequest, execution: TaskExecution) -> bool:
        try:
            execution.request_cancel()
        except InvalidTransition:
            self.message_user(request, f"#{execution.pk} is already {execution.status}; nothing to cancel.")
            return False
        # Who asked is in the admin's log: the execution has no field for it.
        self.log_change(request, execution, "Requested cancellation.")
        self.message_user(request, f"Cancellation requested for #{execution.pk}.", messages.SUCCESS)
        return True

    def run_again_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if not can_run(request, VIEW_EXECUTION) or request.method != "POST":
            raise PermissionDenied("Running again needs the “Can run tasks” and “Can view task execution” permissions.")
        execution = self._execution_or_404(request, object_id)
        try:
            new = run_again(execution, user=request.user)
        except (TaskDisabled, ActiveRunLimitReached, ValueError) as exc:
            self.message_user(request, f"Not started: {exc}", messages.WARNING)
            return HttpResponseRedirect(reverse("admin:executions_taskexecution_change", args=[execution.pk]))
        self.message_user(request, f"Started a new run of {execution.task.name}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:executions_taskexecution_change", args=[new.pk]))

    # -- actions

    def has_run_permission(self, request: HttpRequest) -> bool:
        return can_run(request, VIEW_EXECUTION)

    @admin.action(description="Cancel selected executions", permissions=["run"])
    def cancel(self, request: HttpRequest, queryset: QuerySet[TaskExecution]) -> None:
        done, refused = 0, []
        for execution in queryset:
            try:
                execution.request_cancel()
            except InvalidTransition:
                refused.append(f"#{execution.pk} ({execution.status})")
                continue
            self.log_change(request, execution, "Requested cancellation.")
            done += 1
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
            except (TaskDisabled, ActiveRunLimitReached, ValueError) as exc:
                refused.append(f"#{execution.pk}: {exc}")
        if done:
            self.message_user(request, f"Started {done} new run(s).", messages.SUCCESS)
        if refused:
            self.message_user(request, "Not started: " + "; ".join(refused), messages.WARNING)

    @admin.action(description="Run exhausted runs again (a new run of each)", permissions=["run"])
    def rerun_exhausted(self, request: HttpRequest, queryset: QuerySet[TaskExecution]) -> None:
        result = rerun_exhausted(queryset.select_related("task"), user=request.user)
        if result.started:
            self.message_user(request, f"Started {len(result.started)} new run(s).", messages.SUCCESS)
        if result.refused:
            refused = "; ".join(f"#{execution.pk}: {why}" for execution, why in result.refused)
            self.message_user(request, f"Not started: {refused}", messages.WARNING)


@admin.register(WorkflowRun)
class WorkflowRunAdmin(admin.ModelAdmin):
    """The list of workflow runs; each opens its graph (console:workflow)."""

    list_display = ("graph_link", "root_task", "created_at", "cancelled_at")
    list_filter = ("root_task",)
    list_select_related = ("root_task",)
    date_hierarchy = "created_at"
    show_full_result_count = False

    def has_view_permission(self, request: HttpRequest, obj: WorkflowRun | None = None) -> bool:
        return request.user.has_perm(VIEW_EXECUTION)  # a workflow run is a view of executions

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(VIEW_EXECUTION)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: WorkflowRun | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: WorkflowRun | None = None) -> bool:
        return False

    @admin.display(description="Workflow run", ordering="created_at")
    def graph_link(self, obj: WorkflowRun):
        return format_html('<a href="{}">{}</a>', reverse("console:workflow", args=[obj.pk]), obj.pk)

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None):
        # The graph page is the workflow run's page.
        return HttpResponseRedirect(reverse("console:workflow", args=[object_id]))
