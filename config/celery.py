"""TaskHub's Celery app, configured from Django's CELERY_* settings."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("config")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Each worker writes its liveness row for /healthz (a bootstep on the worker's timer).
import executions.liveness  # noqa: E402,F401

# Worker life-cycle hooks: parent-death signal, shutdown grace, recovery on start.
import executions.worker  # noqa: E402,F401
