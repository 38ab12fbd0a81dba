from __future__ import annotations

import contextlib
import functools
import uuid
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connections, models, router
from django.utils.timezone import now


def hot_cursor(conn):
    """A cursor for the statements on every execution's path (launch, claim, outcome).

    On PostgreSQL (unless TASKHUB_DB_PREPARE is off) its statements are
    bound on the server and prepared once per connection, so PostgreSQL
    skips parsing and planning them on each execution; the cursor itself is
    made once per connection too and kept (use it in a ``with`` block, which
    leaves it open). Otherwise, and while queries are logged (DEBUG, a test
    capturing them: a prepared statement leaves no SQL text to log), a plain
    cursor, closed at the end of the ``with`` block. Either way it is
    Django's cursor wrapper: errors and execute wrappers work as for
    ``conn.cursor()``.
    """
    if conn.vendor != "postgresql" or not settings.TASKHUB_DB_PREPARE or conn.queries_logged:
        return conn.cursor()
    conn.close_if_health_check_failed()
    conn.ensure_connection()
    # Django's connection objects are per thread, and so is this cache; a
    # new connection (reconnect, pool checkout) or time zone gets a new cursor.
    kept = conn.__dict__.get("_taskhub_hot_cursor")  # (connection, time zone, cursor)
    if kept is None or kept[0] is not conn.connection or kept[1] != conn.timezone:
        with conn.wrap_database_errors:
            cursor = _prepared_cursor_class()(conn.connection)
            _use_timestamp_loader(conn, cursor)
            kept = conn.__dict__["_taskhub_hot_cursor"] = (conn.connection, conn.timezone, conn._prepare_cursor(cursor))
    return contextlib.nullcontext(kept[2])


def _use_timestamp_loader(conn, cursor) -> None:
    """Have ``cursor`` read timestamps as Django's own cursors do: aware, in the connection's time zone.

    Django's loader parses each value in Python and then sets the time
    zone; when both Django and the session are in UTC (Django sets the
    session's time zone when it connects), psycopg's own loader, in C,
    gives the same datetime (UTC) several µs sooner per value: the
    claim reads seven of them on every execution.
    """
    import psycopg
    from django.db.backends.postgresql import base

    if conn.timezone is UTC and conn.connection.info.parameter_status("TimeZone") == "UTC":
        loader = psycopg.adapters.get_loader(base.TIMESTAMPTZ_OID, base.Format.TEXT)
        cursor.adapters.register_loader(base.TIMESTAMPTZ_OID, loader)
    elif conn.timezone != conn.connection.adapters.get_loader(base.TIMESTAMPTZ_OID, base.Format.TEXT).timezone:
        base.register_tzloader(conn.timezone, cursor)  # as Django's create_cursor


@functools.cache
def _prepared_cursor_class():
    from django.db.backends.postgresql.base import ServerBindingCursor

    class PreparedCursor(ServerBindingCursor):
        def execute(self, query, params=None, *, prepare=None, binary=None):
            return super().execute(query, params, prepare=True, binary=binary)

    return PreparedCursor


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


class Trigger(models.TextChoices):
    MANUAL = "manual", "Manual"
    API = "api", "API"
    SCHEDULE = "schedule", "Schedule"
    RETRY = "retry", "Retry"
    CLI = "cli", "Command line"


# The only allowed transitions; everything else raises InvalidTransition.
TRANSITIONS: dict[str, tuple[str, ...]] = {
    Status.PENDING: (Status.RUNNING, Status.CANCELLED),
    Status.RUNNING: (Status.SUCCEEDED, Status.FAILED, Status.TIMEOUT, Status.CANCELLED, Status.LOST),
    Status.SUCCEEDED: (),
    Status.FAILED: (),
    Status.TIMEOUT: (),
    Status.CANCELLED: (),
    Status.LOST: (),
}
TERMINAL = frozenset(s for s, allowed in TRANSITIONS.items() if not allowed)
RETRYABLE = frozenset({Status.FAILED, Status.TIMEOUT, Status.LOST})
# A message may arrive this much before its row's due time (clock skew between
# hosts, ETA rounding) and still run.
CLAIM_CLOCK_TOLERANCE = timedelta(seconds=1)


