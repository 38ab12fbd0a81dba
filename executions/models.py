from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, models
from django.utils.timezone import now

from executions import statements


class InvalidTransition(Exception):
    """Raised when an execution is asked to move to a status its state machine forbids."""

    def __init__(self, execution: TaskExecution, new_status: str) -> None:
        self.execution = execution
        self.new_status = new_status
        super().__init__(
            f"Execution {execution.pk} is {execution.status}; it cannot become {new_status}. "
            f"Allowed from {execution.status}: {', '.join(TRANSITIONS[execution.status]) or 'nothing (terminal)'}."
        )


class Status(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    TIMEOUT = "timeout", "Timed out"
    CANCELLED = "cancelled", "Cancelled"
    LOST = "lost", "Lost"
    SKIPPED = "skipped", "Skipped"


class Trigger(models.TextChoices):
    MANUAL = "manual", "Manual"
    API = "api", "API"
    SCHEDULE = "schedule", "Schedule"
    RETRY = "retry", "Retry"
    CLI = "cli", "Command line"
    UPSTREAM = "upstream", "Upstream task"


# The only allowed transitions; everything else raises InvalidTransition.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    Status.PENDING: (Status.RUNNING, Status.CANCELLED, Status.SKIPPED),
    Status.RUNNING: (Status.SUCCEEDED, Status.FAILED, Status.TIMEOUT, Status.CANCELLED, Status.LOST),
    Status.SUCCEEDED: (),
    Status.FAILED: (),
    Status.TIMEOUT: (),
    Status.CANCELLED: (),
    Status.LOST: (),
    Status.SKIPPED: (),
}
TERMINAL = frozenset(s for s, allowed in TRANSITIONS.items() if not allowed)
RETRYABLE = frozenset({Status.FAILED, Status.TIMEOUT, Status.LOST})
# A message may arrive this much before its row's due time (clock skew between
# hosts, ETA rounding) and still run.
CLAIM_CLOCK_TOLERANCE = timedelta(seconds=1)


class _OnlyAFilter(models.Func):
    # ``(condition) IS TRUE``: the same rows, but no index can serve the condition (see row_if).
    template = "(%(expressions)s) IS TRUE"
    output_field = models.BooleanField()


class TaskExecutionQuerySet(models.QuerySet):
    def row_if(self, pk: int, *statuses: str) -> TaskExecutionQuerySet:
        """The row ``pk`` while its status is one of ``statuses``, found by its primary key alone.

        With statistics taken while nothing was active, PostgreSQL would
        rather read the partial index of active rows, that is every pending
        or running row, for each such write (tests/test_query_plans.py).
        """
        return self.filter(_OnlyAFilter(models.Q(status__in=statuses)), pk=pk)

    def older_than(self, days: float) -> TaskExecutionQuerySet:
        return self.filter(created_at__lt=now() - timedelta(days=days)).exclude(
            status__in=[Status.PENDING, Status.RUNNING]
        )

    def exhausted_runs(self) -> TaskExecutionQuerySet:
        """The last attempts of runs that used every attempt without success, newest first."""
        return self.filter(exhausted=True).order_by("-id")

    def active(self) -> TaskExecutionQuerySet:
        """Attempts not finished yet: a run has at most one, so these count active runs."""
        return self.filter(status__in=[Status.PENDING, Status.RUNNING])

    def ended_exhausted_in_a_row(self, task_id: int, n: int) -> bool:
        """Return True when the task's last ``n`` runs to end in success or exhaustion all ended exhausted.

        Runs that ended otherwise (cancelled, skipped, a failure the rules do
        not retry before the last attempt) neither count nor break the row.
        """
        ends = list(
            self.filter(task_id=task_id)
            .filter(models.Q(exhausted=True) | models.Q(status=Status.SUCCEEDED))
            .order_by("-id")
            .values_list("exhausted", flat=True)[:n]
        )
        return len(ends) == n and all(ends)


