"""Suites on worker hosts: provision once before a suite's tasks run there, background beside them, cleanup after.

A suite's state on a host is a SuiteHost row, moved under a row lock so that
the pool processes of one worker provision it once:

    pending/done → provisioning → running → cleaning up → done
                              ↘ failed (no more of the suite's work here until an operator clears it)

``prepare`` runs before a suite task's execution is claimed: the execution
stays pending while its host provisions, and a host where the suite failed
sends the message back for another host (or fails the execution with the
reason when no live worker for its queue is left to take it). After each
outcome on a host, and on the worker's liveness tick, ``clean_up_if_done``
stops the background's process group and runs cleanup once the host runs
none of the suite's executions and none is due anywhere; a worker's
shutdown does both for every suite still running on it (``shut_down``), and
a worker that died without it does them when it starts again (``recover``).
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils.timezone import now

from executions.models import HookKind, HookRun, Status, SuiteHost, SuiteHostState, TaskExecution, Worker
from executions.runner import CommandSpec, build_env, process_has_env, run_command, signal_group
from taskhub.models import Suite, Task

logger = logging.getLogger("executions")

# How often a process waiting for another one's provision or cleanup on its host looks again.
POLL = 0.2
# After SIGTERM, how long the background's group has before SIGKILL.
BACKGROUND_GRACE = 5.0
# Pending work due within this many seconds still counts as the suite's work (a message sent back by a
# host where the suite failed is due again half a second later).
SOON = 5.0
# The background's processes carry this in their environment: a stop never signals a reused process group.
MARKER = "TASKHUB_SUITE_BACKGROUND"
# Background processes started by this process, by SuiteHost id, reaped here once stopped.
_started: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class Verdict:
    ready: bool
    reason: str = ""


def _argv(hook: dict) -> list[str]:
    return list(hook["argv"]) if hook.get("argv") else shlex.split(hook["command"])


def _env(hook: dict, suite: Suite, host: str, **extra: str) -> dict[str, str]:
    return build_env(
        {**(hook.get("env") or {}), "TASKHUB_SUITE": suite.name, "TASKHUB_HOST": host, **extra},
        run_as=settings.TASKHUB_RUN_AS,
    )


def run_hook(suite_host: SuiteHost, kind: str, hook: dict) -> HookRun:
    """Run a provision or cleanup hook to its end, recorded as a HookRun."""
    suite = suite_host.suite
    run = HookRun.objects.create(suite_host=suite_host, kind=kind, started_at=now())
    spec = CommandSpec(
        argv=_argv(hook),
        timeout=hook.get("timeout", 600),
        kill_grace=10,
        env=_env(hook, suite, suite_host.host),
        cwd=hook.get("working_dir", ""),
        output_limit=settings.TASKHUB_OUTPUT_LIMIT,
        run_as=settings.TASKHUB_RUN_AS,
    )
    result = run_command(spec)
    status = {"succeeded": "succeeded", "timeout": "timeout"}.get(result.outcome, "failed")
    error = result.error or ("Timed out." if status == "timeout" else "")
    HookRun.objects.filter(pk=run.pk).update(
        status=status,
        exit_code=result.exit_code,
        signal=result.signal,
        stdout=result.stdout,
        stderr=result.stderr,
        error=error,
        pid=result.pid,
        finished_at=now(),
    )
    run.refresh_from_db()
    return run


def _failure_type(run: HookRun) -> str:
    if run.status == "timeout":
        return "timeout"
    if run.exit_code is not None:
        return f"exit code {run.exit_code}"
    if run.signal is not None:
        return f"signal {run.signal}"
    return "could not start"


# -- before a suite task runs on this host ------------------------------------------------------


def prepare(task: Task, *, host: str) -> Verdict:
    """Make ``task``'s suite ready on ``host``: wait for or run its provision and start its background."""
    _reap()
    suite = Suite.objects.get(pk=task.suite_id)
    SuiteHost.objects.get_or_create(suite=suite, host=host)
    give_up = time.monotonic() + (suite.provision or {}).get("timeout", 600) + 60
    while True:
        with transaction.atomic():
            row = SuiteHost.objects.select_for_update().select_related("suite").get(suite=suite, host=host)
            if row.state == SuiteHostState.RUNNING:
                return Verdict(ready=True)
            if row.state == SuiteHostState.FAILED:
                return Verdict(ready=False, reason=f"suite “{suite.name}” failed on {host}: {row.error}")
            mine = row.state in (SuiteHostState.PENDING, SuiteHostState.DONE)
            if mine:
                row.state = SuiteHostState.PROVISIONING
                row.save(update_fields=["state", "updated_at"])
        if mine:
            return _provision(row)
        # Another process of this worker is provisioning or cleaning up: wait for it.
        if time.monotonic() > give_up:
            return Verdict(ready=False, reason=f"suite “{suite.name}” on {host} did not become ready in time")
        time.sleep(POLL)


