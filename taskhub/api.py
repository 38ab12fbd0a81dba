"""REST API for tasks: CRUD plus `run`."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse

from executions.api import ExecutionReceiptSerializer, ExecutionSerializer, location_of
from executions.models import Trigger
from taskhub.durations import EXAMPLES, parse_duration
from taskhub.limits import ActiveRunLimitReached
from taskhub.links import cycle_error, set_downstream
from taskhub.models import Condition, Tag, Task, TaskDisabled
from taskhub.permissions import CanRunVisibleTask, ModelPermissions, can_see_executions, can_see_secrets
from taskhub.schedule_api import SchedulesField, SchedulesMixin
from taskhub.services import launch

# Longest command line the API accepts, characters.
COMMAND_MAX_CHARS = 65536


# Fields in whole seconds that also take a human form ("90s", "5m", "1h30m"); answers give seconds.
DURATION_FIELDS = ("timeout", "kill_grace", "retry_delay", "retry_delay_max", "cpu_limit_seconds", "wait_timeout")


@extend_schema_field({"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "example": "1h30m"}]})
class DurationField(serializers.IntegerField):
    """Whole seconds, given as a number or in human form; stored and answered as seconds."""

    def to_internal_value(self, data: object) -> int:
        try:
            seconds = parse_duration(data)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None
        return super().to_internal_value(seconds)


class TagNamesField(serializers.ListField):
    """A task's tags as a list of names; a name not used before makes a new tag."""

    child = serializers.SlugField(max_length=50)

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("max_length", 50)
        super().__init__(**kwargs)

    def to_representation(self, value) -> list[str]:
        return sorted(tag.name for tag in value.all())


class DownstreamLinkSerializer(serializers.Serializer):
    task = serializers.PrimaryKeyRelatedField(queryset=Task.objects.all(), help_text="The downstream task's id.")
    condition = serializers.ChoiceField(choices=Condition.choices, default=Condition.ON_SUCCESS)


class DownstreamField(serializers.ListField):
    """A task's downstream links: the tasks its runs launch when they end, each with its condition."""

    child = DownstreamLinkSerializer()

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("max_length", 100)
        super().__init__(source="downstream_links", **kwargs)

    def to_representation(self, value) -> list[dict]:
        return [{"task": link.downstream_id, "condition": link.condition} for link in value.all()]


def _set_tags(task: Task, names: list[str]) -> None:
    task.tags.set([Tag.objects.get_or_create(name=name)[0] for name in dict.fromkeys(names)])


def _set_links(task: Task, links: list[dict]) -> None:
    # PATCH is partial all the way down: a condition left out has no default applied.
    try:
        set_downstream(task, [(link["task"], link.get("condition", Condition.ON_SUCCESS)) for link in links])
    except DjangoValidationError as exc:  # a cycle closed by a concurrent edit since validate()
        raise serializers.ValidationError({"downstream": exc.messages}) from None
    # The answer reads them back: not the links prefetched before the change.
    getattr(task, "_prefetched_objects_cache", {}).pop("downstream_links", None)


