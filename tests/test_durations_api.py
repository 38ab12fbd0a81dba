"""Durations in human form through the API: accepted wherever seconds are, stored and answered as seconds."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from taskhub.models import TIMEOUT_MAX, Task

pytestmark = pytest.mark.django_db


@pytest.fixture
def client(admin_user) -> APIClient:
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def test_a_task_takes_its_seconds_in_human_form_and_answers_in_seconds(client):
    response = client.post(
        "/api/tasks/",
        {"name": "nightly", "command": "true", "timeout": "1h30m", "kill_grace": "5", "retry_delay": "90s",
         "retry_delay_max": "2h"},
        format="json",
    )  # fmt: skip

    assert response.status_code == 201, response.content
    data = response.json()
    assert (data["timeout"], data["kill_grace"], data["retry_delay"], data["retry_delay_max"]) == (5400, 5, 90, 7200)
    task = Task.objects.get(name="nightly")
    assert (task.timeout, task.kill_grace, task.retry_delay, task.retry_delay_max) == (5400, 5, 90, 7200)

    patched = client.patch(f"/api/tasks/{task.pk}/", {"timeout": "5m"}, format="json")
    assert patched.status_code == 200 and patched.json()["timeout"] == 300


def test_a_duration_that_does_not_read_or_is_out_of_range_is_refused_with_why(client, make_task):
    task = make_task(timeout=60)

    unreadable = client.patch(f"/api/tasks/{task.pk}/", {"timeout": "soon"}, format="json")
    too_long = client.patch(f"/api/tasks/{task.pk}/", {"timeout": f"{TIMEOUT_MAX // 86400 + 1}d"}, format="json")

    assert unreadable.status_code == 400 and "is not a duration" in unreadable.json()["timeout"][0]
    assert too_long.status_code == 400 and str(TIMEOUT_MAX) in too_long.json()["timeout"][0].replace(",", "")
    task.refresh_from_db()
    assert task.timeout == 60
