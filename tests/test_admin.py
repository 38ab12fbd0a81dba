"""The admin pages: lists, the read-only execution page, actions and permissions."""

from __future__ import annotations

import pytest
from django.urls import reverse

from executions.models import Status, TaskExecution
from taskhub.models import Task

pytestmark = pytest.mark.django_db


def test_the_task_list_and_page_show_the_task(as_operator, make_task):
    task = make_task(name="nightly-backup", command="backup --all")
    listing = as_operator.get(reverse("admin:taskhub_task_changelist"))
    assert listing.status_code == 200
    assert b"nightly-backup" in listing.content
    page = as_operator.get(reverse("admin:taskhub_task_change", args=[task.pk]))
    assert page.status_code == 200
    assert b"backup --all" in page.content


def test_an_invalid_task_form_shows_each_error_and_saves_nothing(as_operator):
    form = {
        "name": "bad",
        "description": "",
        "command": "echo 'unbalanced",
        "env": '{"1BAD": "x"}',
        "working_dir": "",
        "timeout": "0",
        "kill_grace": "10",
        "retry_count": "-1",
        "retry_delay": "60",
        "retry_backoff": "1",
        "retry_delay_max": "3600",
        "queue": "default",
        "priority": "5",
        "enabled": "on",
        "executions-TOTAL_FORMS": "0",
        "executions-INITIAL_FORMS": "0",
    }
    response = as_operator.post(reverse("admin:taskhub_task_add"), form)
    assert response.status_code == 200
    body = response.content.decode()
    assert "Timeout must be between 1 and 604800 seconds" in body
    assert "Retry count must be between 0 and 1000." in body
    assert "&#x27;1BAD&#x27; is not a valid variable name" in body
    assert "Cannot split this command line" in body
    assert not Task.objects.exists()

    response = as_operator.post(reverse("admin:taskhub_task_add"), {**form, "command": "   "})
    assert "Enter a command to run." in response.content.decode()


def test_run_now_launches_a_manual_execution_for_the_operator(as_operator, make_task, operator):
    task = make_task()
    response = as_operator.post(
        reverse("admin:taskhub_task_changelist"), {"action": "run_now", "_selected_action": [task.pk]}, follow=True
    )
    assert b"Started 1 task(s)" in response.content
    execution = TaskExecution.objects.get(task=task)
    assert (execution.status, execution.trigger, execution.triggered_by) == (Status.PENDING, "manual", operator)


def test_run_now_refuses_a_disabled_task_with_a_message(as_operator, make_task):
    task = make_task(enabled=False)
    response = as_operator.post(
        reverse("admin:taskhub_task_changelist"), {"action": "run_now", "_selected_action": [task.pk]}, follow=True
    )
    assert b"Not started, disabled" in response.content
    assert not TaskExecution.objects.exists()


def test_a_viewer_cannot_run_tasks(as_viewer, make_task):
    task = make_task()
    listing = as_viewer.get(reverse("admin:taskhub_task_changelist"))
    assert b"run_now" not in listing.content
    as_viewer.post(reverse("admin:taskhub_task_changelist"), {"action": "run_now", "_selected_action": [task.pk]})
    assert not TaskExecution.objects.exists()


def test_a_viewer_sees_environment_names_but_not_their_values(as_viewer, make_task, client, operator):
    task = make_task(env={"API_TOKEN": "s3cr3t-value"})
    page = as_viewer.get(reverse("admin:taskhub_task_change", args=[task.pk]))
    assert page.status_code == 200
    assert b"API_TOKEN" in page.content
    assert b"s3cr3t-value" not in page.content

    client.force_login(operator)
    assert b"s3cr3t-value" in client.get(reverse("admin:taskhub_task_change", args=[task.pk])).content


def test_an_outsider_is_kept_out(client, outsider, make_task):
    client.force_login(outsider)
    response = client.get(reverse("admin:taskhub_task_changelist"))
    assert response.status_code in (302, 403)


