"""The threads pool (`celery worker --pool threads`): many long commands on one worker process.

Each execution runs in a thread; one supervisor thread per process checks
cancellations and writes heartbeats for all of them in batches, and the
threads hold database connections only while claiming and recording.
"""

from __future__ import annotations

import time

import pytest
from django.db import connection

from executions.models import Status, TaskExecution
from taskhub.services import launch
from tests.conftest import finished, group_members, processes_of_execution, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def connections_to_test_database() -> int:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cur.fetchone()[0]


@pytest.fixture
def threads_worker(celery_processes):
    return celery_processes(
        pool="threads",
        concurrency=40,
        env={
            "TASKHUB_DB_POOL": "1",
            "TASKHUB_THREAD_DB_CONNECTIONS": "3",
            "TASKHUB_HEARTBEAT": "0.5",
            "TASKHUB_LOST_AFTER": "30",
        },
    )


def test_deadlines_hold_in_the_threads_pool_and_leave_no_process(threads_worker, make_task):
    polite = make_task(command="sleep 30", timeout=1, kill_grace=1)
    stubborn = make_task(command="trap '' TERM; sleep 30 & sleep 30; wait", shell=True, timeout=1, kill_grace=1)

    executions = [launch(polite if i % 2 else stubborn) for i in range(10)]
    done = [finished(e, timeout=20) for e in executions]

    for execution in done:
        assert execution.status == Status.TIMEOUT
        # SIGTERM at 1 s; the stubborn ones get SIGKILL after the 1 s grace.
        limit = 1 if execution.task_id == polite.pk else 2
        # Not before the limit; the upper bound tells a stopped command from
        # its 30 s sleep, wide for a loaded machine.
        assert limit - 0.05 <= execution.duration.total_seconds() <= limit + 10, execution.duration
        assert execution.signal == (15 if execution.task_id == polite.pk else 9)
        wait_for(lambda e=execution: group_members(e.pid) == [], timeout=1, what="the timed-out group to be gone")
        assert processes_of_execution(execution.pk) == []


def test_many_long_commands_run_at_once_on_few_database_connections(threads_worker, make_task):
    task = make_task(command="sleep 3", timeout=30)
    idle = connections_to_test_database()

    started = time.monotonic()
    executions = [launch(task) for _ in range(30)]
    wait_for(
        lambda: TaskExecution.objects.filter(task=task, status=Status.RUNNING).count() == 30,
        timeout=15,
        what="all 30 to be running",
    )
    peak = connections_to_test_database()
    # They beat while running: the supervisor writes heartbeat_at and pid for all of them.
    wait_for(
        lambda: TaskExecution.objects.filter(task=task, status=Status.RUNNING, pid__isnull=False).count() == 30,
        timeout=5,
        what="heartbeats with pids",
    )
    done = [finished(e, timeout=30) for e in executions]
    elapsed = time.monotonic() - started

    assert all(e.status == Status.SUCCEEDED for e in done)
    # At once, not one after another (30 × 3 s = 90 s); wide for a loaded machine.
    assert elapsed < 45
    # The pool: three execution slots, the supervisor and the main thread.
    assert peak - idle <= 3 + 2, (idle, peak)
    beats = [e.heartbeat_at for e in done]
    assert all(b is not None and b > e.started_at for b, e in zip(beats, done, strict=True))


def test_a_cancel_request_stops_a_command_in_the_threads_pool_within_about_a_second(threads_worker, make_task):
    task = make_task(command="sleep 60", timeout=120, kill_grace=1)
    others = [launch(task) for _ in range(5)]
    execution = launch(task)
    wait_for(lambda: processes_of_execution(execution.pk), timeout=10, what="the command to start")
    execution.refresh_from_db()

    asked = time.monotonic()
    assert execution.request_cancel() is True
    execution = finished(execution, timeout=10)
    stopped_after = time.monotonic() - asked

    assert execution.status == Status.CANCELLED
    # About a second (the cancel poll) in the normal case; the bound tells a
    # polled cancel from the 60 s sleep, wide for a loaded machine.
    assert stopped_after < 15
    assert processes_of_execution(execution.pk) == []
    for other in others:
        other.refresh_from_db()
        assert other.status == Status.RUNNING  # only the one asked for
        other.request_cancel()
    for other in others:
        assert finished(other, timeout=10).status == Status.CANCELLED
