"""The console's pages beside the admin (mounted under /admin/console/)."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path

from executions import views

app_name = "console"

urlpatterns = [
    path("dashboard/", admin.site.admin_view(views.dashboard_view), name="dashboard"),
    path("runs/<uuid:run_id>/", admin.site.admin_view(views.run_view), name="run"),
    path("workflows/<uuid:workflow_id>/", admin.site.admin_view(views.workflow_view), name="workflow"),
    path("executions/<int:pk>/live/", admin.site.admin_view(views.execution_live), name="execution-live"),
]
