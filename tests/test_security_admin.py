"""The admin as each kind of user would try it: filters that leak, periodic task actions, deleting tasks."""

from __future__ import annotations

import json
import re

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import User
from django.urls import reverse
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from django_celery_results.models import TaskResult

from executions.models import Status, TaskExecution
from taskhub.models import Task
from tests.conftest import _user_with_perms, purge_broker

pytestmark = pytest.mark.django_db

SECRET = "s3cr3t-value"


@pytest.fixture
def as_viewer(client, viewer):
    client.force_login(viewer)
    return client


# -- filters through the URL ---------------------------------------------------------------


@pytest.fixture
def secret_task(make_task) -> Task:
    make_task(name="plain", command="true")
    return make_task(name="with-secret", command="deploy", env={"API_KEY": SECRET})


def listed(response) -> list[str] | None:
    """The rows a changelist lists, or None when it refused the request."""
    if response.status_code != 200:
        return None
    return [str(row) for row in response.context["cl"].result_list]


@pytest.mark.parametrize(
    ("lookup", "right", "wrong"),
    [
        ("env__API_KEY__regex", "^s3", "^xx"),
        ("env__API_KEY__startswith", "s3", "xx"),
        ("env__API_KEY__icontains", "cr3", "zzz"),
        ("env__API_KEY", SECRET, "nope"),
        ("env__API_KEY__exact", SECRET, "nope"),
        ("env__contains", json.dumps({"API_KEY": SECRET}), json.dumps({"API_KEY": "x"})),
        ("env__has_key", "API_KEY", "OTHER"),
        ("command__startswith", "dep", "xxx"),
        ("command__exact", "deploy", "nope"),
        ("name__regex", "^with", "^xxx"),
    ],
)
def test_a_viewer_learns_nothing_from_task_filters_the_list_does_not_offer(
    as_viewer, secret_task, lookup, right, wrong
):
    url = reverse("admin:taskhub_task_changelist")
    guessed = as_viewer.get(url, {lookup: right})
    missed = as_viewer.get(url, {lookup: wrong})

    assert guessed.status_code in (302, 400), f"{lookup} was accepted ({guessed.status_code})"
    assert (guessed.status_code, guessed.content) == (missed.status_code, missed.content)
    assert SECRET.encode() not in guessed.content


@pytest.mark.parametrize(
    "lookup",
    [
        "stdout__startswith",
        "stderr__icontains",
        "error__exact",
        "stdout",
        "task__env__API_KEY__startswith",
        "task__command__startswith",
        "run_id__startswith",
    ],
)
def test_a_viewer_learns_nothing_from_execution_filters_the_list_does_not_offer(as_viewer, secret_task, lookup):
    TaskExecution.objects.create(task=secret_task, status=Status.FAILED, stdout="token=abc", stderr="abc", error="abc")
    url = reverse("admin:executions_taskexecution_changelist")
    guessed = as_viewer.get(url, {lookup: "token=abc" if lookup.startswith("stdout") else "abc"})
    missed = as_viewer.get(url, {lookup: "zzz"})
    assert guessed.status_code in (302, 400), f"{lookup} was accepted ({guessed.status_code})"
    assert (guessed.status_code, guessed.content) == (missed.status_code, missed.content)


def test_a_broken_regex_in_the_url_is_a_bad_request_not_a_server_error(as_viewer, secret_task):
    response = as_viewer.get(reverse("admin:taskhub_task_changelist"), {"name__regex": "("})
    assert response.status_code == 400


