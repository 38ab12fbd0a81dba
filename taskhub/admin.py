from __future__ import annotations

import json
from datetime import datetime

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.text import Truncator
from django.utils.timezone import now

import taskhub.celery_admin  # noqa: F401  (replaces django-celery-beat's and -results' admins)
import taskhub.suite_admin  # noqa: F401  (suites and their state on worker hosts)
from executions import console
from executions.models import Status, TaskExecution, Trigger
from taskhub import schedules
from taskhub.admin_lookups import OfferedFiltersOnly
from taskhub.limits import ActiveRunLimitReached
from taskhub.link_admin import DownstreamInline
from taskhub.models import TIMEOUT_MAX, Tag, Task, TaskDisabled, validate_env
from taskhub.schedule_admin import ScheduleInline
from taskhub.services import launch

# The console's lists are wide: the page's width goes to them, not to a menu the breadcrumbs already give.
admin.site.enable_nav_sidebar = False

STATUS_LABELS = dict(Status.choices)
STATUS_COLOURS = {
    "pending": "#6c757d",
    "running": "#0d6efd",
    "succeeded": "#198754",
    "failed": "#dc3545",
    "timeout": "#fd7e14",
    "cancelled": "#6c757d",
    "lost": "#6f42c1",
    "skipped": "#adb5bd",
}


def status_badge(status: str, label: str | None = None):
    return format_html(
        '<span class="th-badge" data-status="{}" style="color:#fff;background:{};border-radius:3px;'
        'padding:1px 6px;white-space:nowrap">{}</span>',
        status,
        STATUS_COLOURS.get(status, "#6c757d"),
        label or status,
    )


def masked_env(env: dict[str, str]) -> str:
    """Show variable names with their values hidden (for people who cannot change the task)."""
    return json.dumps({name: "••••" for name in env}, indent=2)


def can_run(request: HttpRequest, view_perm: str = "taskhub.view_task") -> bool:
    """Whether the user may run, cancel or run again: “Can run tasks”, plus seeing what they act on."""
    return request.user.has_perms(("taskhub.run_task", view_perm))


def ago(when: datetime | None, at: datetime | None = None):
    """A relative time ("3 min ago") with the exact time on hover."""
    if when is None:
        return "—"
    return format_html('<time datetime="{}" title="{}">{}</time>', when.isoformat(), when, console.ago_words(when, at))


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


class TaskForm(forms.ModelForm):
    """The task form, whose range and required-field errors name the field (they show above it, but also in lists)."""

    class Meta:
        model = Task
        fields = "__all__"  # noqa: DJ007  (the admin narrows it to its fieldsets)
        error_messages = {"command": {"required": "Enter a command to run."}}
        # Short lists of numbers: one line each, not a text area.
        widgets = {
            name: forms.TextInput(attrs={"size": 24, "placeholder": "[0]" if name == "success_exit_codes" else "[]"})
            for name in ("success_exit_codes", "retry_exit_codes", "no_retry_exit_codes")
        } | {"env": forms.Textarea(attrs={"rows": 4, "cols": 60})}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name, field in self.fields.items():
            for validator in Task._meta.get_field(name).validators if name in _BOUNDED else ():
                # The form field checks its own bounds first, with a message that names neither field nor range.
                if isinstance(validator, (MinValueValidator, MaxValueValidator)):
                    field.error_messages[validator.code] = validator.message


_BOUNDED = ("timeout", "kill_grace", "retry_count", "retry_delay", "retry_delay_max", "retry_backoff", "priority")


class RecentExecutionInline(admin.TabularInline):
    model = TaskExecution
    fk_name = "task"
    verbose_name_plural = "Recent executions"
    fields = ("link", "attempt", "status_display", "trigger", "started", "duration", "exit_code")
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

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.display(description="Execution")
    def link(self, obj: TaskExecution):
        return format_html(
            '<a href="{}">#{}</a>', reverse("admin:executions_taskexecution_change", args=[obj.pk]), obj.pk
        )

    @admin.display(description="Status")
    def status_display(self, obj: TaskExecution):
        return status_badge(obj.status, obj.get_status_display())

    @admin.display(description="Started")
    def started(self, obj: TaskExecution):
        return ago(obj.started_at)

    @admin.display(description="Duration")
    def duration(self, obj: TaskExecution) -> str:
        return console.duration_words(obj.duration)


