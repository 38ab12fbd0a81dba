"""The statements on every execution's path, written out once and named.

Every execution runs three of them: the launch's INSERT, the worker's claim
(an UPDATE that hands back the claimed row) and the outcome's UPDATE. They are
plain SQL here rather than ORM queries because they run hundreds of times a
second and the ORM spends more CPU compiling each than the database spends
running it. The launch INSERT and the outcome UPDATE are the same text on
PostgreSQL and SQLite; the claim joins the task on PostgreSQL, while SQLite,
whose RETURNING cannot name a joined table, reads the rows after it.

This module knows SQL and Django's connections, not the models: the column
lists below must follow the models, and tests/test_statements.py fails when
they do not.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from datetime import datetime

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper

EXECUTIONS = "executions_taskexecution"
TASKS = "taskhub_task"

# Every column of an execution and of a task, in the models' field order.
EXECUTION_COLUMNS = (
    "id", "task_id", "run_id", "attempt", "status", "trigger", "triggered_by_id", "scheduled_for", "enqueued_at",
    "started_at", "finished_at", "exit_code", "signal", "stdout", "stderr", "output_truncated", "error", "worker",
    "pid", "celery_task_id", "heartbeat_at", "cancel_requested_at", "max_rss_kb", "cpu_user", "cpu_system",
    "created_at", "handed_back", "command", "shell", "argv", "working_dir", "env", "timeout", "kill_grace",
    "exhausted", "decided_by", "schedule_id", "fire_time", "workflow_run_id", "upstream_execution_id",
)  # fmt: skip
TASK_COLUMNS = (
    "id", "name", "description", "command", "shell", "env", "working_dir", "timeout", "kill_grace", "retry_count",
    "retry_delay", "retry_backoff", "retry_delay_max", "retry_jitter", "queue", "priority", "enabled",
    "success_exit_codes", "retry_exit_codes", "no_retry_exit_codes", "retry_on_timeout", "max_concurrency",
    "overlap_policy", "pause_after_exhausted", "paused_reason", "owner_id", "created_at", "updated_at",
    "has_downstream", "memory_limit_mb", "cpu_limit_seconds", "open_files_limit", "process_limit", "resources",
    "keep_artifacts", "isolated", "wait_for_task_id", "wait_for_status", "wait_timeout", "suite_id",
)  # fmt: skip
# Columns the database hands back as JSON text (Django reads jsonb as text too).
_JSON_EXECUTION = tuple(i for i, name in enumerate(EXECUTION_COLUMNS) if name in ("argv", "env"))
_JSON_TASK = tuple(
    i
    for i, name in enumerate(TASK_COLUMNS)
    if name in ("env", "success_exit_codes", "retry_exit_codes", "no_retry_exit_codes", "resources")
)

# What a launch or a next attempt writes; every other column is NULL or its
# database default (db_default on the model).
LAUNCH_INSERT_COLUMNS = (
    "task_id", "run_id", "attempt", "status", "trigger", "triggered_by_id", "scheduled_for", "enqueued_at",
    "celery_task_id", "created_at", "command", "shell", "argv", "working_dir", "env", "timeout", "kill_grace",
    "schedule_id", "fire_time", "workflow_run_id", "upstream_execution_id",
)  # fmt: skip
LAUNCH_INSERT = (
    f"INSERT INTO {EXECUTIONS} ({', '.join(LAUNCH_INSERT_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(LAUNCH_INSERT_COLUMNS))}) RETURNING id"
)

_CLAIM_SET = "status = 'running', started_at = %s, heartbeat_at = %s, worker = %s, celery_task_id = %s"
# Each row is found by its primary key alone. With statistics taken while nothing was pending, PostgreSQL
# would rather read the partial index of active rows, that is the whole backlog for every claim (and,
# without statistics of the tasks, every task without a suite); wrapped in IS TRUE, a test is only a
# filter, which no index can serve (tests/test_query_plans.py).
_CLAIM_WHERE = "e.id = %s AND (e.status = 'pending' AND e.scheduled_for <= %s) IS TRUE"
_CLAIM_RETURNING = (
    f"RETURNING {', '.join(f'e.{c}' for c in EXECUTION_COLUMNS)}, {', '.join(f't.{c}' for c in TASK_COLUMNS)}"
)
# PostgreSQL: claim a pending, due row and hand it back with its task, in one
# round trip; only for a task without a concurrency limit, a task to wait
# for or a suite (the caller takes those claims to executions/concurrency.py,
# executions/watches.py and executions/suites.py).
CLAIM_AND_LOAD = (
    f"UPDATE {EXECUTIONS} e SET {_CLAIM_SET} FROM {TASKS} t WHERE {_CLAIM_WHERE} AND t.id = e.task_id "
    f"AND (t.max_concurrency = 0 AND t.wait_for_task_id IS NULL AND t.suite_id IS NULL) IS TRUE {_CLAIM_RETURNING}"
)
# PostgreSQL: the same for any task, run with the task's row locked and a free slot counted.
CLAIM_AND_LOAD_LIMITED = (
    f"UPDATE {EXECUTIONS} e SET {_CLAIM_SET} FROM {TASKS} t WHERE {_CLAIM_WHERE} AND t.id = e.task_id "
    f"{_CLAIM_RETURNING}"
)
# SQLite: the same claims; the caller reads the row and its task after them.
CLAIM = (
    f"UPDATE {EXECUTIONS} AS e SET {_CLAIM_SET} WHERE {_CLAIM_WHERE} "
    f"AND (SELECT t.max_concurrency = 0 AND t.wait_for_task_id IS NULL AND t.suite_id IS NULL FROM {TASKS} t "
    "WHERE t.id = e.task_id)"
)
CLAIM_LIMITED = f"UPDATE {EXECUTIONS} AS e SET {_CLAIM_SET} WHERE {_CLAIM_WHERE}"

OUTCOME_COLUMNS = (
    "status", "finished_at", "exit_code", "signal", "stdout", "stderr", "output_truncated", "error", "pid",
    "max_rss_kb", "cpu_user", "cpu_system", "handed_back", "exhausted", "decided_by",
)  # fmt: skip
# A row made outside the launch path ran the task as it was when claimed: its outcome records that too.
SNAPSHOT_COLUMNS = ("command", "shell", "argv", "working_dir", "env", "timeout", "kill_grace")
# The attempt's end, only if the row is still running: the reaper may have marked it lost meanwhile.
OUTCOME = (
    f"UPDATE {EXECUTIONS} SET {', '.join(f'{c} = %s' for c in OUTCOME_COLUMNS)} "
    "WHERE id = %s AND (status = 'running') IS TRUE"
)
OUTCOME_WITH_SNAPSHOT = (
    f"UPDATE {EXECUTIONS} SET {', '.join(f'{c} = %s' for c in (*OUTCOME_COLUMNS, *SNAPSHOT_COLUMNS))} "
    "WHERE id = %s AND (status = 'running') IS TRUE"
)


def _connection() -> BaseDatabaseWrapper:
    # The thread's connection itself, not the ``connection`` proxy, which looks it up on each attribute.
    return connections[DEFAULT_DB_ALIAS]


class _PreparedCursor:
    """A psycopg cursor binding on the server whose every statement is prepared."""

    def __init__(self, cursor) -> None:
        self.cursor = cursor

    def execute(self, sql: str, params: list) -> None:
        self.cursor.execute(sql, params, prepare=True)

    def fetchone(self):
        return self.cursor.fetchone()

    @property
    def rowcount(self) -> int:
        return self.cursor.rowcount


@contextlib.contextmanager
def _cursor(conn: BaseDatabaseWrapper) -> Iterator:
    """A cursor for these statements: prepared on PostgreSQL (settings.TASKHUB_DB_PREPARE), Django's own otherwise.

    psycopg's documented ``prepare=True``: the server parses and plans each
    statement once per connection instead of on every execution. While
    Django logs queries (DEBUG, a test counting them) a prepared statement
    would leave no SQL text in the log: Django's cursor then.
    """
    if conn.vendor != "postgresql" or not settings.TASKHUB_DB_PREPARE or conn.queries_logged:
        with conn.cursor() as cursor:
            yield cursor
        return
    import psycopg

    conn.ensure_connection()
    with conn.wrap_database_errors, psycopg.Cursor(conn.connection) as cursor:
        yield _PreparedCursor(cursor)


def _prep(conn: BaseDatabaseWrapper, value: object) -> object:
    """A Python value as the database takes it, as the model fields would write it."""
    if isinstance(value, datetime):
        return conn.ops.adapt_datetimefield_value(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, uuid.UUID) and not conn.features.has_native_uuid_field:
        return value.hex  # as Django's UUIDField keeps them on SQLite: 32 hex digits
    return value


def insert_pending(values: dict[str, object]) -> int:
    """Run LAUNCH_INSERT with ``values`` (keyed by LAUNCH_INSERT_COLUMNS); return the new row's id."""
    conn = _connection()
    with _cursor(conn) as cursor:
        cursor.execute(LAUNCH_INSERT, [_prep(conn, values[c]) for c in LAUNCH_INSERT_COLUMNS])
        return cursor.fetchone()[0]


