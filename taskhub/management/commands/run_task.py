from __future__ import annotations

import sys
import time

from django.core.management.base import BaseCommand, CommandError

from executions.models import Status, TaskExecution, Trigger
from taskhub.limits import ActiveRunLimitReached
from taskhub.models import Task, TaskDisabled
from taskhub.services import launch


class Command(BaseCommand):
    help = "Launch a task by name. With --wait, follow the run through its retries; exit 0 only if it succeeded."

    def add_arguments(self, parser):
        parser.add_argument("name", help="The task's name.")
        parser.add_argument("--wait", action="store_true", help="Follow the run until it ends and report the outcome.")
        parser.add_argument(
            "--poll", type=float, default=0.5, help="Seconds between checks while waiting (default 0.5)."
        )

    def handle(self, *args, name: str, wait: bool, poll: float, **options):
        task = Task.objects.filter(name=name).first()
        if task is None:
            known = ", ".join(Task.objects.order_by("name").values_list("name", flat=True)[:20]) or "none defined"
            raise CommandError(f"No task named {name!r}. Known tasks: {known}.")
        try:
            execution = launch(task, trigger=Trigger.CLI)
        except (TaskDisabled, ActiveRunLimitReached) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"Launched {task.name!r}: execution {execution.pk}, run {execution.run_id}.")
        if not wait:
            return
        if self._follow(execution, poll) != Status.SUCCEEDED:
            sys.exit(1)

    def _follow(self, first: TaskExecution, poll: float) -> str:
        seen: dict[int, str] = {}
        while True:
            attempts = list(TaskExecution.objects.filter(run_id=first.run_id).order_by("attempt"))
            for execution in attempts:
                if seen.get(execution.pk) != execution.status:
                    seen[execution.pk] = execution.status
                    self._report(execution)
            latest = attempts[-1]
            # The next attempt's row is written in the same transaction as the
            # previous one's outcome, so a terminal latest attempt ends the run.
            if latest.is_terminal:
                return latest.status
            time.sleep(poll)

    def _report(self, execution: TaskExecution) -> None:
        line = f"attempt {execution.attempt}: {execution.status}"
        if execution.status == Status.PENDING and execution.attempt > 1:
            line += f" (due {execution.scheduled_for:%H:%M:%S})"
        if execution.is_terminal:
            if execution.exit_code is not None:
                line += f", exit code {execution.exit_code}"
            if execution.signal is not None:
                line += f", signal {execution.signal}"
            if execution.duration is not None:
                line += f", {execution.duration.total_seconds():.2f}s"
        style = (
            self.style.SUCCESS
            if execution.status == Status.SUCCEEDED
            else (self.style.ERROR if execution.is_terminal else self.style.NOTICE)
        )
        self.stdout.write(style(line))
        if execution.is_terminal:
            if execution.error and execution.status != Status.SUCCEEDED:
                self.stdout.write(f"  error: {execution.error}")
            for label, text in (("stdout", execution.stdout), ("stderr", execution.stderr)):
                if text:
                    self.stdout.write(f"  --- {label} ---")
                    self.stdout.write("  " + text.rstrip("\n").replace("\n", "\n  "))