class TaskSerializer(SchedulesMixin, serializers.ModelSerializer):
    schedules = SchedulesField(required=False)
    tags = TagNamesField(required=False, help_text='Labels, e.g. ["nightly", "billing"].')
    downstream = DownstreamField(
        required=False,
        help_text='Tasks launched when a run ends, e.g. [{"task": 7, "condition": "on_success"}]; '
        "conditions on_success, on_failure (after the last attempt), on_finish. Writing it replaces the list.",
    )

    class Meta:
        model = Task
        fields = [
            "id", "name", "description", "command", "shell", "env", "working_dir", "timeout", "kill_grace",
            "retry_count", "retry_delay", "retry_backoff", "retry_delay_max", "retry_jitter", "queue", "priority",
            "enabled", "success_exit_codes", "retry_exit_codes", "no_retry_exit_codes", "retry_on_timeout",
            "max_concurrency", "overlap_policy", "pause_after_exhausted", "paused_reason", "owner", "tags",
            "memory_limit_mb", "cpu_limit_seconds", "open_files_limit", "process_limit", "isolated", "resources",
            "keep_artifacts",
            "wait_for_task", "wait_for_status", "wait_timeout", "suite",
            "downstream", "created_at", "updated_at", "schedules",
        ]  # fmt: skip
        read_only_fields = ["created_at", "updated_at"]
        # Refused by length before validate() splits the command (shlex is slow on long words).
        extra_kwargs = {"command": {"max_length": COMMAND_MAX_CHARS}}

    def build_standard_field(self, field_name: str, model_field) -> tuple[type, dict]:
        field_class, kwargs = super().build_standard_field(field_name, model_field)
        if field_name in DURATION_FIELDS:
            kwargs["help_text"] = f"{kwargs.get('help_text', '')} Seconds, or a form such as {EXAMPLES}.".strip()
            return DurationField, kwargs
        return field_class, kwargs

    def validate(self, attrs: dict) -> dict:
        # The model's own clean() (command splitting, working directory) applies here as in the admin.
        instance = Task(
            **{
                **self._current_values(),
                **{k: v for k, v in attrs.items() if k not in ("schedules", "tags", "downstream_links")},
            }
        )
        try:
            instance.clean()
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        if "downstream_links" in attrs:
            self._check_downstream(attrs["downstream_links"])
        return attrs

    def _check_downstream(self, links: list[dict]) -> None:
        targets = [link["task"] for link in links]
        if len({t.pk for t in targets}) != len(targets):
            raise serializers.ValidationError({"downstream": "A task is listed twice; give each downstream task once."})
        if self.instance is not None:
            if any(t.pk == self.instance.pk for t in targets):
                raise serializers.ValidationError({"downstream": "A task cannot be its own downstream task."})
            error = cycle_error(self.instance, [t.pk for t in targets])
            if error:
                raise serializers.ValidationError({"downstream": error})

    @transaction.atomic
    def create(self, validated_data: dict) -> Task:
        names = validated_data.pop("tags", None)
        links = validated_data.pop("downstream_links", None)
        task = super().create(validated_data)
        if names is not None:
            _set_tags(task, names)
        if links is not None:
            _set_links(task, links)
        return task

    @transaction.atomic
    def update(self, instance: Task, validated_data: dict) -> Task:
        names = validated_data.pop("tags", None)
        links = validated_data.pop("downstream_links", None)
        task = super().update(instance, validated_data)
        if names is not None:
            _set_tags(task, names)
        if links is not None:
            _set_links(task, links)
        return task

    def _current_values(self) -> dict:
        if self.instance is None:
            return {}
        skip = ("id", "created_at", "updated_at", "schedules", "tags", "downstream")
        return {f: getattr(self.instance, f) for f in self.Meta.fields if f not in skip}

    def to_representation(self, instance: Task) -> dict:
        data = super().to_representation(instance)
        if not can_see_secrets(self.context.get("request")):
            # Values of env may be secrets: only people who may change the task see them.
            data["env"] = {name: "••••" for name in instance.env}
        return data


class TaskViewSet(viewsets.ModelViewSet):
    queryset = (
        Task.objects.all().order_by("name").prefetch_related("schedules__periodic_task", "tags", "downstream_links")
    )
    serializer_class = TaskSerializer
    permission_classes = [permissions.IsAuthenticated, ModelPermissions]
    filterset_fields = {"enabled": ["exact"], "queue": ["exact"], "name": ["exact"], "tags__name": ["exact"]}

    def get_success_headers(self, data: dict) -> dict[str, str]:
        # A 201 says where the new task is.
        return {"Location": reverse("task-detail", args=[data["id"]], request=self.request)}

    def destroy(self, request: Request, *args: object, **kwargs: object) -> Response:
        """Delete a task, refused (409) exactly when the admin refuses it (Task.deletion_blocker)."""
        task = self.get_object()
        with transaction.atomic():
            # Locked so that no execution can be added between the check and the delete.
            locked = Task.objects.select_for_update().get(pk=task.pk)
            blocker = locked.deletion_blocker()
            if blocker is None:
                locked.delete()
        if blocker is not None:
            return Response(
                {"detail": f"Task {task.name!r} cannot be deleted: {blocker}."}, status=status.HTTP_409_CONFLICT
            )
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        request=None,
        responses={
            202: OpenApiResponse(
                ExecutionSerializer,
                description="The pending execution; only its id, status and url for users who may not view executions.",
            ),
            409: None,
            429: OpenApiResponse(description="Over the user's limit of active runs; nothing was created."),
        },
    )
    @action(detail=True, methods=["post"], permission_classes=[permissions.IsAuthenticated, CanRunVisibleTask])
    def run(self, request: Request, pk: str | None = None) -> Response:
        task = self.get_object()
        try:
            execution = launch(task, trigger=Trigger.API, user=request.user)
        except TaskDisabled as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        except ActiveRunLimitReached as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_429_TOO_MANY_REQUESTS)
        # The answer says no more than the user may see.
        serializer_class = ExecutionSerializer if can_see_executions(request) else ExecutionReceiptSerializer
        return Response(
            serializer_class(execution, context={"request": request}).data,
            status=status.HTTP_202_ACCEPTED,
            headers=location_of(request, execution),
        )
