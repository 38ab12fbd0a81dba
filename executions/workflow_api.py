"""REST API for workflow runs: list them, read one's graph of runs, cancel it."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from executions import workflows
from executions.models import WorkflowRun
from taskhub.permissions import CanActOnVisibleExecution, HasAllPerms


class CanViewExecutions(HasAllPerms):
    """A workflow run is a view of executions: reading it needs the right to read them."""

    perms = ("executions.view_taskexecution",)
    message = "Workflow runs need the “Can view task execution” permission."


class WorkflowRunSerializer(serializers.ModelSerializer):
    root_task_name = serializers.CharField(source="root_task.name", read_only=True, default=None)

    class Meta:
        model = WorkflowRun
        fields = ["id", "root_task", "root_task_name", "created_at", "cancelled_at", "cancelled_by"]
        read_only_fields = fields


class NodeSerializer(serializers.Serializer):
    run_id = serializers.UUIDField()
    task = serializers.IntegerField(source="task.pk")
    task_name = serializers.CharField(source="task.name")
    status = serializers.CharField(help_text="Its latest attempt's status.")
    attempts = serializers.IntegerField()
    latest_execution = serializers.IntegerField(source="latest.pk")
    upstream_execution = serializers.IntegerField(source="first.upstream_execution_id", allow_null=True)
    depth = serializers.IntegerField(help_text="Links on the longest path from the root run.")
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class EdgeSerializer(serializers.Serializer):
    upstream = serializers.UUIDField(help_text="The upstream run's run_id.")
    downstream = serializers.UUIDField(help_text="The downstream run's run_id.")
    condition = serializers.CharField()


class WorkflowGraphSerializer(serializers.Serializer):
    workflow_run = WorkflowRunSerializer(source="workflow")
    status = serializers.CharField(help_text="running, cancelled, succeeded (every run did) or failed.")
    runs = NodeSerializer(source="nodes", many=True)
    links = EdgeSerializer(source="edges", many=True)


class WorkflowRunViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Everything one root launch of a task with downstream tasks set off."""

    queryset = WorkflowRun.objects.select_related("root_task")
    serializer_class = WorkflowRunSerializer
    permission_classes = [permissions.IsAuthenticated, CanViewExecutions]
    filterset_fields = ["root_task"]

    @extend_schema(responses=WorkflowGraphSerializer)
    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        """The workflow run's runs, each with its status and depth, and the links between them."""
        return Response(WorkflowGraphSerializer(workflows.graph(self.get_object())).data)

    @extend_schema(request=None, responses={202: WorkflowGraphSerializer})
    @action(detail=True, methods=["post"], permission_classes=[permissions.IsAuthenticated, CanActOnVisibleExecution])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Cancel it: its pending attempts never start, its running commands are stopped, nothing more launches."""
        workflow = self.get_object()
        workflows.cancel(workflow, user=request.user)
        return Response(WorkflowGraphSerializer(workflows.graph(workflow)).data, status=status.HTTP_202_ACCEPTED)
