"""System checks for the runner's settings, and the one a worker enforces when it starts."""

from __future__ import annotations

from celery.signals import worker_init
from django.conf import settings
from django.core.checks import Warning, register

from executions.runner import lookup_user, may_switch_to


@register()
def check_run_as(app_configs=None, **kwargs) -> list[Warning]:
    # Warnings, not errors: web and beat never switch users, and run where
    # the worker's user or rights may differ; the worker itself refuses to start.
    run_as = settings.TASKHUB_RUN_AS
    if not run_as:
        return []
    warnings = []
    problem = may_switch_to(run_as)
    if problem:
        warnings.append(
            Warning(
                problem,
                hint="A worker started like this refuses to start; web and beat do not need this right.",
                id="executions.W001",
            )
        )
    if lookup_user(run_as) is None:
        warnings.append(
            Warning(
                f"TASKHUB_RUN_AS user {run_as!r} does not exist on this host.",
                hint="Every execution on a worker host without this user fails without starting its command.",
                id="executions.W002",
            )
        )
    return warnings


@worker_init.connect
def refuse_to_start_without_the_right_to_switch(**kwargs: object) -> None:
    """Stop a worker that could not run commands as TASKHUB_RUN_AS (instead of failing every execution).

    SystemExit, because Celery logs and swallows a signal receiver's Exception.
    """
    problem = may_switch_to(settings.TASKHUB_RUN_AS)
    if problem:
        raise SystemExit(f"TaskHub worker cannot start: {problem}")
