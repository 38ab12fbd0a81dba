"""Sending run messages: the queue, the broker's priority, and how the next attempt travels."""

from __future__ import annotations

import enum
import logging
from datetime import datetime, timedelta

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.utils.timezone import now
from kombu.exceptions import BatchPublishError

from executions.models import Status, TaskExecution

logger = logging.getLogger("executions")

RUN_EXECUTION = "executions.run_execution"


def broker_priority(priority: int) -> int | None:
    """Map TaskHub's 0-9 (9 most urgent) to the broker's own convention."""
    scheme = settings.BROKER_SCHEME
    if scheme in {"redis", "rediss"}:
        return 9 - priority  # kombu's Redis transport serves lower numbers first
    if scheme in {"amqp", "amqps", "pyamqp"}:
        return priority  # RabbitMQ serves higher numbers first
    return None  # the filesystem transport has no priorities


def routing(execution: TaskExecution) -> dict[str, object]:
    """The queue and priority of an execution's messages (the task's)."""
    task = execution.task
    return {"queue": task.queue, "priority": broker_priority(task.priority)}


def send(execution: TaskExecution, *, at: datetime | None = None) -> bool:
    """Publish the run message for a pending execution; return True if sent.

    A row due further ahead than TASKHUB_MAX_ETA is not published: it waits
    in the database and the reconciler sends it when due, so no long ETA sits
    in the broker (Redis would redeliver it after its visibility timeout).
    Broker errors are logged, not raised: the row is in the database, and the
    reconciler sends it again after TASKHUB_REQUEUE_AFTER.

    No per-message time limits: the runner enforces the deadline on the
    command's whole process group, and the group watcher and the
    parent-death signal stop it if the worker dies.
    """
    delay = (execution.scheduled_for - (at or now())).total_seconds()
    if delay > settings.TASKHUB_MAX_ETA:
        return False
    options = {
        "args": [execution.pk],
        "countdown": delay if delay > 0 else None,
        "task_id": execution.celery_task_id or None,
        # What Celery would write itself (the saferepr of the arguments), without its repr machinery.
        "argsrepr": f"[{execution.pk}]",
        "kwargsrepr": "{}",
        **routing(execution),
    }
    try:
        with current_app.producer_or_acquire() as producer:
            try:
                # The message and its task-sent event in one round trip where
                # the transport batches (kombu's Producer.batch: Redis pipelines
                # them; other transports publish each at once).
                with producer.batch():
                    current_app.send_task(RUN_EXECUTION, producer=producer, **options)
            except BatchPublishError as exc:
                # Delivery uncertain, and a batch is not retried: send it again
                # the usual way. A second message for the row runs nothing
                # twice: only one claims it.
                logger.warning("Sending execution %s again after a failed publish batch: %s", execution.pk, exc)
                current_app.send_task(RUN_EXECUTION, producer=producer, **options)
    except Exception:
        logger.exception("Could not send execution %s to the broker; the reconciler will send it again.", execution.pk)
        return False
    return True


def send_again_in(execution: TaskExecution, seconds: float, *, at: datetime) -> None:
    """Make a pending ``execution`` due ``seconds`` from ``at`` and send its message for then (it waits, unclaimed)."""
    due = at + timedelta(seconds=seconds)
    if TaskExecution.objects.row_if(execution.pk, Status.PENDING).update(scheduled_for=due, enqueued_at=at):
        execution.scheduled_for = due
        send(execution, at=at)


def send_on_commit(execution: TaskExecution) -> None:
    transaction.on_commit(lambda: send(execution))


class Travel(enum.Enum):
    """How the next attempt of a run reaches a worker."""

    CELERY_RETRY = "Celery's retry of the message being run, with a countdown"
    SEND = "a message of its own"
    HELD = "held in the database until due; the reconciler sends it then"


def how_next_travels(next_execution: TaskExecution, *, delay: float, retries: int | None, handed_back: bool) -> Travel:
    """Decide how the next attempt travels: the one place this is decided.

    ``retries`` is Celery's retry count of the message that ran the attempt
    before (None outside a Celery task: the reaper, the reconciler, a worker
    recovering its previous life). A delay past TASKHUB_MAX_ETA is held in
    the database. A handed-back attempt, or one whose message did not come
    through Celery's retry chain (re-sent by the reconciler, redelivered,
    Celery's count already spent), gets a message of its own. Otherwise it
    rides Celery's retry, as the contract says.
    """
    if next_execution.enqueued_at is None or delay > settings.TASKHUB_MAX_ETA:
        return Travel.HELD
    if handed_back or retries is None or retries >= next_execution.task.retry_count:
        return Travel.SEND
    return Travel.CELERY_RETRY
