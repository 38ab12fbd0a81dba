"""Work on executions that spans models, the runner and the broker."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from django.conf import settings
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    InterfaceError,
    OperationalError,
    connection,
    connections,
    transaction,
)
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Max
from django.utils.timezone import now
from kombu.exceptions import BatchPublishError

from executions import supervisor
from executions.db import check_pool, drop_connection
from executions.models import CLAIM_CLOCK_TOLERANCE, RETRYABLE, Status, TaskExecution, Trigger, hot_cursor
from executions.runner import CommandSpec, Hooks, OutputBuffer, RunResult, build_env, run_command
from executions.worker import shutdown_grace_expired

logger = logging.getLogger("executions")

T = TypeVar("T")

OUTCOME_STATUS = {
    "succeeded": Status.SUCCEEDED,
    "failed": Status.FAILED,
    "timeout": Status.TIMEOUT,
    "cancelled": Status.CANCELLED,
    "not_started": Status.FAILED,
}


def broker_priority(priority: int) -> int | None:
    """Map TaskHub's 0-9 (9 most urgent) to the broker's own convention."""
    scheme = settings.BROKER_SCHEME
    if scheme in {"redis", "rediss"}:
        return 9 - priority  # kombu's Redis transport serves lower numbers first
    if scheme in {"amqp", "amqps", "pyamqp"}:
        return priority  # RabbitMQ serves higher numbers first
    return None  # the filesystem transport has no priorities


def send(execution: TaskExecution, *, at: datetime | None = None) -> bool:
    """Publish the run message for a pending execution; return True if sent.

    A row due further ahead than TASKHUB_MAX_ETA is not published: it waits
    in the database and the reconciler sends it when due, so no long ETA sits
    in the broker (Redis would redeliver it after its visibility timeout).
    Broker errors are logged, not raised: the row is in the database, and the
    reconciler sends it again after TASKHUB_REQUEUE_AFTER.
    """
    from executions.tasks import run_execution

    task = execution.task
    delay = (execution.scheduled_for - (at or now())).total_seconds()
    if delay > settings.TASKHUB_MAX_ETA:
        return False
    soft, hard = task.time_limits(settings.TASKHUB_TIME_LIMIT_MARGIN)
    options = {
        "args": [execution.pk],
        "queue": task.queue,
        "priority": broker_priority(task.priority),
        "countdown": delay if delay > 0 else None,
        "soft_time_limit": soft,
        "time_limit": hard,
        "task_id": execution.celery_task_id or None,
        # What Celery would write itself (saferepr of the arguments), without its repr machinery.
        "argsrepr": f"[{execution.pk}]",
        "kwargsrepr": "{}",
    }
    try:
        with run_execution.app.producer_or_acquire() as producer:
            try:
                # The message and its task-sent event in one round trip, where
                # the transport batches (kombu's publish batch: Redis pipelines
                # them; other transports publish each at once).
                with producer.batch():
                    run_execution.apply_async(producer=producer, **options)
            except BatchPublishError as exc:
                # Delivery uncertain, and a batch is not retried: send it again
                # the usual way. A second message for the row runs nothing
                # twice: only one claims it.
                logger.warning("Sending execution %s again after a failed publish batch: %s", execution.pk, exc)
                run_execution.apply_async(producer=producer, **options)
    except Exception:
        logger.exception("Could not send execution %s to the broker; the reconciler will send it again.", execution.pk)
        return False
    return True


def send_on_commit(execution: TaskExecution) -> None:
    transaction.on_commit(lambda: send(execution))


# -- running one execution ------------------------------------------------------------


# Opens the error of an attempt a worker's warm shutdown stopped and handed
# back; such attempts do not count against the task's retry_count.
HANDED_BACK = "Handed back:"
# How long a claim waits for the database to come back (seconds); after that
# the message fails and the reconciler sends it again.
CLAIM_DB_RETRY = 15


@dataclass
class Outcome:
    execution: TaskExecution
    next_execution: TaskExecution | None = None
    retry_delay: float = 0.0
    handed_back: bool = False


def _ensure_usable_connection() -> None:
    # After a failed query the connection may be dead (database restart):
    # drop it so the next query reconnects.
    if connection.connection is not None and connection.errors_occurred:
        connection.close_if_unusable_or_obsolete()
        check_pool()


def with_db_retry(what: str, fn: Callable[[], T], *, deadline: float) -> T:
    """Call ``fn`` until it gets through to the database or ``deadline`` (monotonic) passes."""
    pause = 0.5
    while True:
        try:
            return fn()
        except (OperationalError, InterfaceError) as exc:
            # Connection trouble only: a data or integrity error will not heal by waiting.
            if time.monotonic() + pause > deadline:
                raise
            logger.warning("Database unavailable while %s (%s); trying again in %.1fs.", what, exc, pause)
            drop_connection()
            time.sleep(pause)
            pause = min(pause * 2, 10)


class _ExecutionHooks(Hooks):
    """Runner callbacks that keep the execution row up to date.

    In a prefork (or solo) pool process they query and write the row
    themselves. In a threads pool (``shared_mode()``) the process's one
    supervisor does it for all its executions in batches, and these
    callbacks only exchange state with it in memory: see executions/supervisor.py.
    """

    def __init__(self, execution: TaskExecution) -> None:
        self.shared = supervisor.shared_mode()
        super().__init__(
            on_start=self.on_start_cb,
            on_heartbeat=self.on_heartbeat_cb,
            cancel_requested=self.cancel_requested_cb,
            on_exit=self.on_exit_cb if self.shared else None,
        )
        self.execution = execution
        self.execution_id = execution.pk
        self.pid: int | None = None
        self.saved_bytes = (-1, -1)
        # Shared mode: what the supervisor reads and sets.
        self.registered_at = 0.0
        self.pid_saved = False
        self.stop_requested = False
        self._output: dict[str, object] | None = None
        self._fd_lock = threading.Lock()

    def on_start_cb(self, pid: int) -> None:
        self.pid = pid
        if self.shared:
            # The supervisor wakes the runner through it when the row says stop.
            self.wakeup_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.registered_at = time.monotonic()
            supervisor.supervisor.register(self)
            # The command may run for hours: hand the connection back meanwhile.
            supervisor.slots.release()

    def on_exit_cb(self) -> None:
        supervisor.supervisor.unregister(self)
        with self._fd_lock:  # stop() may be writing to it from the supervisor's thread
            if self.wakeup_fd is not None:
                os.close(self.wakeup_fd)
                self.wakeup_fd = None
        supervisor.slots.acquire()  # for recording the outcome

    def on_heartbeat_cb(self, out: OutputBuffer, err: OutputBuffer) -> None:
        if self.shared:
            # Decode here, in the runner's thread; the supervisor writes it on its next tick.
            if (out.total, err.total) != self.saved_bytes:
                self.saved_bytes = (out.total, err.total)
                self._output = {
                    "stdout": out.text(),
                    "stderr": err.text(),
                    "output_truncated": out.truncated or err.truncated,
                }
            return
        fields: dict[str, object] = {"heartbeat_at": now(), "pid": self.pid}
        if (out.total, err.total) != self.saved_bytes:
            fields.update(stdout=out.text(), stderr=err.text(), output_truncated=out.truncated or err.truncated)
        try:
            TaskExecution.objects.filter(pk=self.execution.pk, status=Status.RUNNING).update(**fields)
            self.saved_bytes = (out.total, err.total)
        except DatabaseError as exc:
            # The command goes on; the next tick tries again.
            logger.warning("Heartbeat of execution %s not saved: %s", self.execution.pk, exc)
            _ensure_usable_connection()

    def take_output(self) -> dict[str, object] | None:
        output, self._output = self._output, None
        return output

    def stop(self) -> None:
        """Called by the supervisor's thread: the row says stop."""
        self.stop_requested = True
        with self._fd_lock:
            if self.wakeup_fd is not None:
                os.eventfd_write(self.wakeup_fd, 1)

    def cancel_requested_cb(self) -> bool:
        if self.shared:
            return self.stop_requested
        try:
            row = (
                TaskExecution.objects.filter(pk=self.execution.pk).values_list("status", "cancel_requested_at").first()
            )
        except DatabaseError as exc:
            logger.warning("Cancel check of execution %s failed: %s", self.execution.pk, exc)
            _ensure_usable_connection()
            return False
        if row is None:
            return True  # the row was deleted: nobody wants this run any more
        status, cancel_requested_at = row
        # A row that is no longer running was taken over (e.g. marked lost by
        # the reaper after a long outage): stop, so the command does not run twice.
        return cancel_requested_at is not None or status != Status.RUNNING


