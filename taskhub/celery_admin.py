"""TaskHub's admin for django-celery-beat's schedules and django-celery-results' records.

Both libraries register admins of their own, which TaskHub replaces here:

- A periodic task launches commands (``taskhub.launch_scheduled``, or any
  Celery task, which may wrap it), and a schedule decides how often. So
  adding, changing or deleting a periodic task or a schedule, and the
  changelist actions (run, enable, disable, toggle), need "Can run tasks"
  besides the model's own permission; django-celery-beat's actions need none.
- Every changelist filters only through the filters it offers (see
  taskhub.admin_lookups): periodic task arguments and task results are free
  text.
"""

from __future__ import annotations

import django_celery_beat.admin as beat_admin
import django_celery_results.admin as results_admin
from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import HttpRequest
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)
from django_celery_results.models import GroupResult, TaskResult

from taskhub.admin_lookups import OfferedFiltersOnly

# Importing the libraries' admin modules above registered their admins; these replace them.
for _model in (
    PeriodicTask,
    IntervalSchedule,
    CrontabSchedule,
    SolarSchedule,
    ClockedSchedule,
    TaskResult,
    GroupResult,
):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)


class RunTaskRequired(admin.ModelAdmin):
    """Adding, changing and deleting also need taskhub.run_task: each decides what runs, or when."""

    def may_run(self, request: HttpRequest) -> bool:
        return request.user.has_perm("taskhub.run_task")

    def has_add_permission(self, request: HttpRequest, *args) -> bool:
        return super().has_add_permission(request, *args) and self.may_run(request)

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return super().has_change_permission(request, obj) and self.may_run(request)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return super().has_delete_permission(request, obj) and self.may_run(request)


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(RunTaskRequired, OfferedFiltersOnly, beat_admin.PeriodicTaskAdmin):
    # django-celery-beat's actions, each now needing the change permission
    # (which RunTaskRequired ties to "Can run tasks").

    @admin.action(description="Enable selected periodic tasks", permissions=["change"])
    def enable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        super().enable_tasks(request, queryset)

    @admin.action(description="Disable selected periodic tasks", permissions=["change"])
    def disable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        super().disable_tasks(request, queryset)

    @admin.action(description="Toggle activity of selected periodic tasks", permissions=["change"])
    def toggle_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        super().toggle_tasks(request, queryset)

    @admin.action(description="Run selected periodic tasks now", permissions=["change"])
    def run_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        super().run_tasks(request, queryset)


@admin.register(IntervalSchedule)
class IntervalScheduleAdmin(RunTaskRequired, OfferedFiltersOnly, beat_admin.IntervalScheduleAdmin):
    pass


@admin.register(CrontabSchedule)
class CrontabScheduleAdmin(RunTaskRequired, OfferedFiltersOnly, beat_admin.CrontabScheduleAdmin):
    pass


@admin.register(SolarSchedule)
class SolarScheduleAdmin(RunTaskRequired, OfferedFiltersOnly, beat_admin.SolarScheduleAdmin):
    pass


@admin.register(ClockedSchedule)
class ClockedScheduleAdmin(RunTaskRequired, OfferedFiltersOnly, beat_admin.ClockedScheduleAdmin):
    pass


@admin.register(TaskResult)
class TaskResultAdmin(OfferedFiltersOnly, results_admin.TaskResultAdmin):
    pass


@admin.register(GroupResult)
class GroupResultAdmin(OfferedFiltersOnly, results_admin.GroupResultAdmin):
    pass
