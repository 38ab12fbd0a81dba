"""The claim and the outcome find their row by its primary key, whatever the statistics say.

PostgreSQL's statistics are usually taken when nothing is pending (the
steady state), and autoanalyze waits for a tenth of the table to change. A
burst of launches then looks, to the planner, like an empty active-rows
index, cheaper than the primary key; through it every claim reads the
whole backlog, and draining the backlog costs its square. These tests take
statistics with nothing pending, make a backlog, and read both plans the
worker can use: the one built for the values (custom) and the prepared
statement's generic one.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from executions import statements
from executions.models import Status, TaskExecution
from taskhub.models import Task

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's planner"),
]

TABLE = TaskExecution._meta.db_table
BACKLOG = 500


def primary_key_index(table: str = TABLE) -> str:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = %s::regclass AND i.indisprimary",
            [table],
        )
        return cur.fetchone()[0]


def scans_of(plan: dict, table: str = TABLE) -> list[tuple[str, str | None]]:
    """(node type, index name) of every node of ``plan`` that reads ``table``."""
    found = []
    if plan.get("Relation Name") == table and "Scan" in plan["Node Type"]:
        found.append((plan["Node Type"], plan.get("Index Name")))
    for child in plan.get("Plans", []):
        found.extend(scans_of(child, table))
    return found


def plans(sql: str, params: list) -> dict[str, dict]:
    """The custom plan (values in the text) and the generic plan of the prepared statement."""
    with connection.cursor() as cur:
        literal = cur.mogrify(sql, params)
        cur.execute(f"EXPLAIN (FORMAT JSON) {literal}")
        custom = cur.fetchone()[0][0]["Plan"]
        cur.execute(f"PREPARE probe AS {sql.replace('%s', '${}').format(*range(1, len(params) + 1))}")
        cur.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cur.execute(f"EXPLAIN (FORMAT JSON) EXECUTE probe ({', '.join(['%s'] * len(params))})", params)
        generic = cur.fetchone()[0][0]["Plan"]
        cur.execute("DEALLOCATE probe")
    return {"custom": custom, "generic": generic}


@pytest.fixture
def backlog_after_quiet_statistics(make_task) -> list[TaskExecution]:
    task = make_task(command="true")
    at = timezone.now()
    TaskExecution.objects.bulk_create(
        TaskExecution(task=task, status=Status.SUCCEEDED, scheduled_for=at, finished_at=at) for _ in range(2000)
    )
    with connection.cursor() as cur:
        # Statistics of a quiet moment: nothing pending, nothing running; none yet of the tasks.
        cur.execute(f"ANALYZE {TABLE}")
    Task.objects.bulk_create(Task(name=f"more-{i}", command="true") for i in range(1000))
    due = at - timedelta(seconds=1)
    pending = TaskExecution.objects.bulk_create(
        TaskExecution(task=task, status=Status.PENDING, scheduled_for=due) for _ in range(BACKLOG)
    )
    TaskExecution.objects.filter(pk__in=[e.pk for e in pending[: BACKLOG // 2]]).update(status=Status.RUNNING)
    return pending


@pytest.mark.parametrize("claim", ["CLAIM_AND_LOAD", "CLAIM_AND_LOAD_LIMITED"])
def test_a_claim_reads_its_row_by_primary_key_not_the_whole_backlog(backlog_after_quiet_statistics, claim):
    row = backlog_after_quiet_statistics[-1]
    now = timezone.now()
    sql = getattr(statements, claim)

    for kind, plan in plans(sql, [now, now, "w1", "c1", row.pk, now]).items():
        assert scans_of(plan) == [("Index Scan", primary_key_index())], (kind, plan)
        # Its task, too, by primary key, not every task without a limit, a watch or a suite.
        tasks = Task._meta.db_table
        assert scans_of(plan, tasks) == [("Index Scan", primary_key_index(tasks))], (kind, plan)


@pytest.mark.parametrize("outcome", ["OUTCOME", "OUTCOME_WITH_SNAPSHOT"])
def test_an_outcome_reads_its_row_by_primary_key_not_every_running_row(backlog_after_quiet_statistics, outcome):
    row = backlog_after_quiet_statistics[0]  # running
    sql = getattr(statements, outcome)
    params = [None] * (sql.count("%s") - 1) + [row.pk]

    for kind, plan in plans(sql, params).items():
        assert scans_of(plan) == [("Index Scan", primary_key_index())], (kind, plan)


@pytest.mark.parametrize("status", [Status.PENDING, Status.RUNNING])
def test_a_guarded_write_through_the_orm_reads_its_row_by_primary_key(backlog_after_quiet_statistics, status):
    # Heartbeats, output flushes, transitions and resends: TaskExecution.objects.row_if.
    row = backlog_after_quiet_statistics[0 if status == Status.RUNNING else -1]

    plan = json.loads(TaskExecution.objects.row_if(row.pk, status).values("pk").explain(format="json"))[0]["Plan"]

    assert scans_of(plan) == [("Index Scan", primary_key_index())], plan
    assert TaskExecution.objects.row_if(row.pk, status).get() == row
    assert not TaskExecution.objects.row_if(row.pk, Status.SUCCEEDED).exists()
