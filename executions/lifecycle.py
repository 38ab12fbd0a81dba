"""An execution's life: claim and run it, record its outcome, plan the next attempt, retry or run again by hand.

The rule for new attempts lives here and only here:
- a run has at most one attempt that is not finished, and it is the latest;
- when it finishes, the next attempt (number + 1) is planned in the same
  transaction as its outcome, if the outcome is retryable and the policy
  allows (handed-back attempts do not count against ``retry_count``);
- a hand retry adds an attempt (latest + 1) only when the run's latest
  attempt is finished and the run has not succeeded; otherwise it is
  refused with the reason (``RetryRefused``) and creates nothing;
- "run again" starts a new run of the task, with its current definition.
"""

from __future__ import annotations

import logging
import shlex
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.utils.timezone import now

from executions import concurrency, messaging, rules, suites, watches, workflows
from executions.confine import Limits
from executions.db import drop_connection
from executions.hooks import hooks_for
from executions.models import CLAIM_CLOCK_TOLERANCE, RETRYABLE, Artifact, Status, TaskExecution, Trigger
from executions.runner import CommandSpec, RunResult, build_env, run_command
from notifications.services import outcome_recorded
from taskhub import metrics
from taskhub.limits import ActiveRunLimitReached
from taskhub.models import TaskDisabled
from taskhub.pausing import pause_schedules
from taskhub.services import launch

logger = logging.getLogger("executions")

T = TypeVar("T")

# How long a claim waits for the database to come back (seconds); after that
# the message fails and the reconciler sends it again.
CLAIM_DB_RETRY = 15
# A suite task's message that a host where its suite failed sends back: due again this much later (seconds).
SUITE_RESEND = 0.5


class RetryRefused(Exception):
    """A hand retry that the rule for new attempts does not allow; the message says why."""


@dataclass
class Outcome:
    execution: TaskExecution
    next_execution: TaskExecution | None = None
    retry_delay: float = 0.0
    handed_back: bool = False


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


# -- running one execution ------------------------------------------------------------


def command_env(execution: TaskExecution) -> dict[str, str]:
    extra = dict(execution.env or {})
    extra.update(
        TASKHUB_TASK=execution.task.name,
        TASKHUB_EXECUTION_ID=str(execution.pk),
        TASKHUB_RUN_ID=str(execution.run_id),
        TASKHUB_ATTEMPT=str(execution.attempt),
    )
    return build_env(extra, run_as=settings.TASKHUB_RUN_AS)


def spec_for(execution: TaskExecution) -> CommandSpec:
    """What the runner runs: the execution's snapshot (taken from the task now if the row has none)."""
    if not execution.has_snapshot:
        if execution.command:  # launched with a command line that does not split
            shlex.split(execution.command)  # raises ValueError, with the reason
        execution.take_snapshot(execution.task)
        if not execution.has_snapshot:
            execution.task.argv()  # raises ValueError, with the reason
    return CommandSpec(
        argv=list(execution.argv),
        timeout=execution.timeout,
        kill_grace=execution.kill_grace,
        env=command_env(execution),
        cwd=execution.working_dir,
        output_limit=settings.TASKHUB_OUTPUT_LIMIT,
        heartbeat_interval=settings.TASKHUB_HEARTBEAT,
        cancel_poll_interval=settings.TASKHUB_CANCEL_POLL,
        run_as=settings.TASKHUB_RUN_AS,
        # The task's env values may be secrets: no error text the runner writes shows them.
        secret_values=tuple(str(v) for v in (execution.env or {}).values()),
        limits=limits_of(execution.task),
        resources=tuple(execution.task.resources or ()),
        # Only for tasks that keep artifacts: making and removing the directory costs every attempt.
        artifacts_limit=settings.TASKHUB_ARTIFACTS_LIMIT if execution.task.keep_artifacts else 0,
    )


def limits_of(task) -> Limits:
    """What the task lets its command use (the task as it is when the attempt starts)."""
    return Limits(
        memory_mb=task.memory_limit_mb,
        cpu_seconds=task.cpu_limit_seconds,
        open_files=task.open_files_limit,
        processes=task.process_limit,
        isolate=task.isolated,
    )


