"""`manage.py run_task` and `purge_executions`, run as real processes against the test database."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils.timezone import now

from executions.models import Status, TaskExecution, Trigger
from tests.conftest import ROOT, subprocess_env


def manage(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.django_db(transaction=True)
def test_run_task_wait_follows_the_retries_and_exits_0_on_success(worker, make_task):
    make_task(
        name="flaky",
        command='test "$TASKHUB_ATTEMPT" -ge 2 || { echo "attempt $TASKHUB_ATTEMPT fails" >&2; exit 1; }; echo fine',
        shell=True,
        retry_count=2,
        retry_delay=0,
    )
    done = manage("run_task", "flaky", "--wait", "--poll", "0.1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "attempt 1: failed, exit code 1" in done.stdout
    assert "attempt 1 fails" in done.stdout
    assert "attempt 2: succeeded" in done.stdout
    assert list(TaskExecution.objects.values_list("trigger", flat=True).order_by("attempt")) == [
        Trigger.CLI,
        Trigger.RETRY,
    ]


@pytest.mark.django_db(transaction=True)
def test_run_task_wait_exits_1_when_the_run_fails(worker, make_task):
    make_task(name="broken", command="false")
    done = manage("run_task", "broken", "--wait", "--poll", "0.1")
    assert done.returncode == 1
    assert "attempt 1: failed, exit code 1" in done.stdout


@pytest.mark.django_db(transaction=True)
def test_run_task_names_the_known_tasks_when_the_name_is_wrong(make_task):
    make_task(name="alpha")
    done = manage("run_task", "alhpa")
    assert done.returncode == 1
    assert "No task named 'alhpa'. Known tasks: alpha." in done.stderr
    assert not TaskExecution.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_run_task_refuses_a_disabled_task(make_task):
    make_task(name="off", enabled=False)
    done = manage("run_task", "off")
    assert done.returncode == 1
    assert "is disabled" in done.stderr


@pytest.mark.django_db(transaction=True)
def test_purge_deletes_only_old_finished_executions(make_task):
    task = make_task()
    old = now() - timedelta(days=40)
    old_done = TaskExecution.objects.create(task=task, status=Status.SUCCEEDED, created_at=old)
    old_running = TaskExecution.objects.create(task=task, status=Status.RUNNING, created_at=old)
    recent = TaskExecution.objects.create(task=task, status=Status.FAILED)

    done = manage("purge_executions", "--older-than", "30")

    assert done.returncode == 0, done.stderr
    assert "Deleted 1 execution(s)" in done.stdout
    assert set(TaskExecution.objects.values_list("pk", flat=True)) == {old_running.pk, recent.pk}
    assert not TaskExecution.objects.filter(pk=old_done.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_purge_dry_run_counts_what_it_would_delete_by_status_and_deletes_nothing(make_task):
    task = make_task()
    old = now() - timedelta(days=40)
    for status in (Status.SUCCEEDED, Status.SUCCEEDED, Status.FAILED, Status.RUNNING):
        TaskExecution.objects.create(task=task, status=status, created_at=old)
    TaskExecution.objects.create(task=task, status=Status.FAILED)

    done = manage("purge_executions", "--older-than", "30", "--dry-run")

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "Would delete 3 execution(s) older than 30 day(s): failed 1, succeeded 2. Dry run: nothing was deleted."
    )
    assert TaskExecution.objects.count() == 5
