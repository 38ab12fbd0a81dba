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


class CanRunTasks(permissions.BasePermission):
    message = "You need the “Can run tasks” permission to run, cancel or retry."

    def has_permission(self, request: Request, view) -> bool:
        return bool(request.user and request.user.has_perm("taskhub.run_task"))


def can_see_secrets(request: Request | None) -> bool:
    return bool(request and request.user.has_perm("taskhub.change_task"))
