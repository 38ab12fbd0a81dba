"""The REST API: authentication, permissions, validation, run / cancel / retry, filters."""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from executions.models import Status, TaskExecution
from taskhub.models import Task
from tests.conftest import wait_for

pytestmark = pytest.mark.django_db


def api_as(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_the_api_requires_authentication(client, make_task):
    make_task()
    assert client.get("/api/tasks/").status_code in (401, 403)
    assert client.get("/api/executions/").status_code in (401, 403)


def test_a_token_authenticates(operator, make_task):
    make_task(name="visible")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=operator).key}")
    response = client.get("/api/tasks/")
    assert response.status_code == 200
    assert [t["name"] for t in response.json()["results"]] == ["visible"]


def test_an_outsider_may_not_even_read(outsider, make_task):
    make_task()
    assert api_as(outsider).get("/api/tasks/").status_code == 403


def test_an_operator_creates_a_task_and_bad_input_gets_field_errors(operator):
    client = api_as(operator)
    bad = client.post(
        "/api/tasks/",
        {"name": "x", "command": "echo 'open", "timeout": 0, "retry_count": -1, "env": {"9X": "y"}},
        format="json",
    )
    assert bad.status_code == 400
    errors = bad.json()
    assert set(errors) >= {"timeout", "retry_count", "env"}
    assert not Task.objects.exists()

    bad_command = client.post("/api/tasks/", {"name": "x", "command": "echo 'open"}, format="json")
    assert bad_command.status_code == 400
    assert "Cannot split this command line" in bad_command.json()["command"][0]

    good = client.post("/api/tasks/", {"name": "backup", "command": "backup.sh --all", "timeout": 30}, format="json")
    assert good.status_code == 201, good.json()
    assert Task.objects.get(name="backup").timeout == 30


def test_run_returns_202_with_the_pending_execution(operator, make_task):
    task = make_task()
    response = api_as(operator).post(f"/api/tasks/{task.pk}/run/")
    assert response.status_code == 202
    body = response.json()
    assert (body["status"], body["trigger"], body["attempt"], body["task"]) == ("pending", "api", 1, task.pk)
    assert TaskExecution.objects.get(pk=body["id"]).triggered_by == operator


def test_running_a_disabled_task_is_a_conflict_with_the_reason(operator, make_task):
    task = make_task(enabled=False)
    response = api_as(operator).post(f"/api/tasks/{task.pk}/run/")
    assert response.status_code == 409
    assert "is disabled" in response.json()["detail"]


def test_a_viewer_may_read_but_not_run_and_does_not_see_env_values(viewer, make_task):
    task = make_task(env={"DB_PASSWORD": "hunter2"})
    client = api_as(viewer)
    detail = client.get(f"/api/tasks/{task.pk}/")
    assert detail.status_code == 200
    assert detail.json()["env"] == {"DB_PASSWORD": "••••"}
    assert client.post(f"/api/tasks/{task.pk}/run/").status_code == 403
    assert not TaskExecution.objects.exists()


def test_an_operator_sees_env_values(operator, make_task):
    task = make_task(env={"DB_PASSWORD": "hunter2"})
    assert api_as(operator).get(f"/api/tasks/{task.pk}/").json()["env"] == {"DB_PASSWORD": "hunter2"}


def test_executions_filter_by_task_status_and_run(operator, make_task):
    a, b = make_task(), make_task()
    failed = TaskExecution.objects.create(task=a, status=Status.FAILED)
    TaskExecution.objects.create(task=a, status=Status.SUCCEEDED)
    TaskExecution.objects.create(task=b, status=Status.FAILED)
    client = api_as(operator)

    def ids(query: str) -> list[int]:
        return [e["id"] for e in client.get(f"/api/executions/?{query}").json()["results"]]

    assert ids(f"task={a.pk}&status=failed") == [failed.pk]
    assert ids(f"run_id={failed.run_id}") == [failed.pk]
    assert len(ids("status=failed")) == 2


def test_cancel_of_a_finished_execution_is_a_conflict(operator, make_task):
    done = TaskExecution.objects.create(task=make_task(), status=Status.SUCCEEDED)
    response = api_as(operator).post(f"/api/executions/{done.pk}/cancel/")
    assert response.status_code == 409
    assert "only pending or running ones can be cancelled" in response.json()["detail"]


def test_cancel_of_a_pending_execution_cancels_it(operator, make_task):
    pending = TaskExecution.objects.create(task=make_task(), status=Status.PENDING)
    response = api_as(operator).post(f"/api/executions/{pending.pk}/cancel/")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"


def test_retry_starts_a_new_attempt_and_refuses_an_unfinished_one(operator, make_task):
    task = make_task()
    failed = TaskExecution.objects.create(task=task, status=Status.FAILED)
    running = TaskExecution.objects.create(task=task, status=Status.RUNNING)
    client = api_as(operator)

    response = client.post(f"/api/executions/{failed.pk}/retry/")
    assert response.status_code == 202
    assert (response.json()["run_id"], response.json()["attempt"]) == (str(failed.run_id), 2)
    assert client.post(f"/api/executions/{running.pk}/retry/").status_code == 409


def test_the_openapi_schema_describes_the_endpoints(operator):
    response = api_as(operator).get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for expected in ("/api/tasks/", "/api/tasks/{id}/run/", "/api/executions/", "/api/executions/{id}/cancel/"):
        assert expected in paths


@pytest.mark.django_db(transaction=True)
def test_a_run_started_through_the_api_completes_on_a_real_worker(worker, operator, make_task):
    task = make_task(command="echo via-api")
    body = api_as(operator).post(f"/api/tasks/{task.pk}/run/").json()

    def finished():
        data = api_as(operator).get(f"/api/executions/{body['id']}/").json()
        return data if data["status"] not in ("pending", "running") else None

    data = wait_for(finished, timeout=30, what="the API-launched run")
    assert (data["status"], data["stdout"], data["exit_code"]) == ("succeeded", "via-api\n", 0)
    assert data["duration"] is not None
