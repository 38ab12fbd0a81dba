"""How many database round trips the launch and worker paths cost: pinned, so none is added unnoticed.

Each statement is a round trip to PostgreSQL and CPU on both ends; at
hundreds of executions a second they are most of TaskHub's overhead over a
bare Celery task (``make bench`` shows the figures). Change a number here
only together with the reason in the commit.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from executions.models import Status, TaskExecution
from executions.services import execute
from taskhub.services import launch

pytestmark = pytest.mark.django_db(transaction=True)


def statements(ctx: CaptureQueriesContext) -> list[str]:
    return [q["sql"].split(None, 1)[0].upper() for q in ctx.captured_queries]


def pending_row(task) -> TaskExecution:
    return TaskExecution.objects.create(task=task, status=Status.PENDING)


def test_a_short_successful_execution_costs_two_statements_on_the_worker(make_task, settings):
    task = make_task(command="true")
    execution = pending_row(task)

    with CaptureQueriesContext(connection) as ctx:
        outcome = execute(execution.pk, worker="w1", celery_task_id="c1")

    execution.refresh_from_db()
    assert outcome is not None and execution.status == Status.SUCCEEDED
    # Claim and load the row with its task (UPDATE … RETURNING), then the
    # outcome (UPDATE; no transaction: no retry row can follow a success).
    # No heartbeat and no cancel check: the command ended before the first tick.
    assert statements(ctx) == ["UPDATE", "UPDATE"], ctx.captured_queries


def test_a_failed_execution_with_a_retry_adds_only_the_next_attempts_insert(make_task):
    task = make_task(command="false", retry_count=1, retry_delay=0)
    execution = pending_row(task)

    with CaptureQueriesContext(connection) as ctx:
        outcome = execute(execution.pk, worker="w1", celery_task_id="c1")

    assert outcome is not None and outcome.next_execution is not None
    assert statements(ctx) == ["UPDATE", "BEGIN", "UPDATE", "INSERT", "COMMIT"], ctx.captured_queries


def test_a_duplicate_message_costs_the_claim_and_one_look_at_the_row(make_task):
    execution = pending_row(make_task(command="true"))
    execute(execution.pk, worker="w1", celery_task_id="c1")

    with CaptureQueriesContext(connection) as ctx:
        assert execute(execution.pk, worker="w1", celery_task_id="c1") is None

    assert statements(ctx) == ["UPDATE", "SELECT"], ctx.captured_queries


def test_a_command_running_past_several_ticks_writes_one_heartbeat_per_tick_and_polls_cancel_once_per_poll(
    make_task, settings
):
    settings.TASKHUB_HEARTBEAT = 0.4
    settings.TASKHUB_CANCEL_POLL = 0.4
    task = make_task(command="sleep 1.1")
    execution = pending_row(task)

    with CaptureQueriesContext(connection) as ctx:
        execute(execution.pk, worker="w1", celery_task_id="c1")

    kinds = statements(ctx)
    # Ticks at 0.4 s and 0.8 s: two heartbeat UPDATEs and two cancel SELECTs
    # on top of the two statements every execution costs.
    assert kinds.count("UPDATE") == 2 + 2, ctx.captured_queries
    assert kinds.count("SELECT") == 2, ctx.captured_queries
    assert len(kinds) == 2 + 4


def test_launching_costs_one_insert(make_task):
    task = make_task(command="true")

    with CaptureQueriesContext(connection) as ctx:
        launch(task)

    assert statements(ctx) == ["INSERT"], ctx.captured_queries


def test_loading_an_execution_for_its_run_gives_what_the_orm_gives_in_one_select(make_task):
    from django.forms.models import model_to_dict

    from executions.services import load_for_run

    task = make_task(command="echo hi", env={"GREETING": "hello"})
    execution = pending_row(task)
    expected = TaskExecution.objects.select_related("task").get(pk=execution.pk)

    with CaptureQueriesContext(connection) as ctx:
        loaded = load_for_run(execution.pk)
        task_name = loaded.task.name  # no second query for the task

    assert statements(ctx) == ["SELECT"]
    assert model_to_dict(loaded) == model_to_dict(expected)
    assert model_to_dict(loaded.task) == model_to_dict(expected.task)
    assert loaded.run_id == expected.run_id and loaded.task.env == {"GREETING": "hello"}
    assert loaded.created_at == expected.created_at and task_name == task.name
    with pytest.raises(TaskExecution.DoesNotExist):
        load_for_run(execution.pk + 1000)


def test_claiming_and_loading_in_one_statement_gives_what_the_orm_gives(make_task):
    from django.forms.models import model_to_dict
    from django.utils.timezone import now

    from executions.services import claim_and_load

    task = make_task(command="echo hi", env={"GREETING": "hello"})
    execution = pending_row(task)

    with CaptureQueriesContext(connection) as ctx:
        claimed = claim_and_load(execution.pk, worker="w1", celery_task_id="c1", due_by=now())

    expected = TaskExecution.objects.select_related("task").get(pk=execution.pk)
    assert statements(ctx) == ["UPDATE"]
    assert expected.status == Status.RUNNING and expected.worker == "w1"
    assert model_to_dict(claimed) == model_to_dict(expected)
    assert model_to_dict(claimed.task) == model_to_dict(expected.task)
    assert claimed.started_at == expected.started_at and claimed.task.env == {"GREETING": "hello"}
    # Claimed once: a second claim finds it running and changes nothing.
    assert claim_and_load(execution.pk, worker="w2", celery_task_id="c2", due_by=now()) is None
    assert TaskExecution.objects.get(pk=execution.pk).worker == "w1"


def test_claiming_and_loading_leaves_a_row_that_is_not_due_alone(make_task):
    from datetime import timedelta

    from django.utils.timezone import now

    from executions.services import claim_and_load

    later = TaskExecution.objects.create(task=make_task(), scheduled_for=now() + timedelta(minutes=5))
    assert claim_and_load(later.pk, worker="w1", celery_task_id="c1", due_by=now()) is None
    assert TaskExecution.objects.get(pk=later.pk).status == Status.PENDING


def prepared_statements() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements ORDER BY prepare_time")
        return [row[0] for row in cursor.fetchall()]


def test_the_statements_every_execution_runs_are_prepared_once_per_connection_and_read_the_same(make_task):
    from django.forms.models import model_to_dict
    from django.utils.timezone import now

    from executions.services import claim_and_load

    connection.close()  # a new session: none prepared yet
    assert prepared_statements() == []
    task = make_task(command="echo hi", env={"GREETING": "hello"})
    claimed = []
    for _ in range(3):
        execution = launch(task)
        claimed.append(claim_and_load(execution.pk, worker="w1", celery_task_id="c1", due_by=now()))
        claimed[-1].finish(Status.SUCCEEDED, exit_code=0, stdout="hi\n")

    # Launch INSERT, claim UPDATE, outcome UPDATE: each prepared once, not once per execution.
    kinds = [" ".join(sql.split()[:3]) for sql in prepared_statements()]
    assert kinds == [
        'INSERT INTO "executions_taskexecution"',
        'UPDATE "executions_taskexecution" e',
        'UPDATE "executions_taskexecution" SET',
    ]
    # Rows read through a prepared statement are what the ORM reads.
    first = claimed[0]
    expected = TaskExecution.objects.select_related("task").get(pk=first.pk)
    assert expected.status == Status.SUCCEEDED and expected.stdout == "hi\n"
    first.refresh_from_db(fields=["status", "finished_at", "exit_code", "stdout"])
    assert model_to_dict(first) == model_to_dict(expected)
    assert model_to_dict(first.task) == model_to_dict(expected.task) and first.task.env == {"GREETING": "hello"}
    assert first.started_at == expected.started_at and first.started_at.utcoffset() is not None


def test_with_prepared_statements_off_nothing_is_prepared(make_task, settings):
    from django.utils.timezone import now

    from executions.services import claim_and_load

    settings.TASKHUB_DB_PREPARE = False
    connection.close()  # a new session: none prepared yet
    execution = launch(make_task(command="true"))
    claim_and_load(execution.pk, worker="w1", celery_task_id="c1", due_by=now()).finish(Status.SUCCEEDED, exit_code=0)

    assert TaskExecution.objects.get(pk=execution.pk).status == Status.SUCCEEDED
    assert prepared_statements() == []


def test_a_new_row_leaves_out_its_null_columns_and_reads_as_the_orm_would_have_written_it(make_task, admin_user):
    from django.forms.models import model_to_dict

    task = make_task(command="true")
    made = [launch(task), launch(task, user=admin_user)]  # without and with triggered_by
    connection.close()
    with CaptureQueriesContext(connection) as ctx:
        launch(task)
    # The INSERT names only the columns a new row sets; the rest are NULL by default.
    insert = next(q["sql"] for q in ctx.captured_queries if q["sql"].startswith("INSERT"))
    assert '"started_at"' not in insert and '"exit_code"' not in insert and '"stdout"' in insert
    for execution in made:
        stored = TaskExecution.objects.get(pk=execution.pk)
        by_orm = TaskExecution(
            **{f.attname: getattr(execution, f.attname) for f in TaskExecution._meta.concrete_fields}
        )
        assert model_to_dict(stored) == model_to_dict(by_orm)
        assert stored.started_at is None and stored.exit_code is None and stored.stdout == "" and stored.worker == ""
    assert made[1].triggered_by_id == admin_user.pk


def test_the_kept_cursor_follows_a_new_connection(make_task):
    from executions.models import hot_cursor

    task = make_task(command="true")
    launch(task)
    with hot_cursor(connection) as first:
        pass
    with hot_cursor(connection) as again:
        pass
    assert again is first and not first.closed  # kept open across uses
    connection.close()
    execution = launch(task)  # reconnects: a new cursor on the new connection, statements prepared anew
    with hot_cursor(connection) as second:
        pass
    assert second is not first
    assert TaskExecution.objects.get(pk=execution.pk).status == Status.PENDING
    assert [s.split()[0] for s in prepared_statements()] == ["INSERT"]


def test_the_claim_reads_timestamps_as_the_orm_does(make_task):
    from django.utils.timezone import now

    from executions.services import claim_and_load

    execution = launch(make_task(command="true"))
    claimed = claim_and_load(execution.pk, worker="w1", celery_task_id="c1", due_by=now())
    by_orm = TaskExecution.objects.select_related("task").get(pk=execution.pk)

    for model, expected in ((claimed, by_orm), (claimed.task, by_orm.task)):
        stamps = [f.attname for f in model._meta.concrete_fields if f.get_internal_type() == "DateTimeField"]
        for name in stamps:
            value, orm_value = getattr(model, name), getattr(expected, name)
            assert value == orm_value, name
            # The same time zone object, not only the same instant: aware, in Django's zone.
            assert value is None or value.tzinfo is orm_value.tzinfo is connection.timezone, name
    assert claimed.started_at is not None and claimed.task.created_at is not None
