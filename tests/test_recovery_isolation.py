"""One row that makes recovery fail does not stall it: real worker and beat running the reaper."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils.timezone import now

from executions.models import Status, TaskExecution, Trigger
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def stale_running(task, *, run_id=None) -> TaskExecution:
    long_ago = now() - timedelta(minutes=5)
    return TaskExecution.objects.create(
        task=task,
        run_id=run_id or uuid.uuid4(),
        status=Status.RUNNING,
        trigger=Trigger.API,
        worker="gone@nowhere",
        started_at=long_ago,
        heartbeat_at=long_ago,
    )


def test_the_reaper_under_beat_reaps_and_retries_the_others_while_one_row_keeps_failing(celery_processes, make_task):
    task = make_task(command="echo again", retry_count=1, retry_delay=0)
    # Oldest heartbeat first: the reaper meets this row before the others on every round.
    bad = stale_running(task)
    TaskExecution.objects.filter(pk=bad.pk).update(heartbeat_at=now() - timedelta(hours=1))
    # Its next attempt's number is taken (what the hand-retry race once left behind): planning it fails.
    TaskExecution.objects.create(task=task, run_id=bad.run_id, attempt=2, status=Status.CANCELLED)
    good = [stale_running(task) for _ in range(3)]
    settings_env = {"TASKHUB_LOST_AFTER": "3", "TASKHUB_REQUEUE_AFTER": "3"}
    worker = celery_processes(env=settings_env)
    celery_processes.beat(env=settings_env)

    def retried_and_done() -> bool:
        return all(
            TaskExecution.objects.filter(run_id=g.run_id, attempt=2, status=Status.SUCCEEDED).exists() for g in good
        )

    wait_for(retried_and_done, timeout=60, what="the three good rows to be reaped and their retries to succeed")
    for execution in good:
        execution.refresh_from_db()
        assert execution.status == Status.LOST and "gone@nowhere stopped answering" in execution.error
    wait_for(lambda: f"failed on execution {bad.pk}" in worker.log(), timeout=30, what="the bad row's error logged")
    bad.refresh_from_db()
    assert bad.status == Status.RUNNING  # its own transaction rolled back; tried again on the next round
