"""TaskHub's Celery app, configured from Django's CELERY_* settings."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.conf import settings  # noqa: E402

# TaskHub's extensions of Celery and kombu (celery_ext/): the ones settings.TASKHUB_CELERY_EXT names.
_producer = "producer" in settings.TASKHUB_CELERY_EXT
app = Celery(
    "config",
    amqp="celery_ext.broker:AMQP" if _producer else None,
    events="celery_ext.broker:Events" if _producer else None,
)
app.config_from_object("django.conf:settings", namespace="CELERY")
if "settings" in settings.TASKHUB_CELERY_EXT:
    from celery_ext.settings import keep_at_hand

    keep_at_hand(app)
app.autodiscover_tasks()

# Each worker writes its liveness row for /healthz (a bootstep on the worker's timer).
import executions.liveness  # noqa: E402,F401

# Worker life-cycle hooks: parent-death signal, shutdown grace, recovery on start.
import executions.worker  # noqa: E402,F401
