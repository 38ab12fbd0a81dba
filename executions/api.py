"""REST API for executions: read, filter, cancel, retry."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, pagination, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from executions.lifecycle import RetryRefused, retry_run, run_again
from executions.models import InvalidTransition, TaskExecution, Trigger
from taskhub.models import TaskDisabled
from taskhub.permissions import CanRunTasks, ModelPermissions


class ExecutionSerializer(serializers.ModelSerializer):
    task_name = serializers.CharField(source="task.name", read_only=True)
    duration = serializers.SerializerMethodField(help_text="Seconds from start to finish (or to now while running).")

    class Meta:
        model = TaskExecution
        fields = [
            "id", "task", "task_name", "run_id", "attempt", "status", "trigger", "triggered_by", "scheduled_for",
            "enqueued_at", "started_at", "finished_at", "duration", "exit_code", "signal", "stdout", "stderr",
            "output_truncated", "error", "worker", "pid", "celery_task_id", "heartbeat_at", "cancel_requested_at",
            "max_rss_kb", "cpu_user", "cpu_system", "created_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_duration(self, obj: TaskExecution) -> float | None:
        duration = obj.duration
        return None if duration is None else duration.total_seconds()


class NewestFirst(pagination.CursorPagination):
    """Cursor pages, newest first: no COUNT(*) over a table of millions of rows."""

    ordering = "-id"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class ExecutionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    queryset = TaskExecution.objects.select_related("task")
    serializer_class = ExecutionSerializer
    permission_classes = [permissions.IsAuthenticated, ModelPermissions]
    pagination_class = NewestFirst
    filterset_fields = ["task", "status", "run_id", "trigger"]

    @extend_schema(request=None, responses={202: ExecutionSerializer, 409: None})
    @action(detail=True, methods=["post"], permission_classes=[permissions.IsAuthenticated, CanRunTasks])
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
        return Response(self.get_serializer(execution).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: ExecutionSerializer, 409: None})
    @action(detail=True, methods=["post"], permission_classes=[permissions.IsAuthenticated, CanRunTasks])
    def retry(self, request: Request, pk: str | None = None) -> Response:
        """Add an attempt to this execution's run: only when its latest attempt is finished and it has not succeeded."""
        execution = self.get_object()
        try:
            new = retry_run(execution, user=request.user, trigger=Trigger.API)
        except RetryRefused as exc:
            return Response(
                {"detail": f"Execution {execution.pk} cannot be retried: {exc}."}, status=status.HTTP_409_CONFLICT
            )
        return Response(self.get_serializer(new).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses={202: ExecutionSerializer, 409: None})
    @action(
        detail=True,
        methods=["post"],
        url_path="run-again",
        permission_classes=[permissions.IsAuthenticated, CanRunTasks],
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
        return Response(self.get_serializer(new).data, status=status.HTTP_202_ACCEPTED)
