"""Notifications through real workers to a local SMTP server and a local webhook receiver."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext

from executions.lifecycle import Outcome
from executions.models import Status, TaskExecution
from notifications.models import Channel, Delivery
from notifications.services import channel_index, outcome_recorded
from taskhub.services import launch
from tests.conftest import finished, wait_for
from testsupport.receivers import SmtpServer, WebhookReceiver
from testsupport.servers import spare_port

pytestmark = pytest.mark.django_db(transaction=True)

# Deliveries retried after a fifth of a second (doubling), and workers that see new channels at once.
FAST = {"TASKHUB_NOTIFY_RETRY_DELAY": "0.2", "TASKHUB_NOTIFY_REFRESH": "0"}


@pytest.fixture
def smtp():
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def receiver_factory():
    started: list[WebhookReceiver] = []

    def start(*statuses: int) -> WebhookReceiver:
        receiver = WebhookReceiver(statuses or (200,)).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def channel(task, **fields) -> Channel:
    made = Channel(task=task, **fields)
    made.full_clean()
    made.save()
    return made


def deliveries(count: int, **filters) -> list[Delivery]:
    def enough():
        rows = list(Delivery.objects.filter(**filters).order_by("id"))
        return rows if len(rows) >= count else None

    return wait_for(enough, timeout=30, what=f"{count} delivery records")


def test_an_exhausted_run_is_mailed_through_the_mail_settings(celery_processes, make_task, smtp):
    celery_processes(env={**FAST, **smtp.env()})
    task = make_task(command="false", retry_count=1, retry_delay=0)
    channel(task, emails=["oncall@example.com", "lead@example.com"])  # on exhausted and on recovery by default

    first = launch(task)
    [record] = deliveries(1)

    last = TaskExecution.objects.get(run_id=first.run_id, attempt=2)
    assert record.status == Delivery.Status.DELIVERED and record.event == "exhausted" and record.kind == "email"
    assert record.execution_id == last.pk and record.duration >= 0
    [mail] = smtp.messages
    assert mail["Subject"] == f"[TaskHub] {task.name}: run failed after 2 attempt(s)"
    assert mail["From"] == "taskhub@example.com"
    assert mail["X-Envelope-To"] == "oncall@example.com, lead@example.com"
    assert f"id: {last.pk}" in mail.get_payload()
    assert TaskExecution.objects.get(pk=first.pk).status == Status.FAILED


def test_a_webhook_gets_a_json_body_signed_with_the_channels_secret(celery_processes, make_task, receiver_factory):
    receiver = receiver_factory(200)
    celery_processes(env=FAST)
    task = make_task(command="sh -c 'exit 3'")
    hook = channel(task, webhook_url=receiver.url, webhook_secret="s3cret", on_failure=True, on_exhausted=False)

    execution = finished(launch(task))
    [record] = deliveries(1)

    [request] = receiver.received
    expected = "sha256=" + hmac.new(b"s3cret", request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-TaskHub-Signature"] == expected
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-TaskHub-Event"] == "failure"
    assert request.headers["X-TaskHub-Delivery"] == record.key
    body = request.json()
    assert body["event"] == "failure"
    assert body["task"] == {"id": task.pk, "name": task.name}
    assert body["execution"]["id"] == execution.pk and body["execution"]["exit_code"] == 3
    assert body["execution"]["status"] == "failed"
    assert record.status == Delivery.Status.DELIVERED and record.response_code == 200
    assert record.channel_id == hook.pk and record.target == receiver.url


def test_a_receiver_that_fails_twice_then_accepts_gets_three_tries_the_last_delivered(
    celery_processes, make_task, receiver_factory
):
    receiver = receiver_factory(500, 503, 200)
    celery_processes(env=FAST)
    task = make_task(command="false")
    channel(task, webhook_url=receiver.url)

    finished(launch(task))
    records = deliveries(3)

    assert [r.status for r in records] == [Delivery.Status.FAILED, Delivery.Status.FAILED, Delivery.Status.DELIVERED]
    assert [r.attempt for r in records] == [1, 2, 3]
    assert [r.response_code for r in records] == [500, 503, 200]
    assert "HTTP 500" in records[0].error and records[2].error == ""
    assert len({r.key for r in records}) == 1  # one notification, three tries
    assert len(receiver.received) == 3
    assert {r.headers["X-TaskHub-Delivery"] for r in receiver.received} == {records[0].key}
    assert records[1].started_at > records[0].started_at and records[2].started_at > records[1].started_at


def test_a_failing_webhook_never_blocks_or_fails_the_run_it_reports(celery_processes, make_task):
    nobody = f"http://127.0.0.1:{spare_port()}/hook"  # connection refused, every time
    celery_processes(env={**FAST, "TASKHUB_NOTIFY_RETRIES": "1"})
    flaky = make_task(command="false", retry_count=1, retry_delay=0)
    fine = make_task(command="true")
    channel(flaky, webhook_url=nobody, on_failure=True)
    channel(fine, webhook_url=nobody, on_failure=True)

    first = launch(flaky)
    ok = finished(launch(fine))
    gave_up = deliveries(2, status=Delivery.Status.GAVE_UP, event="failure")

    attempts = list(TaskExecution.objects.filter(run_id=first.run_id).order_by("attempt"))
    assert [a.status for a in attempts] == [Status.FAILED, Status.FAILED]  # the retry ran as the policy says
    assert attempts[1].exhausted
    assert ok.status == Status.SUCCEEDED and ok.error == ""
    assert all("Connection refused" in r.error or "ConnectionRefused" in r.error for r in gave_up)
    failed_tries = Delivery.objects.filter(status=Delivery.Status.FAILED).count()
    assert failed_tries >= 2  # each failure notification was tried twice: once, and its one retry


def test_recovery_is_told_after_a_failed_run_and_a_plain_success_is_not(
    celery_processes, make_task, receiver_factory, tmp_path
):
    receiver = receiver_factory(200)
    celery_processes(env=FAST)
    flag = tmp_path / "healthy"
    task = make_task(command=f"test -e {flag}")
    channel(task, webhook_url=receiver.url)  # on exhausted and on recovery

    finished(launch(task))
    deliveries(1)
    flag.touch()
    finished(launch(task))
    deliveries(2)
    finished(launch(task))  # succeeds again: nothing to tell
    flag.unlink()
    finished(launch(task))
    deliveries(3)

    assert [r.json()["event"] for r in receiver.received] == ["exhausted", "recovery", "exhausted"]


def test_a_channel_names_what_is_missing(make_task):
    task = make_task()

    with pytest.raises(ValidationError) as nowhere:
        Channel(task=task).full_clean()
    with pytest.raises(ValidationError) as never:
        Channel(task=task, emails=["a@example.com"], on_exhausted=False, on_recovery=False).full_clean()
    with pytest.raises(ValidationError) as bad_address:
        Channel(task=task, emails=["not-an-address"]).full_clean()
    with pytest.raises(ValidationError) as unsigned:
        Channel(task=task, webhook_url="https://example.com/hook", webhook_secret="").full_clean()

    assert "emails" in nowhere.value.message_dict
    assert "on_exhausted" in never.value.message_dict
    assert "not-an-address" in str(bad_address.value.message_dict["emails"])
    assert "webhook_secret" in unsigned.value.message_dict


def test_deliveries_are_listed_in_the_admin_and_cannot_be_edited(admin_client, make_task):
    task = make_task()
    hook = channel(task, webhook_url="https://example.com/hook")
    execution = TaskExecution.objects.create(task=task, status=Status.FAILED)
    record = Delivery.objects.create(
        channel=hook,
        execution=execution,
        event="failure",
        kind="webhook",
        key="k1",
        status=Delivery.Status.GAVE_UP,
        target=hook.webhook_url,
        response_code=410,
        error="HTTP 410 Gone",
        started_at=execution.created_at,
        duration=0.2,
    )

    listing = admin_client.get("/admin/notifications/delivery/")
    page = admin_client.get(f"/admin/notifications/delivery/{record.pk}/change/")

    assert listing.status_code == 200
    assert b"https://example.com/hook" in listing.content and b"Failed, not tried again" in listing.content
    assert page.status_code == 200 and b"HTTP 410 Gone" in page.content
    assert b'name="_save"' not in page.content  # read-only
    assert admin_client.get("/admin/notifications/delivery/add/").status_code == 403


def test_recording_the_outcome_of_a_task_without_channels_costs_no_query(make_task, settings):
    settings.TASKHUB_NOTIFY_REFRESH = 3600
    quiet = make_task(command="false")
    loud = make_task(command="false")
    channel(loud, webhook_url="http://127.0.0.1:9/hook", on_failure=True)
    channel_index.refresh_if_stale()  # what a worker does before a Celery task, at most every TASKHUB_NOTIFY_REFRESH
    failed = TaskExecution.objects.create(task=quiet, status=Status.FAILED, exhausted=True)
    failed.task = quiet

    with CaptureQueriesContext(connection) as ctx:
        outcome_recorded(Outcome(execution=failed))

    assert ctx.captured_queries == []
    assert channel_index.get(quiet.pk) is None and channel_index.get(loud.pk).failure
