"""Recovery: make every execution reach a terminal state exactly once.

- ``reap_lost``: running rows whose heartbeat stopped become ``lost`` and are
  retried by policy.
- ``reconcile_pending``: due pending rows that nobody claimed get their message
  sent again (the broker may have lost it), without growing a backlog.
- ``recover_host``: when a worker starts, rows still ``running`` under its name
  belong to a previous life of it: their process groups are stopped (only
  when the process really is that execution's) and the rows are marked lost.

Each row is handled in its own transaction: an error on one row is logged
with its id and counted, and the others still go through, so one bad row
cannot stall recovery. The reaper and the reconciler run as separate beat
tasks.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils.timezone import now

from executions import messaging
from executions.lifecycle import finish, send_next
from executions.models import Status, TaskExecution
from executions.runner import process_has_env

logger = logging.getLogger("executions")

BATCH = 500
# How far back a starting worker looks for its own lost executions whose
# commands might still run.
LOST_LOOKBACK = timedelta(days=1)


def _each_row(what: str, rows: list[TaskExecution], handle: Callable[[TaskExecution], bool]) -> dict[str, int]:
    """Call ``handle`` on each row in a transaction of its own; count what it did and what failed."""
    counts = {"done": 0, "errors": 0}
    for execution in rows:
        try:
            with transaction.atomic():
                done = handle(execution)
        except Exception:
            logger.exception("Recovery (%s) failed on execution %s; going on with the others.", what, execution.pk)
            counts["errors"] += 1
            continue
        counts["done"] += bool(done)
    return counts


def _mark_lost(execution: TaskExecution, error: str) -> bool:
    outcome = finish(execution, Status.LOST, {"error": error}, retryable=True)
    if execution.status != Status.LOST:
        return False
    # Sent after this row's transaction commits, as every launch.
    transaction.on_commit(lambda: send_next(outcome, retries=None))
    return True


def reap_lost(*, lost_after: float | None = None) -> dict[str, int]:
    """Mark running executions without a recent heartbeat as lost; return how many (``done``) and the ``errors``."""
    lost_after = settings.TASKHUB_LOST_AFTER if lost_after is None else lost_after
    at = now()
    cutoff = at - timedelta(seconds=lost_after)
    stale = list(
        TaskExecution.objects.filter(status=Status.RUNNING, heartbeat_at__lt=cutoff)
        .select_related("task")
        .order_by("heartbeat_at")[:BATCH]
    )

    def reap(execution: TaskExecution) -> bool:
        silent = (at - execution.heartbeat_at).total_seconds()
        error = (
            f"Lost: worker {execution.worker or '(unknown)'} stopped answering; "
            f"no heartbeat for {silent:.0f}s (limit {lost_after:.0f}s)."
        )
        if not _mark_lost(execution, error):
            return False
        logger.warning("Execution %s marked lost: %s", execution.pk, error)
        return True

    return _each_row("reaping lost executions", stale, reap)


def _queue_sizes(queues: set[str]) -> dict[str, int | None]:
    """Messages waiting in each queue, or None when the broker cannot say."""
    from celery import current_app

    sizes: dict[str, int | None] = {}
    try:
        with current_app.connection_for_read() as conn:
            channel = conn.default_channel
            for name in queues:
                try:
                    sizes[name] = channel.queue_declare(queue=name, passive=True).message_count
                except Exception:
                    # A queue that does not exist holds nothing (Redis deletes empty lists).
                    sizes[name] = 0
    except Exception:
        logger.warning("Could not read queue sizes from the broker.", exc_info=True)
        return {name: None for name in queues}
    return sizes


def reconcile_pending(*, requeue_after: float | None = None) -> dict[str, int]:
    """Send again the due pending executions nobody claimed; return how many were sent (``done``) and the ``errors``.

    Rows never sent (long retry delays held in the database) go as soon as
    they are due. Rows whose message was sent but not claimed within
    ``requeue_after`` go again only when their queue has drained: a queue with
    messages waiting is a backlog, not a lost message, and re-sending there
    would only grow it.
    """
    requeue_after = settings.TASKHUB_REQUEUE_AFTER if requeue_after is None else requeue_after
    at = now()
    cutoff = at - timedelta(seconds=requeue_after)
    candidates = list(
        TaskExecution.objects.filter(status=Status.PENDING)
        .filter(
            Q(enqueued_at__isnull=True, scheduled_for__lte=at) | Q(scheduled_for__lte=cutoff, enqueued_at__lte=cutoff)
        )
        .select_related("task")
        .order_by("scheduled_for")[:BATCH]
    )
    if not candidates:
        return {"done": 0, "errors": 0}
    resent_queues = {c.task.queue for c in candidates if c.enqueued_at is not None}
    sizes = _queue_sizes(resent_queues) if resent_queues else {}

    def resend(execution: TaskExecution) -> bool:
        if execution.enqueued_at is not None and sizes.get(execution.task.queue) != 0:
            return False
        # Take the row for this round (another reconciler may run at the same time).
        taken = TaskExecution.objects.filter(
            pk=execution.pk, status=Status.PENDING, enqueued_at=execution.enqueued_at
        ).update(enqueued_at=at)
        if not taken or not messaging.send(execution, at=at):
            return False
        logger.info("Execution %s was due and unclaimed; its message was sent again.", execution.pk)
        return True

    return _each_row("re-sending unclaimed executions", candidates, resend)


def _stop_group_if_ours(execution: TaskExecution) -> None:
    # The pid may have been reused since: kill only a process that carries
    # this execution's id in its environment (then it leads the group).
    if execution.pid and process_has_env(execution.pid, "TASKHUB_EXECUTION_ID", str(execution.pk)):
        try:
            os.killpg(execution.pid, signal.SIGKILL)
            logger.warning("Killed process group %s left by execution %s.", execution.pid, execution.pk)
        except OSError:
            pass


def recover_host(worker: str, *, started_before: datetime) -> int:
    """Stop and mark lost what a previous life of ``worker`` left running; return how many.

    Only rows claimed before ``started_before`` (when this life began) are
    taken: anything this life has claimed since is running here and now.
    The process groups of this worker's recently lost executions (marked
    lost by the reaper while it was away) are stopped too, should any of
    their commands have outlived the worker.
    """
    leftovers = list(
        TaskExecution.objects.filter(
            status=Status.RUNNING, worker=worker, started_at__lt=started_before
        ).select_related("task")
    )
    error = f"Lost: worker {worker} restarted while the command was running."

    def recover(execution: TaskExecution) -> bool:
        _stop_group_if_ours(execution)
        return _mark_lost(execution, error)

    _each_row(f"recovering what worker {worker} left", leftovers, recover)
    earlier = (
        TaskExecution.objects.filter(
            status=Status.LOST,
            worker=worker,
            pid__isnull=False,
            started_at__lt=started_before,
            finished_at__gte=started_before - LOST_LOOKBACK,
        )
        .only("pk", "pid")
        .order_by("-id")[:BATCH]
    )
    for execution in earlier:
        _stop_group_if_ours(execution)
    return len(leftovers)