def _provision(row: SuiteHost) -> Verdict:
    suite = row.suite
    _stop_background(row)  # one left by a worker that died
    if suite.provision:
        run = run_hook(row, HookKind.PROVISION, suite.provision)
        if run.status != "succeeded":
            detail = run.error or run.stderr.strip()[-500:] or run.status
            SuiteHost.objects.filter(pk=row.pk).update(
                state=SuiteHostState.FAILED,
                failures=F("failures") + 1,
                failure_type=_failure_type(run),
                error=f"provision failed ({_failure_type(run)}): {detail}",
            )
            logger.warning("Suite %r: provision failed on %s: %s", suite.name, row.host, detail)
            return Verdict(ready=False, reason=f"suite “{suite.name}”: provision failed on {row.host}")
    pid = _start_background(row) if suite.background else None
    SuiteHost.objects.filter(pk=row.pk).update(state=SuiteHostState.RUNNING, background_pid=pid)
    return Verdict(ready=True)


def _output_dir(row: SuiteHost) -> str:
    return os.path.join(tempfile.gettempdir(), f"taskhub-suite-{row.pk}")


def _start_background(row: SuiteHost) -> int | None:
    hook = row.suite.background
    out_dir = _output_dir(row)
    os.makedirs(out_dir, mode=0o700, exist_ok=True)
    run = HookRun.objects.create(suite_host=row, kind=HookKind.BACKGROUND, started_at=now())
    try:
        with open(os.path.join(out_dir, "stdout"), "wb") as out, open(os.path.join(out_dir, "stderr"), "wb") as err:
            proc = subprocess.Popen(
                _argv(hook),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=hook.get("working_dir") or None,
                env=_env(hook, row.suite, row.host, **{MARKER: str(row.pk)}),
                start_new_session=True,
            )
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in argv or env
        HookRun.objects.filter(pk=run.pk).update(status="failed", error=f"Cannot start: {exc}.", finished_at=now())
        return None
    _started[row.pk] = proc
    HookRun.objects.filter(pk=run.pk).update(pid=proc.pid)
    return proc.pid


# -- after the suite's work on this host ---------------------------------------------------------


def work_left(suite_id: int, host: str) -> bool:
    """Whether ``host`` runs any of the suite's executions, or any of them is due (soon) anywhere."""
    of_suite = TaskExecution.objects.filter(task__suite_id=suite_id)
    return (
        of_suite.filter(status=Status.RUNNING, worker=host).exists()
        or of_suite.filter(status=Status.PENDING, scheduled_for__lte=now() + timedelta(seconds=SOON)).exists()
    )


def clean_up_if_done(suite_id: int, host: str) -> bool:
    """Stop the background and run cleanup on ``host`` once the suite's work there is done; True if it did."""
    with transaction.atomic():
        row = SuiteHost.objects.select_for_update().select_related("suite").filter(suite_id=suite_id, host=host).first()
        if row is None or row.state != SuiteHostState.RUNNING or work_left(suite_id, host):
            return False
        row.state = SuiteHostState.CLEANING_UP
        row.save(update_fields=["state", "updated_at"])
    _clean_up(row)
    return True


