"""The API's `schedules` on a task: human forms in and out, PATCH replaces the list, field errors, permission."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django_celery_beat.models import PeriodicTask
from rest_framework.test import APIClient

from taskhub.models import Schedule

pytestmark = pytest.mark.django_db


def api_as(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def url(task) -> str:
    return f"/api/tasks/{task.pk}/"


def test_schedules_are_created_with_a_task_and_shown_in_human_form(operator):
    response = api_as(operator).post(
        "/api/tasks/",
        {
            "name": "backup",
            "command": "true",
            "schedules": [
                {"cron": "30 2 * * 1-5", "timezone": "Europe/Berlin"},
                {"every": "90s", "misfire": "skip"},
                "*/5 * * * *",
            ],
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    shown = response.json()["schedules"]
    assert [{k: v for k, v in s.items() if k in ("cron", "every", "timezone", "misfire")} for s in shown] == [
        {"cron": "30 2 * * 1-5", "timezone": "Europe/Berlin", "misfire": "run_once"},
        {"every": "90s", "misfire": "skip"},
        {"cron": "*/5 * * * *", "timezone": "UTC", "misfire": "run_once"},
    ]
    assert shown[0]["description"] == "at 02:30 on Mon–Fri, Europe/Berlin"
    assert all(s["enabled"] and s["next_fire_time"] for s in shown)
    assert PeriodicTask.objects.filter(task="taskhub.launch_scheduled").count() == 3


def test_what_a_get_shows_can_be_sent_back_unchanged(operator, make_task):
    client = api_as(operator)
    task = make_task()
    client.patch(url(task), {"schedules": [{"every": "5m"}, {"cron": "0 3 * * *"}]}, format="json")
    before = client.get(url(task)).json()["schedules"]
    rows = set(Schedule.objects.values_list("pk", "periodic_task_id"))

    again = client.patch(url(task), {"schedules": before}, format="json")

    assert again.status_code == 200, again.json()
    assert again.json()["schedules"] == before
    assert set(Schedule.objects.values_list("pk", "periodic_task_id")) == rows


def test_patch_replaces_the_list(operator, make_task):
    client = api_as(operator)
    task = make_task()
    client.patch(url(task), {"schedules": [{"every": "5m"}, {"cron": "0 3 * * *"}]}, format="json")

    response = client.patch(url(task), {"schedules": [{"at": "2030-01-01T00:00:00+00:00"}]}, format="json")

    assert response.status_code == 200
    assert [s.get("at") for s in response.json()["schedules"]] == ["2030-01-01T00:00:00+00:00"]
    assert Schedule.objects.count() == 1 and PeriodicTask.objects.filter(task="taskhub.launch_scheduled").count() == 1
    assert client.patch(url(task), {"schedules": []}, format="json").json()["schedules"] == []
    assert not PeriodicTask.objects.filter(task="taskhub.launch_scheduled").exists()


def test_a_patch_of_other_fields_leaves_the_schedules_alone(operator, make_task):
    client = api_as(operator)
    task = make_task()
    client.patch(url(task), {"schedules": [{"every": "5m"}]}, format="json")
    response = client.patch(url(task), {"description": "nightly"}, format="json")
    assert response.status_code == 200 and len(response.json()["schedules"]) == 1


@pytest.mark.parametrize(
    ("schedules", "field", "says"),
    [
        ([{"every": "5m"}, {"cron": "61 * * * *"}], "cron", "Schedule 2: cron '61 * * * *': The minute field"),
        ([{"every": "never"}], "every", "Schedule 1: every:"),
        ([{"at": "next week"}], "at", "Schedule 1: at 'next week' is not an ISO 8601 time"),
        ([{"cron": "0 2 * * *", "timezone": "Berlin"}], "timezone", "Schedule 1: 'Berlin' is not a known time zone"),
        ([{"every": "5m", "misfire": "later"}], "misfire", "Schedule 1: misfire is"),
    ],
)
def test_bad_schedules_get_400_naming_the_schedule_and_field(operator, make_task, schedules, field, says):
    task = make_task()
    response = api_as(operator).patch(url(task), {"schedules": schedules}, format="json")
    assert response.status_code == 400
    errors = response.json()["schedules"]
    index = str(len(schedules) - 1)
    assert says in errors[index][field][0]
    assert not Schedule.objects.exists() and not PeriodicTask.objects.filter(task="taskhub.launch_scheduled").exists()


def test_schedules_is_a_list(operator, make_task):
    response = api_as(operator).patch(url(make_task()), {"schedules": {"every": "5m"}}, format="json")
    assert response.status_code == 400 and "list of schedules" in response.json()["schedules"][0]


def test_changing_schedules_needs_the_run_permission_as_well_as_change(operator, make_task):
    operator.user_permissions.remove(Permission.objects.get(codename="run_task"))
    client = api_as(operator)
    task = make_task()

    refused = client.patch(url(task), {"schedules": [{"every": "5m"}]}, format="json")
    assert refused.status_code == 403 and "Can run tasks" in refused.json()["detail"]
    assert not Schedule.objects.exists()
    created = client.post("/api/tasks/", {"name": "n", "command": "true", "schedules": ["0 * * * *"]}, format="json")
    assert created.status_code == 403
    # Editing the task otherwise, sending its schedules back unchanged, is fine.
    assert client.patch(url(task), {"description": "d", "schedules": []}, format="json").status_code == 200


def test_a_viewer_sees_the_schedules_but_cannot_change_them(viewer, operator, make_task):
    task = make_task()
    api_as(operator).patch(url(task), {"schedules": [{"every": "5m"}]}, format="json")
    assert api_as(viewer).get(url(task)).json()["schedules"][0]["every"] == "5m"
    assert api_as(viewer).patch(url(task), {"schedules": []}, format="json").status_code == 403
    assert Schedule.objects.count() == 1