def test_the_filters_the_lists_offer_still_work(as_viewer, make_task):
    on = make_task(name="on", queue="reports")
    off = make_task(name="off", enabled=False)
    tasks = reverse("admin:taskhub_task_changelist")
    assert listed(as_viewer.get(tasks, {"enabled__exact": "0"})) == ["off"]
    assert listed(as_viewer.get(tasks, {"queue__exact": "reports"})) == ["on"]
    assert listed(as_viewer.get(tasks, {"shell__exact": "0", "q": "on"})) == ["on"]

    mine = TaskExecution.objects.create(task=on, status=Status.FAILED)
    TaskExecution.objects.create(task=off, status=Status.SUCCEEDED)
    executions = reverse("admin:executions_taskexecution_changelist")

    def ids(params: dict[str, str]) -> list[int]:
        response = as_viewer.get(executions, params)
        assert response.status_code == 200, params
        return [row.pk for row in response.context["cl"].result_list]

    assert ids({"status__exact": "failed"}) == [mine.pk]
    assert ids({"task__queue__exact": "reports"}) == [mine.pk]
    assert ids({"task__id__exact": str(on.pk)}) == [mine.pk]  # the task page's "history" link
    assert len(ids({"trigger__exact": mine.trigger})) == 2


def test_the_raw_id_popup_for_a_task_still_opens(as_viewer, make_task):
    make_task(name="pick-me")
    response = as_viewer.get(reverse("admin:taskhub_task_changelist"), {"_to_field": "id", "_popup": "1"})
    assert response.status_code == 200
    assert listed(response) == ["pick-me"]


@pytest.fixture
def schedule_viewer(db) -> User:
    """May look at periodic tasks, schedules and task results, nothing more."""
    return _user_with_perms(
        "sally", ["view_periodictask", "view_intervalschedule", "view_crontabschedule", "view_taskresult"]
    )


@pytest.fixture
def every_minute(db) -> IntervalSchedule:
    return IntervalSchedule.objects.create(every=1, period=IntervalSchedule.MINUTES)


@pytest.fixture
def schedule(make_task, every_minute) -> PeriodicTask:
    task = make_task(name="nightly")
    return PeriodicTask.objects.create(
        name="nightly every minute",
        task="taskhub.launch_scheduled",
        kwargs=json.dumps({"task_id": task.pk}),
        interval=every_minute,
        enabled=True,
        description="uses the deploy key",
    )


def test_periodic_task_and_result_lists_accept_only_their_filters(client, schedule_viewer, schedule):
    client.force_login(schedule_viewer)
    TaskResult.objects.create(task_id="abc", task_name="taskhub.launch_scheduled", status="SUCCESS", result="42")
    periodic = reverse("admin:django_celery_beat_periodictask_changelist")
    assert listed(client.get(periodic, {"task__exact": "taskhub.launch_scheduled"})) == [str(schedule)]
    assert listed(client.get(periodic, {"enabled__exact": "0"})) == []
    assert client.get(periodic, {"start_time__year": "2026"}).status_code == 200  # the date hierarchy
    assert client.get(periodic, {"kwargs__contains": "task_id"}).status_code == 400
    assert client.get(periodic, {"description__startswith": "uses"}).status_code == 400
    results = reverse("admin:django_celery_results_taskresult_changelist")
    assert client.get(results, {"status__exact": "SUCCESS"}).status_code == 200
    assert client.get(results, {"result__startswith": "4"}).status_code == 400
    assert client.get(reverse("admin:django_celery_beat_crontabschedule_changelist"), {"hour": "1"}).status_code == 400


# -- django-celery-beat's admin actions --------------------------------------------------------


