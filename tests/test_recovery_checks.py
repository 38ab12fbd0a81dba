"""The recovery checks one call at a time, against the real database and broker: reaper, reconciler, hand-back."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils.timezone import now
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from executions.lifecycle import finish as finish_and_plan_retry
from executions.messaging import send
from executions.models import Status, TaskExecution, Trigger
from executions.recovery import reap_lost, reconcile_pending, recover_host
from tests.conftest import purge_broker
from testsupport.brokers import queued_run_ids

pytestmark = pytest.mark.django_db(transaction=True)


def queued_ids() -> list[int]:
    """Execution ids of the run messages waiting in the broker's default queue (Redis or RabbitMQ)."""
    return queued_run_ids(settings.CELERY_BROKER_URL, "default")


def row(task, *, status=Status.PENDING, attempt=1, run_id=None, **fields) -> TaskExecution:
    fields.setdefault("scheduled_for", now())
    return TaskExecution.objects.create(
        task=task, run_id=run_id or uuid.uuid4(), attempt=attempt, status=status, trigger=Trigger.API, **fields
    )


@pytest.fixture
def empty_broker():
    purge_broker()
    yield
    purge_broker()


@pytest.mark.parametrize(
    ("name", "task"),
    [("taskhub-reap-lost", "executions.reap_lost"), ("taskhub-reconcile-pending", "executions.reconcile_pending")],
)
def test_beat_runs_each_recovery_check_at_least_every_half_interval_and_drops_a_late_one(name, task):
    from config.celery import app
    from taskhub.scheduler import DatabaseScheduler

    DatabaseScheduler(app=app)  # what `celery beat` does first: install the configured schedule

    entry = PeriodicTask.objects.get(name=name)
    half = min(settings.TASKHUB_LOST_AFTER, settings.TASKHUB_REQUEUE_AFTER) / 2
    assert entry.task == task and entry.enabled
    assert entry.interval.period == IntervalSchedule.SECONDS
    assert 1 <= entry.interval.every <= half
    assert entry.expire_seconds == entry.interval.every


def test_beat_keeps_scheduling_when_the_database_goes_away_as_it_reloads_the_schedule(
    empty_broker, monkeypatch, caplog
):
    from django.db import OperationalError, connection
    from django_celery_beat.models import PeriodicTasks

    from config.celery import app
    from taskhub.scheduler import RETRY_AFTER, DatabaseScheduler

    scheduler = DatabaseScheduler(app=app)
    scheduler.tick()  # the initial read
    PeriodicTasks.update_changed()  # a schedule was edited: the next tick reloads
    reload = DatabaseScheduler.all_as_schedule

    def reload_as_the_database_goes(self):
        # The server ends this connection right after the change check, as at a restart.
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        except OperationalError:
            pass
        return reload(self)

    monkeypatch.setattr(DatabaseScheduler, "all_as_schedule", reload_as_the_database_goes)
    assert scheduler.tick() == RETRY_AFTER  # django-celery-beat's own scheduler raises here, stopping beat
    assert "Database unavailable while scheduling" in caplog.text
    monkeypatch.undo()

    calls = []
    monkeypatch.setattr(DatabaseScheduler, "all_as_schedule", lambda self: calls.append(1) or reload(self))
    assert 0 < scheduler.tick() <= 5  # back on its schedule
    assert calls == [1]  # the whole schedule read again
    assert "taskhub-reap-lost" in scheduler.schedule


def test_the_reaper_marks_a_silent_execution_lost_naming_its_worker_and_sends_its_next_attempt(make_task, empty_broker):
    task = make_task(retry_count=1, retry_delay=0)
    silent = row(
        task, status=Status.RUNNING, worker="gone@host-a", started_at=now(), heartbeat_at=now() - timedelta(seconds=90)
    )
    alive = row(task, status=Status.RUNNING, worker="busy@host-b", started_at=now(), heartbeat_at=now())

    assert reap_lost(lost_after=60) == {"done": 1, "errors": 0}

    silent.refresh_from_db()
    alive.refresh_from_db()
    assert silent.status == Status.LOST
    assert "worker gone@host-a stopped answering" in silent.error
    assert alive.status == Status.RUNNING
    nxt = TaskExecution.objects.get(run_id=silent.run_id, attempt=2)
    assert nxt.status == Status.PENDING and nxt.trigger == Trigger.RETRY
    assert queued_ids() == [nxt.pk]
    assert reap_lost(lost_after=60)["done"] == 0  # reaped once, not again


def test_the_reconciler_resends_a_lost_message_only_once_the_queue_has_drained(make_task, empty_broker):
    task = make_task()
    long_ago = now() - timedelta(minutes=5)
    unclaimed = row(task, scheduled_for=long_ago, enqueued_at=long_ago)
    waiting = row(task, enqueued_at=now())
    send(waiting)  # a backlog: one message still waiting its turn

    assert reconcile_pending(requeue_after=60)["done"] == 0
    unclaimed.refresh_from_db()
    assert unclaimed.enqueued_at == long_ago  # a backlog is not a lost message
    assert queued_ids() == [waiting.pk]

    purge_broker()  # the broker lost everything (or the backlog drained)
    assert reconcile_pending(requeue_after=60)["done"] == 1
    unclaimed.refresh_from_db()
    assert unclaimed.enqueued_at > long_ago
    # `waiting` was sent moments ago: its turn to be re-sent comes after requeue_after.
    assert queued_ids() == [unclaimed.pk]
    assert reconcile_pending(requeue_after=60)["done"] == 0  # not sent again on the next round


