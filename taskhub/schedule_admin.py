"""The schedules inline of the task page: validated like the API, with the next five fire times."""

from __future__ import annotations

import zoneinfo

from django import forms
from django.conf import settings
from django.contrib import admin
from django.db.models import Model
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from taskhub.models import Schedule, ScheduleKind, Task
from taskhub.schedules import (
    ScheduleError,
    create_schedule,
    delete_schedule,
    describe,
    next_fire_times,
    parse_schedule,
    update_schedule,
)

# Which form field a ScheduleError's key belongs to.
FORM_FIELDS = {"cron": "expression", "every": "expression", "at": "expression", "schedule": "expression"}


class ScheduleForm(forms.ModelForm):
    class Meta:
        model = Schedule
        fields = ("kind", "expression", "timezone", "misfire", "enabled")
        widgets = {"expression": forms.TextInput(attrs={"size": 24}), "timezone": forms.TextInput(attrs={"size": 16})}

    def clean(self) -> dict:
        data = super().clean()
        if self.errors or not data.get("kind"):
            return data
        human = {data["kind"]: data.get("expression", ""), "misfire": data.get("misfire"), "enabled": data["enabled"]}
        if data.get("timezone"):
            human["timezone"] = data["timezone"]
        try:
            self.spec = parse_schedule(human)
        except ScheduleError as exc:
            self.add_error(FORM_FIELDS.get(exc.field, exc.field), exc.message)
        else:
            data["expression"] = self.spec.expression
        return data


class OptionalInlineFormSet(BaseInlineFormSet):
    """An inline that a task form may be posted without (a script, a page from before it): then it changes nothing."""

    def __init__(self, data=None, *args, prefix: str | None = None, **kwargs) -> None:
        total = f"{prefix or self.get_default_prefix()}-TOTAL_FORMS"
        if data is not None and total not in data:
            data = data.copy()
            data[total] = data[total.replace("TOTAL", "INITIAL")] = "0"
        super().__init__(data, *args, prefix=prefix, **kwargs)


class ScheduleFormSet(OptionalInlineFormSet):
    """Saves through taskhub.schedules, which keeps each schedule's beat row with it."""

    def save_new(self, form: ScheduleForm, commit: bool = True) -> Schedule:
        return create_schedule(self.instance, form.spec)

    def save_existing(self, form: ScheduleForm, obj: Schedule, commit: bool = True) -> Schedule:
        return update_schedule(obj, form.spec)

    def delete_existing(self, obj: Schedule, commit: bool = True) -> None:
        if commit:
            delete_schedule(obj)


class ScheduleInline(admin.TabularInline):
    model = Schedule
    form = ScheduleForm
    formset = ScheduleFormSet
    extra = 0
    fields = ("kind", "expression", "timezone", "misfire", "enabled", "in_words", "next_fires")
    readonly_fields = ("in_words", "next_fires")
    verbose_name_plural = "Schedules"

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).select_related("periodic_task", "task")

    @admin.display(description="In words")
    def in_words(self, obj: Schedule) -> str:
        return describe(obj) if obj.pk else "—"

    @admin.display(description="Next five fire times")
    def next_fires(self, obj: Schedule):
        if not obj.pk:
            return "—"
        here = zoneinfo.ZoneInfo(obj.timezone or settings.TIME_ZONE)
        operator = zoneinfo.ZoneInfo(settings.TIME_ZONE)
        fires = next_fire_times(obj, 5)
        if not fires:
            return "none: it will not fire again"
        if here == operator or obj.kind != ScheduleKind.CRON:
            rows = ((f"{fire.astimezone(operator):%Y-%m-%d %H:%M:%S %Z}",) for fire in fires)
            return format_html("<ul style='margin:0'>{}</ul>", format_html_join("", "<li>{}</li>", rows))
        rows = (
            (f"{fire.astimezone(here):%Y-%m-%d %H:%M %Z}", f"{fire.astimezone(operator):%Y-%m-%d %H:%M %Z}")
            for fire in fires
        )
        return format_html(
            "<ul style='margin:0'>{}</ul>", format_html_join("", "<li>{} <small>({})</small></li>", rows)
        )

    # A schedule decides when a command runs: editing one needs the right to
    # change the task and the right to run it.
    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return request.user.has_perm("taskhub.view_task") or request.user.has_perm("taskhub.change_task")

    def _may_edit(self, request: HttpRequest) -> bool:
        return request.user.has_perms(("taskhub.change_task", "taskhub.run_task"))

    def has_add_permission(self, request: HttpRequest, obj: Task | None = None) -> bool:
        return self._may_edit(request)

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return self._may_edit(request)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return self._may_edit(request)
