"""REST API for executions: read, filter, cancel, retry."""

from __future__ import annotations

import re
from urllib.parse import quote

from django.db.models import Func, IntegerField, QuerySet
from django.db.models.functions import Right
from django.http import Http404, HttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, pagination, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse

from executions.lifecycle import RetryRefused, retry_run, run_again
from executions.models import Artifact, InvalidTransition, TaskExecution, Trigger
from taskhub.models import TaskDisabled
from taskhub.permissions import CanActOnVisibleExecution, ModelPermissions, can_see_secrets

# The list shows each stream's last line, cut to its last TAIL_CHARS characters,
# read from the stream's last TAIL_SOURCE_CHARS characters (trailing blank lines
# included) so that a page of rows never loads whole outputs.
TAIL_CHARS = 200
TAIL_SOURCE_CHARS = 4096
LINE_BREAK = re.compile(r"[\r\n]")


def location_of(request: Request, execution: TaskExecution) -> dict[str, str]:
    """Return the Location header of a 201/202 answer about ``execution``: its detail's URL."""
    return {"Location": reverse("execution-detail", args=[execution.pk], request=request)}


class ExecutionSerializer(serializers.ModelSerializer):
    task_name = serializers.CharField(source="task.name", read_only=True)
    duration = serializers.SerializerMethodField(help_text="Seconds from start to finish (or to now while running).")

    class Meta:
        model = TaskExecution
        fields = [
            "id", "task", "task_name", "run_id", "attempt", "status", "trigger", "triggered_by", "scheduled_for",
            "enqueued_at", "started_at", "finished_at", "duration", "exit_code", "signal", "stdout", "stderr",
            "output_truncated", "error", "worker", "pid", "celery_task_id", "heartbeat_at", "cancel_requested_at",
            "max_rss_kb", "cpu_user", "cpu_system", "created_at", "handed_back",
            "command", "shell", "argv", "working_dir", "env", "timeout", "kill_grace",
            "workflow_run", "upstream_execution",
        ]  # fmt: skip
        read_only_fields = fields

    def get_duration(self, obj: TaskExecution) -> float | None:
        duration = obj.duration
        return None if duration is None else duration.total_seconds()

    def to_representation(self, instance: TaskExecution) -> dict:
        data = super().to_representation(instance)
        if data.get("env") and not can_see_secrets(self.context.get("request")):
            # What ran, as the task's own page shows it: values only for people who may change tasks.
            data["env"] = {name: "••••" for name in data["env"]}
        return data


class OctetLength(Func):
    """Size of a text in bytes (as stored, UTF-8), not characters."""

    function = "OCTET_LENGTH"
    output_field = IntegerField()

    def as_sqlite(self, compiler, connection, **extra_context):
        return self.as_sql(compiler, connection, template="LENGTH(CAST(%(expressions)s AS BLOB))", **extra_context)


def last_line(text: str) -> str:
    """Return the last non-blank line of ``text``, at most TAIL_CHARS characters (its end)."""
    return LINE_BREAK.split(text.rstrip())[-1][-TAIL_CHARS:]


def with_output_summary(queryset: QuerySet) -> QuerySet:
    """Load each stream's end and size instead of the stream itself."""
    return queryset.defer("stdout", "stderr").annotate(
        stdout_end=Right("stdout", TAIL_SOURCE_CHARS),
        stderr_end=Right("stderr", TAIL_SOURCE_CHARS),
        stdout_size=OctetLength("stdout"),
        stderr_size=OctetLength("stderr"),
    )


def summary_fields(fields: list[str]) -> list[str]:
    """The detail's fields with each output stream replaced by its tail and size."""
    replaced = {"stdout": ["stdout_tail", "stdout_bytes"], "stderr": ["stderr_tail", "stderr_bytes"]}
    return [name for field in fields for name in replaced.get(field, [field])]


class ExecutionSummarySerializer(ExecutionSerializer):
    """A row of the execution list: every field of the detail, but the output only as its last line and size."""

    stdout_tail = serializers.SerializerMethodField(help_text=f"Last line of stdout (at most {TAIL_CHARS} characters).")
    stderr_tail = serializers.SerializerMethodField(help_text=f"Last line of stderr (at most {TAIL_CHARS} characters).")
    stdout_bytes = serializers.SerializerMethodField(help_text="Size of the captured stdout, bytes.")
    stderr_bytes = serializers.SerializerMethodField(help_text="Size of the captured stderr, bytes.")

    class Meta(ExecutionSerializer.Meta):
        fields = summary_fields(ExecutionSerializer.Meta.fields)
        read_only_fields = fields

    def get_stdout_tail(self, obj: TaskExecution) -> str:
        return last_line(self._end(obj, "stdout"))

    def get_stderr_tail(self, obj: TaskExecution) -> str:
        return last_line(self._end(obj, "stderr"))

    def get_stdout_bytes(self, obj: TaskExecution) -> int:
        return self._size(obj, "stdout")

    def get_stderr_bytes(self, obj: TaskExecution) -> int:
        return self._size(obj, "stderr")

    @staticmethod
    def _end(obj: TaskExecution, stream: str) -> str:
        # Annotated by with_output_summary; a row loaded otherwise has the whole stream.
        end = getattr(obj, f"{stream}_end", None)
        return end if end is not None else getattr(obj, stream)[-TAIL_SOURCE_CHARS:]

    @staticmethod
    def _size(obj: TaskExecution, stream: str) -> int:
        size = getattr(obj, f"{stream}_size", None)
        return size if size is not None else len(getattr(obj, stream).encode())


