"""Queues and priorities reach the broker: real Redis, real workers."""

from __future__ import annotations

import pytest

from executions.models import Status, TaskExecution
from taskhub.services import launch
from tests.conftest import purge_broker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_task_on_another_queue_runs_only_on_a_worker_serving_that_queue(celery_processes, make_task):
    celery_processes(queues="default")
    execution = launch(make_task(command="echo reports", queue="reports"))
    default_run = launch(make_task(command="echo default"))

    wait_for(lambda: TaskExecution.objects.get(pk=default_run.pk).is_terminal, timeout=30, what="the default run")
    execution.refresh_from_db()
    assert execution.status == Status.PENDING  # nobody serves `reports` yet

    celery_processes(queues="reports", purge=False)
    wait_for(lambda: TaskExecution.objects.get(pk=execution.pk).is_terminal, timeout=30, what="the reports run")
    execution.refresh_from_db()
    assert (execution.status, execution.stdout) == (Status.SUCCEEDED, "reports\n")


def test_more_urgent_executions_start_first_when_a_queue_has_a_backlog(celery_processes, make_task):
    purge_broker()
    low = make_task(name="low", command="true", priority=0)
    mid = make_task(name="mid", command="true", priority=5)
    high = make_task(name="high", command="true", priority=9)
    launched = [launch(task) for task in (low, mid, low, high, mid, high, low)]

    celery_processes(concurrency=1, purge=False)

    def all_done():
        rows = list(TaskExecution.objects.filter(pk__in=[e.pk for e in launched]).order_by("started_at"))
        return rows if all(r.is_terminal for r in rows) else None

    rows = wait_for(all_done, timeout=60, what="the backlog to drain")
    order = [r.task.priority for r in rows]
    assert order == sorted(order, reverse=True), order