# -- the task list's columns -------------------------------------------------------------------


def schedules_by_task(task_ids: list[int]) -> dict[int, list]:
    """The beat schedules that launch each task (kwargs {"task_id": N}): one query for the page."""
    from django_celery_beat.models import PeriodicTask

    wanted = set(task_ids)
    found: dict[int, list] = {pk: [] for pk in task_ids}
    rows = PeriodicTask.objects.filter(task="taskhub.launch_scheduled").select_related(
        "interval", "crontab", "solar", "clocked"
    )
    for row in rows:
        try:
            task_id = json.loads(row.kwargs or "{}").get("task_id")
        except (ValueError, AttributeError):
            continue
        if task_id in wanted:
            found[task_id].append(row)
    return found


class TaskChangeList(ChangeList):
    """The changelist, with each listed task's recent history read in a fixed number of queries."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        self.result_list = list(self.result_list)
        ids = [task.pk for task in self.result_list]
        at = now()
        stats = console.task_stats(ids, at=at)
        by_task = schedules_by_task(ids)
        for task in self.result_list:
            task.console_stats = stats.get(task.pk, console.TaskStats())
            task.console_schedules = by_task.get(task.pk, [])
            task.console_at = at


class LastOutcomeFilter(admin.SimpleListFilter):
    title = "last outcome"
    parameter_name = "last_outcome"

    def lookups(self, request, model_admin):
        return [*Status.choices, ("never", "Never ran")]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        # One index probe of execution_task_recent_idx per task: tasks are few, executions many.
        latest = TaskExecution.objects.filter(task=OuterRef("pk")).order_by("-id").values("status")[:1]
        queryset = queryset.annotate(last_status=Subquery(latest))
        if value == "never":
            return queryset.filter(last_status__isnull=True)
        return queryset.filter(last_status=value)


class RunOverridesForm(forms.Form):
    """A one-off run: the task as it is, with some environment variables and the timeout changed for this run."""

    env = forms.JSONField(
        label="Extra environment for this run",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60, "placeholder": '{"LOG_LEVEL": "debug"}'}),
        help_text="A JSON object; these variables are added to the task's own (same names replace theirs).",
    )
    timeout = forms.IntegerField(
        label="Timeout for this run (seconds)",
        required=False,
        help_text="Empty keeps the task's timeout.",
    )

    def clean_env(self) -> dict[str, str]:
        env = self.cleaned_data.get("env")
        if env in (None, ""):
            return {}
        try:
            validate_env(env)
        except ValidationError as exc:
            raise ValidationError([f"Extra environment: {m}" for m in exc.messages]) from None
        return env

    def clean_timeout(self) -> int | None:
        timeout = self.cleaned_data.get("timeout")
        if timeout is not None and not 1 <= timeout <= TIMEOUT_MAX:
            raise ValidationError(f"Timeout must be between 1 and {TIMEOUT_MAX} seconds (7 days).")
        return timeout

    def overrides(self, task: Task) -> dict[str, object] | None:
        changed: dict[str, object] = {}
        if self.cleaned_data["env"]:
            changed["env"] = {**task.env, **self.cleaned_data["env"]}
        if self.cleaned_data["timeout"] is not None:
            changed["timeout"] = self.cleaned_data["timeout"]
        return changed or None


def launch_by_hand(
    request: HttpRequest, task: Task, *, overrides: dict[str, object] | None = None
) -> TaskExecution | None:
    """Launch ``task`` for the user behind ``request``; say why in a message and return None when it is refused.

    Every way the admin starts a task goes through here (the row and page
    buttons, the override form, the "Run now" action).
    """
    try:
        return launch(task, trigger=Trigger.MANUAL, user=request.user, overrides=overrides)
    except TaskDisabled:
        messages.warning(request, f"Not started, disabled: {task.name}. Enable it first.")
    except ActiveRunLimitReached as exc:
        messages.warning(request, f"Not started: {task.name}: {exc}")
    except ValueError as exc:
        messages.error(request, f"Not started: {task.name}: {exc}")
    return None


def retry_policy_words(task: Task) -> str:
    """The retry policy in a sentence: "3 retries: after 60 s, then ×2, at most 1 h"."""
    n = task.retry_count
    if n == 0:
        words = "No retries: one attempt only"
    else:
        words = f"{n} retr{'y' if n == 1 else 'ies'}: after {console.seconds_words(task.retry_delay)}"
        if n > 1:
            words += f", then ×{task.retry_backoff:g}" if task.retry_backoff != 1 else " each"
        if task.retry_backoff != 1 or task.retry_delay > task.retry_delay_max:
            words += f", at most {console.seconds_words(task.retry_delay_max)}"
        if task.retry_jitter:
            words += " (each drawn at random up to that)"
    words += "."
    if n:
        if task.retry_exit_codes:
            words += f" Retried only on exit codes {', '.join(map(str, task.retry_exit_codes))}"
        else:
            words += " Retried on any failure"
        if task.no_retry_exit_codes:
            words += f", never on {', '.join(map(str, task.no_retry_exit_codes))}"
        words += "; timeouts " + ("too." if task.retry_on_timeout else "are not retried.")
    if task.success_exit_codes != [0]:
        words += f" Success means exit code {' or '.join(map(str, task.success_exit_codes))}."
    return words


@admin.register(Task)
class TaskAdmin(OfferedFiltersOnly, admin.ModelAdmin):
    list_display = (
        "name",
        "command_short",
        "schedule_display",
        "last_outcome",
        "recent_strip",
        "success_rate",
        "p50_display",
        "enabled_toggle",
        "run_button",
    )
    list_filter = ("enabled", "queue", LastOutcomeFilter, "tags", "shell")
    search_fields = ("name", "command", "description")
    list_per_page = 50
    actions = ("run_now", "enable", "disable", "duplicate", "delete_selected")
    inlines = (ScheduleInline, DownstreamInline, RecentExecutionInline)
    form = TaskForm
    formfield_overrides = {models.JSONField: {"form_class": EnvField}}
    readonly_fields = ("created_at", "updated_at", "retry_policy")
    change_list_template = "admin/taskhub/task/change_list.html"
    change_form_template = "admin/taskhub/task/change_form.html"
    fieldsets = (
        (None, {"fields": ("name", "description", "enabled", "tags")}),
        ("Command", {"fields": ("command", "shell", "env", "working_dir", "resources", "keep_artifacts")}),
        (
            "Limits",
            {
                "fields": (
                    "timeout",
                    "kill_grace",
                    "memory_limit_mb",
                    "cpu_limit_seconds",
                    "open_files_limit",
                    "process_limit",
                    "isolated",
                )
            },
        ),
        (
            "Retries",
            {
                "fields": (
                    "retry_policy",
                    "retry_count",
                    "retry_delay",
                    "retry_backoff",
                    "retry_delay_max",
                    "retry_jitter",
                    "success_exit_codes",
                    "retry_exit_codes",
                    "no_retry_exit_codes",
                    "retry_on_timeout",
                )
            },
        ),
        ("Concurrency", {"fields": ("max_concurrency", "overlap_policy", "pause_after_exhausted", "owner")}),
        ("Workflow", {"fields": ("suite", "wait_for_task", "wait_for_status", "wait_timeout")}),
        ("Routing", {"fields": ("queue", "priority")}),
        ("History", {"fields": ("created_at", "updated_at"), "classes": ("collapse",)}),
    )
    raw_id_fields = ("owner",)
    autocomplete_fields = ("wait_for_task",)
    filter_horizontal = ("tags",)

    class Media:
        css = {"all": ("taskhub/console.css",)}

    def get_changelist(self, request: HttpRequest, **kwargs):
        return TaskChangeList

    def get_list_display(self, request: HttpRequest):
        shown = list(super().get_list_display(request))
        if not can_run(request):
            shown.remove("run_button")
        if not self.has_change_permission(request):
            # A button that answers 403 is no use: show the state only.
            shown[shown.index("enabled_toggle")] = "enabled"
        return shown

    def get_urls(self):
        own = [
            path("<path:object_id>/run/", self.admin_site.admin_view(self.run_view), name="taskhub_task_run"),
            path("<path:object_id>/toggle/", self.admin_site.admin_view(self.toggle_view), name="taskhub_task_toggle"),
        ]
        return own + super().get_urls()

    # -- columns

    @admin.display(description="Command")
    def command_short(self, obj: Task):
        return format_html('<code title="{}">{}</code>', obj.command, Truncator(obj.command).chars(32))

    @admin.display(description="Schedule · next")
    def schedule_display(self, obj: Task):
        rows = getattr(obj, "console_schedules", [])
        if not rows:
            return "—"
        parts = []
        for row in rows[:2]:
            nxt = schedules.next_fire_time(row, getattr(obj, "console_at", None))
            when = ago(nxt, obj.console_at) if nxt else ("paused" if obj.paused_reason else "off")
            parts.append((schedules.describe(row), when))
        more = f" (+{len(rows) - 2})" if len(rows) > 2 else ""
        return format_html("{}{}", format_html_join(mark_safe("<br>"), "{} · next {}", parts), more)

    @admin.display(description="Last outcome")
    def last_outcome(self, obj: Task):
        stats = getattr(obj, "console_stats", None)
        last = stats.last_outcome if stats else None
        if last is None:
            return mark_safe('<span class="th-muted">never ran</span>')
        when = last.finished_at or last.started_at or last.created_at
        return format_html("{} {}", status_badge(last.status, last.get_status_display()), ago(when, obj.console_at))

    @admin.display(description="Last 20")
    def recent_strip(self, obj: Task):
        stats = getattr(obj, "console_stats", None)
        if not stats or not stats.recent:
            return mark_safe('<span class="th-strip"></span>')
        # One reverse() per row, not per square: a page of 50 tasks has 1,000 squares.
        change_url = reverse("admin:executions_taskexecution_change", args=[987654321]).replace("987654321", "{}")
        squares = format_html_join(
            "",
            '<a class="th-sq" href="{}" title="{}" style="background:{}"></a>',
            (
                (
                    change_url.format(e.pk),
                    f"#{e.pk} {STATUS_LABELS[e.status]} · attempt {e.attempt} · {console.duration_words(e.duration)}",
                    STATUS_COLOURS.get(e.status, "#6c757d"),
                )
                for e in reversed(stats.recent)  # oldest left, newest right, as a timeline reads
            ),
        )
        return format_html('<span class="th-strip">{}</span>', squares)

    @admin.display(description="Success 7 d")
    def success_rate(self, obj: Task):
        stats = getattr(obj, "console_stats", None)
        rate = stats.success_rate if stats else None
        if rate is None:
            return "—"
        return format_html(
            '<span title="{} of {} finished runs succeeded in 7 days (cancelled and skipped not counted)">{}%</span>',
            stats.succeeded,
            stats.rated,
            round(rate * 100),
        )

    @admin.display(description="p50 7 d")
    def p50_display(self, obj: Task) -> str:
        stats = getattr(obj, "console_stats", None)
        return console.seconds_short(stats.p50) if stats and stats.p50 is not None else "—"

    @admin.display(description="Enabled", ordering="enabled")
    def enabled_toggle(self, obj: Task):
        label = "on" if obj.enabled else "off"
        return format_html(
            '<button type="submit" form="th-row-action" formaction="{}" class="th-toggle th-{}" '
            'title="Click to {} this task">{}</button>',
            reverse("admin:taskhub_task_toggle", args=[obj.pk]),
            label,
            "disable" if obj.enabled else "enable",
            label,
        )

    @admin.display(description="")
    def run_button(self, obj: Task):
        return format_html(
            '<button type="submit" form="th-row-action" formaction="{}" class="th-run" {}>Run</button>',
            reverse("admin:taskhub_task_run", args=[obj.pk]),
            "" if obj.enabled else format_html('disabled title="{}"', "Disabled: enable it to run it"),
        )

    @admin.display(description="Retry policy")
    def retry_policy(self, obj: Task) -> str:
        return retry_policy_words(obj) if obj.pk else "—"

    # -- pages

    def _task_or_404(self, request: HttpRequest, object_id: str) -> Task:
        task = self.get_object(request, unquote(object_id))
        if task is None:
            from django.http import Http404

            raise Http404(f"No task with id {object_id!r}.")
        return task

    def run_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Run a task now: POST runs it (with the form's one-off overrides, if any); GET shows the override form."""
        if not can_run(request):
            raise PermissionDenied("Running a task needs the “Can run tasks” and “Can view task” permissions.")
        task = self._task_or_404(request, object_id)
        form = RunOverridesForm(request.POST if request.method == "POST" else None)
        may_override = self.has_change_permission(request, task)
        if request.method == "POST" and form.is_valid():
            overrides = form.overrides(task)
            if overrides and not may_override:
                # An extra variable (LD_PRELOAD, PATH) changes what runs as much as an edit of the task does.
                raise PermissionDenied("Overriding the environment or timeout of a run needs “Can change task”.")
            execution = launch_by_hand(request, task, overrides=overrides)
            if execution is None or request.POST.get("then") == "list":
                if execution is not None:
                    self._started_message(request, task, execution)
                return HttpResponseRedirect(reverse("admin:taskhub_task_changelist"))
            self.message_user(request, f"Started {task.name}.", messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:executions_taskexecution_change", args=[execution.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Run {task.name}",
            "task": task,
            "form": form,
            "opts": self.opts,
            "original": task,
            "timeout": task.timeout,
            "env_names": ", ".join(sorted(task.env)) or "none",
            "may_override": may_override,
        }
        return TemplateResponse(request, "admin/taskhub/task/run.html", context)

    def _started_message(self, request: HttpRequest, task: Task, execution: TaskExecution) -> None:
        url = reverse("admin:executions_taskexecution_change", args=[execution.pk])
        self.message_user(
            request, format_html('Started {}: <a href="{}">execution #{}</a>.', task.name, url, execution.pk)
        )

    def toggle_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        task = self._task_or_404(request, object_id)
        if request.method != "POST" or not self.has_change_permission(request, task):
            raise PermissionDenied("Enabling or disabling a task needs the “Can change task” permission.")
        Task.objects.filter(pk=task.pk).update(enabled=not task.enabled)
        state = "disabled" if task.enabled else "enabled"
        self.log_change(request, task, f"{state.capitalize()} from the task list.")
        self.message_user(request, f"{task.name} {state}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:taskhub_task_changelist"))

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        context["can_run"] = obj is not None and can_run(request)
        context["can_override"] = context["can_run"] and self.has_change_permission(request, obj)
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)

    # -- the form

    def get_readonly_fields(self, request: HttpRequest, obj: Task | None = None):
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and not self.has_change_permission(request, obj):
            fields.append("env_masked")
        return fields

    def get_fieldsets(self, request: HttpRequest, obj: Task | None = None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None:
            # A new task has no policy to restate yet.
            fieldsets = [
                (title, {**opts, "fields": tuple(f for f in opts["fields"] if f != "retry_policy")})
                for title, opts in fieldsets
            ]
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

    # -- actions

    @admin.action(description="Run selected tasks now", permissions=["run"])
    def run_now(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        started = [task.name for task in queryset if launch_by_hand(request, task) is not None]
        if started:
            self.message_user(request, f"Started {len(started)} task(s): {', '.join(started)}.", messages.SUCCESS)

    def has_run_permission(self, request: HttpRequest) -> bool:
        return can_run(request)

    @admin.action(description="Enable selected tasks", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        count = queryset.update(enabled=True)
        self.message_user(request, f"Enabled {count} task(s).", messages.SUCCESS)

    @admin.action(description="Disable selected tasks", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        count = queryset.update(enabled=False)
        self.message_user(request, f"Disabled {count} task(s).", messages.SUCCESS)

    @admin.action(description="Duplicate selected tasks (copies start disabled)", permissions=["add"])
    def duplicate(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        taken = set(Task.objects.values_list("name", flat=True))
        copies = []
        for task in queryset:
            copy = Task.objects.get(pk=task.pk)
            copy.pk = None
            copy.name = _free_name(f"{task.name[:180]} (copy)", taken)
            # A copy runs nothing until someone looks at it: two identical jobs would do the work twice.
            copy.enabled = False
            copy.paused_reason = ""
            copy.save()
            taken.add(copy.name)
            copies.append(copy.name)
        self.message_user(
            request, f"Copied {len(copies)} task(s), disabled until enabled: {', '.join(copies)}.", messages.SUCCESS
        )

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


def _free_name(wanted: str, taken: set[str]) -> str:
    name, n = wanted, 2
    while name in taken:
        name = f"{wanted[:-1]} {n})"
        n += 1
    return name


@admin.register(Tag)
class TagAdmin(OfferedFiltersOnly, admin.ModelAdmin):
    search_fields = ("name",)
