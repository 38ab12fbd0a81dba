"""What the operator's console reads: a constant number of bounded, index-served queries per page.

Every figure here covers a bounded time window or a bounded number of rows
per task, so a page costs the same with a thousand or a million executions.
PostgreSQL gets hand-written SQL where the ORM cannot say it (LATERAL,
percentiles); other databases (the embedded SQLite default) get a portable
query and the arithmetic in Python, which is fine at their size.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db import connection
from django.db.models import Count, F, Q, Window
from django.db.models.functions import RowNumber, TruncHour
from django.utils.html import escape
from django.utils.timezone import get_current_timezone, localtime, now

from executions.models import Status, TaskExecution, Worker
from taskhub.models import Task

# Outcomes a success rate counts: cancelled and skipped runs say nothing about the command.
RATED = (Status.SUCCEEDED, Status.FAILED, Status.TIMEOUT, Status.LOST)
FAILURES = (Status.FAILED, Status.TIMEOUT, Status.LOST)
STRIP_LENGTH = 20
STATS_WINDOW = timedelta(days=7)
DASHBOARD_WINDOW = timedelta(hours=24)

# CSI sequences (colours, cursor moves) and OSC sequences (titles, links) of terminal output.
ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def strip_ansi(text: str) -> str:
    return ANSI_RE.sub("", text)


SGR_RE = re.compile(r"\x1b\[([0-9;]*)m")
CUT_RE = re.compile(r"\[… TaskHub cut \d+ bytes of output here; \d+ bytes in all …\]")
ANSI_COLOURS = ("black", "red", "green", "yellow", "blue", "magenta", "cyan", "white")


def output_html(text: str) -> str:
    """Render command output as safe HTML: ANSI colours and bold as classes, other escapes dropped, the cut marked."""
    parts: list[str] = []
    colour, bold, is_open = None, False, False
    position = 0
    for match in SGR_RE.finditer(text):
        parts.append(_escaped(text[position : match.start()]))
        position = match.end()
        colour, bold = _sgr(match.group(1), colour, bold)
        if is_open:
            parts.append("</span>")
            is_open = False
        classes = ([f"th-fg-{colour}"] if colour else []) + (["th-bold"] if bold else [])
        if classes:
            parts.append(f'<span class="{" ".join(classes)}">')
            is_open = True
    parts.append(_escaped(text[position:]))
    if is_open:
        parts.append("</span>")
    return "".join(parts)


def _escaped(text: str) -> str:
    plain = escape(strip_ansi(text))
    return CUT_RE.sub(lambda m: f'<mark class="th-cut">{m.group(0)}</mark>', plain)


def _sgr(params: str, colour: str | None, bold: bool) -> tuple[str | None, bool]:
    for code in [int(c) for c in params.split(";") if c.isdigit()] or [0]:
        if code == 0:
            colour, bold = None, False
        elif code == 1:
            bold = True
        elif code == 22:
            bold = False
        elif 30 <= code <= 37 or 90 <= code <= 97:
            colour = ANSI_COLOURS[code % 10]
        elif code == 39:
            colour = None
    return colour, bold


# -- words ------------------------------------------------------------------------------


def seconds_words(seconds: float) -> str:
    """A whole number of seconds the way people say it: "45 s", "90 s", "2 min 30 s", "1 h", "2 d 3 h"."""
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        value, seconds = divmod(seconds, size)
        if value:
            parts.append(f"{value} {unit}")
    return " ".join(parts[:2])


def seconds_short(seconds: float | None) -> str:
    """A measured duration: "0.42 s", "12.3 s", "4 min 10 s"."""
    if seconds is None:
        return "—"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return seconds_words(seconds)


def duration_words(duration: timedelta | None) -> str:
    return seconds_short(duration.total_seconds()) if duration is not None else "—"


def ago_words(when: datetime, at: datetime | None = None) -> str:
    """ "12 s ago", "3 min ago", "in 5 min" (for a time to come)."""
    delta = ((at or now()) - when).total_seconds()
    words = seconds_words(abs(delta))
    if abs(delta) < 1:
        return "just now"
    return f"{words} ago" if delta >= 0 else f"in {words}"


def _is_postgres() -> bool:
    return connection.vendor == "postgresql"


def _table() -> str:
    return connection.ops.quote_name(TaskExecution._meta.db_table)


# -- the task list ------------------------------------------------------------------------


@dataclass
class TaskStats:
    """One task's recent history as the task list shows it."""

    recent: list[TaskExecution] = field(default_factory=list)  # newest first, at most STRIP_LENGTH
    rated: int = 0
    succeeded: int = 0
    p50: float | None = None  # seconds

    @property
    def success_rate(self) -> float | None:
        return self.succeeded / self.rated if self.rated else None

    @property
    def last_outcome(self) -> TaskExecution | None:
        """The newest finished execution, or the newest one when none has finished."""
        for execution in self.recent:
            if execution.is_terminal:
                return execution
        return self.recent[0] if self.recent else None