def _result_fields(result: RunResult, decision: rules.Decision) -> dict[str, object]:
    error = result.error
    if result.outcome == "timeout":
        error = "Timed out: the command was stopped after its timeout."
    elif result.outcome == "cancelled":
        error = "Cancelled while running: the command was stopped."
    elif decision.status == Status.SUCCEEDED:
        error = ""  # an exit code the task counts as success (success_exit_codes)
    elif result.outcome == "succeeded":
        error = f"The command exited with code {result.exit_code}, which is not in success_exit_codes."
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
        "decided_by": decision.decided_by,
    }


def execute(execution_id: int, *, worker: str, celery_task_id: str) -> Outcome | None:
    """Claim, run and record one execution. Return None when the message was not ours to run."""
    at = now()
    # A connection broken by a database restart fails the first query; the
    # retry reconnects, so the first message after an outage is not wasted.
    execution = with_db_retry(
        f"claiming execution {execution_id}",
        lambda: TaskExecution.claim(execution_id, worker=worker, celery_task_id=celery_task_id, due_by=at),
        deadline=time.monotonic() + CLAIM_DB_RETRY,
    )
    if execution is None:
        execution = _claim_limited_or_explain(execution_id, at, worker=worker, celery_task_id=celery_task_id)
        if execution is None:
            return None
    metrics.observe_start(execution)
    hooks = None
    try:
        spec = spec_for(execution)
    except ValueError as exc:  # a command line that no longer splits (edited around validation)
        result = RunResult(outcome="not_started", error=f"Cannot start: the command line cannot be split: {exc}.")
    else:
        hooks = hooks_for(execution)
        try:
            result = run_command(spec, hooks)
        except BaseException as exc:
            # The runner was interrupted (worker shutdown, a signal); it has
            # stopped the command's group. Record why, send the next attempt
            # if one is due, then pass the exception on.
            fields = {
                "error": f"TaskHub stopped supervising the command: {type(exc).__name__}: {exc}".rstrip(": "),
                "decided_by": "TaskHub stopped supervising the command: retried by the task's retry policy",
            }
            try:
                outcome = finish(execution, Status.FAILED, fields, retryable=True)
                send_next(outcome, retries=None)
            except Exception:
                logger.exception("Could not record the interruption of execution %s.", execution_id)
            raise
    if result.artifacts:
        with_db_retry(
            f"saving the artifacts of execution {execution_id}",
            lambda: save_artifacts(execution, result.artifacts),
            deadline=time.monotonic() + settings.TASKHUB_FINAL_WRITE_RETRY,
        )
    decision = rules.decide(
        result.outcome, exit_code=result.exit_code, signal=result.signal, rules=rules.Rules.of(execution.task)
    )
    status = decision.status
    fields = _result_fields(result, decision)
    handed_back = result.outcome == "cancelled" and hooks is not None and hooks.stopped_for_shutdown
    if handed_back:
        status = Status.LOST
        fields["error"] = (
            f"Handed back: worker {worker} shut down and the command was still running after "
            f"TASKHUB_SHUTDOWN_GRACE ({settings.TASKHUB_SHUTDOWN_GRACE:g}s); it was stopped and runs again "
            "as a new attempt (not counted against the retries)."
        )
        fields["decided_by"] = "handed back at its worker's warm shutdown: runs again, not counted as a retry"
    outcome = with_db_retry(
        f"recording the outcome of execution {execution_id}",
        lambda: finish(
            execution,
            status,
            fields,
            retryable=decision.retry,
            handed_back=handed_back,
            by_worker=True,
        ),
        deadline=time.monotonic() + settings.TASKHUB_FINAL_WRITE_RETRY,
    )
    if execution.task.suite_id:
        try:
            suites.clean_up_if_done(execution.task.suite_id, worker)
        except Exception:  # the outcome stands; the worker's liveness tick tries again
            logger.exception("Suite %s: cleanup on %s failed", execution.task.suite_id, worker)
    return outcome


