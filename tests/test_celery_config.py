"""TaskHub's Celery app reads Django's CELERY_* settings through Celery's documented namespace."""

from __future__ import annotations

from django.conf import settings

from config.celery import app


def test_the_app_reads_djangos_celery_settings():
    assert app.conf.task_acks_late is True and app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_default_queue == "default"
    assert app.conf.beat_schedule == settings.CELERY_BEAT_SCHEDULE
    assert app.conf.broker_transport_options == settings.CELERY_BROKER_TRANSPORT_OPTIONS
    # Celery's Django fix-up reads this one under its Django name: connections are kept across tasks.
    assert app.conf.get("CELERY_DB_REUSE_MAX") == settings.CELERY_DB_REUSE_MAX == 1000


def test_the_reaper_and_the_reconciler_are_scheduled_separately():
    tasks = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert tasks == {"executions.reap_lost", "executions.reconcile_pending"}


def test_the_pool_is_celerys_own_prefork():
    assert app.conf.worker_pool == "prefork"
    assert app.conf.task_time_limit is None and app.conf.task_soft_time_limit is None


def test_with_no_extension_named_the_app_runs_celery_and_kombu_as_shipped():
    import os
    import subprocess
    import sys

    probe = (
        "import django; django.setup(); from config.celery import app; "
        "print(type(app.amqp).__module__, type(app.events).__module__, app.conf.broker_transport, "
        "sorted(app.conf.broker_transport_options))"
    )
    env = {**os.environ, "TASKHUB_CELERY_EXT": "none", "DJANGO_SETTINGS_MODULE": "config.settings"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    amqp, events, transport, options = out.split(" ", 3)
    assert (amqp, events, transport) == ("celery.app.amqp", "celery.app.events", "None")
    assert "unanswered" not in options