STRIP_COLUMNS = ("id", "task_id", "run_id", "attempt", "status", "started_at", "finished_at", "created_at")


def recent_executions(task_ids: list[int], per_task: int = STRIP_LENGTH) -> dict[int, list[TaskExecution]]:
    """Return the newest ``per_task`` executions of each task, newest first, in one query."""
    found: dict[int, list[TaskExecution]] = defaultdict(list)
    if not task_ids:
        return found
    if _is_postgres():
        # One index range scan of execution_task_recent_idx per task, however long its history.
        columns = ", ".join(f"e.{c}" for c in STRIP_COLUMNS)
        inner = ", ".join(STRIP_COLUMNS)
        rows = TaskExecution.objects.raw(
            f"SELECT {columns} FROM unnest(%s::bigint[]) AS t(id) CROSS JOIN LATERAL "
            f"(SELECT {inner} FROM {_table()} WHERE task_id = t.id ORDER BY id DESC LIMIT %s) AS e "
            "ORDER BY e.task_id, e.id DESC",
            [list(task_ids), per_task],
        )
    else:
        rows = (
            TaskExecution.objects.filter(task_id__in=task_ids)
            .annotate(nth=Window(RowNumber(), partition_by=[F("task_id")], order_by=F("id").desc()))
            .filter(nth__lte=per_task)
            .only(*STRIP_COLUMNS)
            .order_by("task_id", "-id")
        )
    for execution in rows:
        found[execution.task_id].append(execution)
    return found


def task_stats(task_ids: list[int], *, at: datetime) -> dict[int, TaskStats]:
    """Return each task's last executions, success rate and median duration over STATS_WINDOW: two queries."""
    stats = {pk: TaskStats() for pk in task_ids}
    for pk, executions in recent_executions(task_ids).items():
        stats[pk].recent = executions
    if not task_ids:
        return stats
    since = at - STATS_WINDOW
    if _is_postgres():
        for pk, rated, succeeded, p50 in _window_stats_postgres(task_ids, since):
            stats[pk].rated, stats[pk].succeeded, stats[pk].p50 = rated, succeeded, p50
    else:
        durations: dict[int, list[float]] = defaultdict(list)
        rows = TaskExecution.objects.filter(task_id__in=task_ids, created_at__gte=since, status__in=RATED)
        for pk, status, started, finished in rows.values_list("task_id", "status", "started_at", "finished_at"):
            stats[pk].rated += 1
            stats[pk].succeeded += status == Status.SUCCEEDED
            if started and finished:
                durations[pk].append((finished - started).total_seconds())
        for pk, values in durations.items():
            stats[pk].p50 = percentile(values, 0.5)
    return stats


