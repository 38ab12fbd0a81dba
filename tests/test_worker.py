"""The product's defining behaviour, through real `celery worker` processes and a real broker."""

from __future__ import annotations

import json
import sys
import time

import pytest
from django.db import connection
from django.utils.timezone import now
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from executions.models import Status, TaskExecution, Trigger
from executions.tasks import run_execution
from taskhub.services import launch
from tests.conftest import async_commit_database_url, finished, group_members, processes_of_execution, wait_for

PY = sys.executable

pytestmark = pytest.mark.django_db(transaction=True)


def run_attempts(run_id, count: int, timeout: float = 60) -> list[TaskExecution]:
    """Wait until the run has ``count`` attempts, the last one finished; return them in order."""

    def done():
        rows = list(TaskExecution.objects.filter(run_id=run_id).order_by("attempt"))
        return rows if len(rows) >= count and rows[-1].is_terminal else None

    return wait_for(done, timeout=timeout, what=f"{count} finished attempts of run {run_id}")


@pytest.mark.usefixtures("both_stacks")
def test_a_command_past_its_timeout_ends_timeout_and_its_process_is_gone(worker, make_task):
    task = make_task(command=f"{PY} -c 'import time; time.sleep(10)'", timeout=5, kill_grace=2)

    execution = finished(launch(task), timeout=20)

    assert execution.status == Status.TIMEOUT
    assert 4.5 <= execution.duration.total_seconds() <= 7.5
    assert execution.signal is not None  # stopped by TaskHub's SIGTERM
    assert execution.exit_code is None
    assert "Timed out" in execution.error
    # Killed before the outcome was written; the kernel may take a moment to finish them off.
    wait_for(lambda: group_members(execution.pid) == [], timeout=1, what="the timed-out group to be gone")
    assert processes_of_execution(execution.pk) == []


@pytest.mark.usefixtures("both_stacks")
def test_a_failing_command_with_two_retries_yields_three_failed_attempts_of_one_run(worker, make_task):
    task = make_task(command=f"{PY} -c 'exit(1)'", retry_count=2, retry_delay=0)

    first = launch(task)
    attempts = run_attempts(first.run_id, 3)
    time.sleep(1)  # nothing more may appear after the last attempt

    attempts = list(TaskExecution.objects.filter(run_id=first.run_id).order_by("attempt"))
    assert [a.attempt for a in attempts] == [1, 2, 3]
    assert [a.status for a in attempts] == [Status.FAILED] * 3
    assert [a.exit_code for a in attempts] == [1, 1, 1]
    assert [a.trigger for a in attempts] == [Trigger.MANUAL, Trigger.RETRY, Trigger.RETRY]
    assert TaskExecution.objects.filter(task=task).count() == 3


def test_exponential_backoff_starts_retries_about_1_2_and_4_seconds_after_the_previous_attempt(worker, make_task):
    task = make_task(command="false", retry_count=3, retry_delay=1, retry_backoff=2)

    attempts = run_attempts(launch(task).run_id, 4)

    gaps = [(b.started_at - a.finished_at).total_seconds() for a, b in zip(attempts, attempts[1:], strict=False)]
    for gap, expected in zip(gaps, [1, 2, 4], strict=True):
        assert expected - 0.05 <= gap <= expected + 0.9, gaps
    for b in attempts[1:]:
        # The row says when it was due, and the worker started it then.
        assert abs((b.started_at - b.scheduled_for).total_seconds()) < 0.9


def test_a_shell_command_whose_children_ignore_sigterm_leaves_no_process_after_its_timeout(worker, make_task):
    script = "trap '' TERM; (trap '' TERM; sleep 60) & (trap '' TERM; (trap '' TERM; sleep 60) & sleep 60) & sleep 60"
    task = make_task(command=script, shell=True, timeout=2, kill_grace=1)
    execution = launch(task)

    def children_started():
        execution.refresh_from_db()
        return len(processes_of_execution(execution.pk)) >= 4

    wait_for(children_started, timeout=10, what="the command's children to start")
    execution = finished(execution, timeout=15)

    assert execution.status == Status.TIMEOUT
    assert execution.signal == 9  # SIGTERM was ignored: SIGKILL after the grace
    wait_for(lambda: group_members(execution.pid) == [], timeout=1, what="the killed group to be gone")
    assert processes_of_execution(execution.pk) == []


