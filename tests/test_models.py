"""Task validation, the retry policy's arithmetic and the execution state machine."""

from __future__ import annotations

import random
import uuid

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils.timezone import now

from executions.models import TERMINAL, TRANSITIONS, InvalidTransition, Status, TaskExecution
from taskhub.models import Task, TaskDisabled
from taskhub.services import launch

pytestmark = pytest.mark.django_db


def errors_of(**fields) -> dict[str, list[str]]:
    fields.setdefault("name", "t")
    fields.setdefault("command", "true")
    with pytest.raises(ValidationError) as info:
        Task(**fields).full_clean()
    return info.value.message_dict


# -- validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"1ABC": "x"}, "'1ABC' is not a valid variable name"),
        ({"MY-VAR": "x"}, "'MY-VAR' is not a valid variable name"),
        ({"": "x"}, "'' is not a valid variable name"),
        ({"GOOD": 5}, "The value of 'GOOD' must be a string, not int"),
        ({"TASKHUB_ATTEMPT": "9"}, "TASKHUB_ATTEMPT is set by TaskHub"),
        (["A=1"], "Must be a JSON object"),
    ],
)
def test_invalid_environment_is_refused_with_a_clear_message(env, message):
    assert any(message in m for m in errors_of(env=env)["env"])


def test_a_valid_environment_passes():
    Task(name="t", command="true", env={"LOG_LEVEL": "debug", "_X1": ""}).full_clean()


@pytest.mark.parametrize("timeout", [0, -5])
def test_zero_or_negative_timeout_is_refused(timeout):
    assert "timeout" in errors_of(timeout=timeout)


def test_negative_retries_are_refused():
    assert "retry_count" in errors_of(retry_count=-1)


@pytest.mark.parametrize("priority", [-1, 10])
def test_priority_outside_0_to_9_is_refused(priority):
    assert "priority" in errors_of(priority=priority)


def test_backoff_below_one_is_refused():
    assert "retry_backoff" in errors_of(retry_backoff=0.5)


@pytest.mark.parametrize("command", ["", "   "])
def test_an_empty_command_is_refused(command):
    assert "command" in errors_of(command=command)


def test_a_command_with_unbalanced_quotes_is_refused_unless_it_runs_through_a_shell():
    assert "No closing quotation" in errors_of(command="echo 'oops")["command"][0]
    with pytest.raises(ValidationError):  # the shell would refuse it as well, but that is its business
        Task(name="t", command="echo 'oops", shell=False).full_clean()
    Task(name="t", command="echo 'oops", shell=True).full_clean()


def test_a_relative_working_directory_is_refused():
    assert "absolute path" in errors_of(working_dir="tmp")["working_dir"][0]


def test_a_queue_name_with_spaces_is_refused():
    assert "queue" in errors_of(queue="my queue")


def test_the_database_refuses_a_zero_timeout_even_past_validation():
    with pytest.raises(IntegrityError), transaction.atomic():
        Task.objects.create(name="t", command="true", timeout=0)


def test_argv_is_split_like_a_shell_without_running_one():
    assert Task(command="echo 'a b' c").argv() == ["echo", "a b", "c"]
    assert Task(command="echo $HOME | wc", shell=True).argv() == ["/bin/sh", "-c", "echo $HOME | wc"]


# -- retry policy -------------------------------------------------------------------------