def save_artifacts(execution: TaskExecution, files: list) -> None:
    """Keep the files the attempt left in its artifacts directory (one INSERT; only when it left some)."""
    rows = [Artifact(execution_id=execution.pk, name=f.name, size=f.size, content=f.content) for f in files]
    Artifact.objects.bulk_create(rows, ignore_conflicts=True)  # a retried write must not fail on the first's rows


def _claim_limited_or_explain(
    execution_id: int, at: datetime, *, worker: str, celery_task_id: str
) -> TaskExecution | None:
    """Claim a due row of a task with a concurrency limit, a task to wait for or a suite; or say why not.

    (executions.concurrency, executions.watches, executions.suites)
    """
    row = TaskExecution.objects.filter(pk=execution_id).select_related("task").first()
    if row is None:
        logger.warning("Execution %s does not exist (deleted?); message ignored.", execution_id)
    elif (
        row.status == Status.PENDING
        and (row.task.max_concurrency or row.task.wait_for_task_id or row.task.suite_id)
        and row.scheduled_for <= at + CLAIM_CLOCK_TOLERANCE
    ):
        wait = watches.verdict(row, at=at)
        if not wait.ready and not wait.failure:
            watches.wait_again(row, at=at)
            return None
        failure = wait.failure
        if not failure and row.task.suite_id:
            suite = suites.prepare(row.task, host=worker)
            if not suite.ready and suites.host_left(row.task):
                logger.info("Execution %s: %s; sent back for another worker host.", execution_id, suite.reason)
                messaging.send_again_in(row, SUITE_RESEND, at=now())
                return None
            if not suite.ready:
                failure = f"No worker host can run it: {suite.reason}; clear the suite's failed hosts in the admin."
        claimed = with_db_retry(
            f"claiming execution {execution_id}",
            lambda: concurrency.claim_limited(row, worker=worker, celery_task_id=celery_task_id, due_by=at),
            deadline=time.monotonic() + CLAIM_DB_RETRY,
        )
        if claimed is not None and failure:
            fields = {"error": failure, "decided_by": "not run: what it waits for did not come; not retried"}
            finish(claimed, Status.FAILED, fields, retryable=False)
            return None
        return claimed
    elif row.status == Status.PENDING:
        # Delivered before it is due (a message sent early by hand or a clock skew):
        # send it again for its due time.
        logger.info("Execution %s is not due until %s; sending it again for then.", execution_id, row.scheduled_for)
        sent = messaging.send(row, at=at)
        TaskExecution.objects.row_if(row.pk, Status.PENDING).update(enqueued_at=at if sent else None)
    else:
        logger.info(
            "Execution %s is already %s; duplicate or late message ignored, the command is not run again.",
            execution_id,
            row.status,
        )
    return None


# -- the end of an attempt and the next one ---------------------------------------------


def _counted_attempts(execution: TaskExecution) -> int:
    """Attempts of this run up to ``execution`` that count against retry_count."""
    if execution.attempt == 1:
        return 1
    handed_back = TaskExecution.objects.filter(
        run_id=execution.run_id, attempt__lt=execution.attempt, handed_back=True
    ).count()
    return execution.attempt - handed_back