class ExecutionReceiptSerializer(serializers.ModelSerializer):
    """What a launch answers to someone who may run the task but not view executions: no output, no details."""

    url = serializers.HyperlinkedIdentityField(view_name="execution-detail")

    class Meta:
        model = TaskExecution
        fields = ["id", "status", "url"]
        read_only_fields = fields


class NewestFirst(pagination.CursorPagination):
    """Cursor pages, newest first: no COUNT(*) over a table of millions of rows."""

    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class ArtifactSerializer(serializers.ModelSerializer):
    kept = serializers.BooleanField(
        source="is_kept", read_only=True, help_text="False: past the attempt's cap, listed but not kept."
    )
    url = serializers.SerializerMethodField(help_text="Where to download it (kept files only).")

    class Meta:
        model = Artifact
        fields = ["name", "size", "kept", "url"]
        read_only_fields = fields

    def get_url(self, obj: Artifact) -> str | None:
        if not obj.is_kept:
            return None
        return reverse("execution-artifact", args=[obj.execution_id, obj.name], request=self.context.get("request"))


def artifact_response(artifact: Artifact) -> HttpResponse:
    """The artifact as a download: never shown inline, whatever it contains."""
    response = HttpResponse(bytes(artifact.content), content_type="application/octet-stream")
    filename = artifact.name.rsplit("/", 1)[-1]
    response["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(filename)}"
    response["X-Content-Type-Options"] = "nosniff"
    return response


class ExecutionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = TaskExecution.objects.select_related("task")
    serializer_class = ExecutionSerializer
    permission_classes = [permissions.IsAuthenticated, ModelPermissions]
    pagination_class = NewestFirst
    filterset_fields = ["task", "status", "run_id", "trigger", "workflow_run"]

    def get_queryset(self) -> QuerySet:
        queryset = super().get_queryset()
        return with_output_summary(queryset) if self.action == "list" else queryset

    def get_serializer_class(self) -> type[serializers.Serializer]:
        return ExecutionSummarySerializer if self.action == "list" else ExecutionSerializer

    @extend_schema(responses=ArtifactSerializer(many=True))
    @action(detail=True, methods=["get"], pagination_class=None, filterset_fields=None, filter_backends=[])
    def artifacts(self, request: Request, pk: str | None = None) -> Response:
        """The files the attempt left in $TASKHUB_ARTIFACTS_DIR: names and sizes, and where to download them."""
        execution = self.get_object()
        rows = Artifact.objects.filter(execution=execution).listing()
        return Response(ArtifactSerializer(rows, many=True, context={"request": request}).data)

    @extend_schema(responses={(200, "application/octet-stream"): bytes, 404: None})
    @action(
        detail=True,
        methods=["get"],
        url_path=r"artifacts/(?P<name>.+)",
        url_name="artifact",
        filter_backends=[],
    )
    def artifact(self, request: Request, pk: str | None = None, name: str = "") -> HttpResponse:
        """Download one artifact."""
        execution = self.get_object()
        artifact = Artifact.objects.filter(execution=execution, name=name, content__isnull=False).first()
        if artifact is None:
            raise Http404(f"Execution {execution.pk} kept no artifact named {name!r}.")
        return artifact_response(artifact)

    @extend_schema(request=None, responses={202: ExecutionSerializer, 409: None})
    @action(detail=True, methods=["post"], permission_classes=[permissions.IsAuthenticated, CanActOnVisibleExecution])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        execution = self.get_object()
        try:
            execution.request_cancel()
        except InvalidTransition:
            return Response(
                {
                    "detail": f"Execution {execution.pk} is {execution.status}; only pending or running ones can be cancelled."
                },
                status=status.HTTP_409_CONFLICT,
            )
        execution.refresh_from_db()
        return Response(
            self.get_serializer(execution).data,
            status=status.HTTP_202_ACCEPTED,
            headers=location_of(request, execution),
        )

    @extend_schema(request=None, responses={202: ExecutionSerializer, 409: None})
    @action(detail=True, methods=["post"], permission_classes=[permissions.IsAuthenticated, CanActOnVisibleExecution])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        """Add an attempt to this execution's run: only when its latest attempt is finished and it has not succeeded."""
        execution = self.get_object()
        try:
            new = retry_run(execution, user=request.user, trigger=Trigger.API)
        except RetryRefused as exc:
            return Response(
                {"detail": f"Execution {execution.pk} cannot be retried: {exc}."}, status=status.HTTP_409_CONFLICT
            )
        return Response(
            self.get_serializer(new).data, status=status.HTTP_202_ACCEPTED, headers=location_of(request, new)
        )

    @extend_schema(request=None, responses={202: ExecutionSerializer, 409: None})
    @action(
        detail=True,
        methods=["post"],
        url_path="run-again",
        permission_classes=[permissions.IsAuthenticated, CanActOnVisibleExecution],
    )
    def run_again(self, request: Request, pk: str | None = None) -> Response:
        """Start a new run of this execution's task, as the task is defined now."""
        execution = self.get_object()
        try:
            new = run_again(execution, user=request.user, trigger=Trigger.API)
        except (TaskDisabled, ValueError) as exc:
            return Response(
                {"detail": f"Execution {execution.pk}'s task cannot run again: {exc}"},
                status=status.HTTP_409_CONFLICT,
            )
        return Response(
            self.get_serializer(new).data, status=status.HTTP_202_ACCEPTED, headers=location_of(request, new)
        )
