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


def test_no_celery_or_kombu_class_is_replaced():
    # Celery and kombu as shipped: the app's messaging, events, transport and pool are their own.
    from celery.app.amqp import AMQP
    from celery.app.events import Events

    assert type(app.amqp) is AMQP
    assert type(app.events) is Events
    assert app.conf.broker_transport is None
    assert app.conf.worker_pool == "prefork"