def finish(
    execution: TaskExecution,
    status: str,
    fields: dict[str, object],
    *,
    retryable: bool,
    handed_back: bool = False,
    by_worker: bool = False,
) -> Outcome:
    """Record the outcome of a running attempt and, in the same transaction, the next attempt's row.

    ``retryable``: the task's rules retry this outcome (executions.rules);
    the next attempt follows if attempts remain. The last attempt of a run
    that used every attempt without success is marked ``exhausted`` in the
    same write as its outcome. ``by_worker``: the worker's own outcome,
    written with the named OUTCOME statement; otherwise (the reaper, a
    worker's recovery) an ORM update. A ``handed_back`` attempt (stopped by
    its worker's warm shutdown) always gets a next attempt, due at once and
    not counted against retry_count.
    """
    outcome = Outcome(execution=execution, handed_back=handed_back)
    fields = {**fields, "handed_back": handed_back}
    fields.setdefault("decided_by", _default_decided_by(status, retryable))
    previous_status = execution.status
    task = execution.task

    def write() -> bool:
        if by_worker:
            done = execution.record_outcome(status, **fields)
        else:
            done = execution.finish(status, **fields)
        if not done:
            # The row left `running` meanwhile (the reaper marked it lost):
            # its retry, if any, was planned there.
            logger.warning(
                "Execution %s was no longer running when it finished; outcome %s not recorded.", execution.pk, status
            )
        else:  # counted and notified once committed, never holding up or failing the run
            transaction.on_commit(lambda: outcome_recorded(outcome))
        return done

    failure = status in RETRYABLE
    may_follow = handed_back or (retryable and failure)
    # A run in a workflow run: its end may launch downstream tasks, and a cancel of the workflow run stops retries.
    in_workflow = execution.workflow_run_id is not None and (may_follow or task.has_downstream)
    if not may_follow and not in_workflow:
        # No next attempt can follow (succeeded, cancelled, not retried):
        # the outcome is one conditional UPDATE, no transaction block around it.
        if failure and _used_every_attempt(execution, task):
            _mark_exhausted(fields, task)
        if write():
            _after_outcome(execution, task, fields)
        return outcome
    try:
        with transaction.atomic():
            workflow = workflows.lock(execution.workflow_run_id) if in_workflow else None
            if workflow is not None and workflow.cancelled_at is not None:
                may_follow = False  # nothing more runs in a cancelled workflow run
            retry = 0
            if may_follow:
                retry = 0 if handed_back else _counted_attempts(execution)  # the retry the next attempt would be
                if not handed_back and retry > task.retry_count:
                    _mark_exhausted(fields, task)
            elif failure and _used_every_attempt(execution, task):
                _mark_exhausted(fields, task)
            if not write():
                return outcome
            if may_follow and handed_back:
                outcome.next_execution = execution.next_attempt(delay=0, enqueued=True)
            elif may_follow and retry <= task.retry_count:
                delay = task.retry_delay_for(retry)
                outcome.next_execution = execution.next_attempt(delay=delay, enqueued=delay <= settings.TASKHUB_MAX_ETA)
                outcome.retry_delay = delay
            if outcome.next_execution is None and workflow is not None and task.has_downstream:
                workflows.run_ended(execution, workflow)
            _after_outcome(execution, task, fields)
    except BaseException:
        # Nothing was committed (e.g. the database went away before COMMIT):
        # the row is still `previous_status`, and so must this instance be, or
        # the next try of this write would be refused as an invalid transition.
        execution.status = previous_status
        raise
    return outcome


def _default_decided_by(status: str, retryable: bool) -> str:
    # The reaper and a worker's recovery say why a row is lost in `error`; this says what follows.
    if status == Status.LOST:
        return "lost: retried by the task's retry policy" if retryable else "lost: not retried"
    return ""


def _used_every_attempt(execution: TaskExecution, task) -> bool:
    """Whether the run has used, with this attempt, as many counted attempts as the task allows."""
    return execution.attempt >= task.attempts and _counted_attempts(execution) >= task.attempts


def _mark_exhausted(fields: dict[str, object], task) -> None:
    fields["exhausted"] = True
    used = f"every attempt used ({task.attempts} of {task.attempts})"
    fields["decided_by"] = f"{fields['decided_by']}; {used}"[:200] if fields.get("decided_by") else used


def _after_outcome(execution: TaskExecution, task, fields: dict[str, object]) -> None:
    """What an attempt's end sets off for its task: a queued run's turn, an auto-pause."""
    if task.max_concurrency:
        # After the commit: a claim made before it would still count this attempt as running.
        transaction.on_commit(lambda: concurrency.wake_next(task))
    if fields.get("exhausted") and task.pause_after_exhausted:
        _pause_if_exhausted_in_a_row(execution, task)


def _pause_if_exhausted_in_a_row(execution: TaskExecution, task) -> None:
    n = task.pause_after_exhausted
    if not TaskExecution.objects.ended_exhausted_in_a_row(task.pk, n):
        return
    reason = (
        f"paused after {n} runs in a row used every attempt without success "
        f"(the last: execution {execution.pk}, {now():%Y-%m-%d %H:%M %Z}); "
        "fix the task, then enable its schedules again"
    )
    pause_schedules(task, reason)
    logger.warning("Task %r: schedules %s.", task.name, reason)


