"""Concurrency per task under two real workers: never more running than max_concurrency, and each overlap policy."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext

from executions.lifecycle import execute
from executions.models import Status, TaskExecution
from taskhub.models import OverlapPolicy
from taskhub.services import launch
from tests.conftest import finished, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def launch_together(task, n: int) -> list[TaskExecution]:
    """Launch ``task`` ``n`` times from ``n`` threads released at the same moment."""
    start = threading.Barrier(n)
    made: list[TaskExecution] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            start.wait()
            execution = launch(task)
            with lock:
                made.append(execution)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(made) == n
    return made


def watch_until_finished(task, n: int, timeout: float = 90) -> int:
    """Sample how many of ``task``'s executions run until ``n`` of them are finished; return the most seen at once."""
    most = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = list(TaskExecution.objects.filter(task=task).values_list("status", flat=True))
        most = max(most, rows.count(Status.RUNNING))
        if len(rows) >= n and all(s not in (Status.PENDING, Status.RUNNING) for s in rows):
            return most
        time.sleep(0.05)
    pytest.fail(f"the executions of {task.name} did not finish within {timeout}s")


def most_overlapping(executions: list[TaskExecution]) -> int:
    """The most executions whose [started_at, finished_at) intervals overlap at any moment."""
    edges = []
    for e in executions:
        if e.started_at is not None:
            edges += [(e.started_at, 1), (e.finished_at, -1)]
    most = current = 0
    for _, step in sorted(edges, key=lambda edge: (edge[0], edge[1])):  # an end before a start at the same instant
        current += step
        most = max(most, current)
    return most


@pytest.fixture
def two_workers(celery_processes):
    return [celery_processes(concurrency=3), celery_processes(concurrency=3)]


def test_two_workers_never_run_more_than_max_concurrency_and_queued_runs_wait_their_turn(two_workers, make_task):
    task = make_task(command="sleep 0.7", max_concurrency=2, overlap_policy=OverlapPolicy.QUEUE)

    launch_together(task, 8)
    most_seen = watch_until_finished(task, 8)

    executions = list(TaskExecution.objects.filter(task=task))
    assert [e.status for e in executions] == [Status.SUCCEEDED] * 8  # every queued run ran, in turn
    assert most_seen <= 2
    assert most_overlapping(executions) == 2  # the limit was used, never passed


def test_a_limit_of_one_runs_one_at_a_time_across_both_workers(two_workers, make_task):
    task = make_task(command="sleep 0.3", max_concurrency=1)

    launch_together(task, 6)
    most_seen = watch_until_finished(task, 6)

    executions = list(TaskExecution.objects.filter(task=task))
    assert all(e.status == Status.SUCCEEDED for e in executions)
    assert most_seen == 1 and most_overlapping(executions) == 1
    assert len({e.worker for e in executions}) == 2  # both workers took turns


def test_skip_records_skipped_executions_with_the_reason(two_workers, make_task):
    task = make_task(command="sleep 2", max_concurrency=1, overlap_policy=OverlapPolicy.SKIP)

    together = launch_together(task, 5)
    wait_for(lambda: TaskExecution.objects.filter(task=task, status=Status.RUNNING).exists(), timeout=30)
    late = launch(task)  # finds the task at its limit at launch

    assert late.status == Status.SKIPPED
    assert "already had 1 execution running, its max_concurrency (1), and its overlap_policy is skip" in late.error
    most_seen = watch_until_finished(task, 6)
    statuses = sorted(TaskExecution.objects.filter(task=task).values_list("status", flat=True))
    assert statuses == [Status.SKIPPED] * 5 + [Status.SUCCEEDED]
    assert most_seen == 1
    skipped = TaskExecution.objects.filter(pk__in=[e.pk for e in together], status=Status.SKIPPED)
    assert all(e.error.startswith("Skipped: ") and e.started_at is None for e in skipped)


def test_replace_stops_the_running_one_then_starts_the_new_one(two_workers, make_task):
    task = make_task(command="sleep 30", kill_grace=1, max_concurrency=1, overlap_policy=OverlapPolicy.REPLACE)
    old = launch(task)
    wait_for(lambda: TaskExecution.objects.get(pk=old.pk).status == Status.RUNNING, timeout=30)

    new = launch(task)

    old = finished(old, timeout=30)
    assert old.status == Status.CANCELLED and old.cancel_requested_at is not None
    wait_for(lambda: TaskExecution.objects.get(pk=new.pk).status == Status.RUNNING, timeout=30)
    new.refresh_from_db()
    assert new.started_at >= old.finished_at  # no overlap
    new.request_cancel()
    finished(new, timeout=30)


