from __future__ import annotations

import functools
import math
import os
import random
import re
import shlex
import unicodedata

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

# \A and \Z, not ^ and $: "$" also matches before a trailing newline.
ENV_NAME_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
# Names TaskHub sets itself for every command; a task may not override them.
RESERVED_ENV_NAMES = frozenset({"TASKHUB_TASK", "TASKHUB_EXECUTION_ID", "TASKHUB_RUN_ID", "TASKHUB_ATTEMPT"})

queue_name_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
    "Queue names use letters, digits, '.', '_' and '-', starting with a letter or digit.",
)


# Bounds of what one task may ask for; the database enforces the same ranges.
TIMEOUT_MAX = 7 * 24 * 3600  # seconds
KILL_GRACE_MAX = 3600  # seconds
RETRY_DELAY_MAX = 30 * 24 * 3600  # seconds, for retry_delay and retry_delay_max
RETRY_COUNT_MAX = 1000
MEMORY_LIMIT_MAX_MB = 1024 * 1024
PROCESS_LIMIT_MAX = 100_000
# Fewer open files than this and a command cannot even load its libraries.
OPEN_FILES_LIMIT_MIN, OPEN_FILES_LIMIT_MAX = 16, 1024 * 1024
RETRY_BACKOFF_MAX = 100.0
COMMAND_MAX_CHARS = 64 * 1024
ENV_MAX_VARIABLES = 256
ENV_NAME_MAX_CHARS = 255
ENV_VALUE_MAX_CHARS = 32 * 1024
# Unicode categories refused in task names: control characters and invisible
# format characters such as U+202E (right-to-left override), which make a name
# read differently from what it is.
NAME_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf"})


def bounded(label: str, low: float, high: float, unit: str = "") -> list:
    """Return min/max validators whose message names the field and its range."""
    message = f"{label} must be between {_number(low)} and {_number(high)}{unit}."
    return [MinValueValidator(low, message=message), MaxValueValidator(high, message=message)]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def validate_finite(value: float) -> None:
    # NaN passes both MinValueValidator and MaxValueValidator (every comparison is False).
    if not math.isfinite(value):
        raise ValidationError("Retry backoff must be a finite number.", code="not_finite")


def validate_name(value: str) -> None:
    bad = sorted({f"U+{ord(c):04X}" for c in value if unicodedata.category(c) in NAME_FORBIDDEN_CATEGORIES})
    if bad:
        raise ValidationError(
            f"Name must not contain control or invisible formatting characters (found {', '.join(bad)}).",
            code="invalid_name",
        )


def validate_command(value: str) -> None:
    # Checked before anything splits the line: shlex takes quadratic time on one long word.
    if len(value) > COMMAND_MAX_CHARS:
        raise ValidationError(
            f"Command must be at most {COMMAND_MAX_CHARS} characters (it has {len(value)}).", code="too_long"
        )
    if "\x00" in value:
        raise ValidationError("Command must not contain a NUL character.", code="null_characters_not_allowed")


def validate_working_dir(value: str) -> None:
    if "\x00" in value:
        raise ValidationError("Working directory must not contain a NUL character.", code="null_characters_not_allowed")


def validate_env(value: object) -> None:
    """Check that env is a JSON object of valid variable names to strings."""
    if not isinstance(value, dict):
        raise ValidationError('Must be a JSON object such as {"NAME": "value"}.', code="invalid_env")
    if len(value) > ENV_MAX_VARIABLES:
        raise ValidationError(
            f"Environment may set at most {ENV_MAX_VARIABLES} variables (it has {len(value)}).", code="invalid_env"
        )
    errors = []
    for name, val in value.items():
        errors.extend(_env_name_errors(name))
        errors.extend(_env_value_errors(name, val))
    if errors:
        raise ValidationError(errors, code="invalid_env")


def _env_name_errors(name: object) -> list[str]:
    if not isinstance(name, str) or not ENV_NAME_RE.match(name):
        return [f"{_shown(name)} is not a valid variable name (letters, digits and _, not starting with a digit)."]
    if len(name) > ENV_NAME_MAX_CHARS:
        return [f"Variable name {_shown(name)} is too long: at most {ENV_NAME_MAX_CHARS} characters."]
    if name in RESERVED_ENV_NAMES:
        return [f"{name} is set by TaskHub for every command and cannot be overridden."]
    return []