def broker_messages() -> int:
    """Messages waiting in the test broker, in any queue."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return sum(client.llen(key) for key in client.scan_iter() if client.type(key) == b"list")


@pytest.fixture
def empty_broker():
    if settings.BROKER_SCHEME not in {"redis", "rediss"}:
        pytest.skip("counts messages in Redis")
    purge_broker()
    assert broker_messages() == 0


@pytest.fixture
def scheduler_without_run(db) -> User:
    """May add, change and delete periodic tasks and schedules, but not run tasks."""
    return _user_with_perms(
        "sam",
        [
            "view_task",
            *(
                f"{verb}_{model}"
                for verb in ("view", "add", "change", "delete")
                for model in ("periodictask", "intervalschedule")
            ),
        ],
    )


@pytest.fixture
def scheduler(db) -> User:
    """May change periodic tasks and run tasks."""
    return _user_with_perms("stella", ["view_task", "run_task", "view_periodictask", "change_periodictask"])


def post_action(client, action: str, schedule: PeriodicTask):
    return client.post(
        reverse("admin:django_celery_beat_periodictask_changelist"),
        {"action": action, "_selected_action": [schedule.pk]},
        follow=True,
    )


@pytest.mark.parametrize("who", ["schedule_viewer", "scheduler_without_run"])
def test_periodic_task_actions_need_run_and_change_permission(request, client, who, schedule, empty_broker):
    client.force_login(request.getfixturevalue(who))
    listing = client.get(reverse("admin:django_celery_beat_periodictask_changelist"))
    assert listing.status_code == 200
    for action in ("run_tasks", "enable_tasks", "disable_tasks", "toggle_tasks"):
        assert f'value="{action}"'.encode() not in listing.content

    for action in ("disable_tasks", "toggle_tasks", "run_tasks"):
        post_action(client, action, schedule)
    schedule.refresh_from_db()
    assert schedule.enabled is True
    assert broker_messages() == 0  # nothing was sent to launch
    assert not TaskExecution.objects.exists()

    PeriodicTask.objects.filter(pk=schedule.pk).update(enabled=False)
    post_action(client, "enable_tasks", schedule)
    schedule.refresh_from_db()
    assert schedule.enabled is False


def test_a_user_who_may_run_tasks_and_change_schedules_can_use_the_actions(client, scheduler, schedule, empty_broker):
    client.force_login(scheduler)
    post_action(client, "disable_tasks", schedule)
    schedule.refresh_from_db()
    assert schedule.enabled is False
    post_action(client, "run_tasks", schedule)
    assert broker_messages() == 1


def launch_schedule_form(task: Task, interval: IntervalSchedule) -> dict[str, str]:
    return {
        "name": "every minute, sneakily",
        "regtask": "",
        "task": "taskhub.launch_scheduled",
        "enabled": "on",
        "description": "",
        "interval": str(interval.pk),
        "crontab": "",
        "solar": "",
        "clocked": "",
        "start_time_0": "",
        "start_time_1": "",
        "args": "[]",
        "kwargs": json.dumps({"task_id": task.pk}),
        "expires_0": "",
        "expires_1": "",
        "expire_seconds": "",
        "queue": "",
        "exchange": "",
        "routing_key": "",
        "priority": "",
        "headers": "{}",
    }


def test_a_user_who_may_add_periodic_tasks_but_not_run_tasks_cannot_schedule_a_task(
    client, scheduler_without_run, make_task, every_minute
):
    client.force_login(scheduler_without_run)
    task = make_task(name="deploy")
    response = client.post(
        reverse("admin:django_celery_beat_periodictask_add"), launch_schedule_form(task, every_minute)
    )
    assert response.status_code == 403
    assert not PeriodicTask.objects.filter(task="taskhub.launch_scheduled").exists()


def test_a_user_without_run_permission_cannot_change_when_a_schedule_fires(
    client, scheduler_without_run, schedule, every_minute
):
    client.force_login(scheduler_without_run)
    response = client.post(
        reverse("admin:django_celery_beat_intervalschedule_change", args=[every_minute.pk]),
        {"every": "1", "period": IntervalSchedule.SECONDS},
    )
    assert response.status_code == 403
    every_minute.refresh_from_db()
    assert every_minute.period == IntervalSchedule.MINUTES
    page = client.get(reverse("admin:django_celery_beat_periodictask_change", args=[schedule.pk]))
    assert page.status_code == 200
    assert b'name="_save"' not in page.content  # read-only for them


def test_a_user_who_may_run_tasks_can_add_a_schedule(client, make_task, every_minute):
    user = _user_with_perms("rita", ["view_task", "run_task", "view_periodictask", "add_periodictask"])
    client.force_login(user)
    task = make_task(name="deploy")
    response = client.post(
        reverse("admin:django_celery_beat_periodictask_add"), launch_schedule_form(task, every_minute)
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert json.loads(PeriodicTask.objects.get(task="taskhub.launch_scheduled").kwargs) == {"task_id": task.pk}


# -- the execution page ---------------------------------------------------------------------------


def truncated_field(body: str) -> str:
    match = re.search(r"Output truncated:</label>\s*<div class=\"readonly\">(.*?)</div>", body, re.S)
    assert match, "no 'Output truncated' field on the page"
    return match.group(1).strip()


def test_output_truncated_reads_no_without_a_red_cross_when_nothing_was_cut(client, operator, make_task):
    client.force_login(operator)
    task = make_task()
    whole = TaskExecution.objects.create(task=task, status=Status.SUCCEEDED, output_truncated=False)
    cut = TaskExecution.objects.create(task=task, status=Status.SUCCEEDED, output_truncated=True)
    page = client.get(reverse("admin:executions_taskexecution_change", args=[whole.pk])).content.decode()
    assert truncated_field(page) == "no"
    page = client.get(reverse("admin:executions_taskexecution_change", args=[cut.pk])).content.decode()
    assert truncated_field(page).startswith("yes, cut")


# -- deleting a task ----------------------------------------------------------------------------------


@pytest.fixture
def as_admin(client, db):
    client.force_login(User.objects.create_superuser("ada", "ada@example.com", "pw-ada"))
    return client


def test_a_task_with_history_or_running_work_says_why_it_cannot_be_deleted(make_task):
    fresh = make_task()
    assert fresh.deletion_blocker() is None
    done = make_task()
    for _ in range(3):
        TaskExecution.objects.create(task=done, status=Status.SUCCEEDED)
    assert done.deletion_blocker() == "it has 3 executions; disable it instead, or purge its history first"
    busy = make_task()
    TaskExecution.objects.create(task=busy, status=Status.RUNNING)
    assert "running or pending" in busy.deletion_blocker()


def test_the_admin_refuses_to_delete_a_task_with_history_even_for_a_superuser(as_admin, make_task):
    task = make_task(name="has-history")
    TaskExecution.objects.create(task=task, status=Status.FAILED)
    url = reverse("admin:taskhub_task_delete", args=[task.pk])

    shown = as_admin.get(url, follow=True)
    assert b"Not deleted: has-history: it has 1 execution; disable it instead" in shown.content
    as_admin.post(url, {"post": "yes"})

    assert Task.objects.filter(pk=task.pk).exists()
    assert TaskExecution.objects.filter(task=task).count() == 1


def test_bulk_delete_deletes_only_the_tasks_without_history_or_work(as_admin, make_task):
    clean = make_task(name="clean")
    busy = make_task(name="busy")
    TaskExecution.objects.create(task=busy, status=Status.PENDING)
    changelist = reverse("admin:taskhub_task_changelist")
    selection = {"action": "delete_selected", "_selected_action": [clean.pk, busy.pk]}

    confirm = as_admin.post(changelist, selection)
    assert confirm.status_code == 200
    assert b"Not deleted: busy (it has running or pending executions" in confirm.content
    as_admin.post(changelist, {**selection, "post": "yes"})

    assert list(Task.objects.values_list("name", flat=True)) == ["busy"]
    assert TaskExecution.objects.filter(task=busy).count() == 1


def test_a_task_without_history_is_deleted_as_before(as_admin, make_task):
    task = make_task(name="unused")
    response = as_admin.post(reverse("admin:taskhub_task_delete", args=[task.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not Task.objects.filter(pk=task.pk).exists()
