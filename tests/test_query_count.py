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

from executions.lifecycle import execute
from executions.models import Status, TaskExecution
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


def test_claiming_and_loading_in_one_statement_gives_what_the_orm_gives(make_task):
    from django.forms.models import model_to_dict
    from django.utils.timezone import now

    task = make_task(command="echo hi", env={"GREETING": "hello"})
    execution = launch(task)

    with CaptureQueriesContext(connection) as ctx:
        claimed = TaskExecution.claim(execution.pk, worker="w1", celery_task_id="c1", due_by=now())

    expected = TaskExecution.objects.select_related("task").get(pk=execution.pk)
    assert statements(ctx) == ["UPDATE"]
    assert expected.status == Status.RUNNING and expected.worker == "w1"
    assert model_to_dict(claimed) == model_to_dict(expected)
    assert model_to_dict(claimed.task) == model_to_dict(expected.task)
    assert claimed.started_at == expected.started_at and claimed.task.env == {"GREETING": "hello"}
    assert claimed.env == {"GREETING": "hello"} and claimed.argv == ["echo", "hi"]
    # Claimed once: a second claim finds it running and changes nothing.
    assert TaskExecution.claim(execution.pk, worker="w2", celery_task_id="c2", due_by=now()) is None
    assert TaskExecution.objects.get(pk=execution.pk).worker == "w1"


def test_claiming_leaves_a_row_that_is_not_due_alone(make_task):
    from datetime import timedelta

    from django.utils.timezone import now

    later = TaskExecution.objects.create(task=make_task(), scheduled_for=now() + timedelta(minutes=5))
    assert TaskExecution.claim(later.pk, worker="w1", celery_task_id="c1", due_by=now()) is None
    assert TaskExecution.objects.get(pk=later.pk).status == Status.PENDING


def test_a_launched_row_reads_as_the_orm_would_have_written_it(make_task, admin_user):
    from django.forms.models import model_to_dict

    task = make_task(command="echo 'a b'", env={"K": "v"}, working_dir="/tmp")
    made = [launch(task), launch(task, user=admin_user)]  # without and with triggered_by
    for execution in made:
        stored = TaskExecution.objects.get(pk=execution.pk)
        assert model_to_dict(stored) == model_to_dict(execution)
        assert stored.started_at is None and stored.exit_code is None and stored.stdout == "" and stored.worker == ""
        assert stored.argv == ["echo", "a b"] and stored.env == {"K": "v"} and stored.working_dir == "/tmp"
        assert stored.timeout == task.timeout and not stored.handed_back
    assert made[1].triggered_by_id == admin_user.pk