class TaskExecution(models.Model):
    Status = Status
    Trigger = Trigger

    # No index of its own: execution_task_recent_idx leads with task_id and serves every lookup by task.
    task = models.ForeignKey("taskhub.Task", on_delete=models.CASCADE, related_name="executions", db_index=False)
    run_id = models.UUIDField(default=uuid.uuid4, editable=False, help_text="Shared by all attempts of one launch.")
    attempt = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.MANUAL)
    triggered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,  # see execution_triggered_by_idx
    )
    scheduled_for = models.DateTimeField(default=now, help_text="When the attempt is due.")
    enqueued_at = models.DateTimeField(null=True, blank=True, help_text="When a message for it was last sent.")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True, help_text="Empty when a signal ended the command.")
    signal = models.IntegerField(null=True, blank=True, help_text="The signal number that ended the command.")
    stdout = models.TextField(blank=True, default="", db_default="")
    stderr = models.TextField(blank=True, default="", db_default="")
    output_truncated = models.BooleanField(default=False, db_default=False)
    error = models.TextField(blank=True, default="", db_default="", help_text="Why the attempt failed, in words.")
    worker = models.CharField(max_length=255, blank=True, default="", db_default="")
    pid = models.IntegerField(null=True, blank=True)
    celery_task_id = models.CharField(max_length=255, blank=True, default="", db_default="")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    max_rss_kb = models.BigIntegerField(
        null=True,
        blank=True,
        help_text="Peak resident memory of the command, KiB. Exact when the command grew bigger than the worker "
        "that started it; otherwise its first process's peak as sampled at each heartbeat, or empty for a command "
        "shorter than one heartbeat.",
    )
    cpu_user = models.FloatField(null=True, blank=True)
    cpu_system = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(default=now, db_index=False)
    handed_back = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Stopped by its worker's warm shutdown and handed back; not counted against the retries.",
    )
    # What the attempt runs, copied from the task when the run was launched:
    # a later edit of the task cannot change what a pending attempt runs, and
    # the record says what ran. Empty (argv null) on a row made outside the
    # launch path until it runs.
    command = models.TextField(blank=True, default="", db_default="", help_text="The command line as launched.")
    shell = models.BooleanField("run through shell", default=False, db_default=False)
    argv = models.JSONField(null=True, blank=True, help_text="The argument vector the command ran with.")
    working_dir = models.CharField("working directory", max_length=500, blank=True, default="", db_default="")
    env = models.JSONField(
        "environment", null=True, blank=True, help_text="The task's extra environment when the run was launched."
    )
    timeout = models.PositiveIntegerField(null=True, blank=True, help_text="Seconds the attempt was allowed.")
    kill_grace = models.PositiveIntegerField(null=True, blank=True)
    exhausted = models.BooleanField(
        default=False,
        db_default=False,
        help_text="The last attempt of a run that used every attempt without success.",
    )
    decided_by = models.CharField(
        max_length=200,
        blank=True,
        default="",
        db_default="",
        help_text="Which rule decided the outcome and whether it is retried, in words.",
    )
    # A scheduled launch: its schedule and the fire time it launches, unique together.
    schedule = models.ForeignKey(
        "django_celery_beat.PeriodicTask",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,  # see execution_schedule_fire_unique
    )
    fire_time = models.DateTimeField(null=True, blank=True, help_text="The schedule's fire time this run is for.")
    # Task graphs (executions.workflows): the root launch's workflow run, and the execution whose end launched this run.
    workflow_run = models.ForeignKey(
        "WorkflowRun",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="executions",
        db_index=False,  # see execution_workflow_task_unique
    )
    upstream_execution = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,  # see execution_upstream_idx
        help_text="The upstream task's execution whose end launched this run.",
    )

    objects = TaskExecutionQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["run_id", "attempt"], name="execution_run_attempt_unique"),
            # A fire launches once, whatever beat does (two beats, a restart, an edit).
            models.UniqueConstraint(
                fields=["schedule", "fire_time"],
                name="execution_schedule_fire_unique",
                condition=models.Q(fire_time__isnull=False, attempt=1),
            ),
            # A task runs once per workflow run (one run: attempt numbers do not repeat), however many
            # upstream runs find it ready; also the index of a workflow run's rows. Rows in none are not in it.
            models.UniqueConstraint(
                fields=["workflow_run", "task", "attempt"],
                name="execution_workflow_task_unique",
                condition=models.Q(workflow_run__isnull=False),
            ),
        ]
        # Every status change rewrites the row into every index (status is
        # indexed, so no HOT update): each index here costs on every launch,
        # claim and finish, so there is none a query does not need. All
        # attempts of one launch (run_id) use execution_run_attempt_unique.
        indexes = [
            # Reconciler: due pending rows; reaper: running rows by heartbeat.
            # Partial: finished rows (nearly all of them) are not in it, and a
            # row leaving `running` adds no entry.
            models.Index(
                fields=["status", "scheduled_for"],
                name="execution_active_due_idx",
                condition=models.Q(status__in=["pending", "running"]),
            ),
            # Task page and per-task filter of the execution list, newest first;
            # also the task foreign key's index (cascade on task delete).
            models.Index(fields=["task", "-id"], name="execution_task_recent_idx"),
            # Status filter of the execution list, newest first.
            models.Index(fields=["status", "-id"], name="execution_status_recent_idx"),
            # Trigger filter of the execution list, newest first (rare triggers
            # such as cli would otherwise scan the whole history).
            models.Index(fields=["trigger", "-id"], name="execution_trigger_recent_idx"),
            # Retention (purge_executions) and date filters.
            models.Index(fields=["created_at"], name="execution_created_idx"),
            # The exhausted runs page, newest first; partial: few rows are the end of an exhausted run.
            models.Index(fields=["-id"], name="execution_exhausted_idx", condition=models.Q(exhausted=True)),
            # SET NULL when a user is deleted; rows nobody triggered are not in it.
            models.Index(
                fields=["triggered_by"],
                name="execution_triggered_by_idx",
                condition=models.Q(triggered_by__isnull=False),
            ),
            # SET NULL when an upstream execution is purged; rows no upstream launched are not in it.
            models.Index(
                fields=["upstream_execution"],
                name="execution_upstream_idx",
                condition=models.Q(upstream_execution__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"Execution #{self.pk} · attempt {self.attempt} · {self.get_status_display().lower()}"

    # -- derived ----------------------------------------------------------

    @property
    def duration(self) -> timedelta | None:
        if self.started_at is None:
            return None
        return (self.finished_at or now()) - self.started_at

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    # -- transitions --------------------------------------------------------

    def transition(self, new_status: str, **fields: object) -> bool:
        """Move to ``new_status`` and save ``fields`` with it, atomically.

        Raise InvalidTransition when the state machine forbids the move from the
        status this instance holds. Return False when the row's status changed
        underneath (another process got there first); nothing is written then.
        """
        if new_status not in TRANSITIONS[self.status]:
            raise InvalidTransition(self, new_status)
        updated = TaskExecution.objects.row_if(self.pk, self.status).update(status=new_status, **fields)
        if not updated:
            # Someone else moved the row first (claim, cancel, reaper): theirs stands.
            return False
        self._moved(new_status, fields)
        return True

    def record_outcome(self, status: str, **fields: object) -> bool:
        """Finish a running attempt with the worker's outcome: the named OUTCOME statement.

        The same guarded move as ``transition`` for the one write every
        execution makes at its end. A row that had no snapshot (made outside
        the launch path) gets the one it ran with.
        """
        if status not in TRANSITIONS[self.status] or self.status != Status.RUNNING:
            raise InvalidTransition(self, status)
        fields.setdefault("finished_at", now())
        values = {name: fields.get(name, getattr(self, name)) for name in statements.OUTCOME_COLUMNS}
        values["status"] = status
        snapshot = None
        if self._snapshot_unsaved:
            snapshot = {name: getattr(self, name) for name in statements.SNAPSHOT_COLUMNS}
        if not statements.record_outcome(self.pk, values, snapshot=snapshot):
            return False
        self._snapshot_unsaved = False
        self._moved(status, fields)
        return True

    def _moved(self, new_status: str, fields: dict[str, object]) -> None:
        self.status = new_status
        for name, value in fields.items():
            setattr(self, name, value)

    # Set when the snapshot was taken from the task at claim time and is not in the row yet.
    _snapshot_unsaved = False

    @classmethod
    def claim(
        cls, pk: int, *, worker: str, celery_task_id: str, due_by: datetime | None = None, limited: bool = False
    ) -> TaskExecution | None:
        """Move a pending, due row to running and return it with its task; None if it was not pending and due.

        A duplicate or late message finds the row no longer pending and the
        conditional update touches nothing, so the command runs once. A row
        of a task with a concurrency limit is claimed only with ``limited``,
        by executions.concurrency, which has counted a free slot.
        """
        from taskhub.models import Task

        at = now()
        claimed = statements.claim_and_load(
            pk,
            at=at,
            worker=worker,
            celery_task_id=celery_task_id,
            due_by=(due_by or at) + CLAIM_CLOCK_TOLERANCE,
            limited=limited,
        )
        if claimed is None:
            return None
        execution_values, task_values = claimed
        if not execution_values:  # SQLite: claimed; read it
            return cls.objects.select_related("task").get(pk=pk)
        execution = cls.from_db(DEFAULT_DB_ALIAS, list(execution_values), list(execution_values.values()))
        execution.task = Task.from_db(DEFAULT_DB_ALIAS, list(task_values), list(task_values.values()))
        return execution

    def finish(self, status: str, **fields: object) -> bool:
        fields.setdefault("finished_at", now())
        return self.transition(status, **fields)

    def request_cancel(self) -> bool:
        """Cancel a pending row at once, or ask the runner to stop a running one.

        Return True when the request took; raise InvalidTransition for a
        finished row.
        """
        at = now()
        if self.status == Status.PENDING:
            if self.transition(
                Status.CANCELLED, finished_at=at, cancel_requested_at=at, error="Cancelled before it started."
            ):
                return True
            self.refresh_from_db(fields=["status", "cancel_requested_at"])
        if self.status == Status.RUNNING:
            updated = TaskExecution.objects.filter(
                pk=self.pk, status=Status.RUNNING, cancel_requested_at__isnull=True
            ).update(cancel_requested_at=at)
            if updated:
                self.cancel_requested_at = at
            return True
        raise InvalidTransition(self, Status.CANCELLED)

    # -- what an attempt runs ------------------------------------------------------

    @property
    def has_snapshot(self) -> bool:
        return self.argv is not None

    @staticmethod
    def snapshot_of(task) -> dict[str, object]:
        """What ``task`` runs now, as an execution records it.

        ``argv`` is None when the command line does not split (edited around
        validation): the attempt then fails to start, with the reason.
        """
        try:
            argv = task.argv()
        except ValueError:
            argv = None
        return {
            "command": task.command,
            "shell": task.shell,
            "argv": argv,
            "working_dir": task.working_dir,
            "env": dict(task.env),
            "timeout": task.timeout,
            "kill_grace": task.kill_grace,
        }

    def take_snapshot(self, task) -> None:
        """Copy what ``task`` runs into this row (in memory; saved with the outcome)."""
        for name, value in self.snapshot_of(task).items():
            setattr(self, name, value)
        self._snapshot_unsaved = True

    def snapshot(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in statements.SNAPSHOT_COLUMNS}

    # -- new rows ---------------------------------------------------------------

    @classmethod
    def create_pending(
        cls,
        task,
        *,
        run_id: uuid.UUID,
        attempt: int,
        trigger: str,
        triggered_by_id: int | None,
        scheduled_for: datetime,
        enqueued: bool,
        at: datetime,
        snapshot: dict[str, object],
        celery_task_id: str = "",
        schedule_id: int | None = None,
        fire_time: datetime | None = None,
        workflow_run_id: uuid.UUID | None = None,
        upstream_execution_id: int | None = None,
    ) -> TaskExecution:
        """Save a new pending attempt (the named LAUNCH_INSERT) and return it.

        The one place a launch, a retry and a hand retry make their row.
        ``enqueued`` says whether the caller sends its message now; a row
        without one is sent by the reconciler when due. ``task`` is the Task
        (kept on the row: sending reads it) or its id. ``snapshot`` is what the
        attempt runs (``Task.snapshot()`` or the run's earlier attempt's).
        """
        task_is_model = isinstance(task, models.Model)
        values = {
            "task_id": task.pk if task_is_model else task,
            "run_id": run_id,
            "attempt": attempt,
            "status": Status.PENDING,
            "trigger": trigger,
            "triggered_by_id": triggered_by_id,
            "scheduled_for": scheduled_for,
            "enqueued_at": at if enqueued else None,
            "celery_task_id": celery_task_id,
            "created_at": at,
            "schedule_id": schedule_id,
            "fire_time": fire_time,
            "workflow_run_id": workflow_run_id,
            "upstream_execution_id": upstream_execution_id,
            **snapshot,
        }
        values["id"] = statements.insert_pending(values)
        # The whole row as the database now holds it, built the way Django
        # builds a loaded row (positional, every column): on every launch.
        execution = cls.from_db(
            DEFAULT_DB_ALIAS,
            statements.EXECUTION_COLUMNS,
            [values[name] if name in values else _NEW_ROW_DEFAULTS[name] for name in statements.EXECUTION_COLUMNS],
        )
        if task_is_model:
            execution.task = task
        return execution

    def next_attempt(self, *, delay: float, enqueued: bool, trigger: str = Trigger.RETRY) -> TaskExecution:
        """Create the pending row for the next attempt of this run, due in ``delay`` seconds; it runs the same snapshot."""
        at = now()
        return TaskExecution.create_pending(
            # sending it reads the task: no query for it when it is at hand
            self.task if TaskExecution.task.is_cached(self) else self.task_id,
            run_id=self.run_id,
            attempt=self.attempt + 1,
            trigger=trigger,
            triggered_by_id=self.triggered_by_id,
            scheduled_for=at + timedelta(seconds=delay),
            enqueued=enqueued,
            at=at,
            snapshot=self.snapshot(),
            schedule_id=self.schedule_id,
            fire_time=self.fire_time,
            workflow_run_id=self.workflow_run_id,
            upstream_execution_id=self.upstream_execution_id,
        )


class ArtifactQuerySet(models.QuerySet):
    def listing(self) -> ArtifactQuerySet:
        """Names and sizes, with ``is_kept``, without loading the contents."""
        return self.defer("content").annotate(is_kept=models.Q(content__isnull=False))


class Artifact(models.Model):
    """A file an attempt's command left in $TASKHUB_ARTIFACTS_DIR, kept with the execution (deleted with it)."""

    execution = models.ForeignKey(TaskExecution, on_delete=models.CASCADE, related_name="artifacts")
    name = models.CharField(max_length=1000, help_text="Its path under the artifacts directory.")
    size = models.BigIntegerField(help_text="Bytes.")
    content = models.BinaryField(null=True, help_text="Empty when it was past the attempt's cap and not kept.")

    objects = ArtifactQuerySet.as_manager()

    class Meta:
        ordering = ["execution_id", "name"]
        constraints = [models.UniqueConstraint(fields=["execution", "name"], name="artifact_execution_name_unique")]

    def __str__(self) -> str:
        return self.name


class SuiteHostState(models.TextChoices):
    PENDING = "pending", "Pending"
    PROVISIONING = "provisioning", "Provisioning"
    RUNNING = "running", "Running"
    CLEANING_UP = "cleaning_up", "Cleaning up"
    DONE = "done", "Done"
    FAILED = "failed", "Failed: gets no more of the suite's work"


class SuiteHost(models.Model):
    """A suite on one worker host (executions.suites): its state there, and why it failed."""

    suite = models.ForeignKey("taskhub.Suite", on_delete=models.CASCADE, related_name="hosts")
    host = models.CharField(max_length=255, help_text="The worker's node name, e.g. celery@host.")
    state = models.CharField(max_length=16, choices=SuiteHostState.choices, default=SuiteHostState.PENDING)
    failures = models.PositiveIntegerField(default=0, help_text="How many times provision failed on this host.")
    failure_type = models.CharField(max_length=100, blank=True, default="", help_text="exit code, timeout, …")
    error = models.TextField(blank=True, default="")
    background_pid = models.IntegerField(null=True, blank=True, help_text="The background hook's process group.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["suite_id", "host"]
        verbose_name = "suite on a host"
        verbose_name_plural = "suites on hosts"
        constraints = [models.UniqueConstraint(fields=["suite", "host"], name="suitehost_unique")]

    def __str__(self) -> str:
        return f"{self.suite} on {self.host}"


class HookKind(models.TextChoices):
    PROVISION = "provision", "Provision"
    BACKGROUND = "background", "Background"
    CLEANUP = "cleanup", "Cleanup"


class HookRun(models.Model):
    """One run of a suite's hook on a host, recorded like an execution."""

    suite_host = models.ForeignKey(SuiteHost, on_delete=models.CASCADE, related_name="hook_runs")
    kind = models.CharField(max_length=12, choices=HookKind.choices)
    status = models.CharField(
        max_length=16, default="running", help_text="running, succeeded, failed, timeout, stopped"
    )
    exit_code = models.IntegerField(null=True, blank=True)
    signal = models.IntegerField(null=True, blank=True)
    stdout = models.TextField(blank=True, default="")
    stderr = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    pid = models.IntegerField(null=True, blank=True)
    started_at = models.DateTimeField(default=now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} on {self.suite_host.host}: {self.status}"


class WorkflowRun(models.Model):
    """Everything one root launch of a task with downstream tasks set off (executions.workflows).

    Its id is the root run's ``run_id``. Firing downstream tasks locks this
    row, so two upstream runs that end together launch their common
    downstream task once; cancelling sets ``cancelled_at`` under the same
    lock, so nothing launches after it.
    """

    id = models.UUIDField(primary_key=True, editable=False)
    root_task = models.ForeignKey("taskhub.Task", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=now, db_index=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "workflow run"

    def __str__(self) -> str:
        return f"Workflow run {self.pk} ({self.root_task or 'deleted task'})"


# -- worker liveness


class WorkerQuerySet(models.QuerySet):
    def alive(self, at: datetime) -> WorkerQuerySet:
        """Workers whose last heartbeat is recent enough at ``at``."""
        return self.filter(last_seen_at__gte=Worker.alive_since(at))


class Worker(models.Model):
    """A Celery worker's own record that it is alive, written by its main process (executions.liveness).

    /healthz reads these rows instead of asking the workers over the broker.
    """

    # A worker that missed this many heartbeats in a row is not alive: one
    # late write is not a dead worker, three are.
    MISSED_HEARTBEATS = 3

    hostname = models.CharField(max_length=255, unique=True, help_text="The worker's node name, e.g. celery@host.")
    queues = models.TextField(blank=True, help_text="The queues it consumes, comma-separated.")
    pid = models.PositiveIntegerField(help_text="Its main process on its host.")
    started_at = models.DateTimeField()
    last_seen_at = models.DateTimeField(help_text="When it last said it was alive.")

    objects = WorkerQuerySet.as_manager()

    class Meta:
        ordering = ["hostname"]

    def __str__(self) -> str:
        return self.hostname

    @classmethod
    def alive_since(cls, at: datetime) -> datetime:
        return at - timedelta(seconds=cls.MISSED_HEARTBEATS * settings.TASKHUB_WORKER_HEARTBEAT)

    def is_alive(self, at: datetime) -> bool:
        return self.last_seen_at >= Worker.alive_since(at)

    @classmethod
    def record(cls, *, hostname: str, queues: list[str], pid: int, started_at: datetime) -> None:
        """Write that the worker is alive now: one UPDATE, or the whole row when it is not this process's yet."""
        at = now()
        if cls.objects.filter(hostname=hostname, pid=pid, started_at=started_at).update(last_seen_at=at):
            return
        # First write of this process, or its row was removed or taken over
        # by an earlier life of the same node name.
        cls.objects.update_or_create(
            hostname=hostname,
            defaults={"queues": ",".join(queues), "pid": pid, "started_at": started_at, "last_seen_at": at},
        )

    @classmethod
    def forget(cls, *, hostname: str, pid: int, started_at: datetime) -> None:
        """Delete the row at shutdown; a newer process of the same name keeps its own."""
        cls.objects.filter(hostname=hostname, pid=pid, started_at=started_at).delete()

    @property
    def queue_names(self) -> list[str]:
        return [name for name in self.queues.split(",") if name]


# What the launch INSERT leaves to the database, as the model's defaults give
# it (the columns with a callable default are always given).
_NEW_ROW_DEFAULTS = {
    f.attname: f.default if f.has_default() and not callable(f.default) else None
    for f in TaskExecution._meta.concrete_fields
}
