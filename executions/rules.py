"""Exit-code rules: an attempt's status and whether it is retried, from how its command ended and the task's rules.

Pure functions of plain values, no database: the table in
tests/test_exit_codes.py is their specification. Whether attempts remain is
not decided here (lifecycle.finish counts them); this says only whether the
outcome is of a kind the task retries, and which rule said so, in words that
the execution keeps in ``decided_by``.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

# What the runner reports (executions.runner.RunResult.outcome).
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMEOUT = "timeout"
CANCELLED = "cancelled"
NOT_STARTED = "not_started"
# Its resources could not be downloaded: the command did not run.
PREPARE_FAILED = "prepare_failed"


@dataclass(frozen=True)
class Rules:
    """A task's exit-code rules, as plain values (taskhub.Task's fields of the same names)."""

    success_exit_codes: Collection[int] = (0,)
    retry_exit_codes: Collection[int] = ()
    no_retry_exit_codes: Collection[int] = ()
    retry_on_timeout: bool = True

    @classmethod
    def of(cls, task) -> Rules:
        return cls(
            success_exit_codes=task.success_exit_codes,
            retry_exit_codes=task.retry_exit_codes,
            no_retry_exit_codes=task.no_retry_exit_codes,
            retry_on_timeout=task.retry_on_timeout,
        )


@dataclass(frozen=True)
class Decision:
    """The attempt's status, whether the task's rules retry it, and the sentence that says which rule decided."""

    status: str
    retry: bool
    decided_by: str


def decide(outcome: str, *, exit_code: int | None, signal: int | None, rules: Rules) -> Decision:
    """Apply ``rules`` to how a command ended (the runner's ``outcome``, its exit code or signal)."""
    if outcome == CANCELLED:
        return Decision("cancelled", False, "cancelled: not retried")
    if outcome == NOT_STARTED:
        return Decision("failed", False, "the command could not be started: not retried")
    if outcome == PREPARE_FAILED:
        return Decision("failed", True, "its resources could not be downloaded: retried by the task's retry policy")
    if outcome == TIMEOUT:
        if rules.retry_on_timeout:
            return Decision("timeout", True, "timeout, and retry_on_timeout is on")
        return Decision("timeout", False, "timeout, and retry_on_timeout is off")
    if exit_code is None:
        return _failure(f"killed by signal {signal}", None, rules)
    if exit_code in rules.success_exit_codes:
        return Decision("succeeded", False, f"exit code {exit_code} is a success code")
    return _failure(f"exit code {exit_code}", exit_code, rules)


def _failure(what: str, exit_code: int | None, rules: Rules) -> Decision:
    # A signal has no exit code: neither list can name it, so only "any failure retries" retries it.
    if exit_code is not None and exit_code in rules.no_retry_exit_codes:
        return Decision("failed", False, f"{what} is in no_retry_exit_codes: not retried")
    if rules.retry_exit_codes:
        if exit_code is not None and exit_code in rules.retry_exit_codes:
            return Decision("failed", True, f"{what} is in retry_exit_codes")
        return Decision("failed", False, f"{what} is not in retry_exit_codes: not retried")
    return Decision("failed", True, f"{what} is a failure; retry_exit_codes is empty, so any failure is retried")
