"""/metrics: counts from real worker processes, gauges read at scrape time, and who may read it."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from celery import current_app
from django.utils.timezone import now
from prometheus_client.parser import text_string_to_metric_families

from executions.messaging import send
from executions.models import Status, TaskExecution, Trigger
from taskhub.services import launch
from tests.conftest import finished, purge_broker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def scrape(client, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of /metrics by (name, sorted labels)."""
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")  # the Prometheus text format
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def unique(prefix: str) -> str:
    # Counts of earlier test runs stay in the metrics folder: each test counts its own tasks.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def run_attempts(run_id, count: int) -> list[TaskExecution]:
    def done():
        rows = list(TaskExecution.objects.filter(run_id=run_id).order_by("attempt"))
        return rows if len(rows) >= count and rows[-1].is_terminal else None

    return wait_for(done, timeout=60, what=f"{count} finished attempts of run {run_id}")


def test_an_attempt_is_counted_as_started_when_a_worker_claims_it(worker, make_task, client):
    task = make_task(name=unique("long"), command="sleep 30", kill_grace=1)
    execution = launch(task)
    wait_for(lambda: TaskExecution.objects.get(pk=execution.pk).status == Status.RUNNING, what="the claim")

    samples = scrape(client)

    assert value(samples, "taskhub_executions_started_total", task=task.name, queue="default") == 1
    assert value(samples, "taskhub_executions_finished_total", task=task.name, queue="default", status="running") == 0
    TaskExecution.objects.get(pk=execution.pk).request_cancel()
    assert finished(execution).status == Status.CANCELLED


def test_finished_attempts_durations_and_retries_are_counted_by_task_queue_and_status(worker, make_task, client):
    good = make_task(name=unique("good"), command="true")
    bad = make_task(name=unique("bad"), command="false", retry_count=1, retry_delay=0)

    for _ in range(2):
        finished(launch(good))
    attempts = run_attempts(launch(bad).run_id, 2)

    assert [a.status for a in attempts] == [Status.FAILED, Status.FAILED]
    samples = scrape(client)
    assert value(samples, "taskhub_executions_finished_total", task=good.name, queue="default", status="succeeded") == 2
    assert value(samples, "taskhub_executions_finished_total", task=bad.name, queue="default", status="failed") == 2
    assert value(samples, "taskhub_executions_finished_total", task=bad.name, queue="default", status="succeeded") == 0
    assert value(samples, "taskhub_executions_started_total", task=good.name, queue="default") == 2
    assert value(samples, "taskhub_execution_retries_total", task=bad.name, queue="default") == 1
    assert value(samples, "taskhub_runs_failed_total", task=bad.name, queue="default") == 1
    assert value(samples, "taskhub_runs_failed_total", task=good.name, queue="default") == 0
    durations = {"task": good.name, "queue": "default", "status": "succeeded"}
    assert value(samples, "taskhub_execution_duration_seconds_count", **durations) == 2
    assert 0 < value(samples, "taskhub_execution_duration_seconds_sum", **durations) < 10
    assert value(samples, "taskhub_execution_duration_seconds_bucket", le="+Inf", **durations) == 2


def test_the_reaper_run_by_a_worker_counts_its_recovery_action_and_the_lost_attempt(worker, make_task, client):
    task = make_task(name=unique("silent"), command="true")
    silent = TaskExecution.objects.create(
        task=task,
        status=Status.RUNNING,
        trigger=Trigger.API,
        started_at=now() - timedelta(hours=1),
        heartbeat_at=now() - timedelta(hours=1),
        worker="gone@host",
    )
    before = value(scrape(client), "taskhub_recovery_actions_total", check="reap_lost")

    current_app.send_task("executions.reap_lost", queue="default")
    finished(silent)

    assert silent.status == Status.LOST

    def counted():
        samples = scrape(client)
        return samples if value(samples, "taskhub_recovery_actions_total", check="reap_lost") > before else None

    samples = wait_for(counted, timeout=15, what="the reaper's action to be counted")
    assert value(samples, "taskhub_recovery_actions_total", check="reap_lost") == before + 1
    assert value(samples, "taskhub_executions_lost_total", task=task.name, queue="default") == 1
    assert value(samples, "taskhub_executions_finished_total", task=task.name, queue="default", status="lost") == 1


def test_running_now_the_oldest_due_pending_age_and_queue_depth_are_read_when_scraped(make_task, client):
    purge_broker()
    queue = unique("q")
    task = make_task(name=unique("waiting"), queue=queue)
    due = TaskExecution.objects.create(
        task=task, status=Status.PENDING, trigger=Trigger.API, scheduled_for=now() - timedelta(seconds=120)
    )
    TaskExecution.objects.create(
        task=task, status=Status.PENDING, trigger=Trigger.API, scheduled_for=now() + timedelta(hours=1)
    )
    TaskExecution.objects.create(task=task, status=Status.RUNNING, trigger=Trigger.API, started_at=now())
    assert send(due)  # nobody serves the queue: the message waits

    samples = scrape(client)

    assert value(samples, "taskhub_executions_running", task=task.name, queue=queue) == 1
    assert 120 <= value(samples, "taskhub_oldest_due_pending_age_seconds", queue=queue) < 180
    assert value(samples, "taskhub_oldest_due_pending_age_seconds", queue="default") == 0
    assert value(samples, "taskhub_queue_depth", queue=queue) == 1
    assert value(samples, "taskhub_queue_depth", queue="default") == 0
    purge_broker()


def test_metrics_answer_only_the_token_or_an_allowed_address(client, settings):
    settings.TASKHUB_METRICS_TOKEN = "metrics-token"
    settings.TASKHUB_METRICS_ALLOW = ["10.1.0.0/16"]

    stranger = client.get("/metrics", REMOTE_ADDR="192.0.2.7")
    wrong = client.get("/metrics", REMOTE_ADDR="192.0.2.7", HTTP_AUTHORIZATION="Bearer not-it")
    bearer = client.get("/metrics", REMOTE_ADDR="192.0.2.7", HTTP_AUTHORIZATION="Bearer metrics-token")
    allowed = client.get("/metrics", REMOTE_ADDR="10.1.2.3")

    assert stranger.status_code == 401 and stranger["WWW-Authenticate"].startswith("Bearer")
    assert b"TASKHUB_METRICS_TOKEN" in stranger.content
    assert wrong.status_code == 401
    assert bearer.status_code == 200 and b"taskhub_executions_running" in bearer.content
    assert allowed.status_code == 200


def test_without_a_token_only_loopback_may_read_metrics_by_default(client, settings):
    settings.TASKHUB_METRICS_TOKEN = ""

    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.7").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.7", HTTP_AUTHORIZATION="Bearer anything").status_code == 403
