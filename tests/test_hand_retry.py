"""Retrying by hand and running again, with real workers: the one rule for new attempts."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from executions.models import Status, TaskExecution, Trigger
from taskhub.services import launch
from tests.conftest import finished, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def api_as(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def attempts(run_id) -> list[TaskExecution]:
    return list(TaskExecution.objects.filter(run_id=run_id).order_by("attempt"))


def test_a_hand_retry_while_the_next_attempt_waits_is_refused_and_the_run_ends_with_every_attempt_finished(
    worker, make_task, operator
):
    task = make_task(command="python3 -c 'exit(1)'", retry_count=3, retry_delay=3)
    first = finished(launch(task))
    assert first.status == Status.FAILED
    second = wait_for(
        lambda: TaskExecution.objects.filter(run_id=first.run_id, attempt=2).first(), what="attempt 2 planned"
    )
    assert second.status == Status.PENDING  # waiting out its 3 s delay

    response = api_as(operator).post(f"/api/executions/{first.pk}/retry/")

    assert response.status_code == 409, response.content
    assert "attempt 2 of its run is still pending" in response.json()["detail"]
    assert len(attempts(first.run_id)) == 2  # nothing created
    # The run goes on by its policy and ends with every attempt terminal, none left running.
    wait_for(lambda: len(attempts(first.run_id)) == 4 and all(a.is_terminal for a in attempts(first.run_id)),
             timeout=60, what="the run's four attempts to finish")  # fmt: skip
    rows = attempts(first.run_id)
    assert [a.status for a in rows] == [Status.FAILED] * 4
    assert rows[-1].trigger == Trigger.RETRY


def test_a_hand_retry_of_a_spent_run_adds_one_attempt_labelled_by_where_it_came_from(worker, make_task, operator):
    task = make_task(command="python3 -c 'exit(3)'", retry_count=0)
    first = finished(launch(task))

    response = api_as(operator).post(f"/api/executions/{first.pk}/retry/")

    assert response.status_code == 202, response.content
    added = finished(TaskExecution.objects.get(pk=response.json()["id"]))
    assert (added.run_id, added.attempt, added.trigger) == (first.run_id, 2, Trigger.API)
    assert added.triggered_by == operator and added.status == Status.FAILED and added.exit_code == 3
    assert len(attempts(first.run_id)) == 2  # no automatic retry after it: the policy's attempts are spent


def test_a_succeeded_run_is_not_retried_but_runs_again_as_a_new_run(worker, make_task, operator):
    task = make_task(command="echo first")
    done = finished(launch(task))
    assert done.status == Status.SUCCEEDED

    refused = api_as(operator).post(f"/api/executions/{done.pk}/retry/")
    assert refused.status_code == 409 and "run again" in refused.json()["detail"]
    assert len(attempts(done.run_id)) == 1

    task.command = "echo second"
    task.save()
    again = api_as(operator).post(f"/api/executions/{done.pk}/run-again/")

    assert again.status_code == 202, again.content
    new = finished(TaskExecution.objects.get(pk=again.json()["id"]))
    assert new.run_id != done.run_id and new.attempt == 1 and new.trigger == Trigger.API
    assert new.stdout == "second\n" and new.command == "echo second"  # the task as it is now


def test_an_edit_of_the_task_does_not_change_what_a_pending_attempt_runs(worker, make_task):
    task = make_task(command="python3 -c 'exit(1)'", retry_count=1, retry_delay=2)
    first = finished(launch(task))
    second = wait_for(lambda: TaskExecution.objects.filter(run_id=first.run_id, attempt=2).first())
    task.command = "echo edited"
    task.env = {"X": "1"}
    task.save()

    second = finished(second)

    assert second.status == Status.FAILED and second.stdout == ""
    assert second.command == "python3 -c 'exit(1)'" and second.argv == ["python3", "-c", "exit(1)"]
    assert second.env == {}


@pytest.mark.django_db
def test_the_api_shows_what_an_execution_ran_with_env_values_only_to_those_who_may_change_tasks(
    make_task, operator, viewer
):
    task = make_task(command="deploy --fast", env={"TOKEN": "t0ken-value"})
    execution = launch(task)

    as_viewer = api_as(viewer).get(f"/api/executions/{execution.pk}/").json()
    as_operator = api_as(operator).get(f"/api/executions/{execution.pk}/").json()

    assert as_viewer["command"] == "deploy --fast" and as_viewer["argv"] == ["deploy", "--fast"]
    assert as_viewer["env"] == {"TOKEN": "••••"} and "t0ken-value" not in str(
        api_as(viewer).get("/api/executions/").json()
    )
    assert as_operator["env"] == {"TOKEN": "t0ken-value"}