def _peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_50_mb_of_output_is_capped_keeping_both_ends_and_worker_memory_stays_bounded(celery_processes, make_task):
    worker = celery_processes(concurrency=1)
    warm = finished(launch(make_task(command="echo warm")))
    assert warm.status == Status.SUCCEEDED
    [pool_pid] = worker.pool_pids()
    before = _peak_rss_kb(pool_pid)

    script = "echo FIRST-LINE; head -c 50000000 /dev/zero | tr '\\0' x; echo; echo LAST-LINE; exit 3"
    execution = finished(launch(make_task(command=script, shell=True, timeout=60)), timeout=60)

    growth_kb = _peak_rss_kb(pool_pid) - before
    assert execution.status == Status.FAILED
    assert execution.exit_code == 3
    assert execution.output_truncated is True
    assert execution.stdout.startswith("FIRST-LINE\n")
    assert execution.stdout.rstrip().endswith("LAST-LINE")
    assert "TaskHub cut" in execution.stdout
    assert len(execution.stdout.encode()) < 1024 * 1024 + 200  # TASKHUB_OUTPUT_LIMIT, 1 MiB, plus the marker
    # 50 MB went through the pool process; it kept at most a few MiB of it.
    assert growth_kb < 16 * 1024, f"pool process peak RSS grew by {growth_kb} KiB"


def test_output_that_is_not_utf8_is_stored_with_replacement_characters(worker, make_task):
    command = (
        f"{PY} -c \"import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end'); sys.stderr.buffer.write(b'\\xc3')\""
    )
    execution = finished(launch(make_task(command=command)))

    assert execution.status == Status.SUCCEEDED
    assert execution.stdout == "ok \ufffd\ufffd end"
    assert execution.stderr == "\ufffd"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"command": "no-such-command-xyz --flag"}, "command not found: 'no-such-command-xyz'"),
        ({"command": "true", "working_dir": "/no/such/dir"}, "working directory '/no/such/dir' does not exist"),
        ({"command": "{tmp}/not-executable.sh"}, "permission denied executing '{tmp}/not-executable.sh'"),
    ],
)
def test_a_command_that_cannot_start_fails_at_once_with_the_reason_and_is_not_retried(
    worker, make_task, tmp_path, fields, reason
):
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    fields = {k: v.replace("{tmp}", str(tmp_path)) for k, v in fields.items()}
    reason = reason.replace("{tmp}", str(tmp_path))
    task = make_task(retry_count=3, retry_delay=0, **fields)

    execution = finished(launch(task))

    assert execution.status == Status.FAILED
    assert reason in execution.error
    assert execution.exit_code is None
    assert TaskExecution.objects.filter(run_id=execution.run_id).count() == 1
    # The worker is fine and keeps working.
    assert finished(launch(make_task(command="echo still-alive"))).stdout == "still-alive\n"


def test_cancelling_a_running_execution_stops_it_within_two_seconds_plus_grace(worker, make_task):
    task = make_task(command="sleep 60", timeout=120, kill_grace=1)
    execution = launch(task)
    wait_for(lambda: processes_of_execution(execution.pk), timeout=10, what="the command to start")
    execution.refresh_from_db()
    assert execution.status == Status.RUNNING

    asked = time.monotonic()
    assert execution.request_cancel() is True
    execution = finished(execution, timeout=10)
    stopped_after = time.monotonic() - asked

    assert execution.status == Status.CANCELLED
    assert stopped_after < 2 + task.kill_grace
    assert processes_of_execution(execution.pk) == []
    assert TaskExecution.objects.filter(run_id=execution.run_id).count() == 1  # cancelled is not retried


