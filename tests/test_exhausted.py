"""Exhausted runs: the flag on a run's last attempt, the auto-pause of a task's schedules, and the bulk re-run."""

from __future__ import annotations

import json

import pytest
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from executions.lifecycle import execute, rerun_exhausted
from executions.models import Status, TaskExecution, Trigger
from taskhub.pausing import pause_schedules
from taskhub.schedules import parse_schedule, replace_schedules
from taskhub.services import launch
from tests.conftest import finished, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def run_of(execution: TaskExecution) -> list[TaskExecution]:
    return list(TaskExecution.objects.filter(run_id=execution.run_id).order_by("attempt"))


def run_in_process(task) -> TaskExecution:
    """Launch ``task`` and run every attempt of the run here, in this process (real commands, no worker)."""
    execution = launch(task)
    while True:
        outcome = execute(execution.pk, worker="here", celery_task_id="")
        if outcome.next_execution is None:
            break
        execution = outcome.next_execution
    return TaskExecution.objects.get(pk=outcome.execution.pk)


def schedule_for(task, *, every: int = 3600) -> PeriodicTask:
    interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(
        name=f"{task.name} every {every}s #{PeriodicTask.objects.count()}",
        task="taskhub.launch_scheduled",
        interval=interval,
        kwargs=json.dumps({"task_id": task.pk}),
    )


def test_a_real_worker_marks_only_the_last_attempt_of_a_run_that_used_every_attempt(worker, make_task):
    task = make_task(command="false", retry_count=2, retry_delay=0)
    first = launch(task)

    wait_for(lambda: len(run_of(first)) == 3 and run_of(first)[2].is_terminal, timeout=60)

    attempts = run_of(first)
    assert [a.status for a in attempts] == [Status.FAILED] * 3
    assert [a.exhausted for a in attempts] == [False, False, True]
    assert attempts[2].decided_by.endswith("; every attempt used (3 of 3)")
    assert list(TaskExecution.objects.exhausted_runs()) == [attempts[2]]


def test_a_run_that_succeeds_on_a_retry_is_not_exhausted(make_task):
    task = make_task(command='test "$TASKHUB_ATTEMPT" -ge 2', shell=True, retry_count=2, retry_delay=0)

    last = run_in_process(task)

    assert (last.attempt, last.status, last.exhausted) == (2, Status.SUCCEEDED, False)
    assert not TaskExecution.objects.exhausted_runs().exists()


def test_a_cancelled_run_is_not_exhausted(make_task):
    execution = launch(make_task(command="sleep 5"))
    execution.request_cancel()
    execution.refresh_from_db()
    assert execution.status == Status.CANCELLED and not execution.exhausted


def test_auto_pause_disables_only_the_tasks_schedules_after_n_exhausted_runs_in_a_row(worker, make_task):
    task = make_task(command="false", pause_after_exhausted=2)
    other = make_task(command="false")
    mine = [schedule_for(task), schedule_for(task, every=60)]
    theirs = schedule_for(other)

    finished(launch(task), timeout=60)
    task.refresh_from_db()
    assert task.paused_reason == ""  # one exhausted run is not two in a row
    last = finished(launch(task), timeout=60)

    task.refresh_from_db()
    assert last.exhausted
    assert task.paused_reason.startswith("paused after 2 runs in a row used every attempt without success")
    assert f"execution {last.pk}" in task.paused_reason
    assert [PeriodicTask.objects.get(pk=p.pk).enabled for p in mine] == [False, False]
    assert PeriodicTask.objects.get(pk=theirs.pk).enabled
    assert task.enabled  # still runs by hand


def test_a_successful_run_breaks_the_row_of_exhausted_runs(make_task):
    task = make_task(command='test -e "$FLAG"', shell=True, env={"FLAG": "/nonexistent"}, pause_after_exhausted=2)
    schedule = schedule_for(task)

    run_in_process(task)
    task.env = {"FLAG": "/"}
    task.save()
    run_in_process(task)  # succeeds
    task.env = {"FLAG": "/nonexistent"}
    task.save()
    run_in_process(task)

    task.refresh_from_db()
    assert task.paused_reason == ""
    assert PeriodicTask.objects.get(pk=schedule.pk).enabled
    assert TaskExecution.objects.exhausted_runs().count() == 2


def test_pause_schedules_matches_the_task_id_exactly(make_task):
    task = make_task()
    for _ in range(11):  # task ids 1 and 11 must not be confused
        make_task()
    similar = PeriodicTask.objects.create(
        name="not this one",
        task="taskhub.launch_scheduled",
        interval=IntervalSchedule.objects.create(every=10, period=IntervalSchedule.SECONDS),
        kwargs=json.dumps({"task_id": int(f"{task.pk}1")}),
    )
    own = schedule_for(task)

    assert pause_schedules(task, "paused by a test") == 1

    assert not PeriodicTask.objects.get(pk=own.pk).enabled
    assert PeriodicTask.objects.get(pk=similar.pk).enabled


def test_bulk_rerun_starts_new_runs_of_exhausted_ones_on_a_real_worker(worker, make_task, operator):
    failing = make_task(command="false")
    exhausted = [finished(launch(failing), timeout=60) for _ in range(2)]
    fine = finished(launch(make_task(command="true")), timeout=60)
    failing.command = "true"  # fixed: the re-runs use the task as it is now
    failing.save()

    result = rerun_exhausted([*exhausted, fine], operator, trigger=Trigger.API)

    assert [execution for execution, _ in result.refused] == [fine]
    assert result.refused[0][1] == "not an exhausted run"
    assert len(result.started) == 2
    for new, old in zip(result.started, exhausted, strict=True):
        new = finished(new, timeout=60)
        assert new.run_id != old.run_id and new.attempt == 1
        assert (new.trigger, new.triggered_by_id, new.status) == (Trigger.API, operator.pk, Status.SUCCEEDED)


def test_pausing_disables_the_tasks_own_schedules_and_a_later_save_keeps_them_off(make_task):
    task = make_task()
    (schedule,) = replace_schedules(task, [parse_schedule({"every": "90s"})])
    assert schedule.periodic_task.enabled

    pause_schedules(task, "paused by a test")

    schedule.periodic_task.refresh_from_db()
    assert not schedule.periodic_task.enabled
    task.refresh_from_db()
    task.description = "edited while paused"
    task.save()
    schedule.periodic_task.refresh_from_db()
    assert task.paused_reason == "paused by a test" and not schedule.periodic_task.enabled
