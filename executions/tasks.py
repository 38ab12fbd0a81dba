"""Celery interface to executions: thin tasks that take an id and call domain code."""

from __future__ import annotations

import logging
import socket

from celery import shared_task

from executions import lifecycle, messaging, recovery

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
    outcome = lifecycle.execute(int(execution_id), worker=worker, celery_task_id=self.request.id or "")
    if outcome is None:
        return
    retries = None if self.request.called_directly else self.request.retries
    if lifecycle.send_next(outcome, retries=retries) is not messaging.Travel.CELERY_RETRY:
        return
    execution, nxt = outcome.execution, outcome.next_execution
    raise self.retry(
        args=[nxt.pk],
        countdown=outcome.retry_delay,
        max_retries=execution.task.retry_count,
        exc=ExecutionFailed(
            f"Attempt {execution.attempt} of execution run {execution.run_id} ended {execution.status}"
        ),
        **messaging.routing(nxt),
    )


@shared_task(name="executions.reap_lost", ignore_result=True)
def reap_lost() -> dict[str, int]:
    """Mark running executions whose heartbeat stopped as lost (run by beat)."""
    return recovery.reap_lost()


@shared_task(name="executions.reconcile_pending", ignore_result=True)
def reconcile_pending() -> dict[str, int]:
    """Send again the due pending executions nobody claimed (run by beat)."""
    return recovery.reconcile_pending()


@shared_task(name="executions.recover", ignore_result=True)
def recover() -> dict[str, dict[str, int]]:
    """Both recovery checks, each on its own: the name older beat schedules stored."""
    return {"reaped": recovery.reap_lost(), "reconciled": recovery.reconcile_pending()}