@pytest.mark.usefixtures("both_stacks")
def test_the_same_run_message_delivered_twice_runs_the_command_once(worker, make_task, tmp_path):
    marker = tmp_path / "runs"
    task = make_task(command=f"sh -c 'echo run >> {marker}; sleep 1'", timeout=30)
    execution = launch(task)
    # A second copy of the message, as a redelivery would send it.
    run_execution.apply_async(args=[execution.pk], queue="default")

    finished(execution)
    wait_for(lambda: "duplicate or late message ignored" in worker.log(), timeout=10, what="the duplicate to be seen")

    assert marker.read_text().splitlines() == ["run"]
    assert execution.status == Status.SUCCEEDED


def test_a_row_created_outside_the_launch_path_runs_when_its_message_arrives(worker, make_task):
    task = make_task(command="echo direct")
    execution = TaskExecution.objects.create(
        task=task, status=Status.PENDING, trigger=Trigger.API, attempt=1, scheduled_for=now()
    )

    run_execution.apply_async(args=[execution.pk])

    execution = finished(execution)
    assert execution.status == Status.SUCCEEDED
    assert execution.stdout == "direct\n"
    assert execution.started_at is not None and execution.worker


def test_the_command_sees_its_task_execution_run_and_attempt_in_its_environment(worker, make_task):
    task = make_task(
        command=f"{PY} -c \"import json, os; print(json.dumps({{k: v for k, v in os.environ.items() if k.startswith(('TASKHUB_', 'GREETING'))}}))\"",
        env={"GREETING": "hello"},
    )
    execution = finished(launch(task))

    seen = json.loads(execution.stdout)
    assert seen == {
        "GREETING": "hello",
        "TASKHUB_TASK": task.name,
        "TASKHUB_EXECUTION_ID": str(execution.pk),
        "TASKHUB_RUN_ID": str(execution.run_id),
        "TASKHUB_ATTEMPT": "1",
    }  # no TASKHUB_ARTIFACTS_DIR: the task does not keep artifacts


def test_a_beat_schedule_fires_and_its_executions_carry_trigger_schedule(celery_processes, make_task):
    celery_processes()
    task = make_task(command="echo tick")
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name=f"schedule {task.name}",
        task="taskhub.launch_scheduled",
        interval=every_second,
        kwargs=json.dumps({"task_id": task.pk}),
    )
    celery_processes.beat()

    rows = wait_for(
        lambda: (
            list(TaskExecution.objects.filter(task=task, status=Status.SUCCEEDED)[:2])
            if TaskExecution.objects.filter(task=task, status=Status.SUCCEEDED).count() >= 2
            else None
        ),
        timeout=30,
        what="two scheduled runs",
    )
    assert {r.trigger for r in rows} == {Trigger.SCHEDULE}
    assert {r.stdout for r in rows} == {"tick\n"}


def test_a_disabled_task_is_skipped_by_its_schedule(celery_processes, make_task):
    worker = celery_processes()
    task = make_task(command="echo never", enabled=False)
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name=f"schedule {task.name}", task="taskhub.launch_scheduled", interval=every_second,
        kwargs=json.dumps({"task_id": task.pk}),
    )  # fmt: skip
    celery_processes.beat()

    wait_for(lambda: "disabled task" in worker.log(), timeout=30, what="the worker to skip the disabled task")
    assert TaskExecution.objects.filter(task=task).count() == 0


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's synchronous_commit")
def test_a_worker_whose_commits_do_not_wait_for_their_flush_says_so_at_start(celery_processes):
    warning = "synchronous_commit is off for this worker"
    durable = celery_processes()
    relaxed = celery_processes(env={"DATABASE_URL": async_commit_database_url()})
    assert warning in relaxed.log()
    assert warning not in durable.log()
