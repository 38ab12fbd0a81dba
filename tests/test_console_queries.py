"""The console's pages cost a fixed number of queries, whatever the number of rows they show."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils.timezone import now

from executions.admin import TaskExecutionAdmin
from executions.models import Status, TaskExecution, Worker
from taskhub import schedules
from taskhub.admin import TaskAdmin

pytestmark = pytest.mark.django_db


@pytest.fixture
def as_operator(client, operator):
    client.force_login(operator)
    return client


@pytest.fixture(autouse=True)
def one_page(monkeypatch):
    # Every row on one page, so that a query per row would show.
    monkeypatch.setattr(TaskAdmin, "list_per_page", 500)
    monkeypatch.setattr(TaskExecutionAdmin, "list_per_page", 500)


def add_history(make_task, tasks: int, per_task: int = 3) -> None:
    at = now()
    for n in range(tasks):
        task = make_task()
        spec = {"every": "5m"} if n % 2 else {"cron": "30 2 * * *", "timezone": "Europe/Berlin"}
        schedules.create_schedule(task, schedules.parse_schedule(spec))
        for i, status in zip(range(per_task), [Status.SUCCEEDED, Status.FAILED, Status.RUNNING], strict=False):
            TaskExecution.objects.create(
                task=task,
                status=status,
                started_at=at - timedelta(minutes=i + 1),
                finished_at=None if status == Status.RUNNING else at - timedelta(minutes=i),
                worker="w@h",
            )
    Worker.objects.get_or_create(
        hostname=f"w{tasks}@h", defaults={"pid": 1, "started_at": at, "last_seen_at": at, "queues": "default"}
    )


def queries_for(client, url: str) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200
    return len(ctx.captured_queries)


@pytest.mark.parametrize(
    "url",
    [
        reverse("admin:taskhub_task_changelist"),
        reverse("admin:executions_taskexecution_changelist"),
        reverse("console:dashboard"),
    ],
    ids=["tasks", "executions", "dashboard"],
)
def test_a_page_runs_as_many_queries_for_ten_rows_as_for_a_hundred(as_operator, make_task, url):
    add_history(make_task, 10)
    few = queries_for(as_operator, url)
    rows = len(as_operator.get(url).context.get("cl").result_list) if "dashboard" not in url else None

    add_history(make_task, 90)
    many = queries_for(as_operator, url)

    if rows is not None:
        assert rows in (10, 30)  # ten tasks, or their thirty executions
        assert len(as_operator.get(url).context["cl"].result_list) in (100, 300)
    assert few == many
