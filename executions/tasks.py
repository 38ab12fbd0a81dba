"""Celery interface to executions: thin tasks that take an id and call domain code."""

from __future__ import annotations

import logging
import socket

from celery import shared_task
from django.conf import settings

from executions import recovery, services
from executions.services import broker_priority

logger = logging.getLogger("executions")


class ExecutionFailed(Exception):
    """The attempt ended failed, timeout or lost; carried by Celery's retry."""


@shared_task(
    bind=True,
    name="executions.run_execution",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    # The retry decision is TaskHub's (the attempt count in the database);
    # max_retries is passed per call so Celery's own accounting matches it.
    max_retries=None,
)
def run_execution(self, execution_id: int) -> None:
    worker = self.request.hostname or socket.gethostname()
    outcome = services.execute(int(execution_id), worker=worker, celery_task_id=self.request.id or "")
    if outcome is None or outcome.next_execution is None:
        return
    execution, nxt, delay = outcome.execution, outcome.next_execution, outcome.retry_delay
    task = execution.task
    if outcome.handed_back:
        # Stopped by this worker's shutdown: the new attempt is not one of
        # Celery's retries; another worker (or this one, restarted) takes it.
        services.send(nxt)
        return
    if delay > settings.TASKHUB_MAX_ETA:
        logger.info(
            "Execution %s: attempt %s is due in %.0fs, held in the database until then.",
            execution.pk,
            nxt.attempt,
            delay,
        )
        return
    if self.request.called_directly or self.request.retries >= task.retry_count:
        # A message that did not come from Celery's retry chain (re-sent by the
        # reconciler, redelivered): Celery's counter is behind, send plainly.
        services.send(nxt)
        return
    soft, hard = task.time_limits(settings.TASKHUB_TIME_LIMIT_MARGIN)
    options = {
        "queue": task.queue,
        "priority": broker_priority(task.priority),
        "soft_time_limit": soft,
        "time_limit": hard,
    }
    raise self.retry(
        args=[nxt.pk],
        countdown=delay,
        max_retries=task.retry_count,
        exc=ExecutionFailed(
            f"Attempt {execution.attempt} of execution run {execution.run_id} ended {execution.status}"
        ),
        **options,
    )


@shared_task(name="executions.recover", ignore_result=True)
def recover() -> dict[str, int]:
    """Reap lost executions and re-send unclaimed pending ones (run by beat)."""
    return {"lost": recovery.reap_lost(), "resent": recovery.reconcile_pending()}
