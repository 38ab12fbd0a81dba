"""The schedules inline of the task page: validated, saved with their beat rows, next five fire times, permission."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from taskhub.models import Schedule
from taskhub.schedules import create_schedule, parse_schedule

pytestmark = pytest.mark.django_db


def page_of(task) -> str:
    return reverse("admin:taskhub_task_change", args=[task.pk])


def posted_as_shown(page) -> dict[str, object]:
    """The data a browser posts back for the change page as shown: every form and inline unchanged."""
    data: dict[str, object] = {}
    forms = [page.context["adminform"].form]
    for inline in page.context["inline_admin_formsets"]:
        formset = inline.formset
        forms.append(formset.management_form)
        forms.extend(formset.forms)
    for form in forms:
        for name in form.fields:
            value = form[name].value()
            key = form.add_prefix(name)
            if value is True:
                data[key] = "on"
            elif value is not None and value is not False:
                data[key] = value
    return data


def with_new_schedule(data: dict[str, object], **fields: str) -> dict[str, object]:
    index = int(data["schedules-TOTAL_FORMS"])
    data = {**data, "schedules-TOTAL_FORMS": str(index + 1)}
    data.update({f"schedules-{index}-{k}": v for k, v in {"misfire": "run_once", "enabled": "on", **fields}.items()})
    return data


def test_an_operator_adds_a_schedule_on_the_task_page(client, operator, make_task):
    client.force_login(operator)
    task = make_task()
    data = with_new_schedule(
        posted_as_shown(client.get(page_of(task))), kind="cron", expression="30 2 * * 1-5", timezone="Europe/Berlin"
    )

    response = client.post(page_of(task), data)

    assert response.status_code == 302, response.content.decode()[:3000]
    schedule = Schedule.objects.get(task=task)
    assert (schedule.kind, schedule.expression, schedule.timezone) == ("cron", "30 2 * * 1-5", "Europe/Berlin")
    assert PeriodicTask.objects.get(pk=schedule.periodic_task_id).crontab.day_of_week == "1-5"


def test_a_bad_cron_in_the_inline_is_an_error_and_nothing_is_saved(client, operator, make_task):
    client.force_login(operator)
    task = make_task()
    data = with_new_schedule(posted_as_shown(client.get(page_of(task))), kind="cron", expression="61 * * * *")

    response = client.post(page_of(task), data)

    assert response.status_code == 200
    assert "The minute field: 61 is out of range 0–59" in response.content.decode()
    assert not Schedule.objects.exists() and not PeriodicTask.objects.filter(task="taskhub.launch_scheduled").exists()


def test_the_task_page_shows_each_schedule_in_words_with_its_next_five_fire_times(
    client, operator, make_task, settings
):
    settings.TIME_ZONE = "UTC"
    client.force_login(operator)
    task = make_task()
    create_schedule(task, parse_schedule({"cron": "0 9 * * *", "timezone": "America/New_York"}))

    body = client.get(page_of(task)).content.decode()

    assert "at 09:00, America/New_York" in body
    assert body.count(" 09:00 E") == 5  # EST or EDT, in the schedule's zone …
    assert body.count(" 14:00 UTC") + body.count(" 13:00 UTC") == 5  # … and the operator's


def test_editing_and_deleting_a_schedule_in_the_inline_keeps_beat_in_step(client, operator, make_task):
    client.force_login(operator)
    task = make_task()
    schedule = create_schedule(task, parse_schedule({"every": "5m"}))
    data = posted_as_shown(client.get(page_of(task)))

    data["schedules-0-expression"] = "10m"
    assert client.post(page_of(task), data).status_code == 302
    assert PeriodicTask.objects.get(pk=schedule.periodic_task_id).interval.every == 600

    data = posted_as_shown(client.get(page_of(task)))
    data["schedules-0-DELETE"] = "on"
    assert client.post(page_of(task), data).status_code == 302
    assert not Schedule.objects.exists() and not PeriodicTask.objects.filter(pk=schedule.periodic_task_id).exists()


def test_without_the_run_permission_the_schedules_are_read_only(client, operator, make_task):
    operator.user_permissions.remove(Permission.objects.get(codename="run_task"))
    client.force_login(operator)
    task = make_task()
    create_schedule(task, parse_schedule({"every": "5m"}))
    page = client.get(page_of(task))
    assert "every 5 minutes" in page.content.decode()
    data = with_new_schedule(posted_as_shown(page), kind="every", expression="1m")

    client.post(page_of(task), data)

    assert list(Schedule.objects.values_list("expression", flat=True)) == ["5m"]


def test_a_task_form_posted_without_its_schedules_part_changes_no_schedule(client, operator, make_task):
    client.force_login(operator)
    task = make_task()
    create_schedule(task, parse_schedule({"every": "5m"}))
    data = {k: v for k, v in posted_as_shown(client.get(page_of(task))).items() if not k.startswith("schedules-")}
    data["description"] = "changed"

    assert client.post(page_of(task), data).status_code == 302
    task.refresh_from_db()
    assert task.description == "changed" and Schedule.objects.count() == 1
