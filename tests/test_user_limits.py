"""The per-user limit on active runs: API 429, admin message, scheduled launches against the owner; nothing created."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.urls import reverse
from rest_framework.test import APIClient

from config.settings import env_limit_overrides
from executions.models import Status, TaskExecution, Trigger
from taskhub.limits import ActiveRunLimitReached, limit_for
from taskhub.services import launch

pytestmark = pytest.mark.django_db


def api_as(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def limit_of_two(settings):
    settings.TASKHUB_USER_ACTIVE_RUNS = 2
    settings.TASKHUB_USER_ACTIVE_RUNS_OVERRIDES = {}


def test_the_api_answers_429_over_the_limit_and_creates_nothing(limit_of_two, operator, make_task):
    task = make_task()
    api = api_as(operator)

    answers = [api.post(f"/api/tasks/{task.pk}/run/") for _ in range(3)]

    assert [a.status_code for a in answers] == [202, 202, 429]
    assert "olivia already has 2 active runs" in answers[2].json()["detail"]
    assert TaskExecution.objects.count() == 2


def test_finished_runs_free_the_users_slots(limit_of_two, operator, make_task):
    task = make_task()
    first = launch(task, user=operator)
    launch(task, user=operator)
    TaskExecution.objects.filter(pk=first.pk).update(status=Status.SUCCEEDED)

    assert api_as(operator).post(f"/api/tasks/{task.pk}/run/").status_code == 202


def test_another_users_runs_do_not_count(limit_of_two, operator, viewer, make_task):
    task = make_task()
    launch(task, user=viewer)
    launch(task, user=viewer)

    assert launch(task, user=operator).triggered_by_id == operator.pk


def test_the_admin_says_why_and_creates_nothing(limit_of_two, client, operator, make_task):
    task = make_task(name="busy")
    launch(task, user=operator)
    launch(task, user=operator)
    client.force_login(operator)

    page = client.post(
        reverse("admin:taskhub_task_changelist"), {"action": "run_now", "_selected_action": [task.pk]}, follow=True
    )

    shown = [str(m) for m in page.context["messages"]]
    assert any("Not started: busy: olivia already has 2 active runs" in m for m in shown), shown
    assert TaskExecution.objects.count() == 2


def test_a_scheduled_launch_counts_against_the_tasks_owner(limit_of_two, operator, make_task):
    owned = make_task(owner=operator)
    launch(owned, trigger=Trigger.SCHEDULE)  # counts for the owner, though nobody triggered it
    launch(owned, user=operator)

    with pytest.raises(ActiveRunLimitReached):
        launch(owned, trigger=Trigger.SCHEDULE)
    with pytest.raises(ActiveRunLimitReached):
        launch(make_task(), user=operator)
    assert TaskExecution.objects.count() == 2


def test_a_scheduled_launch_of_a_task_without_owner_is_exempt(limit_of_two, make_task):
    task = make_task()
    made = [launch(task, trigger=Trigger.SCHEDULE) for _ in range(4)]
    assert len(made) == 4


def test_user_and_group_overrides(settings, operator, viewer):
    ops = Group.objects.create(name="ops")
    night = Group.objects.create(name="night")
    operator.groups.add(ops, night)
    settings.TASKHUB_USER_ACTIVE_RUNS = 3
    settings.TASKHUB_USER_ACTIVE_RUNS_OVERRIDES = {"group:ops": 50, "group:night": 10, "user:victor": 1}

    assert limit_for(operator) == 50  # the most generous of the user's groups
    assert limit_for(viewer) == 1  # the user's own entry
    viewer.groups.add(ops)
    assert limit_for(viewer) == 1  # still the user's own entry
    settings.TASKHUB_USER_ACTIVE_RUNS_OVERRIDES = {"group:ops": 0, "group:night": 10}
    assert limit_for(operator) == 0  # a group without limit
    settings.TASKHUB_USER_ACTIVE_RUNS_OVERRIDES = {}
    assert limit_for(operator) == 3


def test_a_user_override_applies_to_launches(settings, operator, make_task):
    settings.TASKHUB_USER_ACTIVE_RUNS = 100
    settings.TASKHUB_USER_ACTIVE_RUNS_OVERRIDES = {"user:olivia": 1}
    task = make_task()
    launch(task, user=operator)

    assert api_as(operator).post(f"/api/tasks/{task.pk}/run/").status_code == 429


def test_zero_means_unlimited(settings, operator, make_task):
    settings.TASKHUB_USER_ACTIVE_RUNS = 0
    settings.TASKHUB_USER_ACTIVE_RUNS_OVERRIDES = {}
    task = make_task()
    assert len([launch(task, user=operator) for _ in range(5)]) == 5


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("[1, 2]", "expected a JSON object"),
        ("{nope", "not valid JSON"),
        ('{"alice": 5}', 'key \'alice\' must be "user:NAME" or "group:NAME"'),
        ('{"user:": 5}', "key 'user:' must be"),
        ('{"user:alice": -1}', "the limit of 'user:alice' must be a whole number"),
        ('{"group:ops": "5"}', "the limit of 'group:ops' must be a whole number"),
        ('{"group:ops": true}', "the limit of 'group:ops' must be a whole number"),
    ],
)
def test_bad_overrides_are_refused_naming_the_setting(monkeypatch, raw, message):
    monkeypatch.setenv("TASKHUB_USER_ACTIVE_RUNS_OVERRIDES", raw)
    with pytest.raises(ImproperlyConfigured, match="TASKHUB_USER_ACTIVE_RUNS_OVERRIDES") as caught:
        env_limit_overrides("TASKHUB_USER_ACTIVE_RUNS_OVERRIDES")
    assert message in str(caught.value)


def test_good_overrides_are_read(monkeypatch):
    monkeypatch.setenv("TASKHUB_USER_ACTIVE_RUNS_OVERRIDES", '{"user:alice": 5, "group:ops": 0}')
    assert env_limit_overrides("TASKHUB_USER_ACTIVE_RUNS_OVERRIDES") == {"user:alice": 5, "group:ops": 0}


def test_the_command_line_counts_against_the_owner_and_exits_with_the_reason(limit_of_two, operator, make_task):
    task = make_task(name="owned", owner=operator)
    launch(task, user=operator)
    launch(task, user=operator)

    with pytest.raises(CommandError, match="olivia already has 2 active runs"):
        call_command("run_task", "owned")
    assert TaskExecution.objects.count() == 2