def _env_value_errors(name: object, val: object) -> list[str]:
    label = _shown(name)
    if not isinstance(val, str):
        # Nested objects and lists are refused here, whatever their depth.
        return [f"The value of {label} must be a string, not {type(val).__name__}."]
    if len(val) > ENV_VALUE_MAX_CHARS:
        return [f"The value of {label} is too long: at most {ENV_VALUE_MAX_CHARS} characters (it has {len(val)})."]
    if "\x00" in val:
        return [f"The value of {label} must not contain a NUL character."]
    return []


def _shown(name: object) -> str:
    # Names can be as long as the request body: quote the start of one, not all of it.
    text = repr(name)
    return text if len(text) <= 60 else text[:59] + "…"


def _range(field: str, low: float, high: float) -> models.CheckConstraint:
    return models.CheckConstraint(
        condition=models.Q(**{f"{field}__gte": low, f"{field}__lte": high}), name=f"task_{field}_range"
    )


def validate_exit_codes(value: object) -> None:
    """Check that an exit-code rule is a list of whole numbers 0-255."""
    if not isinstance(value, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in value):
        raise ValidationError("Must be a list of exit codes, e.g. [0, 3].", code="invalid_exit_codes")
    if any(not 0 <= c <= 255 for c in value):
        raise ValidationError("Exit codes are whole numbers from 0 to 255.", code="invalid_exit_codes")
    if len(value) > 256:
        raise ValidationError("At most 256 exit codes.", code="invalid_exit_codes")


RESOURCES_MAX = 50
_SHA256 = re.compile(r"\A[0-9a-fA-F]{64}\Z")


def validate_resources(value: object) -> None:
    """Check a task's resources: a list of {"url": http(s), "path": relative, "sha256": optional hex digest}."""
    example = '[{"url": "https://example.com/data.csv", "path": "data.csv", "sha256": "<64 hex digits>"}]'
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValidationError(f"Must be a list of downloads such as {example}.", code="invalid_resources")
    if len(value) > RESOURCES_MAX:
        raise ValidationError(f"At most {RESOURCES_MAX} downloads per task.", code="invalid_resources")
    problems = []
    for n, item in enumerate(value, start=1):
        unknown = set(item) - {"url", "path", "sha256"}
        url, path, digest = item.get("url"), item.get("path"), item.get("sha256", "")
        if unknown:
            problems.append(f"download {n}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")) or len(url) > 2000:
            problems.append(f"download {n}: url must be an http:// or https:// address")
        if (
            not isinstance(path, str)
            or not path
            or len(path) > 500
            or os.path.isabs(path)
            or ".." in path.split("/")
            or "\0" in path
        ):
            problems.append(f"download {n}: path must be a file name relative to the working directory, without ..")
        if digest and (not isinstance(digest, str) or not _SHA256.match(digest)):
            problems.append(f"download {n}: sha256 must be 64 hexadecimal digits")
    if problems:
        raise ValidationError("; ".join(problems) + ".", code="invalid_resources")


def default_success_exit_codes() -> list[int]:
    return [0]


class OverlapPolicy(models.TextChoices):
    QUEUE = "queue", "Queue: wait its turn"
    SKIP = "skip", "Skip: record a skipped execution"
    REPLACE = "replace", "Replace: cancel the running one, then start"


HOOK_KEYS = {"command", "argv", "env", "working_dir", "timeout"}


def validate_hook(value: object) -> None:
    """Check a suite hook: {"command": "..."} or {"argv": [...]}, with optional env, working_dir and timeout."""
    if value is None:
        return
    example = '{"command": "make provision", "timeout": 600}'
    if not isinstance(value, dict):
        raise ValidationError(f"A hook is an object such as {example}.", code="invalid_hook")
    problems = []
    unknown = set(value) - HOOK_KEYS
    if unknown:
        problems.append(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; use {', '.join(sorted(HOOK_KEYS))}")
    command, argv = value.get("command"), value.get("argv")
    if (command is None) == (argv is None):
        problems.append('give either "command" (a command line) or "argv" (a list of strings)')
    elif command is not None and (not isinstance(command, str) or not _splittable(command) or not _split(command)):
        problems.append('"command" must be a command line that splits into words')
    elif argv is not None and (not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv)):
        problems.append('"argv" must be a non-empty list of strings')
    try:
        validate_env(value.get("env", {}))
    except ValidationError as exc:
        problems.extend(f"env: {m}" for m in exc.messages)
    working_dir = value.get("working_dir", "")
    if not isinstance(working_dir, str) or (working_dir and not working_dir.startswith("/")):
        problems.append('"working_dir" must be an absolute path')
    timeout = value.get("timeout", 600)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or not 1 <= timeout <= TIMEOUT_MAX:
        problems.append(f'"timeout" must be whole seconds from 1 to {TIMEOUT_MAX}')
    if problems:
        raise ValidationError("; ".join(problems) + ".", code="invalid_hook")


