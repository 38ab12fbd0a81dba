from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from config.health import healthz

admin.site.site_header = "TaskHub"
admin.site.site_title = "TaskHub"
admin.site.index_title = "Operator console"

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
]
