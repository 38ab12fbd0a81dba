"""Task graphs: downstream links, cycles refused, workflow runs with real workers, cancelling one."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from executions import workflows
from executions.models import Status, TaskExecution, Trigger, WorkflowRun
from taskhub.links import set_downstream
from taskhub.models import Condition, Task, TaskLink
from taskhub.services import launch
from tests.conftest import group_members, processes_of_execution, wait_for


def api_as(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def rows(workflow_run_id) -> list[TaskExecution]:
    return list(TaskExecution.objects.filter(workflow_run_id=workflow_run_id).select_related("task").order_by("id"))


def ended(workflow_run_id, timeout: float = 60) -> workflows.Graph:
    """Wait until nothing in the workflow run is pending or running; return its graph."""

    def done():
        g = workflows.graph(WorkflowRun.objects.get(pk=workflow_run_id))
        return g if g.status != "running" else None

    return wait_for(done, timeout=timeout, what=f"workflow run {workflow_run_id} to end")


# -- links and cycles (no worker) --------------------------------------------------------------


@pytest.mark.django_db
def test_a_link_that_closes_a_cycle_is_refused_with_its_path_and_changes_nothing(make_task, admin_user):
    a, b, c = make_task(name="extract"), make_task(name="transform"), make_task(name="load")
    client = api_as(admin_user)
    assert client.patch(f"/api/tasks/{a.pk}/", {"downstream": [{"task": b.pk}]}, format="json").status_code == 200
    assert client.patch(f"/api/tasks/{b.pk}/", {"downstream": [{"task": c.pk}]}, format="json").status_code == 200

    response = client.patch(
        f"/api/tasks/{c.pk}/", {"downstream": [{"task": a.pk, "condition": "on_failure"}]}, format="json"
    )

    assert response.status_code == 400, response.content
    assert "load → extract → transform → load" in response.json()["downstream"][0]
    assert not TaskLink.objects.filter(upstream=c).exists()
    assert not Task.objects.get(pk=c.pk).has_downstream


@pytest.mark.django_db
def test_a_task_cannot_be_its_own_downstream_task_nor_list_one_twice(make_task, admin_user):
    a, b = make_task(), make_task()
    client = api_as(admin_user)

    itself = client.patch(f"/api/tasks/{a.pk}/", {"downstream": [{"task": a.pk}]}, format="json")
    twice = client.patch(f"/api/tasks/{a.pk}/", {"downstream": [{"task": b.pk}, {"task": b.pk}]}, format="json")
    unknown = client.patch(f"/api/tasks/{a.pk}/", {"downstream": [{"task": b.pk, "condition": "often"}]}, format="json")

    assert itself.status_code == 400 and "own downstream" in itself.json()["downstream"][0]
    assert twice.status_code == 400 and "listed twice" in twice.json()["downstream"][0]
    assert unknown.status_code == 400 and "often" in str(unknown.json()["downstream"])
    assert not TaskLink.objects.exists()


@pytest.mark.django_db
def test_downstream_is_read_and_replaced_whole_and_has_downstream_follows_it(make_task, admin_user):
    a, b, c = make_task(), make_task(), make_task()
    client = api_as(admin_user)

    client.patch(f"/api/tasks/{a.pk}/", {"downstream": [{"task": b.pk}, {"task": c.pk, "condition": "on_finish"}]},
                 format="json")  # fmt: skip
    assert sorted(client.get(f"/api/tasks/{a.pk}/").json()["downstream"], key=lambda d: d["task"]) == [
        {"task": b.pk, "condition": "on_success"},
        {"task": c.pk, "condition": "on_finish"},
    ]
    assert Task.objects.get(pk=a.pk).has_downstream

    replaced = client.patch(f"/api/tasks/{a.pk}/", {"downstream": [{"task": c.pk, "condition": "on_failure"}]},
                            format="json")  # fmt: skip
    assert replaced.json()["downstream"] == [{"task": c.pk, "condition": "on_failure"}]

    client.patch(f"/api/tasks/{a.pk}/", {"downstream": []}, format="json")
    assert not TaskLink.objects.filter(upstream=a).exists()
    assert not Task.objects.get(pk=a.pk).has_downstream


@pytest.mark.django_db
def test_the_admin_refuses_a_cycle_in_the_downstream_inline(make_task, admin_client):
    a, b = make_task(name="first"), make_task(name="second")
    set_downstream(a, [(b, Condition.ON_SUCCESS)])
    page = admin_client.get(f"/admin/taskhub/task/{b.pk}/change/")
    form = page.context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None and name != "tags"}
    data.update(env="{}", resources="[]", success_exit_codes="[0]", retry_exit_codes="[]", no_retry_exit_codes="[]")
    for formset in page.context["inline_admin_formsets"]:
        management = formset.formset.management_form
        data.update({management.add_prefix(k): v for k, v in management.initial.items()})
    prefix = "downstream_links"
    data.update({f"{prefix}-TOTAL_FORMS": "1", f"{prefix}-0-downstream": a.pk, f"{prefix}-0-condition": "on_success"})

    response = admin_client.post(f"/admin/taskhub/task/{b.pk}/change/", data)

    assert response.status_code == 200  # the form again, with the error
    assert "second → first → second" in response.content.decode()
    assert not TaskLink.objects.filter(upstream=b).exists()


@pytest.mark.django_db
def test_a_task_without_links_starts_no_workflow_run(make_task):
    execution = launch(make_task())
    assert execution.workflow_run_id is None and not WorkflowRun.objects.exists()


# -- workflow runs with real workers -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_diamond_runs_each_task_once_and_the_join_after_both_branches(celery_processes, make_task, operator):
    celery_processes(concurrency=4)
    a = make_task(name="a", command="true")
    b = make_task(name="b", command="python3 -c 'import time; time.sleep(0.5)'")
    c = make_task(name="c", command="true")
    d = make_task(name="d", command="true")
    set_downstream(a, [(b, Condition.ON_SUCCESS), (c, Condition.ON_SUCCESS)])
    set_downstream(b, [(d, Condition.ON_SUCCESS)])
    set_downstream(c, [(d, Condition.ON_SUCCESS)])

    root = launch(Task.objects.get(pk=a.pk))

    assert root.workflow_run_id == root.run_id
    g = ended(root.workflow_run_id)
    by_task = {}
    for row in rows(root.workflow_run_id):
        by_task.setdefault(row.task.name, []).append(row)
    assert {name: len(runs) for name, runs in by_task.items()} == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert all(r[0].status == Status.SUCCEEDED for r in by_task.values()) and g.status == "succeeded"
    (rb,), (rc,), (rd,) = by_task["b"], by_task["c"], by_task["d"]
    assert rd.started_at >= max(rb.finished_at, rc.finished_at)
    assert rd.trigger == Trigger.UPSTREAM and rd.upstream_execution_id == max([rb, rc], key=lambda r: r.finished_at).pk
    assert rb.upstream_execution_id == rc.upstream_execution_id == root.pk

    # The API shows the same graph: four runs, four links, depths 0, 1, 1, 2.
    data = api_as(operator).get(f"/api/workflow-runs/{root.workflow_run_id}/").json()
    assert data["status"] == "succeeded"
    assert sorted((r["task_name"], r["depth"], r["status"]) for r in data["runs"]) == [
        ("a", 0, "succeeded"),
        ("b", 1, "succeeded"),
        ("c", 1, "succeeded"),
        ("d", 2, "succeeded"),
    ]
    assert len(data["links"]) == 4


@pytest.mark.django_db(transaction=True)
def test_an_on_failure_link_fires_only_after_the_last_attempt_and_on_success_never(worker, make_task):
    flaky = make_task(name="flaky", command="python3 -c 'exit(1)'", retry_count=2, retry_delay=1)
    alert = make_task(name="alert", command="echo alerted")
    publish = make_task(name="publish", command="echo published")
    set_downstream(flaky, [(alert, Condition.ON_FAILURE), (publish, Condition.ON_SUCCESS)])

    root = launch(Task.objects.get(pk=flaky.pk))

    ended(root.workflow_run_id)
    all_rows = rows(root.workflow_run_id)
    attempts = [r for r in all_rows if r.task_id == flaky.pk]
    assert [r.status for r in attempts] == [Status.FAILED] * 3 and attempts[-1].exhausted
    (alerted,) = [r for r in all_rows if r.task_id == alert.pk]
    assert alerted.upstream_execution_id == attempts[-1].pk  # the last attempt, not an earlier one
    assert alerted.created_at >= attempts[-1].finished_at
    assert alerted.status == Status.SUCCEEDED and alerted.stdout == "alerted\n"
    assert not [r for r in all_rows if r.task_id == publish.pk]


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_workflow_run_stops_its_command_and_its_pending_attempts_never_start(
    celery_processes, make_task, operator
):
    celery_processes(concurrency=3)
    root_task = make_task(name="root", command="true")
    # A command with a child: the whole group must go.
    slow = make_task(name="slow", command='python3 -c \'import subprocess; subprocess.run(["sleep", "60"])\'')
    waiting = make_task(name="waiting", command="python3 -c 'exit(1)'", retry_count=1, retry_delay=60)
    after = make_task(name="after", command="echo never")
    set_downstream(root_task, [(slow, Condition.ON_SUCCESS), (waiting, Condition.ON_SUCCESS)])
    set_downstream(slow, [(after, Condition.ON_FINISH)])
    set_downstream(waiting, [(after, Condition.ON_FINISH)])

    root = launch(Task.objects.get(pk=root_task.pk))
    workflow_run_id = root.workflow_run_id
    running = wait_for(
        lambda: TaskExecution.objects.filter(task=slow, status=Status.RUNNING, pid__isnull=False).first(),
        what="the slow command running",
    )
    wait_for(lambda: processes_of_execution(running.pk), what="its sleep started")
    retry = wait_for(
        lambda: TaskExecution.objects.filter(task=waiting, attempt=2, status=Status.PENDING).first(),
        what="the failing task's retry held for its delay",
    )

    response = api_as(operator).post(f"/api/workflow-runs/{workflow_run_id}/cancel/")

    assert response.status_code == 202, response.content
    assert WorkflowRun.objects.get(pk=workflow_run_id).cancelled_by == operator
    running = wait_for(
        lambda: TaskExecution.objects.filter(pk=running.pk, status=Status.CANCELLED).first(),
        what="the running command cancelled",
    )
    wait_for(lambda: not group_members(running.pid) and not processes_of_execution(running.pk),
             what="no process of the cancelled command left")  # fmt: skip
    retry.refresh_from_db()
    assert retry.status == Status.CANCELLED and retry.started_at is None
    g = ended(workflow_run_id)
    assert g.status == "cancelled"
    assert not TaskExecution.objects.filter(task=after).exists()  # on_finish does not fire after a cancel


@pytest.mark.django_db
def test_the_workflow_page_shows_the_graph_and_cancels_only_for_those_who_may_run(
    make_task, admin_client, client, viewer, operator
):
    root_task, after = make_task(name="root"), make_task(name="after")
    set_downstream(root_task, [(after, Condition.ON_SUCCESS)])
    root = launch(Task.objects.get(pk=root_task.pk))  # no worker: it stays pending
    page_url = f"/admin/console/workflows/{root.workflow_run_id}/"

    page = admin_client.get(page_url)
    assert page.status_code == 200
    assert b'data-task="root"' in page.content and b'data-status="pending"' in page.content
    assert b"th-cancel-workflow" in page.content

    client.force_login(viewer)
    assert b"th-cancel-workflow" not in client.get(page_url).content
    assert client.post(page_url).status_code == 403
    root.refresh_from_db()
    assert root.status == Status.PENDING

    client.force_login(operator)
    assert client.post(page_url).status_code == 302
    root.refresh_from_db()
    assert root.status == Status.CANCELLED
    assert b'data-status="cancelled"' in client.get(page_url).content
    listed = admin_client.get("/admin/executions/workflowrun/")
    assert listed.status_code == 200 and str(root.workflow_run_id).encode() in listed.content