class TaskExecutionQuerySet(models.QuerySet):
    def older_than(self, days: float) -> TaskExecutionQuerySet:
        return self.filter(created_at__lt=now() - timedelta(days=days)).exclude(
            status__in=[Status.PENDING, Status.RUNNING]
        )


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
    stdout = models.TextField(blank=True, default="")
    stderr = models.TextField(blank=True, default="")
    output_truncated = models.BooleanField(default=False)
    error = models.TextField(blank=True, default="", help_text="Why the attempt failed, in words.")
    worker = models.CharField(max_length=255, blank=True, default="")
    pid = models.IntegerField(null=True, blank=True)
    celery_task_id = models.CharField(max_length=255, blank=True, default="")
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    max_rss_kb = models.BigIntegerField(null=True, blank=True)
    cpu_user = models.FloatField(null=True, blank=True)
    cpu_system = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(default=now, db_index=False)

    objects = TaskExecutionQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["run_id", "attempt"], name="execution_run_attempt_unique"),
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
            # SET NULL when a user is deleted; rows nobody triggered are not in it.
            models.Index(
                fields=["triggered_by"],
                name="execution_triggered_by_idx",
                condition=models.Q(triggered_by__isnull=False),
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
        updated = self._conditional_update({"status": new_status, **fields})
        if not updated:
            # Someone else moved the row first (claim, cancel, reaper): theirs stands.
            return False
        self.status = new_status
        for name, value in fields.items():
            setattr(self, name, value)
        return True

    def insert(self) -> None:
        """Save this new row with one ``INSERT … RETURNING id`` and set its id.

        What ``save()`` does for a new row (each field's ``pre_save`` and
        ``get_db_prep_save``), without compiling the statement every time:
        every launch and every next attempt goes through here. Nullable
        columns without a default that are None (most of a new row) are left
        out of the statement: the database writes NULL, as the ORM would.
        Model signals are not sent.
        """
        conn = connections[router.db_for_write(TaskExecution)]
        if not conn.features.can_return_columns_from_insert:
            self.save(force_insert=True)
            return
        left_out = tuple(f.attname for f in _NULL_BY_DEFAULT if getattr(self, f.attname) is None)
        sql, fields = _insert_statement(conn, left_out)
        params = [f.get_db_prep_save(f.pre_save(self, True), conn) for f in fields]
        with hot_cursor(conn) as cursor:
            cursor.execute(sql, params)
            self.pk = cursor.fetchone()[0]
        self._state.adding = False
        self._state.db = conn.alias

    def _conditional_update(self, values: dict[str, object]) -> int:
        """``UPDATE … SET values WHERE id = pk AND status = <this instance's status>``; return the rows changed.

        The same statement ``filter(pk=…, status=…).update(…)`` produces, sent
        directly: every execution finishes through here, and the ORM spends
        more CPU compiling that UPDATE (about 0.9 ms) than the database does
        running it. Values go through each field's own ``get_db_prep_save``.
        """
        conn = connections[router.db_for_write(TaskExecution)]
        sql, fields = _update_statement(conn, tuple(values))
        params = [field.get_db_prep_save(value, conn) for field, value in zip(fields, values.values(), strict=True)]
        with hot_cursor(conn) as cursor:
            cursor.execute(sql, [*params, self.pk, self.status])
            return cursor.rowcount

    @classmethod
    def claim(cls, pk: int, *, worker: str, celery_task_id: str, due_by: datetime | None = None) -> bool:
        """Move a pending, due row to running; return False if it was not.

        A duplicate or late message finds the row no longer pending and the
        conditional update touches nothing, so the command runs once.
        """
        at = now()
        due_by = (due_by or at) + CLAIM_CLOCK_TOLERANCE
        return bool(
            cls.objects.filter(pk=pk, status=Status.PENDING, scheduled_for__lte=due_by).update(
                status=Status.RUNNING,
                started_at=at,
                heartbeat_at=at,
                worker=worker,
                celery_task_id=celery_task_id,
            )
        )

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
        celery_task_id: str = "",
    ) -> TaskExecution:
        """Save a new pending attempt (one direct INSERT) and return it.

        The one place a launch, a retry and a manual retry make their row.
        ``enqueued`` says whether the caller sends its message now; a row
        without one is sent by the reconciler when due. ``task`` is the Task
        (kept on the row: sending reads it) or its id.
        """
        task_is_model = isinstance(task, models.Model)
        given = {
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
        }
        # Positional values, as from_db builds a model: keyword arguments cost
        # Model.__init__ several times as much on every launch.
        execution = cls(*[given.get(name, default) for name, default in _NEW_ROW_DEFAULTS])
        if task_is_model:
            execution.task = task
        execution.insert()
        return execution

    def next_attempt(self, *, delay: float, enqueued: bool) -> TaskExecution:
        """Create the pending row for the next attempt of this run, due in ``delay`` seconds."""
        at = now()
        return TaskExecution.create_pending(
            # sending it reads the task: no query for it when it is at hand
            self.task if TaskExecution.task.is_cached(self) else self.task_id,
            run_id=self.run_id,
            attempt=self.attempt + 1,
            trigger=Trigger.RETRY,
            triggered_by_id=self.triggered_by_id,
            scheduled_for=at + timedelta(seconds=delay),
            enqueued=enqueued,
            at=at,
        )


