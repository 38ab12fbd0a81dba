"""REST API for suites: their hooks, and their state on each worker host with the latest hook runs."""

from __future__ import annotations

from rest_framework import permissions, serializers, viewsets

from executions.models import HookRun, SuiteHost
from taskhub.models import Suite
from taskhub.permissions import ModelPermissions

# Hook runs shown per host, newest first.
HOOK_RUNS_SHOWN = 20


class HookRunSerializer(serializers.ModelSerializer):
    class Meta:
        model = HookRun
        fields = ["id", "kind", "status", "exit_code", "signal", "error", "stdout", "stderr", "pid", "started_at",
                  "finished_at"]  # fmt: skip
        read_only_fields = fields


class SuiteHostSerializer(serializers.ModelSerializer):
    hook_runs = serializers.SerializerMethodField()

    class Meta:
        model = SuiteHost
        fields = ["host", "state", "failures", "failure_type", "error", "updated_at", "hook_runs"]
        read_only_fields = fields

    def get_hook_runs(self, obj: SuiteHost) -> list[dict]:
        return HookRunSerializer(obj.hook_runs.all()[:HOOK_RUNS_SHOWN], many=True).data


class SuiteSerializer(serializers.ModelSerializer):
    hosts = SuiteHostSerializer(many=True, read_only=True)
    tasks = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta:
        model = Suite
        fields = ["id", "name", "description", "provision", "background", "cleanup", "tasks", "hosts", "created_at",
                  "updated_at"]  # fmt: skip
        read_only_fields = ["created_at", "updated_at"]


class SuiteViewSet(viewsets.ModelViewSet):
    """Suites: tasks that share provision / background / cleanup hooks on each worker host."""

    queryset = Suite.objects.all().prefetch_related("hosts", "tasks")
    serializer_class = SuiteSerializer
    permission_classes = [permissions.IsAuthenticated, ModelPermissions]
