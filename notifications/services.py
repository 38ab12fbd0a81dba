"""What follows a recorded outcome outside the engine: its metrics and its notifications.

``outcome_recorded`` is called by the engine once an attempt's outcome has
committed. It never raises and never waits on a receiver: it decides which
events the outcome is (failure, exhausted, recovery) and queues one
``notifications.deliver`` message per channel and kind; the deliveries run
as Celery tasks of their own, retried with backoff, each try recorded.

A task without notifications costs nothing here: which tasks have channels
is read once per TASKHUB_NOTIFY_REFRESH seconds per process (before a
Celery task starts), not per execution.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime

from celery.signals import task_prerun
from django.conf import settings
from django.core.mail import send_mail
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils.timezone import now

from notifications.models import Channel, Delivery, Event, Kind
from taskhub import metrics

logger = logging.getLogger("taskhub.notifications")

FAILURES = frozenset({"failed", "timeout", "lost"})
USER_AGENT = "TaskHub-Webhook/1"


# -- which tasks have channels, per process -------------------------------------------------


@dataclass(frozen=True)
class Wanted:
    failure: bool
    exhausted: bool
    recovery: bool


class ChannelIndex:
    """Per task id, the events its enabled channels want; read from the database at most every ``refresh`` seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wanted: dict[int, Wanted] = {}
        self._read_at: float | None = None

    def refresh_if_stale(self) -> None:
        if self._read_at is not None and time.monotonic() - self._read_at < settings.TASKHUB_NOTIFY_REFRESH:
            return
        with self._lock:
            if self._read_at is not None and time.monotonic() - self._read_at < settings.TASKHUB_NOTIFY_REFRESH:
                return
            wanted: dict[int, Wanted] = {}
            rows = Channel.objects.filter(enabled=True).values_list(
                "task_id", "on_failure", "on_exhausted", "on_recovery"
            )
            for task_id, failure, exhausted, recovery in rows:
                old = wanted.get(task_id, Wanted(False, False, False))
                wanted[task_id] = Wanted(old.failure or failure, old.exhausted or exhausted, old.recovery or recovery)
            self._wanted = wanted
            self._read_at = time.monotonic()

    def forget(self) -> None:
        self._read_at = None

    def get(self, task_id: int) -> Wanted | None:
        return self._wanted.get(task_id)


channel_index = ChannelIndex()


@task_prerun.connect
def _refresh_channel_index(**kwargs: object) -> None:
    # Before a Celery task runs, not while an outcome is recorded: the hot
    # path reads memory only.
    try:
        channel_index.refresh_if_stale()
    except Exception:
        logger.warning("Could not read which tasks have notifications; keeping the previous list.", exc_info=True)


@receiver([post_save, post_delete], sender=Channel)
def _channels_changed(**kwargs: object) -> None:
    channel_index.forget()  # this process reads them again; the others within TASKHUB_NOTIFY_REFRESH


# -- deciding -------------------------------------------------------------------------------


def outcome_recorded(outcome) -> None:
    """Count an outcome (an ``executions.lifecycle.Outcome``) and queue its notifications; never raise."""
    try:
        metrics.observe_outcome(outcome)
    except Exception:
        logger.exception("Could not count the outcome of execution %s.", outcome.execution.pk)
    try:
        _notify(outcome)
    except Exception:
        logger.exception("Could not queue the notifications of execution %s.", outcome.execution.pk)


def events_of(outcome, wanted: Wanted) -> list[str]:
    """The events an outcome is, among those ``wanted`` by some channel of its task.

    Recovery: a success whose task's previous attempt failed. Said to a
    channel that hears of every failure; to one that hears only of failed
    runs, only when that attempt ended its run (see ``_notify``).
    """
    execution = outcome.execution
    status = str(execution.status)
    events = []
    if status in FAILURES and not outcome.handed_back:
        if wanted.failure:
            events.append(Event.FAILURE)
        if wanted.exhausted and (execution.exhausted or outcome.next_execution is None):
            events.append(Event.EXHAUSTED)
    elif status == "succeeded" and wanted.recovery:
        previous = _previous_attempt(execution)
        if previous is not None and previous[0] in FAILURES:
            outcome.previous_run_failed = previous[1] != execution.run_id
            events.append(Event.RECOVERY)
    return events


def _previous_attempt(execution) -> tuple[str, object] | None:
    """Status and run id of the task's attempt that ended before this one (cancelled and skipped ones aside)."""
    from executions.models import TaskExecution

    # execution_task_recent_idx: the task's attempts, newest first.
    return (
        TaskExecution.objects.filter(task_id=execution.task_id, id__lt=execution.pk, finished_at__isnull=False)
        .exclude(status__in=["cancelled", "skipped"])
        .order_by("-id")
        .values_list("status", "run_id")
        .first()
    )