@dataclass
class _RowPlan:
    """The statements that read an execution with its task, and how to turn their raw values into models."""

    load_sql: str
    claim_sql: str
    execution_attnames: list[str]
    task_attnames: list[str]
    converters: list


_row_plan_cache: _RowPlan | None = None


def _row_plan() -> _RowPlan:
    from taskhub.models import Task

    global _row_plan_cache
    if _row_plan_cache is None:
        q = connection.ops.quote_name
        execution_fields, task_fields = TaskExecution._meta.concrete_fields, Task._meta.concrete_fields
        # What the ORM applies to raw values (e.g. JSON for Task.env, UUID for run_id).
        cols = [f.get_col(f.model._meta.db_table) for f in (*execution_fields, *task_fields)]
        converters = [
            (i, col, [*connection.ops.get_db_converters(col), *col.get_db_converters(connection)])
            for i, col in enumerate(cols)
        ]
        columns = ", ".join(
            [*(f"e.{q(f.column)}" for f in execution_fields), *(f"t.{q(f.column)}" for f in task_fields)]
        )
        executions, tasks = q(TaskExecution._meta.db_table), q(Task._meta.db_table)
        task_join = f"t.{q(Task._meta.pk.column)} = e.{q('task_id')}"
        _row_plan_cache = _RowPlan(
            load_sql=(
                f"SELECT {columns} FROM {executions} e JOIN {tasks} t ON {task_join} "
                f"WHERE e.{q(TaskExecution._meta.pk.column)} = %s"
            ),
            claim_sql=(
                f"UPDATE {executions} e SET {q('status')} = %s, {q('started_at')} = %s, "
                f"{q('heartbeat_at')} = %s, {q('worker')} = %s, {q('celery_task_id')} = %s "
                f"FROM {tasks} t "
                f"WHERE e.{q('id')} = %s AND e.{q('status')} = %s AND e.{q('scheduled_for')} <= %s "
                f"AND {task_join} RETURNING {columns}"
            ),
            execution_attnames=[f.attname for f in execution_fields],
            task_attnames=[f.attname for f in task_fields],
            converters=[c for c in converters if c[2]],
        )
    return _row_plan_cache