class Suite(models.Model):
    """Tasks that share hooks on each worker host: provision before them, background beside them, cleanup after."""

    name = models.CharField(max_length=200, unique=True, validators=[validate_name])
    description = models.TextField(blank=True, default="")
    provision = models.JSONField(
        null=True,
        blank=True,
        validators=[validate_hook],
        help_text='Runs once on a worker host before any of the suite\'s tasks run there, e.g. {"command": '
        '"make provision", "timeout": 600}; if it fails, that host gets no more of the suite\'s work until '
        "its record is cleared.",
    )
    background = models.JSONField(
        null=True,
        blank=True,
        validators=[validate_hook],
        help_text="Started after provision, beside the suite's tasks on that host; its whole process group is "
        "stopped when the suite's work there is done.",
    )
    cleanup = models.JSONField(
        null=True,
        blank=True,
        validators=[validate_hook],
        help_text="Runs after the suite's tasks on that host finish, whatever their outcome.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class WaitState(models.TextChoices):
    SUCCEEDED = "succeeded", "has succeeded"
    FAILED = "failed", "has failed (after its last attempt)"
    FINISHED = "finished", "has finished, either way"


class Tag(models.Model):
    """A label on tasks, for finding and filtering them."""

    name = models.SlugField(max_length=50, unique=True, help_text="Letters, digits, '-' and '_'.")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class TaskDisabled(Exception):
    """Raised when a disabled task is launched."""


class Task(models.Model):
    name = models.CharField(max_length=200, unique=True, validators=[validate_name])
    description = models.TextField(blank=True, default="")
    command = models.TextField(
        validators=[validate_command],
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
        validators=[validate_working_dir],
        help_text="Directory to run in; empty means the worker's temporary directory.",
    )
    timeout = models.PositiveIntegerField(
        default=3600,
        validators=bounded("Timeout", 1, TIMEOUT_MAX, " seconds (7 days)"),
        help_text="Seconds one attempt may run before it is stopped (SIGTERM, then SIGKILL).",
    )
    kill_grace = models.PositiveIntegerField(
        default=10,
        validators=bounded("Kill grace", 0, KILL_GRACE_MAX, " seconds"),
        help_text="Seconds between SIGTERM and SIGKILL when stopping the command.",
    )
    retry_count = models.PositiveIntegerField(
        default=0,
        validators=bounded("Retry count", 0, RETRY_COUNT_MAX),
        help_text="Retries after the first attempt for failed, timed-out or lost attempts.",
    )
    retry_delay = models.PositiveIntegerField(
        default=60,
        validators=bounded("Retry delay", 0, RETRY_DELAY_MAX, " seconds (30 days)"),
        help_text="Seconds before the first retry.",
    )
    retry_backoff = models.FloatField(
        default=1.0,
        validators=[validate_finite, *bounded("Retry backoff", 1, RETRY_BACKOFF_MAX)],
        help_text="Multiplier for each further retry's delay: 1 keeps it fixed, 2 doubles it.",
    )
    retry_delay_max = models.PositiveIntegerField(
        default=3600,
        validators=bounded("Maximum retry delay", 0, RETRY_DELAY_MAX, " seconds (30 days)"),
        help_text="Cap on any single retry delay, seconds.",
    )
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
        validators=bounded("Priority", 0, 9),
        help_text="0–9, 9 most urgent.",
    )
    enabled = models.BooleanField(default=True, help_text="Disabled tasks are not launched, by schedule or by hand.")
    # Exit-code rules: which exit codes mean success, and which failures are retried.
    success_exit_codes = models.JSONField(
        default=default_success_exit_codes,
        validators=[validate_exit_codes],
        help_text="Exit codes that mean success, e.g. [0] or [0, 3].",
    )
    retry_exit_codes = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_exit_codes],
        help_text="Failures with these exit codes are retried; empty means any failure is.",
    )
    no_retry_exit_codes = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_exit_codes],
        help_text="Failures with these exit codes are never retried (e.g. 2 for bad usage).",
    )
    retry_on_timeout = models.BooleanField(default=True, help_text="Retry an attempt that ran out of time.")
    # Concurrency: how many of the task's executions may run at once, and what a launch over it does.
    max_concurrency = models.PositiveIntegerField(
        default=0, help_text="Executions of this task that may run at once, on all workers; 0 means no limit."
    )
    overlap_policy = models.CharField(
        max_length=16,
        choices=OverlapPolicy.choices,
        default=OverlapPolicy.QUEUE,
        help_text="What a launch does when the task is already at its limit.",
    )
    # Exhausted runs: after this many in a row, the task's schedules are paused.
    pause_after_exhausted = models.PositiveIntegerField(
        default=0,
        help_text="Disable the task's schedules after this many runs in a row used every attempt without success; "
        "0 never does.",
    )
    paused_reason = models.TextField(
        blank=True, default="", help_text="Why the task's schedules were paused (empty when they are not)."
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Scheduled and upstream launches count against this user's limit of active runs.",
    )
    tags = models.ManyToManyField(Tag, blank=True, related_name="tasks", help_text="Labels to find the task by.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Kept by taskhub.links from the task's TaskLink rows: the end of a run of a
    # task without downstream tasks looks at no link (read with the claim).
    has_downstream = models.BooleanField(default=False, db_default=False, editable=False)
    # What the command may use (executions/confine.py); empty = no limit. Read when an attempt starts.
    memory_limit_mb = models.PositiveIntegerField(
        "memory limit (MiB)",
        null=True,
        blank=True,
        validators=bounded("The memory limit", 1, MEMORY_LIMIT_MAX_MB, " MiB"),
        help_text="Stop the command when its processes together hold more resident memory than this.",
    )
    cpu_limit_seconds = models.PositiveIntegerField(
        "CPU time limit (s)",
        null=True,
        blank=True,
        validators=bounded("The CPU time limit", 1, TIMEOUT_MAX, " seconds"),
        help_text="CPU seconds each process of the command may use; the kernel stops a process past it.",
    )
    open_files_limit = models.PositiveIntegerField(
        "open files limit",
        null=True,
        blank=True,
        validators=bounded("The open files limit", OPEN_FILES_LIMIT_MIN, OPEN_FILES_LIMIT_MAX),
        help_text="Files each process of the command may hold open at once.",
    )
    process_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=bounded("The process limit", 1, PROCESS_LIMIT_MAX),
        help_text="Processes the command may run at once; it is stopped past it.",
    )
    resources = models.JSONField(
        "downloads",
        default=list,
        blank=True,
        validators=[validate_resources],
        help_text='Downloaded into the working directory before the command starts, e.g. [{"url": '
        '"https://example.com/data.csv", "path": "data.csv", "sha256": "…"}]; a failed download or a wrong checksum '
        "fails the attempt, retried by the retry policy.",
    )
    keep_artifacts = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Give the command an empty directory in TASKHUB_ARTIFACTS_DIR and keep the files it leaves "
        "there with the execution (up to TASKHUB_ARTIFACTS_LIMIT bytes per attempt).",
    )
    isolated = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Run it in bubblewrap: no network, the file system read-only except its working directory, "
        "a private /tmp. Fails with the reason on a worker host without bwrap.",
    )
    # A watch (executions/watches.py): each launch waits for another task's latest run.
    wait_for_task = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Each launch waits until this task's latest run is in the state below before it runs.",
    )
    wait_for_status = models.CharField(
        max_length=12, choices=WaitState.choices, default=WaitState.SUCCEEDED, db_default=WaitState.SUCCEEDED
    )
    wait_timeout = models.PositiveIntegerField(
        default=3600,
        db_default=3600,
        validators=bounded("The wait timeout", 1, TIMEOUT_MAX, " seconds"),
        help_text="Seconds a launch waits; after it, the execution fails with the reason.",
    )
    suite = models.ForeignKey(
        Suite,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="tasks",
        help_text="Its runs take the suite's hooks on the worker host that runs them (executions/suites.py).",
    )

    class Meta:
        ordering = ["name"]
        permissions = [("run_task", "Can run tasks (by hand, API or command line)")]
        # The same ranges as the fields' validators, for rows written past them
        # (bulk updates, raw SQL, another client).
        constraints = [
            _range("timeout", 1, TIMEOUT_MAX),
            _range("kill_grace", 0, KILL_GRACE_MAX),
            _range("retry_count", 0, RETRY_COUNT_MAX),
            _range("retry_delay", 0, RETRY_DELAY_MAX),
            _range("retry_delay_max", 0, RETRY_DELAY_MAX),
            # Also refuses NaN: PostgreSQL sorts it above every number.
            _range("retry_backoff", 1, RETRY_BACKOFF_MAX),
            _range("priority", 0, 9),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        if not self.command or not self.command.strip():
            errors.setdefault("command", []).append("Enter a command to run.")
        elif not self.shell and _splittable(self.command):
            try:
                argv = shlex.split(self.command)
            except ValueError as exc:
                errors.setdefault("command", []).append(f"Cannot split this command line: {exc}.")
            else:
                if not argv:
                    errors.setdefault("command", []).append("Enter a command to run.")
        if self.working_dir and not self.working_dir.startswith("/"):
            errors.setdefault("working_dir", []).append("Use an absolute path (starting with /).")
        if self.wait_for_task_id is not None and self.wait_for_task_id == self.pk:
            errors.setdefault("wait_for_task", []).append("A task cannot wait for its own runs.")
        if errors:
            raise ValidationError(errors)

    def deletion_blocker(self) -> str | None:
        """Return why this task cannot be deleted, or None when it can.

        Deleting a task deletes its executions (the record of what ran) and
        would stop a command that is running; the admin and the API refuse it
        alike, with this sentence.
        """
        from executions.models import Status  # executions.models refers to Task

        if self.pk is None:
            return None
        if self.executions.filter(status__in=[Status.PENDING, Status.RUNNING]).exists():
            return "it has running or pending executions; cancel them or wait for them to finish, then disable it"
        count = self.executions.count()
        if count:
            return (
                f"it has {count} execution{'s' if count != 1 else ''}; disable it instead, or purge its history first"
            )
        return None

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


def _splittable(command: str) -> bool:
    # A line validate_command refuses is not split at all: it has said why,
    # and shlex would take minutes over a huge one.
    return len(command) <= COMMAND_MAX_CHARS and "\x00" not in command


@functools.lru_cache(maxsize=1024)
def _split(command: str) -> tuple[str, ...]:
    # Every attempt splits its task's command line; most tasks run again and again.
    return tuple(shlex.split(command))


# -- schedules ------------------------------------------------------------------------------
# A task's schedules: the human form (taskhub.schedules parses, describes and
# syncs it) and the django-celery-beat row beat reads, which TaskHub owns.


class Condition(models.TextChoices):
    ON_SUCCESS = "on_success", "On success"
    ON_FAILURE = "on_failure", "On failure (after the last attempt)"
    ON_FINISH = "on_finish", "On finish (success or failure)"


class TaskLink(models.Model):
    """An edge of the task graph: when a run of ``upstream`` ends meeting ``condition``, ``downstream`` launches."""

    upstream = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="downstream_links")
    downstream = models.ForeignKey(
        Task, on_delete=models.CASCADE, related_name="upstream_links", help_text="The task to launch."
    )
    condition = models.CharField(max_length=12, choices=Condition.choices, default=Condition.ON_SUCCESS)

    class Meta:
        ordering = ["upstream_id", "downstream__name"]
        constraints = [
            models.UniqueConstraint(fields=["upstream", "downstream"], name="tasklink_unique"),
            models.CheckConstraint(condition=~models.Q(upstream=models.F("downstream")), name="tasklink_not_self"),
        ]

    def __str__(self) -> str:
        return f"{self.upstream} → {self.downstream} ({self.condition})"


