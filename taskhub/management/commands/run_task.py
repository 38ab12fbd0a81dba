from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from django.core.management.base import BaseCommand, CommandError, OutputWrapper
from django.core.serializers.json import DjangoJSONEncoder

from executions.api import ExecutionSerializer
from executions.models import Status, TaskExecution, Trigger
from taskhub.limits import ActiveRunLimitReached
from taskhub.models import Task, TaskDisabled
from taskhub.services import launch

# Exit statuses of `run_task --wait`, as shells and `timeout(1)` use them.
EXIT_SUCCEEDED = 0
EXIT_NO_EXIT_CODE = 1  # lost, could not start, skipped, or a failure whose exit code is 0
EXIT_TIMEOUT = 124
EXIT_CANCELLED = 130
EXIT_SIGNAL_BASE = 128  # killed by signal N: 128 + N, as a shell reports it

# The runner's mark where it cut a stream longer than TASKHUB_OUTPUT_LIMIT (executions/runner.py, OutputBuffer.text).
CUT_MARKER = re.compile(r"\n\n\[… TaskHub cut (\d+) bytes of output here; (\d+) bytes in all …\]\n\n")


def exit_status(execution: TaskExecution) -> int:
    """Return what `run_task --wait` exits with when ``execution`` is the last attempt of the run."""
    if execution.status == Status.SUCCEEDED:
        return EXIT_SUCCEEDED
    if execution.status == Status.TIMEOUT:
        return EXIT_TIMEOUT
    if execution.status == Status.CANCELLED:
        return EXIT_CANCELLED
    if execution.status == Status.FAILED:
        if execution.exit_code:
            return execution.exit_code
        if execution.signal:
            return EXIT_SIGNAL_BASE + execution.signal
    # Nothing of the command's own to pass on: it was lost, could not start, was skipped,
    # or exited 0 when 0 is not one of the task's success codes.
    return EXIT_NO_EXIT_CODE


@dataclass
class StreamFollower:
    """Turn successive saves of one output stream into the lines not shown yet.

    The row holds the whole stream so far, or, past TASKHUB_OUTPUT_LIMIT, its
    beginning and end around the runner's cut marker. Positions count bytes
    of the command's output (UTF-8), so that a cut can be placed; output that
    is not valid UTF-8 may shift them by a few bytes.
    """

    shown: int = 0  # bytes of the command's output already printed (up to a line end, or all at the end)

    def feed(self, text: str, *, final: bool = False) -> list[str]:
        """Return the complete new lines in ``text`` (and, when ``final``, an unfinished last one)."""
        match = CUT_MARKER.search(text)
        if match is None:
            return self._lines(text.encode(), 0, final=final)
        head = text[: match.start()].encode()
        tail = text[match.end() :].encode()
        tail_start = int(match.group(2)) - len(tail)
        # The kept beginning never grows again: all of it can be shown.
        lines = self._lines(head, 0, final=True) if self.shown < len(head) else []
        if self.shown < tail_start:
            lines.append(
                f"[… {tail_start - max(self.shown, len(head))} bytes of output not shown: "
                "TaskHub keeps the beginning and the end …]"
            )
            self.shown = tail_start
        return lines + self._lines(tail, tail_start, final=final)

    def _lines(self, data: bytes, offset: int, *, final: bool) -> list[str]:
        """Return the lines of ``data`` (which starts at byte ``offset`` of the output) past what was shown."""
        new = data[max(self.shown - offset, 0) :]
        end = len(new) if final else new.rfind(b"\n") + 1
        if end <= 0:
            return []
        self.shown = offset + len(data) - len(new) + end
        return new[:end].decode("utf-8", errors="replace").splitlines()