def send_next(outcome: Outcome, *, retries: int | None) -> messaging.Travel | None:
    """Send the next attempt's message unless it rides Celery's retry or waits in the database.

    Return how it travels (None when there is no next attempt); the caller
    raises Celery's retry for ``Travel.CELERY_RETRY``.
    """
    nxt = outcome.next_execution
    if nxt is None:
        return None
    if not TaskExecution.task.is_cached(nxt):
        nxt.task = outcome.execution.task
    travel = messaging.how_next_travels(
        nxt, delay=outcome.retry_delay, retries=retries, handed_back=outcome.handed_back
    )
    if travel is messaging.Travel.SEND:
        messaging.send(nxt)
    elif travel is messaging.Travel.HELD:
        logger.info(
            "Execution %s: attempt %s is due in %.0fs, held in the database until then.",
            outcome.execution.pk,
            nxt.attempt,
            outcome.retry_delay,
        )
    return travel


# -- by hand -----------------------------------------------------------------------------


def _user_id(user) -> int | None:
    return user.pk if user is not None and user.is_authenticated else None


def retry_run(execution: TaskExecution, *, user=None, trigger: str = Trigger.MANUAL) -> TaskExecution:
    """Add an attempt to ``execution``'s run, by hand; raise RetryRefused with the reason when the rule forbids it."""
    task = execution.task
    if not task.enabled:
        raise RetryRefused(f"task “{task.name}” is disabled")
    latest = TaskExecution.objects.filter(run_id=execution.run_id).order_by("-attempt").first()
    if latest is None:  # deleted meanwhile
        raise RetryRefused("its run no longer exists")
    if not latest.is_terminal:
        raise RetryRefused(
            f"attempt {latest.attempt} of its run is still {latest.status}; "
            "wait for it to finish (or cancel it) before retrying"
        )
    if (
        latest.status == Status.SUCCEEDED
        or TaskExecution.objects.filter(run_id=execution.run_id, status=Status.SUCCEEDED).exists()
    ):
        raise RetryRefused("its run has succeeded; use “run again” to start a new run")
    at = now()
    try:
        with transaction.atomic():
            new = TaskExecution.create_pending(
                task,
                run_id=execution.run_id,
                attempt=latest.attempt + 1,
                trigger=trigger,
                triggered_by_id=_user_id(user),
                scheduled_for=at,
                enqueued=True,
                at=at,
                snapshot=latest.snapshot() if latest.has_snapshot else TaskExecution.snapshot_of(task),
                celery_task_id=str(uuid.uuid4()),
                workflow_run_id=latest.workflow_run_id,
                upstream_execution_id=latest.upstream_execution_id,
            )
    except IntegrityError:
        # Another hand retry of the same run took attempt latest + 1 first.
        raise RetryRefused("another retry of its run has just started") from None
    messaging.send_on_commit(new)
    return new


def run_again(execution: TaskExecution, *, user=None, trigger: str = Trigger.MANUAL) -> TaskExecution:
    """Start a new run of ``execution``'s task, as it is defined now."""
    return launch(execution.task, trigger=trigger, user=user)


@dataclass
class Rerun:
    """What ``rerun_exhausted`` did: the new runs, and the executions it did not re-run with the reason."""

    started: list[TaskExecution]
    refused: list[tuple[TaskExecution, str]]


def rerun_exhausted(executions: Iterable[TaskExecution], user=None, *, trigger: str = Trigger.MANUAL) -> Rerun:
    """Start a new run, by ``user``, of each exhausted run among ``executions`` (its task as defined now).

    Executions that are not an exhausted run's last attempt, tasks that are
    disabled, and launches over the user's limit of active runs are refused
    with the reason; the others still start.
    """
    result = Rerun(started=[], refused=[])
    for execution in executions:
        if not execution.exhausted:
            result.refused.append((execution, "not an exhausted run"))
            continue
        try:
            result.started.append(launch(execution.task, trigger=trigger, user=user))
        except (TaskDisabled, ActiveRunLimitReached, ValueError) as exc:
            result.refused.append((execution, str(exc)))
    return result