def _build_execution(row: tuple, conn: BaseDatabaseWrapper) -> TaskExecution:
    from taskhub.models import Task

    plan = _row_plan()
    values = list(row)
    for i, col, funcs in plan.converters:
        for func in funcs:
            values[i] = func(values[i], col, conn)
    split = len(plan.execution_attnames)
    execution = TaskExecution.from_db(conn.alias, plan.execution_attnames, values[:split])
    execution.task = Task.from_db(conn.alias, plan.task_attnames, values[split:])
    return execution


def load_for_run(execution_id: int) -> TaskExecution:
    """Load an execution with its task in one SELECT, as ``select_related("task").get()`` would.

    On the worker path of every execution: the ORM spends over a
    millisecond of CPU compiling that query and building its models, several
    times the round trip itself, so the statement and the fields' converters
    are worked out once per process. Raise TaskExecution.DoesNotExist when
    the row is gone.
    """
    conn = connections[DEFAULT_DB_ALIAS]
    with conn.cursor() as cursor:
        cursor.execute(_row_plan().load_sql, [execution_id])
        row = cursor.fetchone()
    if row is None:
        raise TaskExecution.DoesNotExist(f"Execution {execution_id} does not exist.")
    return _build_execution(row, conn)


def claim_and_load(execution_id: int, *, worker: str, celery_task_id: str, due_by: datetime) -> TaskExecution | None:
    """Claim a pending, due row and load it with its task, in one statement (PostgreSQL).

    The same conditional update as ``TaskExecution.claim`` (which SQLite
    uses, followed by ``load_for_run``), with ``RETURNING`` handing back the
    claimed row: one round trip instead of two on every execution. Return
    None when the row was not pending and due (nothing is changed then).
    """
    at = now()
    params = [
        Status.RUNNING.value, at, at, worker, celery_task_id,
        execution_id, Status.PENDING.value, due_by + CLAIM_CLOCK_TOLERANCE,
    ]  # fmt: skip
    # This thread's connection itself: each attribute read through the
    # ``connection`` proxy looks the connection up again (a dozen per claim).
    conn = connections[DEFAULT_DB_ALIAS]
    with hot_cursor(conn) as cursor:
        cursor.execute(_row_plan().claim_sql, params)
        row = cursor.fetchone()
    return None if row is None else _build_execution(row, conn)


def command_env(execution: TaskExecution) -> dict[str, str]:
    task = execution.task
    extra = dict(task.env)
    extra.update(
        TASKHUB_TASK=task.name,
        TASKHUB_EXECUTION_ID=str(execution.pk),
        TASKHUB_RUN_ID=str(execution.run_id),
        TASKHUB_ATTEMPT=str(execution.attempt),
    )
    return build_env(extra)