def test_a_long_delay_held_in_the_database_is_sent_when_due_even_behind_a_backlog(make_task, empty_broker):
    task = make_task()
    held = row(task, scheduled_for=now() + timedelta(hours=2), enqueued_at=None)
    due = row(task, scheduled_for=now() - timedelta(seconds=1), enqueued_at=None)
    backlog = row(task, enqueued_at=now())
    send(backlog)

    assert reconcile_pending(requeue_after=60)["done"] == 1

    assert queued_ids() == sorted([backlog.pk, due.pk])
    held.refresh_from_db()
    assert held.enqueued_at is None  # not due for two hours: still only in the database


def test_a_handed_back_attempt_gets_a_new_one_without_using_up_the_retries(make_task):
    task = make_task(retry_count=1, retry_delay=0)
    first = row(task, status=Status.RUNNING, started_at=now())

    handed = finish_and_plan_retry(
        first, Status.LOST, {"error": "Handed back: shut down"}, retryable=True, handed_back=True
    )
    second = handed.next_execution
    assert second is not None and second.attempt == 2 and second.scheduled_for <= now()
    first.refresh_from_db()
    assert first.handed_back and first.status == Status.LOST

    second.transition(Status.RUNNING, started_at=now())
    retried = finish_and_plan_retry(second, Status.FAILED, {"error": "exit 1"}, retryable=True)
    third = retried.next_execution
    assert third is not None and third.attempt == 3  # the one retry is still there

    third.transition(Status.RUNNING, started_at=now())
    assert finish_and_plan_retry(third, Status.FAILED, {"error": "exit 1"}, retryable=True).next_execution is None


def test_a_handed_back_attempt_is_run_again_even_when_the_task_has_no_retries(make_task):
    task = make_task(retry_count=0)
    first = row(task, status=Status.RUNNING, started_at=now())

    outcome = finish_and_plan_retry(
        first, Status.LOST, {"error": "Handed back: shut down"}, retryable=True, handed_back=True
    )

    assert outcome.next_execution is not None
    assert TaskExecution.objects.filter(run_id=first.run_id).count() == 2


def test_one_row_that_makes_the_reaper_fail_does_not_stop_the_others_being_reaped(make_task, empty_broker, caplog):
    # A row whose next attempt cannot be planned: its number is taken already
    # (what the hand-retry race once left behind), so the insert fails.
    task = make_task(command="true", retry_count=1, retry_delay=0)
    stale = now() - timedelta(seconds=90)
    bad = row(task, status=Status.RUNNING, worker="w@a", started_at=stale, heartbeat_at=stale - timedelta(1))
    row(task, run_id=bad.run_id, attempt=2, status=Status.CANCELLED)
    good = [row(task, status=Status.RUNNING, worker="w@b", started_at=stale, heartbeat_at=stale) for _ in range(3)]

    assert reap_lost(lost_after=60) == {"done": 3, "errors": 1}

    bad.refresh_from_db()
    assert bad.status == Status.RUNNING  # its transaction rolled back; the next round tries it again
    assert f"execution {bad.pk}" in caplog.text
    for execution in good:
        execution.refresh_from_db()
        assert execution.status == Status.LOST
        assert TaskExecution.objects.filter(run_id=execution.run_id, attempt=2, status=Status.PENDING).exists()
    assert reap_lost(lost_after=60) == {"done": 0, "errors": 1}  # still isolated on the next round


def _sleeper(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A process leading its own group, as the runner starts commands."""
    return subprocess.Popen(["sleep", "60"], env={"PATH": os.environ["PATH"], **env}, start_new_session=True)


def test_a_starting_worker_kills_what_its_previous_life_left_but_only_processes_that_are_really_ours(make_task):
    task = make_task(retry_count=1, retry_delay=0)
    booted = now()
    running = row(task, status=Status.RUNNING, worker="w@host", started_at=booted - timedelta(minutes=1))
    reaped = row(
        task, status=Status.LOST, worker="w@host", started_at=booted - timedelta(minutes=5),
        finished_at=booted - timedelta(minutes=2), error="Lost: worker w@host stopped answering.",
    )  # fmt: skip
    impostor = row(task, status=Status.LOST, worker="w@host", started_at=booted - timedelta(minutes=5),
                   finished_at=booted - timedelta(minutes=2))  # fmt: skip
    claimed_since = row(task, status=Status.RUNNING, worker="w@host", started_at=booted + timedelta(seconds=1))
    procs = {
        running.pk: _sleeper({"TASKHUB_EXECUTION_ID": str(running.pk)}),
        reaped.pk: _sleeper({"TASKHUB_EXECUTION_ID": str(reaped.pk)}),
        impostor.pk: _sleeper({"TASKHUB_EXECUTION_ID": "someone-else"}),  # the pid, reused by another process
        claimed_since.pk: _sleeper({"TASKHUB_EXECUTION_ID": str(claimed_since.pk)}),
    }
    try:
        for execution in (running, reaped, impostor, claimed_since):
            TaskExecution.objects.filter(pk=execution.pk).update(pid=procs[execution.pk].pid)

        assert recover_host("w@host", started_before=booted) == 1

        assert procs[running.pk].wait(5) == -signal.SIGKILL
        assert procs[reaped.pk].wait(5) == -signal.SIGKILL
        assert procs[impostor.pk].poll() is None  # not ours: left alone
        assert procs[claimed_since.pk].poll() is None  # this life's own: left alone
        running.refresh_from_db()
        claimed_since.refresh_from_db()
        assert running.status == Status.LOST and "worker w@host restarted" in running.error
        assert TaskExecution.objects.get(run_id=running.run_id, attempt=2).status == Status.PENDING
        assert claimed_since.status == Status.RUNNING
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
