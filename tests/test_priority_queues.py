"""Priority and queues, shown with real workers: an urgent launch overtakes a backlog; a worker serves only its queues."""

from __future__ import annotations

import pytest
from django.conf import settings

from executions.models import Status, TaskExecution
from taskhub.services import launch
from tests.conftest import finished, wait_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(settings.BROKER_SCHEME not in {"redis", "rediss"}, reason="broker priorities: Redis pass"),
]


def test_a_priority_9_launch_starts_before_a_backlog_of_priority_0_runs(celery_processes, make_task):
    celery_processes(concurrency=1)
    blocker = launch(make_task(name="blocker", command="sleep 1.5", priority=0))
    wait_for(lambda: TaskExecution.objects.get(pk=blocker.pk).status == Status.RUNNING, timeout=30)
    backlog_task = make_task(name="backlog", command="true", priority=0)
    backlog = [launch(backlog_task) for _ in range(5)]
    urgent = launch(make_task(name="urgent", command="true", priority=9))

    urgent = finished(urgent, timeout=60)
    backlog = [finished(e, timeout=60) for e in backlog]

    # The worker was busy when all of them were sent: the urgent one ran next.
    assert urgent.started_at > finished(blocker).finished_at
    assert all(urgent.started_at < e.started_at for e in backlog), [(e.pk, e.started_at) for e in backlog]


def test_two_workers_on_different_queues_each_run_only_their_own_tasks(celery_processes, make_task):
    celery_processes(queues="default", name="default-host@%h")
    celery_processes(queues="reports", name="reports-host@%h")
    everyday = make_task(name="everyday", command="true")
    reports = make_task(name="reports", command="true", queue="reports")

    runs = [launch(task) for _ in range(4) for task in (everyday, reports)]
    runs = [finished(e, timeout=60) for e in runs]

    assert all(e.status == Status.SUCCEEDED for e in runs)
    assert {e.worker.split("@")[0] for e in runs if e.task_id == everyday.pk} == {"default-host"}
    assert {e.worker.split("@")[0] for e in runs if e.task_id == reports.pk} == {"reports-host"}
