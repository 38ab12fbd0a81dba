"""Suites in the admin: their hooks, their state on each worker host, each hook's runs, and clearing a failed host."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from executions.models import HookRun, SuiteHost, SuiteHostState
from taskhub.models import Suite


class SuiteHostInline(admin.TabularInline):
    model = SuiteHost
    fields = ("host_link", "state", "failures", "failure_type", "error", "updated_at")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    verbose_name_plural = "On worker hosts"

    @admin.display(description="Host")
    def host_link(self, obj: SuiteHost):
        return format_html('<a href="{}">{}</a>', reverse("admin:executions_suitehost_change", args=[obj.pk]), obj.host)


@admin.register(Suite)
class SuiteAdmin(admin.ModelAdmin):
    list_display = ("name", "description", "task_count")
    search_fields = ("name", "description")
    fields = ("name", "description", "provision", "background", "cleanup")
    inlines = (SuiteHostInline,)

    @admin.display(description="Tasks")
    def task_count(self, obj: Suite) -> int:
        return obj.tasks.count()


class HookRunInline(admin.TabularInline):
    model = HookRun
    fields = ("kind", "status", "exit_code", "signal", "error", "stdout", "stderr", "pid", "started_at", "finished_at")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    verbose_name_plural = "Hook runs (newest first)"


@admin.register(SuiteHost)
class SuiteHostAdmin(admin.ModelAdmin):
    list_display = ("suite", "host", "state", "failures", "failure_type", "updated_at")
    list_filter = ("state", "suite")
    readonly_fields = ("suite", "host", "state", "failures", "failure_type", "error", "background_pid", "updated_at")
    inlines = (HookRunInline,)
    actions = ("clear",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: SuiteHost | None = None) -> bool:
        return False  # the record of a host's failures stays; clearing is the action

    @admin.action(
        description="Clear the failed record: the host takes the suite's work again (provision runs again)",
        permissions=["change"],
    )
    def clear(self, request: HttpRequest, queryset: QuerySet[SuiteHost]) -> None:
        cleared = queryset.filter(state=SuiteHostState.FAILED).update(state=SuiteHostState.PENDING, error="")
        messages.success(request, f"{cleared} failed host record(s) cleared; their failure counts are kept.")
