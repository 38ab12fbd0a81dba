"""Who may do what through the API (the admin uses the same permissions)."""

from __future__ import annotations

from rest_framework import permissions
from rest_framework.request import Request


class ModelPermissions(permissions.DjangoModelPermissions):
    """Django model permissions, with reading guarded by the `view` permission too."""

    perms_map = {
        **permissions.DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": ["%(app_label)s.view_%(model_name)s"],
    }


class HasAllPerms(permissions.BasePermission):
    """Grant the request only if the user holds every permission in `perms`."""

    perms: tuple[str, ...] = ()

    def has_permission(self, request: Request, view) -> bool:
        return bool(request.user and request.user.has_perms(self.perms))


class CanRunTasks(HasAllPerms):
    perms = ("taskhub.run_task",)
    message = "You need the “Can run tasks” permission to run, cancel or retry."


class CanRunVisibleTask(HasAllPerms):
    """Run a task: acting on an object needs the right to see it as well."""

    perms = ("taskhub.run_task", "taskhub.view_task")
    message = "Running a task needs both the “Can run tasks” and the “Can view task” permissions."


class CanActOnVisibleExecution(HasAllPerms):
    """Cancel or retry an execution: acting on an object needs the right to see it as well."""

    perms = ("taskhub.run_task", "executions.view_taskexecution")
    message = "Cancelling or retrying needs both the “Can run tasks” and the “Can view task execution” permissions."


def can_see_secrets(request: Request | None) -> bool:
    return bool(request and request.user.has_perm("taskhub.change_task"))


def can_see_executions(request: Request | None) -> bool:
    return bool(request and request.user.has_perm("executions.view_taskexecution"))
