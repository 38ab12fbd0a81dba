from __future__ import annotations

import functools
import random
import re
import shlex

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names TaskHub sets itself for every command; a task may not override them.
RESERVED_ENV_NAMES = frozenset({"TASKHUB_TASK", "TASKHUB_EXECUTION_ID", "TASKHUB_RUN_ID", "TASKHUB_ATTEMPT"})

queue_name_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
    "Queue names use letters, digits, '.', '_' and '-', starting with a letter or digit.",
)


def validate_env(value: object) -> None:
    """Check that env is a JSON object of valid variable names to strings."""
    if not isinstance(value, dict):
        raise ValidationError('Must be a JSON object such as {"NAME": "value"}.', code="invalid_env")
    errors = []
    for name, val in value.items():
        if not ENV_NAME_RE.match(name):
            errors.append(f"{name!r} is not a valid variable name (letters, digits and _, not starting with a digit).")
        elif name in RESERVED_ENV_NAMES:
            errors.append(f"{name} is set by TaskHub for every command and cannot be overridden.")
        if not isinstance(val, str):
            errors.append(f"The value of {name!r} must be a string, not {type(val).__name__}.")
    if errors:
        raise ValidationError(errors, code="invalid_env")


class TaskDisabled(Exception):
    """Raised when a disabled task is launched."""


class Task(models.Model):
    name = models.CharField(max_length=200, unique=True)
    description = models.TextField(blank=True, default="")
    command = models.TextField(
        help_text="Command line, split like a POSIX shell into arguments. "
        "Pipes, redirections and variables need “Run through shell”.",
    )
    shell = models.BooleanField(
        "run through shell",
        default=False,
        help_text="Run the command with /bin/sh -c. Only enable when the command needs shell syntax.",
    )
    env = models.JSONField(
        "environment",
        default=dict,
        blank=True,
        validators=[validate_env],
        help_text='Extra environment variables as a JSON object, e.g. {"LOG_LEVEL": "debug"}.',
    )
    working_dir = models.CharField(
        "working directory",
        max_length=500,
        blank=True,
        default="",
        help_text="Directory to run in; empty means the worker's temporary directory.",
    )
    timeout = models.PositiveIntegerField(
        default=3600,
        validators=[MinValueValidator(1)],
        help_text="Seconds one attempt may run before it is stopped (SIGTERM, then SIGKILL).",
    )
    kill_grace = models.PositiveIntegerField(
        default=10,
        help_text="Seconds between SIGTERM and SIGKILL when stopping the command.",
    )
    retry_count = models.PositiveIntegerField(
        default=0,
        help_text="Retries after the first attempt for failed, timed-out or lost attempts.",
    )
    retry_delay = models.PositiveIntegerField(default=60, help_text="Seconds before the first retry.")
    retry_backoff = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(1.0)],
        help_text="Multiplier for each further retry's delay: 1 keeps it fixed, 2 doubles it.",
    )
    retry_delay_max = models.PositiveIntegerField(default=3600, help_text="Cap on any single retry delay, seconds.")
    retry_jitter = models.BooleanField(
        default=False,
        help_text="Draw each retry delay at random between 0 and the computed delay (full jitter).",
    )
    queue = models.CharField(
        max_length=100,
        default="default",
        validators=[queue_name_validator],
        help_text="Celery queue the executions go to; workers started with -Q NAME serve it.",
    )
    priority = models.PositiveSmallIntegerField(
        default=5,
        validators=[MinValueValidator(0), MaxValueValidator(9)],
        help_text="0–9, 9 most urgent.",
    )
    enabled = models.BooleanField(default=True, help_text="Disabled tasks are not launched, by schedule or by hand.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        permissions = [("run_task", "Can run tasks (by hand, API or command line)")]
        constraints = [
            models.CheckConstraint(condition=models.Q(timeout__gte=1), name="task_timeout_at_least_1"),
            models.CheckConstraint(condition=models.Q(priority__lte=9), name="task_priority_0_to_9"),
            models.CheckConstraint(condition=models.Q(retry_backoff__gte=1), name="task_retry_backoff_at_least_1"),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        if not self.command or not self.command.strip():
            errors.setdefault("command", []).append("Enter a command to run.")
        elif not self.shell:
            try:
                argv = shlex.split(self.command)
            except ValueError as exc:
                errors.setdefault("command", []).append(f"Cannot split this command line: {exc}.")
            else:
                if not argv:
                    errors.setdefault("command", []).append("Enter a command to run.")
        if self.working_dir and not self.working_dir.startswith("/"):
            errors.setdefault("working_dir", []).append("Use an absolute path (starting with /).")
        if errors:
            raise ValidationError(errors)

    @property
    def attempts(self) -> int:
        return self.retry_count + 1

    def argv(self) -> list[str]:
        if self.shell:
            return ["/bin/sh", "-c", self.command]
        return list(_split(self.command))

    def retry_delay_for(self, n: int, *, rng: random.Random | None = None) -> float:
        """Return the delay in seconds before retry ``n`` (1 = the first retry)."""
        if n < 1:
            raise ValueError("retry numbers start at 1")
        cap = float(self.retry_delay_max)
        try:
            delay = min(float(self.retry_delay) * float(self.retry_backoff) ** (n - 1), cap)
        except OverflowError:  # a huge retry number: long past the cap
            delay = cap
        if self.retry_jitter:
            delay = (rng or random).uniform(0, delay)
        return delay

    def time_limits(self, margin: float) -> tuple[float, float]:
        """Return Celery's (soft, hard) backstop limits for one attempt."""
        soft = self.timeout + self.kill_grace + margin
        return soft, soft + margin


@functools.lru_cache(maxsize=1024)
def _split(command: str) -> tuple[str, ...]:
    # Every attempt splits its task's command line; most tasks run again and again.
    return tuple(shlex.split(command))