def _clean_up(row: SuiteHost) -> None:
    """Stop the background, run cleanup and mark the suite done on its host; the caller moved it to cleaning up."""
    _stop_background(row)
    if row.suite.cleanup:
        run_hook(row, HookKind.CLEANUP, row.suite.cleanup)
    SuiteHost.objects.filter(pk=row.pk).update(state=SuiteHostState.DONE, background_pid=None)


def clean_up_idle(host: str) -> None:
    """The worker's liveness tick: clean up suites whose work on ``host`` ended while its tasks ran elsewhere."""
    for suite_id in SuiteHost.objects.filter(host=host, state=SuiteHostState.RUNNING).values_list(
        "suite_id", flat=True
    ):
        try:
            clean_up_if_done(suite_id, host)
        except Exception:
            logger.exception("Suite %s: cleanup on %s failed", suite_id, host)


def shut_down(host: str) -> None:
    """The worker is stopping: stop its suites' backgrounds and run their cleanup, leaving no process behind."""
    for row in SuiteHost.objects.filter(host=host, state=SuiteHostState.RUNNING).select_related("suite"):
        try:
            if SuiteHost.objects.filter(pk=row.pk, state=SuiteHostState.RUNNING).update(
                state=SuiteHostState.CLEANING_UP
            ):
                _clean_up(row)
        except Exception:
            logger.exception("Suite %s: cleanup on %s at shutdown failed", row.suite_id, host)


def recover(host: str) -> None:
    """A worker starts under ``host``: stop what its previous life left of its suites and clean up after it.

    A provisioned suite (running, or cleaning up when it died) has its
    background stopped and its cleanup run; one caught provisioning starts
    over. Its next suite task provisions again.
    """
    unfinished = (SuiteHostState.PROVISIONING, SuiteHostState.RUNNING, SuiteHostState.CLEANING_UP)
    for row in SuiteHost.objects.filter(host=host, state__in=unfinished).select_related("suite"):
        try:
            if row.state == SuiteHostState.PROVISIONING:
                _stop_background(row)
                SuiteHost.objects.filter(pk=row.pk).update(state=SuiteHostState.PENDING, background_pid=None)
            else:
                _clean_up(row)
        except Exception:
            logger.exception("Suite %s: recovering %s's previous life failed", row.suite_id, host)


def _stop_background(row: SuiteHost) -> None:
    """Stop the background's whole process group (SIGTERM, SIGKILL after a grace) and record how it ended."""
    pid = SuiteHost.objects.filter(pk=row.pk).values_list("background_pid", flat=True).first()
    if not pid:
        return
    if process_has_env(pid, MARKER, str(row.pk)):
        signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + BACKGROUND_GRACE
        while process_has_env(pid, MARKER, str(row.pk)) and time.monotonic() < deadline:
            _reap()
            time.sleep(0.05)
        signal_group(pid, signal.SIGKILL)
    _reap()
    out_dir = _output_dir(row)
    HookRun.objects.filter(suite_host=row, kind=HookKind.BACKGROUND, pid=pid, finished_at__isnull=True).update(
        status="stopped",
        stdout=_read_tail(os.path.join(out_dir, "stdout")),
        stderr=_read_tail(os.path.join(out_dir, "stderr")),
        finished_at=now(),
    )
    SuiteHost.objects.filter(pk=row.pk).update(background_pid=None)


def _read_tail(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(fh.tell() - settings.TASKHUB_OUTPUT_LIMIT, 0))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _reap() -> None:
    # Backgrounds this process started and someone stopped: collect their exit, no zombie left.
    for row_id, proc in list(_started.items()):
        if proc.poll() is not None:
            del _started[row_id]


# -- when this host cannot take the suite's work ------------------------------------------------------


def host_left(task: Task) -> bool:
    """Whether a live worker for the task's queue is left where its suite has not failed."""
    failed = set(
        SuiteHost.objects.filter(suite_id=task.suite_id, state=SuiteHostState.FAILED).values_list("host", flat=True)
    )
    alive = Worker.objects.alive(now())
    return any(task.queue in w.queue_names and w.hostname not in failed for w in alive)
