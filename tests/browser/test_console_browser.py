"""The operator's console as people use it: real Chromium, the live server, real workers."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.utils.timezone import now
from playwright.sync_api import expect

from executions.models import Status, TaskExecution
from taskhub.models import Task
from taskhub.services import launch
from tests.browser.conftest import log_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# Output reaches the page at each heartbeat: make it often, so a line shows while the command still runs.
FAST_HEARTBEAT = {"TASKHUB_HEARTBEAT": "0.3", "TASKHUB_CANCEL_POLL": "0.2"}


def test_an_operator_creates_a_task_through_the_form_runs_it_and_watches_it_succeed(
    page, operator, celery_processes, screenshot
):
    celery_processes(env=FAST_HEARTBEAT)
    log_in(page, "olivia", "pw-olivia")

    page.goto("/admin/taskhub/task/add/")
    page.fill("#id_name", "greeter")
    page.fill("#id_command", "")
    page.fill("#id_timeout", "0")
    page.fill("#id_retry_count", "-1")
    page.fill("#id_env", '{"1BAD": "x"}')
    page.click("input[name=_save]")
    errors = page.locator(".errorlist")
    expect(errors.filter(has_text="Enter a command to run.")).to_have_count(1)
    expect(errors.filter(has_text="Timeout must be between 1 and 604800 seconds")).to_have_count(1)
    expect(errors.filter(has_text="Retry count must be between 0 and 1000.")).to_have_count(1)
    expect(errors.filter(has_text="'1BAD' is not a valid variable name")).to_have_count(1)
    assert not Task.objects.exists()

    page.fill("#id_command", "sh -c 'echo first line; sleep 2; echo second line'")
    page.fill("#id_timeout", "60")
    page.fill("#id_retry_count", "0")
    page.fill("#id_env", '{"GREETING": "hello"}')
    page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    task = Task.objects.get(name="greeter")

    page.goto(f"/admin/taskhub/task/{task.pk}/change/")
    screenshot("task-page")
    page.click("#th-run-now")
    page.wait_for_url("**/admin/executions/taskexecution/*/change/")
    page.evaluate("window.thSamePage = true")  # gone if the page reloads
    badge = page.locator("#th-live [data-live=badge]")
    stdout = page.locator("#th-stdout")

    expect(stdout).to_contain_text("first line")
    expect(badge).to_contain_text("Running")  # the first line shows while the command still runs
    screenshot("execution-running")
    expect(badge).to_contain_text("Succeeded", timeout=20_000)
    expect(stdout).to_contain_text("second line")
    expect(page.locator("#th-live [data-live=exit]")).to_contain_text("Exit code 0")
    expect(page.locator("[data-live=f-exit_code]")).to_have_text("0")  # the facts below follow too
    assert page.evaluate("window.thSamePage") is True
    execution = TaskExecution.objects.get(task=task)
    assert (execution.status, execution.triggered_by) == (Status.SUCCEEDED, operator)


def test_an_operator_cancels_a_running_execution_from_its_page(page, operator, make_task, celery_processes):
    celery_processes(env=FAST_HEARTBEAT)
    task = make_task(name="sleeper", command="sleep 60", kill_grace=1)
    execution = launch(task)
    log_in(page, "olivia", "pw-olivia")
    page.goto(f"/admin/executions/taskexecution/{execution.pk}/change/")
    badge = page.locator("#th-live [data-live=badge]")
    expect(badge).to_contain_text("Running", timeout=20_000)

    clicked = time.monotonic()
    page.click("#th-cancel")
    # The bound: cancelled within 2 s plus the task's kill grace; one more second for the page's round trips.
    expect(badge).to_contain_text("Cancelled", timeout=(2 + task.kill_grace + 1) * 1000)

    assert time.monotonic() - clicked < 2 + task.kill_grace + 1
    expect(page.locator("#th-cancel")).to_be_hidden()
    execution.refresh_from_db()
    assert execution.status == Status.CANCELLED


def test_a_viewer_sees_no_run_or_cancel_button_and_the_run_url_answers_403(page, viewer, make_task):
    task = make_task(name="watched")
    running = TaskExecution.objects.create(task=task, status=Status.RUNNING, started_at=now())
    log_in(page, "victor", "pw-victor")

    page.goto("/admin/taskhub/task/")
    expect(page.locator("#result_list")).to_contain_text("watched")
    expect(page.locator(".th-run")).to_have_count(0)
    page.goto(f"/admin/taskhub/task/{task.pk}/change/")
    expect(page.locator("#th-run-now")).to_have_count(0)
    page.goto(f"/admin/executions/taskexecution/{running.pk}/change/")
    expect(page.locator("#th-live [data-live=badge]")).to_contain_text("Running")
    expect(page.locator("#th-cancel")).to_have_count(0)

    response = page.goto(f"/admin/taskhub/task/{task.pk}/run/")
    assert response is not None and response.status == 403


def test_the_task_list_run_page_and_dashboard_render_with_data(page, operator, make_task, screenshot):
    at = now()
    nightly = make_task(name="nightly-backup", command="backup --all", retry_count=2, retry_delay=30)
    flaky = make_task(name="flaky-report", command="report --send", queue="reports")
    make_task(name="never-run", command="true")
    for i in reversed(range(20)):  # oldest first, as rows are made
        status = Status.FAILED if i % 4 == 0 else Status.SUCCEEDED
        start = at - timedelta(hours=i, minutes=5)
        TaskExecution.objects.create(
            task=nightly, status=status, started_at=start, finished_at=start + timedelta(seconds=20 + i),
            created_at=start, exit_code=1 if status == Status.FAILED else 0, worker="w1@host",
        )  # fmt: skip
    first = TaskExecution.objects.create(
        task=flaky, status=Status.FAILED, attempt=1, created_at=at - timedelta(minutes=3),
        started_at=at - timedelta(minutes=3), finished_at=at - timedelta(minutes=2, seconds=50), exit_code=2,
    )  # fmt: skip
    TaskExecution.objects.create(
        task=flaky, run_id=first.run_id, attempt=2, status=Status.TIMEOUT, created_at=at - timedelta(minutes=2),
        started_at=at - timedelta(minutes=2), finished_at=at - timedelta(minutes=1), signal=15,
    )  # fmt: skip
    log_in(page, "olivia", "pw-olivia")

    page.goto("/admin/taskhub/task/")
    row = page.locator("#result_list tr", has_text="nightly-backup")
    expect(row.locator(".th-sq")).to_have_count(20)
    expect(row).to_contain_text("75%")
    expect(row.locator(".th-run")).to_have_count(1)
    screenshot("task-list")

    page.goto("/admin/executions/taskexecution/")
    expect(page.locator("#result_list")).to_contain_text("2 of 2")  # a task without retries now: never "2 of 1"
    # The whole list, filters included, fits a 1400-pixel laptop screen: no sideways scrolling.
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400
    screenshot("execution-list")

    page.goto(f"/admin/console/runs/{first.run_id}/")
    expect(page.locator("#th-timeline rect")).not_to_have_count(0)
    expect(page.locator("#content-main")).to_contain_text("Attempt 2")
    screenshot("run-page")

    page.goto("/admin/")
    page.click("#th-console-links a:has-text('Dashboard')")
    expect(page.locator("#th-per-hour rect")).not_to_have_count(0)
    expect(page.locator("#th-failing")).to_contain_text("nightly-backup")
    expect(page.locator("#th-durations")).to_contain_text("flaky-report")
    screenshot("dashboard")
