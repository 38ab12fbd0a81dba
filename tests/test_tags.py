"""Tags on tasks: set through the API and the admin, and filtered on in both."""

from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from taskhub.models import Tag

pytestmark = pytest.mark.django_db


def api_as(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_the_api_sets_tags_by_name_making_new_ones_and_filters_on_them(operator, make_task):
    client = api_as(operator)
    made = client.post(
        "/api/tasks/", {"name": "nightly-import", "command": "true", "tags": ["nightly", "billing"]}, format="json"
    )
    assert made.status_code == 201, made.content
    assert made.json()["tags"] == ["billing", "nightly"]
    make_task(name="untagged")

    tagged = client.get("/api/tasks/?tags__name=nightly").json()["results"]
    assert [t["name"] for t in tagged] == ["nightly-import"]

    patched = client.patch(f"/api/tasks/{made.json()['id']}/", {"tags": ["billing"]}, format="json")
    assert patched.json()["tags"] == ["billing"]
    assert client.get("/api/tasks/?tags__name=nightly").json()["results"] == []
    assert set(Tag.objects.values_list("name", flat=True)) == {"billing", "nightly"}


def test_a_tag_that_is_not_a_slug_is_refused_naming_the_field(operator):
    response = api_as(operator).post(
        "/api/tasks/", {"name": "t", "command": "true", "tags": ["not a slug"]}, format="json"
    )
    assert response.status_code == 400 and "tags" in response.json()


def test_the_admin_task_list_filters_by_tag(as_operator, make_task):
    nightly = Tag.objects.create(name="nightly")
    make_task(name="with-tag").tags.add(nightly)
    make_task(name="without-tag")

    response = as_operator.get(reverse("admin:taskhub_task_changelist") + f"?tags__id__exact={nightly.pk}")

    assert response.status_code == 200
    assert [t.name for t in response.context["cl"].result_list] == ["with-tag"]
    assert b"By tags" in as_operator.get(reverse("admin:taskhub_task_changelist")).content


def test_the_api_takes_the_controls_of_a_task_and_names_a_bad_one(operator):
    client = api_as(operator)
    body = {
        "name": "controlled",
        "command": "true",
        "success_exit_codes": [0, 3],
        "no_retry_exit_codes": [2],
        "retry_on_timeout": False,
        "max_concurrency": 2,
        "overlap_policy": "skip",
        "pause_after_exhausted": 3,
    }
    made = client.post("/api/tasks/", body, format="json")
    assert made.status_code == 201, made.content
    assert {k: made.json()[k] for k in body} == body

    bad = client.patch(f"/api/tasks/{made.json()['id']}/", {"retry_exit_codes": [300]}, format="json")
    assert bad.status_code == 400 and "retry_exit_codes" in bad.json()