def spec_for(execution: TaskExecution) -> CommandSpec:
    task = execution.task
    return CommandSpec(
        argv=task.argv(),
        timeout=task.timeout,
        kill_grace=task.kill_grace,
        env=command_env(execution),
        cwd=task.working_dir,
        output_limit=settings.TASKHUB_OUTPUT_LIMIT,
        heartbeat_interval=settings.TASKHUB_HEARTBEAT,
        cancel_poll_interval=settings.TASKHUB_CANCEL_POLL,
    )


def _result_fields(result: RunResult) -> dict[str, object]:
    error = result.error
    if result.outcome == "timeout":
        error = "Timed out: the command was stopped after its timeout."
    elif result.outcome == "cancelled":
        error = "Cancelled while running: the command was stopped."
    return {
        "exit_code": result.exit_code,
        "signal": result.signal,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "output_truncated": result.output_truncated,
        "error": error,
        "pid": result.pid,
        "max_rss_kb": result.max_rss_kb,
        "cpu_user": result.cpu_user,
        "cpu_system": result.cpu_system,
    }


def _counted_attempts(execution: TaskExecution) -> int:
    """Attempts of this run up to ``execution`` that count against retry_count."""
    if execution.attempt == 1:
        return 1
    handed_back = TaskExecution.objects.filter(
        run_id=execution.run_id, attempt__lt=execution.attempt, status=Status.LOST, error__startswith=HANDED_BACK
    ).count()
    return execution.attempt - handed_back


def finish_and_plan_retry(
    execution: TaskExecution, status: str, fields: dict[str, object], *, retryable: bool, handed_back: bool = False
) -> Outcome:
    """Record the outcome and, in the same transaction, the next attempt's row.

    A ``handed_back`` attempt (stopped by its worker's warm shutdown) always
    gets a next attempt, due at once and not counted against retry_count.
    """
    outcome = Outcome(execution=execution, handed_back=handed_back)
    previous_status = execution.status
    if not handed_back and not (retryable and status in RETRYABLE):
        # No next attempt can follow (succeeded, cancelled, could not start):
        # the outcome is one conditional UPDATE, no transaction block around it.
        if not execution.finish(status, **fields):
            logger.warning(
                "Execution %s was no longer running when it finished; outcome %s not recorded.", execution.pk, status
            )
        return outcome
    try:
        with transaction.atomic():
            if not execution.finish(status, **fields):
                # The row left `running` meanwhile (the reaper marked it lost): its
                # retry, if any, was planned there.
                logger.warning(
                    "Execution %s was no longer running when it finished; outcome %s not recorded.",
                    execution.pk,
                    status,
                )
                return outcome
            task = execution.task
            if handed_back:
                outcome.next_execution = execution.next_attempt(delay=0, enqueued=True)
            elif retryable and status in RETRYABLE:
                retry = _counted_attempts(execution)  # the retry the next attempt would be
                if retry <= task.retry_count:
                    delay = task.retry_delay_for(retry)
                    outcome.next_execution = execution.next_attempt(
                        delay=delay, enqueued=delay <= settings.TASKHUB_MAX_ETA
                    )
                    outcome.retry_delay = delay
    except BaseException:
        # Nothing was committed (e.g. the database went away before COMMIT):
        # the row is still `previous_status`, and so must this instance be, or
        # the next try of this write would be refused as an invalid transition.
        execution.status = previous_status
        raise
    return outcome


class _StopAtShutdown:
    """Wrap a cancel check so that it also says stop once the worker's shutdown grace is over."""

    def __init__(self, cancel_requested: Callable[[], bool] | None) -> None:
        self.cancel_requested = cancel_requested
        self.fired = False

    def __call__(self) -> bool:
        # An operator's cancel (or a row taken over by the reaper) wins over a
        # hand-back: neither must lead to a new attempt.
        if self.cancel_requested and self.cancel_requested():
            return True
        if shutdown_grace_expired():
            self.fired = True
            return True
        return False


