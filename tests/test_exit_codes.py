"""Exit-code rules: the pure decision (a table, like procrastinate's retry tests) and the rules applied by a real worker."""

from __future__ import annotations

import pytest

from executions.lifecycle import execute
from executions.models import Status, TaskExecution
from executions.rules import Decision, Rules, decide
from taskhub.services import launch
from tests.conftest import finished, wait_for

DEFAULT = Rules()
RETRY_75 = Rules(retry_exit_codes=[75])
NO_RETRY_2 = Rules(no_retry_exit_codes=[2])
SUCCESS_3 = Rules(success_exit_codes=[0, 3])
ONLY_3 = Rules(success_exit_codes=[3])
NO_TIMEOUT_RETRY = Rules(retry_on_timeout=False)
BOTH = Rules(retry_exit_codes=[2, 75], no_retry_exit_codes=[2])


@pytest.mark.parametrize(
    ("outcome", "exit_code", "signal", "rules", "expected"),
    [
        ("succeeded", 0, None, DEFAULT, Decision("succeeded", False, "exit code 0 is a success code")),
        (
            "failed",
            1,
            None,
            DEFAULT,
            Decision("failed", True, "exit code 1 is a failure; retry_exit_codes is empty, so any failure is retried"),
        ),
        ("failed", 75, None, RETRY_75, Decision("failed", True, "exit code 75 is in retry_exit_codes")),
        ("failed", 1, None, RETRY_75, Decision("failed", False, "exit code 1 is not in retry_exit_codes: not retried")),
        (
            "failed",
            2,
            None,
            NO_RETRY_2,
            Decision("failed", False, "exit code 2 is in no_retry_exit_codes: not retried"),
        ),
        (
            "failed",
            1,
            None,
            NO_RETRY_2,
            Decision("failed", True, "exit code 1 is a failure; retry_exit_codes is empty, so any failure is retried"),
        ),
        # no_retry_exit_codes wins over retry_exit_codes when both hold a code.
        ("failed", 2, None, BOTH, Decision("failed", False, "exit code 2 is in no_retry_exit_codes: not retried")),
        ("failed", 3, None, SUCCESS_3, Decision("succeeded", False, "exit code 3 is a success code")),
        # A success code list without 0 makes exit 0 a failure.
        (
            "succeeded",
            0,
            None,
            ONLY_3,
            Decision("failed", True, "exit code 0 is a failure; retry_exit_codes is empty, so any failure is retried"),
        ),
        ("timeout", None, 15, DEFAULT, Decision("timeout", True, "timeout, and retry_on_timeout is on")),
        ("timeout", None, 15, NO_TIMEOUT_RETRY, Decision("timeout", False, "timeout, and retry_on_timeout is off")),
        (
            "failed",
            None,
            9,
            DEFAULT,
            Decision(
                "failed", True, "killed by signal 9 is a failure; retry_exit_codes is empty, so any failure is retried"
            ),
        ),
        # A signal has no exit code: a list of codes to retry cannot hold it.
        (
            "failed",
            None,
            9,
            RETRY_75,
            Decision("failed", False, "killed by signal 9 is not in retry_exit_codes: not retried"),
        ),
        ("cancelled", None, 15, DEFAULT, Decision("cancelled", False, "cancelled: not retried")),
        (
            "not_started",
            None,
            None,
            DEFAULT,
            Decision("failed", False, "the command could not be started: not retried"),
        ),
    ],
)
def test_the_rules_decide_status_retry_and_reason(outcome, exit_code, signal, rules, expected):
    assert decide(outcome, exit_code=exit_code, signal=signal, rules=rules) == expected


def run_of(execution: TaskExecution) -> list[TaskExecution]:
    return list(TaskExecution.objects.filter(run_id=execution.run_id).order_by("attempt"))


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_applies_the_exit_code_rules(worker, make_task):
    retried = make_task(command="exit 75", shell=True, retry_count=1, retry_delay=0, retry_exit_codes=[75])
    stopped = make_task(command="exit 2", shell=True, retry_count=3, retry_delay=0, no_retry_exit_codes=[2])
    succeeds = make_task(command="exit 3", shell=True, retry_count=3, success_exit_codes=[0, 3])
    timed_out = make_task(command="sleep 30", timeout=1, kill_grace=0, retry_count=3, retry_on_timeout=False)
    runs = {task.name: launch(task) for task in (retried, stopped, succeeds, timed_out)}

    # Exit 75 is retried; the second attempt is the last and is exhausted.
    wait_for(lambda: len(run_of(runs[retried.name])) == 2 and run_of(runs[retried.name])[1].is_terminal, timeout=60)
    first, second = run_of(runs[retried.name])
    assert (first.status, first.exit_code, first.exhausted) == (Status.FAILED, 75, False)
    assert first.decided_by == "exit code 75 is in retry_exit_codes"
    assert (second.status, second.exhausted) == (Status.FAILED, True)
    assert second.decided_by == "exit code 75 is in retry_exit_codes; every attempt used (2 of 2)"

    # Exit 2 stops the run at once, though three retries remain.
    stop = finished(runs[stopped.name], timeout=60)
    assert (stop.status, stop.exit_code) == (Status.FAILED, 2)
    assert stop.decided_by == "exit code 2 is in no_retry_exit_codes: not retried"
    assert len(run_of(stop)) == 1 and not stop.exhausted

    # Exit 3 is a success for this task: no error, no retry.
    ok = finished(runs[succeeds.name], timeout=60)
    assert (ok.status, ok.exit_code, ok.error) == (Status.SUCCEEDED, 3, "")
    assert ok.decided_by == "exit code 3 is a success code"
    assert len(run_of(ok)) == 1

    # A timeout with retry_on_timeout off is not retried.
    late = finished(runs[timed_out.name], timeout=60)
    assert late.status == Status.TIMEOUT
    assert late.decided_by == "timeout, and retry_on_timeout is off"
    assert len(run_of(late)) == 1


@pytest.mark.django_db(transaction=True)
def test_exit_zero_fails_when_the_success_codes_leave_it_out(make_task):
    task = make_task(command="true", success_exit_codes=[3])
    execution = TaskExecution.objects.create(task=task, status=Status.PENDING)

    execute(execution.pk, worker="w1", celery_task_id="c1")

    execution.refresh_from_db()
    assert (execution.status, execution.exit_code) == (Status.FAILED, 0)
    assert execution.error == "The command exited with code 0, which is not in success_exit_codes."
    assert execution.exhausted and execution.decided_by.endswith("every attempt used (1 of 1)")