class ScheduleKind(models.TextChoices):
    CRON = "cron", "Cron expression"
    EVERY = "every", "Every (interval)"
    AT = "at", "Once at a time"


class Misfire(models.TextChoices):
    RUN_ONCE = "run_once", "Run once for all missed fires"
    SKIP = "skip", "Skip missed fires"


class Schedule(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="schedules")
    kind = models.CharField(max_length=8, choices=ScheduleKind.choices)
    expression = models.CharField(
        max_length=200,
        help_text='A cron expression ("30 2 * * *"), an interval ("90s", "5m", "1h30m") or an ISO 8601 time.',
    )
    timezone = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="IANA time zone a cron expression is read in (e.g. Europe/Berlin); empty means TIME_ZONE.",
    )
    misfire = models.CharField(
        max_length=8,
        choices=Misfire.choices,
        default=Misfire.RUN_ONCE,
        help_text="What happens to fires missed while beat was down: one launch for all of them, or none.",
    )
    enabled = models.BooleanField(default=True, help_text="A disabled schedule does not fire.")
    # The row celery beat reads; deleted with the schedule (taskhub.schedules).
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask", on_delete=models.CASCADE, related_name="taskhub_schedule"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["task", "pk"]

    def __str__(self) -> str:
        return f"{self.kind} {self.expression}"