class Command(BaseCommand):
    help = (
        "Launch a task by name. With --wait, follow the run through its retries, printing each status change "
        "and new output line, and exit like the command: 0 on success, its exit code on failure, 124 on "
        "timeout, 130 when cancelled, 1 when it has no exit code (lost, could not start, skipped)."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="The task's name.")
        parser.add_argument("--wait", action="store_true", help="Follow the run until it ends; exit like it.")
        parser.add_argument(
            "--json",
            action="store_true",
            dest="as_json",
            help="Print the execution as the API shows it on standard output (with --wait, the last attempt "
            "when the run ends); progress goes to standard error.",
        )
        parser.add_argument(
            "--poll", type=float, default=0.5, help="Seconds between checks while waiting (default 0.5)."
        )

    def handle(self, *args, name: str, wait: bool, as_json: bool, poll: float, **options):
        if not poll > 0:
            raise CommandError(f"--poll must be a number of seconds above 0, not {poll:g}.")
        task = Task.objects.filter(name=name).first()
        if task is None:
            known = ", ".join(Task.objects.order_by("name").values_list("name", flat=True)[:20]) or "none defined"
            raise CommandError(f"No task named {name!r}. Known tasks: {known}.")
        try:
            execution = launch(task, trigger=Trigger.CLI)
        except (TaskDisabled, ActiveRunLimitReached, ValueError) as exc:
            raise CommandError(str(exc)) from None
        # With --json, standard output carries the record alone.
        progress = OutputWrapper(sys.stderr) if as_json else self.stdout
        progress.write(f"Launched {task.name!r}: execution {execution.pk}, run {execution.run_id}.")
        if wait:
            try:
                execution = RunFollower(progress, self.style).follow(execution, poll)
            except KeyboardInterrupt:
                progress.write(
                    f"Stopped following; the run goes on. Cancel it with: manage.py cancel_execution {execution.pk}"
                )
                sys.exit(EXIT_CANCELLED)
        if as_json:
            self.stdout.write(dumps_record(execution))
        if wait:
            sys.exit(exit_status(execution))


def dumps_record(execution: TaskExecution) -> str:
    """Return the execution as the API's execution detail shows it (env values hidden), as JSON."""
    execution.refresh_from_db()
    return json.dumps(ExecutionSerializer(execution, context={}).data, cls=DjangoJSONEncoder, indent=2)


class RunFollower:
    """Poll a run's rows and print what is new: status changes and output lines, attempt by attempt."""

    def __init__(self, out: OutputWrapper | TextIO, style) -> None:
        self.out = out
        self.style = style
        self.statuses: dict[int, str] = {}
        self.seen: dict[int, tuple] = {}
        self.streams: dict[tuple[int, str], StreamFollower] = {}

    def follow(self, first: TaskExecution, poll: float) -> TaskExecution:
        """Return the run's last attempt once it is finished."""
        while True:
            # The streams are read only when a row says they changed (a heartbeat or the outcome).
            attempts = list(
                TaskExecution.objects.filter(run_id=first.run_id).defer("stdout", "stderr").order_by("attempt")
            )
            for execution in attempts:
                self._show(execution)
            latest = attempts[-1]
            # The next attempt's row is written in the same transaction as the
            # previous one's outcome, so a finished latest attempt ends the run.
            if latest.is_terminal:
                return latest
            time.sleep(poll)

    def _show(self, execution: TaskExecution) -> None:
        pk = execution.pk
        if execution.status == Status.RUNNING and self.statuses.get(pk) != Status.RUNNING:
            self._write_status(execution)
        state = (execution.status, execution.heartbeat_at)
        if execution.status != Status.PENDING and self.seen.get(pk) != state:
            self.seen[pk] = state
            self._show_output(execution)
        if self.statuses.get(pk) != execution.status and execution.status != Status.RUNNING:
            self._write_status(execution)

    def _show_output(self, execution: TaskExecution) -> None:
        final = execution.is_terminal
        streams = TaskExecution.objects.filter(pk=execution.pk).values("stdout", "stderr").first() or {}
        for name in ("stdout", "stderr"):
            follower = self.streams.setdefault((execution.pk, name), StreamFollower())
            for line in follower.feed(streams.get(name) or "", final=final):
                self.out.write(f"  [{name}] {line}")

    def _write_status(self, execution: TaskExecution) -> None:
        self.statuses[execution.pk] = execution.status
        self.out.write(self._styled(execution, status_line(execution)))
        if execution.is_terminal and execution.error and execution.status != Status.SUCCEEDED:
            self.out.write(f"  error: {execution.error}")

    def _styled(self, execution: TaskExecution, line: str) -> str:
        if execution.status == Status.SUCCEEDED:
            return self.style.SUCCESS(line)
        return self.style.ERROR(line) if execution.is_terminal else self.style.NOTICE(line)


def status_line(execution: TaskExecution) -> str:
    line = f"attempt {execution.attempt}: {execution.status}"
    if execution.status == Status.PENDING and execution.attempt > 1:
        line += f" (due {execution.scheduled_for:%H:%M:%S})"
    if execution.status == Status.RUNNING and execution.worker:
        line += f" on {execution.worker}"
    if execution.is_terminal:
        if execution.exit_code is not None:
            line += f", exit code {execution.exit_code}"
        if execution.signal is not None:
            line += f", signal {execution.signal}"
        if execution.duration is not None:
            line += f", {execution.duration.total_seconds():.2f}s"
    return line