def test_retry_delays_grow_by_the_backoff_factor():
    task = Task(retry_delay=1, retry_backoff=2, retry_delay_max=3600)
    assert [task.retry_delay_for(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]


def test_a_backoff_of_one_keeps_the_delay_fixed():
    task = Task(retry_delay=30, retry_backoff=1)
    assert [task.retry_delay_for(n) for n in (1, 2, 5)] == [30, 30, 30]


def test_retry_delays_are_capped():
    task = Task(retry_delay=10, retry_backoff=3, retry_delay_max=100)
    assert [task.retry_delay_for(n) for n in (1, 2, 3, 4, 50, 10_000)] == [10, 30, 90, 100, 100, 100]


def test_jittered_delays_stay_within_zero_and_the_computed_delay():
    task = Task(retry_delay=10, retry_backoff=2, retry_delay_max=60, retry_jitter=True)
    rng = random.Random(7)
    for n, ceiling in ((1, 10), (2, 20), (3, 40), (4, 60), (9, 60)):
        draws = [task.retry_delay_for(n, rng=rng) for _ in range(2000)]
        assert min(draws) >= 0
        assert max(draws) <= ceiling
        # Full jitter spreads over the whole range, not just near the top.
        assert min(draws) < ceiling * 0.05 and max(draws) > ceiling * 0.95


def test_retry_numbers_start_at_one():
    with pytest.raises(ValueError):
        Task().retry_delay_for(0)


# -- state machine ----------------------------------------------------------------------------


@pytest.fixture
def execution(make_task) -> TaskExecution:
    return TaskExecution.objects.create(task=make_task(), status=Status.PENDING)


def test_terminal_statuses_allow_no_transition():
    assert TERMINAL == {
        Status.SUCCEEDED, Status.FAILED, Status.TIMEOUT, Status.CANCELLED, Status.LOST, Status.SKIPPED
    }  # fmt: skip
    assert TRANSITIONS[Status.PENDING] == (Status.RUNNING, Status.CANCELLED, Status.SKIPPED)


def test_an_invalid_transition_raises_and_changes_nothing(execution):
    with pytest.raises(InvalidTransition, match="is pending; it cannot become succeeded"):
        execution.transition(Status.SUCCEEDED, exit_code=0)
    execution.refresh_from_db()
    assert execution.status == Status.PENDING
    assert execution.exit_code is None


def test_a_finished_execution_cannot_be_finished_again(execution):
    assert TaskExecution.claim(execution.pk, worker="w", celery_task_id="c")
    execution.refresh_from_db()
    assert execution.finish(Status.FAILED, exit_code=1)
    with pytest.raises(InvalidTransition):
        execution.finish(Status.SUCCEEDED, exit_code=0)
    execution.refresh_from_db()
    assert (execution.status, execution.exit_code) == (Status.FAILED, 1)


def test_only_one_claim_of_a_pending_row_wins(execution):
    assert TaskExecution.claim(execution.pk, worker="a", celery_task_id="1").worker == "a"
    assert TaskExecution.claim(execution.pk, worker="b", celery_task_id="2") is None
    execution.refresh_from_db()
    assert (execution.status, execution.worker) == (Status.RUNNING, "a")
    assert execution.started_at is not None


def test_a_row_not_yet_due_is_not_claimed(make_task):
    from datetime import timedelta

    later = TaskExecution.objects.create(task=make_task(), scheduled_for=now() + timedelta(minutes=5))
    assert TaskExecution.claim(later.pk, worker="a", celery_task_id="1") is None


def test_a_stale_instance_loses_the_race_without_overwriting(execution):
    stale = TaskExecution.objects.get(pk=execution.pk)
    TaskExecution.claim(execution.pk, worker="a", celery_task_id="1")
    # The stale copy still believes the row is pending: its cancel must not win.
    assert stale.transition(Status.CANCELLED) is False
    execution.refresh_from_db()
    assert execution.status == Status.RUNNING


def test_cancelling_a_pending_execution_cancels_it_at_once(execution):
    assert execution.request_cancel() is True
    execution.refresh_from_db()
    assert execution.status == Status.CANCELLED
    assert execution.finished_at is not None


def test_cancelling_a_running_execution_asks_the_runner_to_stop_it(execution):
    TaskExecution.claim(execution.pk, worker="a", celery_task_id="1")
    execution.refresh_from_db()
    assert execution.request_cancel() is True
    execution.refresh_from_db()
    assert execution.status == Status.RUNNING
    assert execution.cancel_requested_at is not None


def test_cancelling_a_finished_execution_is_refused(execution):
    execution.request_cancel()
    with pytest.raises(InvalidTransition):
        execution.request_cancel()


def test_one_run_cannot_have_two_rows_for_the_same_attempt(make_task):
    task = make_task()
    run_id = uuid.uuid4()
    TaskExecution.objects.create(task=task, run_id=run_id, attempt=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        TaskExecution.objects.create(task=task, run_id=run_id, attempt=1)


def test_the_next_attempt_shares_the_run_and_is_due_after_the_delay(execution):
    nxt = execution.next_attempt(delay=30, enqueued=True)
    assert (nxt.run_id, nxt.attempt, nxt.trigger, nxt.status) == (execution.run_id, 2, "retry", Status.PENDING)
    # Due 30 s after it was made; the lower bound leaves room for however long
    # this test took to get here.
    assert 20 <= (nxt.scheduled_for - now()).total_seconds() <= 30


# -- launching ---------------------------------------------------------------------------------


def test_launching_creates_a_pending_first_attempt(make_task, operator):
    launched = launch(make_task(), user=operator)
    execution = TaskExecution.objects.get(pk=launched.pk)
    for field in ("run_id", "scheduled_for", "enqueued_at", "created_at", "celery_task_id", "task_id"):
        assert getattr(execution, field) == getattr(launched, field), field
    assert (execution.stdout, execution.error, execution.output_truncated, execution.exit_code) == ("", "", False, None)
    assert (execution.status, execution.attempt, execution.trigger) == (Status.PENDING, 1, "manual")
    assert execution.triggered_by == operator
    assert execution.enqueued_at is not None and execution.celery_task_id


def test_a_disabled_task_cannot_be_launched(make_task):
    task = make_task(enabled=False)
    with pytest.raises(TaskDisabled, match="is disabled; enable it"):
        launch(task)
    assert TaskExecution.objects.count() == 0


def test_a_launch_due_beyond_the_broker_horizon_waits_in_the_database(make_task, settings):
    from datetime import timedelta

    settings.TASKHUB_MAX_ETA = 60
    execution = launch(make_task(), scheduled_for=now() + timedelta(hours=2))
    execution.refresh_from_db()
    assert execution.status == Status.PENDING
    assert execution.enqueued_at is None  # the reconciler sends it when due
