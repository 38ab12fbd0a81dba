"""The per-user limit on active runs: how many runs a user may have pending or running at once.

Who a launch counts against: the user who launches it (admin, API, a
re-run); a launch with no user (schedule, upstream task, command line)
counts against the task's ``owner``, and is exempt when the task has none.
A user's active runs are the unfinished attempts they triggered plus those
of their tasks that nobody triggered by hand (each run has at most one).

The limit is TASKHUB_USER_ACTIVE_RUNS (0 = unlimited) unless
TASKHUB_USER_ACTIVE_RUNS_OVERRIDES names the user ("user:alice") or one of
their groups ("group:ops"); the user's own entry wins, else the most
generous of their groups' (0 counting as unlimited).
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Q

from executions.models import TaskExecution


class ActiveRunLimitReached(Exception):
    """A launch that would take a user over their limit of active runs; nothing was created."""

    def __init__(self, username: str, limit: int) -> None:
        self.username = username
        self.limit = limit
        super().__init__(
            f"{username} already has {limit} active run{'s' if limit != 1 else ''} (pending or running), "
            f"the most allowed (TASKHUB_USER_ACTIVE_RUNS); wait for some to finish or cancel them, then try again."
        )


def limit_for(user) -> int:
    """The most active runs ``user`` may have; 0 means no limit."""
    overrides: dict[str, int] = settings.TASKHUB_USER_ACTIVE_RUNS_OVERRIDES
    own = overrides.get(f"user:{user.get_username()}")
    if own is not None:
        return own
    if any(key.startswith("group:") for key in overrides):
        names = user.groups.values_list("name", flat=True)
        granted = [overrides[f"group:{n}"] for n in names if f"group:{n}" in overrides]
        if granted:
            return 0 if 0 in granted else max(granted)
    return settings.TASKHUB_USER_ACTIVE_RUNS


def active_runs(user_id: int, *, up_to: int) -> int:
    """Count ``user_id``'s active runs, stopping at ``up_to`` (all that the limit needs to know)."""
    mine = Q(triggered_by_id=user_id) | Q(triggered_by__isnull=True, task__owner_id=user_id)
    return TaskExecution.objects.active().filter(mine)[:up_to].count()


def accountable(task, user):
    """The user a launch of ``task`` by ``user`` counts against, or None when it is exempt."""
    if user is not None and user.is_authenticated:
        return user
    if task.owner_id is None:
        return None
    return task.owner if type(task).owner.is_cached(task) else get_user_model().objects.filter(pk=task.owner_id).first()


def check(task, user) -> None:
    """Raise ActiveRunLimitReached when launching ``task`` now would take its accountable user over the limit."""
    if not settings.TASKHUB_USER_ACTIVE_RUNS and not settings.TASKHUB_USER_ACTIVE_RUNS_OVERRIDES:
        return  # no limit anywhere: no query
    who = accountable(task, user)
    if who is None:
        return
    limit = limit_for(who)
    if limit and active_runs(who.pk, up_to=limit) >= limit:
        raise ActiveRunLimitReached(who.get_username(), limit)