# -- what a limit costs --------------------------------------------------------------------------


def kinds(ctx: CaptureQueriesContext) -> list[str]:
    return [q["sql"].split(None, 1)[0].upper() for q in ctx.captured_queries]


def test_launching_a_limited_task_that_queues_costs_nothing_more(make_task):
    task = make_task(command="true", max_concurrency=2, overlap_policy=OverlapPolicy.QUEUE)

    with CaptureQueriesContext(connection) as ctx:
        launch(task)

    assert kinds(ctx) == ["INSERT"], ctx.captured_queries  # its claim makes it wait its turn


@pytest.mark.parametrize("policy", [OverlapPolicy.SKIP, OverlapPolicy.REPLACE])
def test_launching_a_limited_task_that_skips_or_replaces_costs_one_more_statement(make_task, policy):
    task = make_task(command="true", max_concurrency=2, overlap_policy=policy)

    with CaptureQueriesContext(connection) as ctx:
        launch(task)

    assert kinds(ctx) == ["SELECT", "INSERT"], ctx.captured_queries  # the running count, then the launch


def test_finishing_a_limited_tasks_execution_costs_one_more_statement(make_task):
    task = make_task(command="true", max_concurrency=2)
    execution = TaskExecution.objects.create(task=task, status=Status.PENDING)

    with CaptureQueriesContext(connection) as ctx:
        execute(execution.pk, worker="w1", celery_task_id="c1")

    execution.refresh_from_db()
    assert execution.status == Status.SUCCEEDED
    # The plain claim declines a limited task (UPDATE), the row is read
    # (SELECT); the limited claim locks the task, counts and claims in one
    # transaction; the outcome (UPDATE); then the one more statement: the
    # oldest waiting execution to send (SELECT).
    assert kinds(ctx) == [
        "UPDATE", "SELECT", "BEGIN", "SELECT", "SELECT", "UPDATE", "COMMIT", "UPDATE", "SELECT",
    ], ctx.captured_queries  # fmt: skip


@pytest.mark.usefixtures("both_stacks")
def test_a_claim_at_the_limit_leaves_the_row_pending(make_task):
    task = make_task(command="true", max_concurrency=1)
    TaskExecution.objects.create(task=task, status=Status.RUNNING)
    waiting = TaskExecution.objects.create(task=task, status=Status.PENDING)

    assert execute(waiting.pk, worker="w1", celery_task_id="c1") is None

    waiting.refresh_from_db()
    assert waiting.status == Status.PENDING and waiting.enqueued_at is not None


@pytest.mark.usefixtures("both_stacks")
def test_a_claim_with_a_free_slot_runs_and_a_skipped_one_says_why(make_task):
    task = make_task(command="true", max_concurrency=1, overlap_policy=OverlapPolicy.SKIP)
    first = TaskExecution.objects.create(task=task, status=Status.PENDING)
    assert execute(first.pk, worker="w1", celery_task_id="c1") is not None
    TaskExecution.objects.create(task=task, status=Status.RUNNING)
    second = TaskExecution.objects.create(task=task, status=Status.PENDING)

    assert execute(second.pk, worker="w1", celery_task_id="c2") is None

    first.refresh_from_db()
    second.refresh_from_db()
    assert first.status == Status.SUCCEEDED
    assert second.status == Status.SKIPPED and second.started_at is None
    assert "its max_concurrency (1), and its overlap_policy is skip" in second.error


def test_a_retry_of_a_skip_task_at_its_limit_waits_instead_of_being_skipped(make_task):
    task = make_task(command="true", max_concurrency=1, overlap_policy=OverlapPolicy.SKIP)
    TaskExecution.objects.create(task=task, status=Status.RUNNING)
    retry = TaskExecution.objects.create(task=task, status=Status.PENDING, attempt=2)

    assert execute(retry.pk, worker="w1", celery_task_id="c1") is None

    retry.refresh_from_db()
    assert retry.status == Status.PENDING