# -- the statements of every execution, worked out once per process -------------------------

# Columns a new row may leave out: nullable, no default (NULL when left out).
_NULL_BY_DEFAULT = [
    f for f in TaskExecution._meta.concrete_fields if f.null and not f.has_default() and not f.primary_key
]


# (attname, value) of every column, in order: a new row's value where
# create_pending does not set it (its constant default, else None).
_NEW_ROW_DEFAULTS = [
    (f.attname, f.default if f.has_default() and not callable(f.default) else None)
    for f in TaskExecution._meta.concrete_fields
]


# SQL text by (kind, database vendor, columns): the same for every connection of a vendor.
_statements: dict[tuple, tuple[str, list]] = {}


def _insert_statement(conn, left_out: tuple[str, ...]) -> tuple[str, list]:
    """``INSERT … RETURNING id`` for every column but the primary key and ``left_out``, and those fields."""
    key = ("insert", conn.vendor, left_out)
    if key not in _statements:
        q = conn.ops.quote_name
        opts = TaskExecution._meta
        fields = [f for f in opts.concrete_fields if not f.primary_key and f.attname not in left_out]
        sql = (
            f"INSERT INTO {q(opts.db_table)} ({', '.join(q(f.column) for f in fields)}) "
            f"VALUES ({', '.join(['%s'] * len(fields))}) RETURNING {q(opts.pk.column)}"
        )
        _statements[key] = (sql, fields)
    return _statements[key]


def _update_statement(conn, names: tuple[str, ...]) -> tuple[str, list]:
    """``UPDATE … SET names WHERE id = %s AND status = %s``, and the fields of ``names``."""
    key = ("update", conn.vendor, names)
    if key not in _statements:
        q = conn.ops.quote_name
        opts = TaskExecution._meta
        fields = [opts.get_field(name) for name in names]
        sql = (
            f"UPDATE {q(opts.db_table)} SET {', '.join(f'{q(f.column)} = %s' for f in fields)} "
            f"WHERE {q(opts.pk.column)} = %s AND {q('status')} = %s"
        )
        _statements[key] = (sql, fields)
    return _statements[key]