def _window_stats_postgres(task_ids: list[int], since: datetime) -> list[tuple[int, int, int, float | None]]:
    # The first id of the window bounds the scan of execution_task_recent_idx
    # (task_id, id) to the window; created_at keeps the edge exact.
    sql = (
        "SELECT task_id, count(*), count(*) FILTER (WHERE status = %s), "
        "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)) "
        "FILTER (WHERE started_at IS NOT NULL AND finished_at IS NOT NULL) "
        f"FROM {_table()} WHERE task_id = ANY(%s) AND status = ANY(%s) AND created_at >= %s "
        f"AND id >= coalesce((SELECT id FROM {_table()} WHERE created_at >= %s ORDER BY created_at LIMIT 1), 0) "
        "GROUP BY task_id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [Status.SUCCEEDED, list(task_ids), list(RATED), since, since])
        return [(pk, n, ok, float(p50) if p50 is not None else None) for pk, n, ok, p50 in cursor.fetchall()]


def percentile(values: Iterable[float], q: float) -> float | None:
    """Return the ``q`` quantile (0–1) of ``values`` with linear interpolation, as PostgreSQL's percentile_cont."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# -- the dashboard ------------------------------------------------------------------------------


@dataclass
class Dashboard:
    at: datetime
    since: datetime
    per_hour: list[tuple[datetime, dict[str, int]]]
    durations: list[tuple[str, int, float | None, float | None, int]]  # name, task id, p50, p95, count
    failing: list[tuple[str, int, int, int]]  # name, task id, failures, runs
    running: list[TaskExecution]
    queues: list[tuple[str, int, int]]  # queue, due now, waiting for later
    workers: list[tuple[Worker, bool]]
    running_total: int = 0


RUNNING_SHOWN = 50
TASKS_SHOWN = 15


def dashboard(*, at: datetime) -> Dashboard:
    """Gather the dashboard's figures over the last DASHBOARD_WINDOW: a fixed number of queries."""
    since = at - DASHBOARD_WINDOW
    window = TaskExecution.objects.filter(created_at__gte=since)
    running = list(
        TaskExecution.objects.filter(status=Status.RUNNING)
        .select_related("task")
        .only(
            "id",
            "attempt",
            "started_at",
            "finished_at",
            "heartbeat_at",
            "worker",
            "cancel_requested_at",
            "status",
            "task__name",
        )
        .order_by("started_at")[: RUNNING_SHOWN + 1]
    )
    return Dashboard(
        at=at,
        since=since,
        per_hour=_per_hour(window, since, at),
        durations=_durations(since),
        failing=_failing(window),
        running=running[:RUNNING_SHOWN],
        running_total=len(running),
        queues=_queues(at),
        workers=[(w, w.is_alive(at)) for w in Worker.objects.all()],
    )


def _per_hour(window, since: datetime, at: datetime) -> list[tuple[datetime, dict[str, int]]]:
    # Served by execution_created_idx: a range of the last 24 hours only.
    tz = get_current_timezone()
    counts: dict[datetime, dict[str, int]] = defaultdict(dict)
    for hour, status, n in (
        window.annotate(hour=TruncHour("created_at", tzinfo=tz))
        .values_list("hour", "status")
        .annotate(n=Count("id"))
        .order_by()
    ):
        counts[hour][status] = n
    # Hours of the clock the operators read (TIME_ZONE); aware datetimes compare as instants.
    first = localtime(since, tz).replace(minute=0, second=0, microsecond=0)
    hours = [first + timedelta(hours=h) for h in range(25) if first + timedelta(hours=h) <= at]
    return [(hour, counts.get(hour, {})) for hour in hours]


def _durations(since: datetime) -> list[tuple[str, int, float | None, float | None, int]]:
    """p50 and p95 of finished attempts per task over the window, the busiest tasks first."""
    if _is_postgres():
        sql = (
            "SELECT task_id, "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)), "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)), count(*) "
            f"FROM {_table()} WHERE created_at >= %s AND started_at IS NOT NULL AND finished_at IS NOT NULL "
            "GROUP BY task_id ORDER BY count(*) DESC, task_id LIMIT %s"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [since, TASKS_SHOWN])
            rows = [(pk, p50, p95, n) for pk, p50, p95, n in cursor.fetchall()]
    else:
        per_task: dict[int, list[float]] = defaultdict(list)
        finished = TaskExecution.objects.filter(
            created_at__gte=since, started_at__isnull=False, finished_at__isnull=False
        )
        for pk, started, ended in finished.values_list("task_id", "started_at", "finished_at"):
            per_task[pk].append((ended - started).total_seconds())
        busiest = sorted(per_task.items(), key=lambda item: (-len(item[1]), item[0]))[:TASKS_SHOWN]
        rows = [(pk, percentile(v, 0.5), percentile(v, 0.95), len(v)) for pk, v in busiest]
    names = dict(Task.objects.filter(pk__in=[r[0] for r in rows]).values_list("pk", "name"))
    return [(names.get(pk, f"#{pk}"), pk, _float(p50), _float(p95), n) for pk, p50, p95, n in rows]


def _float(value) -> float | None:
    return float(value) if value is not None else None


def _failing(window) -> list[tuple[str, int, int, int]]:
    rows = (
        window.values("task_id", "task__name")
        .annotate(failures=Count("id", filter=Q(status__in=FAILURES)), runs=Count("id"))
        .filter(failures__gt=0)
        .order_by("-failures", "task__name")[:10]
    )
    return [(r["task__name"], r["task_id"], r["failures"], r["runs"]) for r in rows]


def _queues(at: datetime) -> list[tuple[str, int, int]]:
    # Served by the partial index execution_active_due_idx (pending and running rows only).
    rows = (
        TaskExecution.objects.filter(status=Status.PENDING)
        .values("task__queue")
        .annotate(due=Count("id", filter=Q(scheduled_for__lte=at)), later=Count("id", filter=Q(scheduled_for__gt=at)))
        .order_by("task__queue")
    )
    return [(r["task__queue"], r["due"], r["later"]) for r in rows]
