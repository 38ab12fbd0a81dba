"""TaskHub's Celery app reads Django's CELERY_* settings once and keeps them at hand."""

from __future__ import annotations

from celery import Celery
from celery.app.defaults import SETTING_KEYS
from django.conf import settings

from config.celery import app, configure


def test_every_setting_is_what_celerys_django_namespace_reads():
    by_namespace = Celery("namespace-read")
    by_namespace.config_from_object("django.conf:settings", namespace="CELERY")
    differ = {key for key in SETTING_KEYS if app.conf[key] != by_namespace.conf[key]}
    assert differ == set()
    assert app.conf.task_acks_late is True and app.conf.worker_prefetch_multiplier == 1
    assert app.conf.beat_schedule == settings.CELERY_BEAT_SCHEDULE
    # Celery's Django fix-up reads this one under its Django name.
    assert (
        app.conf.get("CELERY_DB_REUSE_MAX")
        == settings.CELERY_DB_REUSE_MAX
        == by_namespace.conf.get("CELERY_DB_REUSE_MAX")
    )


def test_settings_sit_in_the_first_map_and_later_ones_go_on_top():
    fresh = configure(Celery("fresh"))
    fresh.conf.task_default_queue = "given-before"  # as Celery(…, task_default_queue=…) would
    assert fresh.conf.task_serializer == "json"  # configured now
    assert set(SETTING_KEYS) <= set(fresh.conf.maps[0])
    assert fresh.conf.task_default_queue == "given-before"
    fresh.conf.worker_concurrency = 7  # as a worker's command-line option does, after
    assert fresh.conf.worker_concurrency == 7