def execute(execution_id: int, *, worker: str, celery_task_id: str) -> Outcome | None:
    """Claim, run and record one execution. Return None when the message was not ours to run."""
    at = now()
    # A connection broken by a database restart fails the first query; the
    # retry reconnects, so the first message after an outage is not wasted.
    if connection.vendor == "postgresql":
        execution = with_db_retry(
            f"claiming execution {execution_id}",
            lambda: claim_and_load(execution_id, worker=worker, celery_task_id=celery_task_id, due_by=at),
            deadline=time.monotonic() + CLAIM_DB_RETRY,
        )
    else:
        claimed = with_db_retry(
            f"claiming execution {execution_id}",
            lambda: TaskExecution.claim(execution_id, worker=worker, celery_task_id=celery_task_id, due_by=at),
            deadline=time.monotonic() + CLAIM_DB_RETRY,
        )
        execution = load_for_run(execution_id) if claimed else None
    if execution is None:
        _explain_unclaimed(execution_id, at)
        return None
    stop_at_shutdown: _StopAtShutdown | None = None
    try:
        spec = spec_for(execution)
    except ValueError as exc:  # a command line that no longer splits (edited around validation)
        result = RunResult(outcome="not_started", error=f"Cannot start: the command line cannot be split: {exc}.")
    else:
        hooks = _ExecutionHooks(execution)
        stop_at_shutdown = hooks.cancel_requested = _StopAtShutdown(hooks.cancel_requested)
        try:
            result = run_command(spec, hooks)
        except BaseException as exc:
            # The runner was interrupted (Celery's backstop limit, worker shutdown);
            # it has stopped the command's group. Record why, send the next
            # attempt if one is due, then pass the exception on.
            fields = {"error": f"TaskHub stopped supervising the command: {type(exc).__name__}: {exc}".rstrip(": ")}
            try:
                outcome = finish_and_plan_retry(execution, Status.FAILED, fields, retryable=True)
                if outcome.next_execution is not None and outcome.next_execution.enqueued_at is not None:
                    send(outcome.next_execution)
            except DatabaseError:
                logger.exception("Could not record the interruption of execution %s.", execution_id)
            raise
    status = OUTCOME_STATUS[result.outcome]
    fields = _result_fields(result)
    handed_back = result.outcome == "cancelled" and stop_at_shutdown is not None and stop_at_shutdown.fired
    if handed_back:
        status = Status.LOST
        fields["error"] = (
            f"{HANDED_BACK} worker {worker} shut down and the command was still running after "
            f"TASKHUB_SHUTDOWN_GRACE ({settings.TASKHUB_SHUTDOWN_GRACE:g}s); it was stopped and runs again "
            "as a new attempt (not counted against the retries)."
        )
    deadline = time.monotonic() + settings.TASKHUB_FINAL_WRITE_RETRY
    return with_db_retry(
        f"recording the outcome of execution {execution_id}",
        lambda: finish_and_plan_retry(
            execution, status, fields, retryable=result.outcome != "not_started", handed_back=handed_back
        ),
        deadline=deadline,
    )


def _explain_unclaimed(execution_id: int, at: datetime) -> None:
    row = TaskExecution.objects.filter(pk=execution_id).select_related("task").first()
    if row is None:
        logger.warning("Execution %s does not exist (deleted?); message ignored.", execution_id)
    elif row.status == Status.PENDING:
        # Delivered before it is due (a message sent early by hand or a clock skew):
        # send it again for its due time.
        logger.info("Execution %s is not due until %s; sending it again for then.", execution_id, row.scheduled_for)
        sent = send(row, at=at)
        TaskExecution.objects.filter(pk=row.pk, status=Status.PENDING).update(enqueued_at=at if sent else None)
    else:
        logger.info(
            "Execution %s is already %s; duplicate or late message ignored, the command is not run again.",
            execution_id,
            row.status,
        )


def retry_execution(execution: TaskExecution, *, user=None) -> TaskExecution:
    """Start a new attempt of a finished execution's run, by hand.

    Raise ValueError (with the reason) when the execution is not finished or
    its task is disabled.
    """
    task = execution.task
    if not execution.is_terminal:
        raise ValueError(f"it is still {execution.status}")
    if not task.enabled:
        raise ValueError(f"task “{task.name}” is disabled")
    at = now()
    with transaction.atomic():
        last = TaskExecution.objects.filter(run_id=execution.run_id).aggregate(n=Max("attempt"))["n"] or 0
        new = TaskExecution.create_pending(
            task,
            run_id=execution.run_id,
            attempt=last + 1,
            trigger=Trigger.MANUAL,
            triggered_by_id=user.pk if user is not None and user.is_authenticated else None,
            scheduled_for=at,
            enqueued=True,
            at=at,
            celery_task_id=str(uuid.uuid4()),
        )
        send_on_commit(new)
    return new