def test_the_execution_page_is_read_only_and_shows_the_output(as_operator, make_task):
    execution = TaskExecution.objects.create(
        task=make_task(name="report"),
        status=Status.FAILED,
        exit_code=3,
        stdout="line one\n<b>not bold</b>",
        stderr="boom",
        error="The command exited with code 3.",
    )
    page = as_operator.get(reverse("admin:executions_taskexecution_change", args=[execution.pk]))
    body = page.content.decode()
    assert page.status_code == 200
    assert "line one" in body and "&lt;b&gt;not bold&lt;/b&gt;" in body  # escaped
    assert "The command exited with code 3." in body
    assert 'name="_save"' not in body  # nothing to edit


def test_the_execution_list_filters_by_status(as_operator, make_task):
    task = make_task()
    TaskExecution.objects.create(task=task, status=Status.FAILED, stdout="FAILED-ONE")
    TaskExecution.objects.create(task=task, status=Status.SUCCEEDED, stdout="OK-ONE")
    response = as_operator.get(reverse("admin:executions_taskexecution_changelist") + "?status__exact=failed")
    rows = response.context["cl"].result_list
    assert [r.status for r in rows] == [Status.FAILED]


def test_cancel_action_cancels_pending_and_reports_finished_ones(as_operator, make_task):
    task = make_task()
    pending = TaskExecution.objects.create(task=task, status=Status.PENDING)
    done = TaskExecution.objects.create(task=task, status=Status.SUCCEEDED)
    response = as_operator.post(
        reverse("admin:executions_taskexecution_changelist"),
        {"action": "cancel", "_selected_action": [pending.pk, done.pk]},
        follow=True,
    )
    pending.refresh_from_db()
    done.refresh_from_db()
    assert pending.status == Status.CANCELLED
    assert done.status == Status.SUCCEEDED
    assert f"Already finished, not cancelled: #{done.pk} (succeeded)".encode() in response.content


def test_retry_action_starts_a_new_attempt_of_the_same_run(as_operator, make_task):
    failed = TaskExecution.objects.create(task=make_task(), status=Status.FAILED, attempt=1)
    as_operator.post(
        reverse("admin:executions_taskexecution_changelist"), {"action": "retry", "_selected_action": [failed.pk]}
    )
    new = TaskExecution.objects.exclude(pk=failed.pk).get()
    assert (new.run_id, new.attempt, new.status) == (failed.run_id, 2, Status.PENDING)


def test_the_retry_action_refuses_a_run_still_going_with_a_message_and_creates_nothing(as_operator, make_task):
    task = make_task()
    failed = TaskExecution.objects.create(task=task, status=Status.FAILED, attempt=1)
    waiting = TaskExecution.objects.create(task=task, run_id=failed.run_id, status=Status.PENDING, attempt=2)

    response = as_operator.post(
        reverse("admin:executions_taskexecution_changelist"),
        {"action": "retry", "_selected_action": [failed.pk]},
        follow=True,
    )

    assert f"#{failed.pk}: attempt 2 of its run is still pending".encode() in response.content
    assert set(TaskExecution.objects.values_list("pk", flat=True)) == {failed.pk, waiting.pk}


def test_the_run_again_action_starts_a_new_run_of_a_succeeded_one(as_operator, make_task, operator):
    done = TaskExecution.objects.create(task=make_task(command="echo hi"), status=Status.SUCCEEDED)

    as_operator.post(
        reverse("admin:executions_taskexecution_changelist"), {"action": "run_again", "_selected_action": [done.pk]}
    )

    new = TaskExecution.objects.exclude(pk=done.pk).get()
    assert new.run_id != done.run_id and new.attempt == 1 and new.triggered_by == operator
    assert new.argv == ["echo", "hi"]


def test_the_execution_page_shows_what_ran_with_env_names_but_not_values(as_operator, make_task):
    from taskhub.services import launch

    task = make_task(command="backup --to '/mnt/b 1'", env={"API_KEY": "s3cr3t-value"}, working_dir="/srv")
    execution = launch(task)
    task.command = "something else"
    task.save()

    body = as_operator.get(reverse("admin:executions_taskexecution_change", args=[execution.pk])).content.decode()

    assert "backup --to &#x27;/mnt/b 1&#x27;" in body and "something else" not in body
    assert "API_KEY" in body and "s3cr3t-value" not in body
    assert "/srv" in body
