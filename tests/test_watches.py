"""Waiting for another task (wait_for_task): real workers, a launch that waits and one that gives up."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from executions.models import Status
from taskhub.models import WaitState
from taskhub.services import launch
from tests.conftest import finished, wait_for


@pytest.fixture
def quick_worker(celery_processes):
    """A worker whose waiting launches look again every half second."""
    return celery_processes(env={"TASKHUB_WATCH_POLL": "0.5"})


@pytest.mark.django_db(transaction=True)
def test_a_launch_waits_until_the_watched_task_succeeds_then_runs(quick_worker, make_task):
    load = make_task(name="load", command="python3 -c 'import time; time.sleep(3)'")
    report = make_task(name="report", command="echo reported", wait_for_task=load, wait_timeout=60)
    loading = launch(load)
    wait_for(lambda: loading.refresh_from_db() or loading.status == Status.RUNNING, what="load running")

    waiting = launch(report)
    first_due = waiting.scheduled_for

    done = finished(waiting, timeout=60)
    loading.refresh_from_db()
    assert loading.status == Status.SUCCEEDED
    assert done.status == Status.SUCCEEDED and done.stdout == "reported\n"
    assert done.started_at >= loading.finished_at  # it waited for the load to succeed
    assert done.scheduled_for > first_due  # made due again while it waited


@pytest.mark.django_db(transaction=True)
def test_a_launch_that_waits_too_long_fails_with_the_reason_and_never_runs(quick_worker, make_task):
    load = make_task(name="load", command="python3 -c 'exit(1)'")
    report = make_task(
        name="report", command="echo reported", wait_for_task=load, wait_for_status=WaitState.SUCCEEDED, wait_timeout=2
    )
    assert finished(launch(load)).status == Status.FAILED

    done = finished(launch(report), timeout=30)

    assert done.status == Status.FAILED and done.stdout == "" and done.exit_code is None
    assert "for task “load” to show a latest run that has succeeded; its latest run is failed" in done.error
    assert "not retried" in done.decided_by
    assert (done.finished_at - done.created_at).total_seconds() >= 2


@pytest.mark.django_db(transaction=True)
def test_a_launch_waiting_for_a_failure_runs_once_the_watched_task_has_failed(quick_worker, make_task):
    probe = make_task(name="probe", command="python3 -c 'exit(3)'")
    repair = make_task(name="repair", command="echo repaired", wait_for_task=probe, wait_for_status=WaitState.FAILED)
    assert finished(launch(probe)).status == Status.FAILED

    assert finished(launch(repair)).stdout == "repaired\n"


@pytest.mark.django_db
def test_a_task_cannot_wait_for_itself(make_task):
    task = make_task()
    task.wait_for_task = task
    with pytest.raises(ValidationError) as caught:
        task.full_clean()
    assert "cannot wait for its own runs" in str(caught.value)
