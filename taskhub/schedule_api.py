"""The ``schedules`` field of the API's task: human forms in, human forms out; PATCH replaces the list."""

from __future__ import annotations

from django.db import transaction
from drf_spectacular.utils import extend_schema_field
from rest_framework import exceptions, serializers

from taskhub.models import Task
from taskhub.schedules import ScheduleError, ScheduleSpec, parse_schedule, replace_schedules, to_human

# More schedules than any task needs; keeps one request from making thousands of beat rows.
SCHEDULES_MAX = 50

SCHEDULE_SCHEMA = {
    "type": "object",
    "description": 'One of {"cron": "30 2 * * *", "timezone": "Europe/Berlin"}, {"every": "90s"} or '
    '{"at": "2027-01-01T02:00:00+01:00"}, with optional "misfire" ("run_once" or "skip") and "enabled". '
    "id, description and next_fire_time are shown, and ignored when sent back.",
    "properties": {
        "id": {"type": "integer", "readOnly": True},
        "cron": {"type": "string", "example": "30 2 * * *"},
        "every": {"type": "string", "example": "90s"},
        "at": {"type": "string", "format": "date-time"},
        "timezone": {"type": "string", "example": "Europe/Berlin"},
        "misfire": {"type": "string", "enum": ["run_once", "skip"]},
        "enabled": {"type": "boolean"},
        "description": {"type": "string", "readOnly": True},
        "next_fire_time": {"type": "string", "format": "date-time", "nullable": True, "readOnly": True},
    },
}


@extend_schema_field({"type": "array", "items": SCHEDULE_SCHEMA})
class SchedulesField(serializers.Field):
    """A task's schedules as a list of human forms."""

    def to_representation(self, value) -> list[dict[str, object]]:
        return [to_human(schedule) for schedule in value.all()]

    def get_attribute(self, instance: Task):
        return instance.schedules

    def to_internal_value(self, data: object) -> list[ScheduleSpec]:
        if not isinstance(data, list):
            raise serializers.ValidationError('Expected a list of schedules, e.g. [{"every": "5m"}].')
        if len(data) > SCHEDULES_MAX:
            raise serializers.ValidationError(f"At most {SCHEDULES_MAX} schedules per task (got {len(data)}).")
        specs: list[ScheduleSpec] = []
        errors: dict[int, dict[str, list[str]]] = {}
        for index, item in enumerate(data):
            try:
                specs.append(parse_schedule(item))
            except ScheduleError as exc:
                errors[index] = {exc.field: [f"Schedule {index + 1}: {exc.message}"]}
        if errors:
            raise serializers.ValidationError(errors)
        return specs


class SchedulesMixin(serializers.Serializer):
    """For the task serializer: saves ``schedules`` with the task; changing them needs "Can run tasks"."""

    def validate_schedules(self, specs: list[ScheduleSpec]) -> list[ScheduleSpec]:
        request = self.context.get("request")
        if self.instance is not None and _unchanged(self.instance, specs):
            return specs
        if request is not None and not request.user.has_perm("taskhub.run_task"):
            # A schedule decides when a command runs: the same right as running it.
            raise exceptions.PermissionDenied("Creating, changing or deleting schedules needs “Can run tasks”.")
        return specs

    def create(self, validated_data: dict) -> Task:
        specs = validated_data.pop("schedules", None)
        with transaction.atomic():
            task = super().create(validated_data)
            if specs:
                replace_schedules(task, specs)
        return task

    def update(self, instance: Task, validated_data: dict) -> Task:
        specs = validated_data.pop("schedules", None)
        with transaction.atomic():
            task = super().update(instance, validated_data)
            if specs is not None and not _unchanged(task, specs):
                replace_schedules(task, specs)
        return task


def _unchanged(task: Task, specs: list[ScheduleSpec]) -> bool:
    current = list(task.schedules.order_by("pk"))
    return len(current) == len(specs) and all(
        spec.same_definition(s) and (spec.misfire, spec.enabled) == (s.misfire, s.enabled)
        for spec, s in zip(specs, current, strict=True)
    )
