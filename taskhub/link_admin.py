"""The task page's "Downstream tasks" inline: the tasks a run of this task launches when it ends."""

from __future__ import annotations

from django.contrib import admin
from django.core.exceptions import ValidationError

from taskhub.links import cycle_error
from taskhub.models import TaskLink
from taskhub.schedule_admin import OptionalInlineFormSet


class DownstreamFormSet(OptionalInlineFormSet):
    """Refuses links that would close a cycle, naming its path, before anything is saved."""

    def clean(self) -> None:
        super().clean()
        if any(self.errors) or self.instance.pk is None:
            return  # a new task: nothing links to it yet, so it closes no cycle
        kept = [
            form.cleaned_data["downstream"]
            for form in self.forms
            if form.cleaned_data.get("downstream") is not None and not form.cleaned_data.get("DELETE")
        ]
        # Links the form does not show (none today) stay as they are.
        error = cycle_error(self.instance, [task.pk for task in kept])
        if error:
            raise ValidationError(error)


class DownstreamInline(admin.TabularInline):
    model = TaskLink
    fk_name = "upstream"
    formset = DownstreamFormSet
    fields = ("downstream", "condition")
    autocomplete_fields = ("downstream",)
    extra = 0
    verbose_name = "downstream task"
    verbose_name_plural = "Downstream tasks (launched when a run of this task ends; on failure: after its last attempt)"
