from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from rest_framework.routers import DefaultRouter

from config import token_admin
from config.api_docs import APIDocsView, SchemaView
from config.health import healthz
from config.login_throttle import throttled
from executions.api import ExecutionViewSet
from executions.workflow_api import WorkflowRunViewSet
from taskhub.api import TaskViewSet
from taskhub.metrics import metrics_view
from taskhub.suite_api import SuiteViewSet

admin.site.site_header = "TaskHub"
admin.site.site_title = "TaskHub"
admin.site.index_title = "Operator console"
token_admin.install()

router = DefaultRouter()
router.register("tasks", TaskViewSet, basename="task")
router.register("executions", ExecutionViewSet, basename="execution")
router.register("workflow-runs", WorkflowRunViewSet, basename="workflowrun")
router.register("suites", SuiteViewSet, basename="suite")

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    # Before admin/ so that this path wins: the admin's login, with failed attempts limited.
    path("admin/login/", throttled(admin.site.login), name="throttled-login"),
    # Before admin/, whose catch-all would answer these paths with a 404.
    path("admin/console/", include("executions.urls")),
    path("admin/", admin.site.urls),
    path("api/", include(router.urls)),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", APIDocsView.as_view(url_name="schema"), name="api-docs"),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
]

# Answers under /api/ are JSON, also when Django itself answers; pages elsewhere stay HTML.
handler400 = "config.api_errors.bad_request"
handler403 = "config.api_errors.permission_denied"
handler404 = "config.api_errors.page_not_found"
handler500 = "config.api_errors.server_error"