def claim_and_load(
    execution_id: int, *, at: datetime, worker: str, celery_task_id: str, due_by: datetime, limited: bool = False
) -> tuple[dict[str, object], dict[str, object]] | None:
    """Claim a pending row due by ``due_by``; return its columns and its task's, or None when it was not claimed.

    Without ``limited``, a row whose task has a concurrency limit is not
    claimed; with it, any row is (the caller has made sure of a free slot).
    """
    conn = _connection()
    params = [_prep(conn, at), _prep(conn, at), worker, celery_task_id, execution_id, _prep(conn, due_by)]
    with _cursor(conn) as cursor:
        if conn.vendor == "postgresql":
            cursor.execute(CLAIM_AND_LOAD_LIMITED if limited else CLAIM_AND_LOAD, params)
            row = cursor.fetchone()
            if row is None:
                return None
            values = list(row)
            split = len(EXECUTION_COLUMNS)
            for i in _JSON_EXECUTION:
                values[i] = None if values[i] is None else json.loads(values[i])
            for i in _JSON_TASK:
                values[split + i] = json.loads(values[split + i])
            return dict(zip(EXECUTION_COLUMNS, values[:split], strict=True)), dict(
                zip(TASK_COLUMNS, values[split:], strict=True)
            )
        cursor.execute(CLAIM_LIMITED if limited else CLAIM, params)
        return ({}, {}) if cursor.rowcount == 1 else None


def record_outcome(execution_id: int, values: dict[str, object], *, snapshot: dict[str, object] | None = None) -> bool:
    """Run OUTCOME (or OUTCOME_WITH_SNAPSHOT); return False when the row was no longer running."""
    conn = _connection()
    params = [_prep(conn, values[c]) for c in OUTCOME_COLUMNS]
    sql = OUTCOME
    if snapshot is not None:
        params += [_prep(conn, snapshot[c]) for c in SNAPSHOT_COLUMNS]
        sql = OUTCOME_WITH_SNAPSHOT
    with _cursor(conn) as cursor:
        cursor.execute(sql, [*params, execution_id])
        return cursor.rowcount == 1