def _notify(outcome) -> None:
    execution = outcome.execution
    wanted = channel_index.get(execution.task_id)
    if wanted is None:
        return
    events = events_of(outcome, wanted)
    if not events:
        return
    from notifications.tasks import deliver

    for channel in Channel.objects.filter(task_id=execution.task_id, enabled=True):
        for event in events:
            if not channel.wants(event):
                continue
            if event == Event.RECOVERY and not (channel.on_failure or outcome.previous_run_failed):
                continue  # it was not told of the failure this recovers from
            for kind in channel.kinds():
                deliver.apply_async(
                    args=[channel.pk, execution.pk, str(event), str(kind)], queue=settings.TASKHUB_NOTIFY_QUEUE
                )


# -- delivering -------------------------------------------------------------------------------


class DeliveryFailed(Exception):
    """A try that did not get through; ``permanent`` when trying again cannot help."""

    def __init__(self, message: str, *, permanent: bool = False, response_code: int | None = None) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.response_code = response_code


def payload(execution, event: str, key: str) -> dict[str, object]:
    task = execution.task

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    link = f"{settings.TASKHUB_BASE_URL}/admin/executions/taskexecution/{execution.pk}/change/"
    return {
        "event": event,
        "delivery": key,
        "task": {"id": task.pk, "name": task.name},
        "execution": {
            "id": execution.pk,
            "run_id": str(execution.run_id),
            "attempt": execution.attempt,
            "status": execution.status,
            "exit_code": execution.exit_code,
            "error": execution.error,
            "exhausted": execution.exhausted,
            "started_at": iso(execution.started_at),
            "finished_at": iso(execution.finished_at),
            "url": link if settings.TASKHUB_BASE_URL else None,
        },
    }


def signature(secret: str, body: bytes) -> str:
    """The X-TaskHub-Signature value: HMAC-SHA256 of the raw body with the channel's secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


SUBJECTS = {
    Event.FAILURE: "[TaskHub] {name}: attempt {attempt} {status}",
    Event.EXHAUSTED: "[TaskHub] {name}: run failed after {attempt} attempt(s)",
    Event.RECOVERY: "[TaskHub] {name}: succeeded again",
}


def _send_email(channel: Channel, data: dict[str, object]) -> None:
    execution = data["execution"]
    subject = SUBJECTS[data["event"]].format(name=data["task"]["name"], **execution)
    lines = [f"{key}: {value}" for key, value in execution.items() if value not in (None, "")]
    try:
        send_mail(subject, "\n".join(lines) + "\n", settings.DEFAULT_FROM_EMAIL, channel.emails)
    except Exception as exc:  # smtplib and socket errors: the server may come back
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc


def _post_webhook(channel: Channel, data: dict[str, object]) -> int:
    body = json.dumps(data, separators=(",", ":")).encode()
    request = urllib.request.Request(
        channel.webhook_url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-TaskHub-Event": data["event"],
            "X-TaskHub-Delivery": data["delivery"],
            "X-TaskHub-Signature": signature(channel.webhook_secret, body),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=settings.TASKHUB_WEBHOOK_TIMEOUT) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        # 4xx other than timeout and rate limit: the receiver refuses this body; again will not help.
        permanent = 400 <= exc.code < 500 and exc.code not in (408, 429)
        raise DeliveryFailed(f"HTTP {exc.code} {exc.reason}", permanent=permanent, response_code=exc.code) from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from exc


def deliver(channel_id: int, execution_id: int, event: str, kind: str, *, key: str, attempt: int, last: bool) -> bool:
    """Make one try at one notification and record it; return True when delivered.

    Raise DeliveryFailed when the try failed and another may help (not on
    the ``last`` try); the record says ``failed`` then, ``gave_up`` when no
    try follows.
    """
    from executions.models import TaskExecution

    channel = Channel.objects.filter(pk=channel_id).first()
    execution = TaskExecution.objects.filter(pk=execution_id).select_related("task").first()
    if channel is None or execution is None:
        logger.info("Notification %s dropped: its channel or execution was deleted.", key)
        return False
    started_at, clock = now(), time.monotonic()
    data = payload(execution, event, key)
    record = Delivery(
        channel=channel, execution=execution, event=event, kind=kind, key=key, attempt=attempt, started_at=started_at
    )
    failure: DeliveryFailed | None = None
    try:
        if kind == Kind.EMAIL:
            record.target = ", ".join(channel.emails)
            _send_email(channel, data)
        else:
            record.target = channel.webhook_url
            record.response_code = _post_webhook(channel, data)
    except DeliveryFailed as exc:
        failure = exc
        record.response_code = exc.response_code
        record.error = str(exc)
    record.duration = time.monotonic() - clock
    if failure is None:
        record.status = Delivery.Status.DELIVERED
    elif last or failure.permanent:
        record.status = Delivery.Status.GAVE_UP
    else:
        record.status = Delivery.Status.FAILED
    record.save()
    if record.status == Delivery.Status.FAILED:
        raise failure
    if record.status == Delivery.Status.GAVE_UP:
        logger.warning("Notification %s (%s to %s) not delivered: %s.", key, kind, record.target, record.error)
    return failure is None
