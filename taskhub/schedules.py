"""A task's schedules: human forms, fire times, words, and the django-celery-beat rows TaskHub keeps for them.

A schedule is written as ``{"cron": "30 2 * * *", "timezone": "Europe/Berlin"}``,
``{"every": "90s"}`` or ``{"at": "2027-01-01T02:00:00+01:00"}`` (a bare cron
string is read as ``{"cron": …}``), each with optional ``"misfire"``
(``"run_once"``, the default, or ``"skip"``) and ``"enabled"``.

Fire times are computed here, from the schedule alone, so that every beat
process computes the same ones (a fire is unique per schedule and fire time
in the database):

- ``every``: whole multiples of the interval from the periodic task's
  ``start_time``, or from the Unix epoch when it has none (so "every 5m"
  fires at :00, :05, … UTC).
- ``cron``: standard cron (minute hour day-of-month month day-of-week;
  Sunday is 0 or 7; names such as ``mon-fri``; when both day fields are
  restricted a day matching either fires, as in cron), read in the
  schedule's time zone. Across daylight-saving changes a schedule fires once
  per local day: a local time that does not exist (the hour skipped in
  spring) fires at the next valid local time, 03:00 for 02:30 in
  Europe/Berlin; a local time that occurs twice (the hour repeated in
  autumn) fires at its first occurrence only — unless the hour field is
  ``*``, whose fires are steps of wall-clock minutes and fire in both.
- ``at``: once, at that instant.

The beat row of a schedule (a ``PeriodicTask`` for ``taskhub.launch_scheduled``
with kwargs ``{"task_id": N}``, and its crontab, interval or clocked row) is
created, changed and deleted with the schedule, and enabled exactly when the
schedule and its task are enabled and the task is not paused.
"""

from __future__ import annotations

import bisect
import functools
import json
import uuid
import zoneinfo
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils.timezone import now
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks

from taskhub.durations import parse_duration
from taskhub.models import Misfire, Schedule, ScheduleKind, Task

BEAT_TASK = "taskhub.launch_scheduled"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# How far ahead a cron expression must fire at least once (Feb 29 on a Monday needs 28 years).
CRON_HORIZON_DAYS = 366 * 29
EVERY_MAX_SECONDS = 366 * 86400
HUMAN_KEYS = ("cron", "every", "at")
OPTION_KEYS = ("timezone", "misfire", "enabled")
# Keys the API shows beside a schedule; accepted back and ignored, so what a GET returns can be sent again.
READ_ONLY_KEYS = ("id", "description", "next_fire_time")
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


class ScheduleError(ValueError):
    """A schedule in human form that cannot be read; ``field`` names the key at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# -- cron expressions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _CronField:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    name_base: int = 0


CRON_FIELDS = (
    _CronField("minute", 0, 59),
    _CronField("hour", 0, 23),
    _CronField("day of month", 1, 31),
    _CronField("month", 1, 12, MONTH_NAMES, 1),
    _CronField("day of week", 0, 7, DAY_NAMES, 0),
)


def _cron_value(text: str, field: _CronField) -> int:
    lowered = text.lower()
    if field.names and lowered in field.names:
        return field.names.index(lowered) + field.name_base
    if not text.isdigit() or len(text) > 4:
        raise ValueError(f"{text!r} is not a number" + (" or a name" if field.names else ""))
    value = int(text)
    if not field.low <= value <= field.high:
        raise ValueError(f"{value} is out of range {field.low}–{field.high}")
    return value


def _cron_part(part: str, field: _CronField) -> range:
    base, slash, step_text = part.partition("/")
    step = 1
    if slash:
        if not step_text.isdigit() or len(step_text) > 4 or int(step_text) < 1:
            raise ValueError(f"the step in {part!r} must be a whole number of at least 1")
        step = int(step_text)
    if base == "*":
        start, end = field.low, field.high
    elif "-" in base:
        first, _, last = base.partition("-")
        start, end = _cron_value(first, field), _cron_value(last, field)
        if start > end:
            raise ValueError(f"the range {base!r} goes backwards")
    else:
        start = _cron_value(base, field)
        end = field.high if slash else start
    return range(start, end + 1, step)


def _cron_field(text: str, field: _CronField) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ValueError(f"{text!r} has an empty item")
        values.update(_cron_part(part, field))
    if field.name == "day of week" and 7 in values:
        values = (values - {7}) | {0}  # Sunday is 0 or 7
    return frozenset(values)


def normalize_cron(expression: str) -> str:
    """Return the five fields of a cron expression (macros such as @daily expanded), single-spaced."""
    text = " ".join(str(expression).split())
    return MACROS.get(text.lower(), text)


def parse_cron(expression: str, tz_name: str = "") -> CronTiming:
    """Return the timing of a cron expression in a time zone (empty: TIME_ZONE); raise ValueError naming the field."""
    return _parse_cron(expression, tz_name or settings.TIME_ZONE)


@functools.lru_cache(maxsize=4096)
def _parse_cron(expression: str, tz_name: str) -> CronTiming:
    fields = normalize_cron(expression).split(" ")
    if len(fields) != 5:
        raise ValueError(
            f"a cron expression has 5 fields (minute hour day-of-month month day-of-week), not {len(fields)}"
        )
    sets = []
    for text, field in zip(fields, CRON_FIELDS, strict=True):
        try:
            sets.append(_cron_field(text, field))
        except ValueError as exc:
            raise ValueError(f"the {field.name} field: {exc}") from None
    minutes, hours, doms, months, dows = sets
    return CronTiming(
        minutes=tuple(sorted(minutes)),
        hours=tuple(sorted(hours)),
        doms=doms,
        months=months,
        dows=dows,
        # As in cron: a day field starting with "*" does not restrict the day.
        dom_any=fields[2].startswith("*"),
        dow_any=fields[4].startswith("*"),
        every_hour=hours == frozenset(range(24)),
        tz=zone(tz_name),
    )


def zone(name: str) -> zoneinfo.ZoneInfo:
    """Return the time zone called ``name`` (empty: TIME_ZONE); raise ValueError for an unknown one."""
    name = name or settings.TIME_ZONE
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a known time zone (use an IANA name such as Europe/Berlin)") from None


# -- timings: fire times, pure ----------------------------------------------------------------


class Timing:
    """When a schedule fires, as instants (aware datetimes in UTC)."""

    def next_after(self, t: datetime) -> datetime | None:
        """Return the first fire strictly after ``t``, or None when there is none."""
        raise NotImplementedError

    def latest(self, since: datetime, until: datetime) -> datetime | None:
        """Return the last fire in (since, until], or None."""
        last = None
        fire = self.next_after(since)
        while fire is not None and fire <= until:
            last, fire = fire, self.next_after(fire)
        return last

    def fires(self, after: datetime, count: int) -> list[datetime]:
        """Return up to ``count`` fires after ``after``."""
        out: list[datetime] = []
        fire = self.next_after(after)
        while fire is not None and len(out) < count:
            out.append(fire)
            fire = self.next_after(fire)
        return out


@dataclass(frozen=True)
class IntervalTiming(Timing):
    every: timedelta
    anchor: datetime = EPOCH

    def next_after(self, t: datetime) -> datetime:
        if t < self.anchor:
            return self.anchor
        return self.anchor + ((t - self.anchor) // self.every + 1) * self.every

    def latest(self, since: datetime, until: datetime) -> datetime | None:
        if until < self.anchor:
            return None
        fire = self.anchor + ((until - self.anchor) // self.every) * self.every
        return fire if fire > since else None


@dataclass(frozen=True)
class OnceTiming(Timing):
    at: datetime

    def next_after(self, t: datetime) -> datetime | None:
        return self.at if self.at > t else None


@dataclass(frozen=True)
class CronTiming(Timing):
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    doms: frozenset[int]
    months: frozenset[int]
    dows: frozenset[int]
    dom_any: bool
    dow_any: bool
    every_hour: bool
    tz: zoneinfo.ZoneInfo

    def day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        dom_ok = day.day in self.doms
        dow_ok = day.isoweekday() % 7 in self.dows
        if self.dom_any and self.dow_any:
            return True
        if self.dom_any:
            return dow_ok
        if self.dow_any:
            return dom_ok
        return dom_ok or dow_ok

    def next_after(self, t: datetime) -> datetime | None:
        day = t.astimezone(self.tz).date() - timedelta(days=1)  # a fire moved past a gap may be on the day before
        for _ in range(CRON_HORIZON_DAYS):
            if self.day_matches(day):
                fire = self._first_on(day, t)
                if fire is not None:
                    return fire
            day += timedelta(days=1)
        return None

    def latest(self, since: datetime, until: datetime) -> datetime | None:
        # Most schedules fire within a couple of days: look there first rather than walk from `since`.
        recent = super().latest(max(since, until - timedelta(days=2)), until)
        if recent is not None or since >= until - timedelta(days=2):
            return recent
        return super().latest(since, until)

    def fires_on(self, day: date) -> list[datetime]:
        """Return the fires of one local day, in order: the slow path, right on days with a clock change."""
        instants: set[datetime] = set()
        for hour in self.hours:
            for minute in self.minutes:
                instants.update(self._resolve(datetime.combine(day, time(hour, minute))))
        return sorted(instants)

    def _first_on(self, day: date, t: datetime) -> datetime | None:
        if _clock_changes(day, self.tz):
            return next((fire for fire in self.fires_on(day) if fire > t), None)
        local = t.astimezone(self.tz)
        if local.date() < day:
            return self._at(day, self.hours[0], self.minutes[0])
        if local.date() > day:
            return None
        # The wall clock runs evenly all day: the first (hour, minute) after t's is the next fire.
        i = bisect.bisect_left(self.hours, local.hour)
        if i < len(self.hours) and self.hours[i] == local.hour:
            j = bisect.bisect_right(self.minutes, local.minute)
            if j < len(self.minutes):
                return self._at(day, local.hour, self.minutes[j])
            i += 1
        if i < len(self.hours):
            return self._at(day, self.hours[i], self.minutes[0])
        return None

    def _at(self, day: date, hour: int, minute: int) -> datetime:
        return datetime(day.year, day.month, day.day, hour, minute, tzinfo=self.tz).astimezone(UTC)

    def _resolve(self, naive: datetime) -> list[datetime]:
        first = naive.replace(tzinfo=self.tz)
        second = naive.replace(tzinfo=self.tz, fold=1)
        if first.utcoffset() == second.utcoffset():
            return [first.astimezone(UTC)]
        if _exists(first):  # the clock went back: this local time happens twice
            return [first.astimezone(UTC), second.astimezone(UTC)] if self.every_hour else [first.astimezone(UTC)]
        return [_after_gap(naive, self.tz)]  # the clock went forward over it


def _exists(local: datetime) -> bool:
    return local.astimezone(UTC).astimezone(local.tzinfo).replace(tzinfo=None) == local.replace(tzinfo=None)


def _after_gap(naive: datetime, tz: zoneinfo.ZoneInfo) -> datetime:
    """Return the first valid local time after ``naive``, which falls in a gap of the clock (as UTC)."""
    candidate = naive.replace(second=0, microsecond=0)
    for _ in range(24 * 60):
        candidate += timedelta(minutes=1)
        local = candidate.replace(tzinfo=tz)
        if _exists(local):
            return local.astimezone(UTC)
    raise ValueError(f"no valid local time within a day after {naive} in {tz}")


@functools.lru_cache(maxsize=4096)
def _clock_changes(day: date, tz: zoneinfo.ZoneInfo) -> bool:
    start = datetime.combine(day, time(0, 0))
    end = datetime.combine(day, time(23, 59, 59))
    offsets = {moment.replace(tzinfo=tz, fold=fold).utcoffset() for moment in (start, end) for fold in (0, 1)}
    return len(offsets) > 1


# -- human forms --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule as the API and the admin take it, validated."""

    kind: str
    expression: str
    timezone: str = ""
    misfire: str = Misfire.RUN_ONCE
    enabled: bool = True

    def timing(self, anchor: datetime | None = None) -> Timing:
        return _timing(self.kind, self.expression, self.timezone, anchor)

    def same_definition(self, schedule: Schedule) -> bool:
        return (self.kind, self.expression, self.timezone) == (schedule.kind, schedule.expression, schedule.timezone)


def parse_schedule(data: object) -> ScheduleSpec:
    """Read one schedule in human form; raise ScheduleError naming the key at fault."""
    if isinstance(data, str):
        data = {"cron": data}
    if not isinstance(data, dict):
        raise ScheduleError(
            "schedule", 'A schedule is an object such as {"cron": "30 2 * * *"}, {"every": "90s"} or {"at": "…"}.'
        )
    unknown = sorted(str(k) for k in data if k not in (*HUMAN_KEYS, *OPTION_KEYS, *READ_ONLY_KEYS))
    if unknown:
        raise ScheduleError(unknown[0], f"Unknown key {unknown[0]!r}; a schedule has cron, every or at, "
                            "and optionally timezone, misfire and enabled.")  # fmt: skip
    kinds = [k for k in HUMAN_KEYS if k in data]
    if len(kinds) != 1:
        raise ScheduleError("schedule", "Give exactly one of cron, every or at.")
    kind = kinds[0]
    timezone = _timezone(data.get("timezone", ""))
    expression = {"cron": _cron_expression, "every": _every_expression, "at": _at_expression}[kind](
        data[kind], timezone
    )
    misfire = data.get("misfire", Misfire.RUN_ONCE)
    if misfire not in Misfire.values:
        raise ScheduleError("misfire", f"misfire is {' or '.join(map(repr, Misfire.values))}, not {misfire!r}.")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ScheduleError("enabled", f"enabled is true or false, not {enabled!r}.")
    return ScheduleSpec(kind=kind, expression=expression, timezone=timezone, misfire=misfire, enabled=enabled)


def _timezone(value: object) -> str:
    if value in (None, ""):
        return ""
    if not isinstance(value, str):
        raise ScheduleError("timezone", "timezone is an IANA name such as Europe/Berlin.")
    try:
        zone(value)
    except ValueError as exc:
        raise ScheduleError("timezone", f"{_sentence(exc)}") from None
    return value


def _cron_expression(value: object, timezone: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ScheduleError("cron", 'cron is a cron expression such as "30 2 * * *".')
    if len(value) > 200:
        raise ScheduleError("cron", "cron is at most 200 characters.")
    expression = " ".join(value.split())
    try:
        timing = parse_cron(expression, timezone)
    except ValueError as exc:
        raise ScheduleError("cron", f"cron {expression!r}: {_sentence(exc)}") from None
    if timing.next_after(now()) is None:
        raise ScheduleError("cron", f"cron {expression!r} never fires (no such date).")
    return expression


def _every_expression(value: object, timezone: str) -> str:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ScheduleError("every", f"every: {exc}") from None
    if not 1 <= seconds <= EVERY_MAX_SECONDS:
        raise ScheduleError("every", f"every must be between 1 second and 366 days, not {seconds} seconds.")
    return str(value).strip().lower() if isinstance(value, str) else str(seconds)


def _at_expression(value: object, timezone: str) -> str:
    if not isinstance(value, str):
        raise ScheduleError("at", 'at is an ISO 8601 time such as "2027-01-01T02:00:00+01:00".')
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ScheduleError(
            "at", f"at {value[:40]!r} is not an ISO 8601 time such as 2027-01-01T02:00:00+01:00."
        ) from None
    if moment.tzinfo is None:  # a wall-clock time: read in the schedule's time zone
        moment = moment.replace(tzinfo=zone(timezone))
    return moment.isoformat()


def _sentence(exc: Exception) -> str:
    text = str(exc)
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _timing(kind: str, expression: str, timezone: str, anchor: datetime | None) -> Timing:
    if kind == ScheduleKind.CRON:
        return parse_cron(expression, timezone)
    if kind == ScheduleKind.EVERY:
        return IntervalTiming(timedelta(seconds=parse_duration(expression)), anchor or EPOCH)
    return OnceTiming(datetime.fromisoformat(expression).astimezone(UTC))


def timing_of(schedule: Schedule) -> Timing:
    """Return when ``schedule`` fires (an interval counts from its beat row's start_time, if any)."""
    anchor = schedule.periodic_task.start_time if schedule.kind == ScheduleKind.EVERY else None
    return _timing(schedule.kind, schedule.expression, schedule.timezone, anchor)


def timing_of_periodic_task(periodic_task: PeriodicTask) -> Timing | None:
    """Return when a django-celery-beat row fires, or None for a kind TaskHub does not compute (solar)."""
    if periodic_task.interval_id is not None:
        interval = periodic_task.interval
        return IntervalTiming(timedelta(**{interval.period: interval.every}), periodic_task.start_time or EPOCH)
    if periodic_task.crontab_id is not None:
        c = periodic_task.crontab
        expression = f"{c.minute} {c.hour} {c.day_of_month} {c.month_of_year} {c.day_of_week}"
        return parse_cron(expression, str(c.timezone))
    if periodic_task.clocked_id is not None:
        return OnceTiming(periodic_task.clocked.clocked_time.astimezone(UTC))
    return None


def _spec_of_row(row: PeriodicTask) -> ScheduleSpec | None:
    if row.interval_id is not None:
        seconds = int(timedelta(**{row.interval.period: row.interval.every}).total_seconds())
        return ScheduleSpec(ScheduleKind.EVERY, str(seconds))
    if row.crontab_id is not None:
        c = row.crontab
        expression = f"{c.minute} {c.hour} {c.day_of_month} {c.month_of_year} {c.day_of_week}"
        return ScheduleSpec(ScheduleKind.CRON, expression, str(c.timezone))
    if row.clocked_id is not None:
        return ScheduleSpec(ScheduleKind.AT, row.clocked.clocked_time.isoformat())
    return None


def to_human(schedule: Schedule) -> dict[str, object]:
    """Return ``schedule`` in the form the API shows and takes back."""
    data: dict[str, object] = {"id": schedule.pk, schedule.kind: schedule.expression}
    if schedule.kind == ScheduleKind.CRON:
        data["timezone"] = schedule.timezone or settings.TIME_ZONE
    elif schedule.timezone:
        data["timezone"] = schedule.timezone
    data["misfire"] = schedule.misfire
    data["enabled"] = schedule.enabled
    data["description"] = describe(schedule)
    fire = next_fire_time(schedule)
    data["next_fire_time"] = fire.isoformat() if fire else None
    return data


# -- in words ---------------------------------------------------------------------------------


def describe(schedule: Schedule | ScheduleSpec | PeriodicTask) -> str:
    """Return the schedule in words: "every 5 minutes", "at 02:30 on Mon–Fri, Europe/Berlin", "once at …".

    Takes a Schedule, or its beat row (a PeriodicTask; select_related its
    interval, crontab and clocked rows when showing many). For the task list
    and the API; does not say whether it is enabled.
    """
    if isinstance(schedule, PeriodicTask):
        spec = _spec_of_row(schedule)
        return str(schedule.solar) if spec is None else describe(spec)
    if schedule.kind == ScheduleKind.EVERY:
        return "every " + _seconds_in_words(parse_duration(schedule.expression))
    if schedule.kind == ScheduleKind.AT:
        moment = datetime.fromisoformat(schedule.expression)
        return f"once at {moment.isoformat(sep=' ', timespec='minutes' if moment.second == 0 else 'seconds')}"
    return f"{_cron_in_words(normalize_cron(schedule.expression))}, {schedule.timezone or settings.TIME_ZONE}"


def next_fire_time(schedule: Schedule | PeriodicTask, after: datetime | None = None) -> datetime | None:
    """Return when ``schedule`` fires next (aware, UTC), or None when it will not: disabled, paused or past.

    Takes a Schedule (reading its task and beat row: prefetch ``schedules__task``
    and ``schedules__periodic_task`` when showing many) or its beat row, a
    PeriodicTask, whose ``enabled`` already says whether the task and the
    schedule are enabled and the task is not paused.
    """
    if isinstance(schedule, PeriodicTask):
        timing = timing_of_periodic_task(schedule) if schedule.enabled else None
        return timing.next_after(after or now()) if timing is not None else None
    task = schedule.task
    if not (schedule.enabled and task.enabled and not task.paused_reason):
        return None
    return timing_of(schedule).next_after(after or now())


def next_fire_times(schedule: Schedule | ScheduleSpec, count: int = 5, after: datetime | None = None) -> list[datetime]:
    """Return the next ``count`` fires of ``schedule`` (whether or not it is enabled), aware in UTC."""
    timing = timing_of(schedule) if isinstance(schedule, Schedule) else schedule.timing()
    return timing.fires(after or now(), count)


def _seconds_in_words(seconds: int) -> str:
    units = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))
    for name, size in units:
        if seconds == size:
            return name
    parts = []
    for name, size in units:
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {name}{'s' if count != 1 else ''}")
    return " ".join(parts)


def _cron_in_words(expression: str) -> str:
    minute, hour, dom, month, dow = expression.split(" ")
    timing = parse_cron(expression, "UTC")
    if minute.isdigit() and _is_list(hour):
        when = "at " + ", ".join(f"{h:02d}:{int(minute):02d}" for h in timing.hours)
    elif hour == "*" and minute == "*":
        when = "every minute"
    elif hour == "*" and minute.startswith("*/") and minute[2:].isdigit():
        when = f"every {int(minute[2:])} minutes"
    elif hour == "*" and minute.isdigit():
        when = f"every hour at minute {int(minute)}"
    elif minute.isdigit() and hour.startswith("*/") and hour[2:].isdigit():
        when = f"every {int(hour[2:])} hours at minute {int(minute)}"
    else:
        return _described_by_library(expression)
    return when + _days_in_words(timing, month)


def _described_by_library(expression: str) -> str:
    from cron_descriptor import ExpressionDescriptor, Options

    options = Options()
    options.use_24hour_time_format = True
    try:
        text = ExpressionDescriptor(expression, options).get_description()
    except Exception:  # cron-descriptor reads fewer forms than cron does: show the expression itself
        return f"cron {expression}"
    return text[0].lower() + text[1:]


def _is_list(field: str) -> bool:
    return all(part.isdigit() for part in field.split(","))


def _days_in_words(timing: CronTiming, month: str) -> str:
    text = ""
    days_of_week = _names_in_words(timing.dows, DAY_NAMES, 0, lambda d: (d - 1) % 7)  # Monday first
    days_of_month = _names_in_words(timing.doms, (), 1, lambda d: d)
    if not timing.dom_any and not timing.dow_any:
        text += f" on day {days_of_month} of the month or on {days_of_week}"
    elif not timing.dow_any:
        text += f" on {days_of_week}"
    elif not timing.dom_any:
        text += f" on day {days_of_month} of the month"
    if len(timing.months) < 12:
        text += " in " + _names_in_words(timing.months, MONTH_NAMES, 1, lambda m: m)
    return text


def _names_in_words(values: Iterable[int], names: tuple[str, ...], base: int, order) -> str:
    ordered = sorted(values, key=order)
    labels = [names[v - base].capitalize() if names else str(v) for v in ordered]
    if len(ordered) >= 3 and len(_runs([order(v) for v in ordered])) == 1:
        return f"{labels[0]}–{labels[-1]}"
    return ", ".join(labels)


def _runs(values: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for value in values:
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return runs


# -- the beat rows ------------------------------------------------------------------------------


def beat_enabled(task: Task, schedule_enabled: bool) -> bool:
    """Whether a schedule's beat row is enabled: the schedule and its task are, and the task is not paused."""
    return schedule_enabled and task.enabled and not task.paused_reason


def _timing_row(spec: ScheduleSpec) -> dict[str, object]:
    """Create the crontab, interval or clocked row of ``spec``; return it as PeriodicTask fields."""
    rows: dict[str, object] = {"interval": None, "crontab": None, "clocked": None, "solar": None}
    if spec.kind == ScheduleKind.CRON:
        minute, hour, dom, month, dow = normalize_cron(spec.expression).split(" ")
        rows["crontab"] = CrontabSchedule.objects.create(
            minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow,
            timezone=zone(spec.timezone),
        )  # fmt: skip
    elif spec.kind == ScheduleKind.EVERY:
        rows["interval"] = IntervalSchedule.objects.create(
            every=parse_duration(spec.expression), period=IntervalSchedule.SECONDS
        )
    else:
        rows["clocked"] = ClockedSchedule.objects.create(clocked_time=datetime.fromisoformat(spec.expression))
    return rows


def _delete_timing_rows(interval_id: int | None, crontab_id: int | None, clocked_id: int | None) -> None:
    # Each schedule has rows of its own; one that another periodic task uses (made by hand) is kept.
    for model, field, pk in (
        (IntervalSchedule, "interval", interval_id),
        (CrontabSchedule, "crontab", crontab_id),
        (ClockedSchedule, "clocked", clocked_id),
    ):
        if pk is not None and not PeriodicTask.objects.filter(**{f"{field}_id": pk}).exists():
            model.objects.filter(pk=pk).delete()


def _periodic_task_name(task: Task) -> str:
    return f"taskhub: task {task.pk} schedule {uuid.uuid4().hex[:8]}"


@transaction.atomic
def create_schedule(task: Task, spec: ScheduleSpec) -> Schedule:
    """Create a schedule and its beat row; its first fire is the first one after now."""
    periodic_task = PeriodicTask(
        name=_periodic_task_name(task),
        task=BEAT_TASK,
        kwargs=json.dumps({"task_id": task.pk}),
        enabled=beat_enabled(task, spec.enabled),
        one_off=spec.kind == ScheduleKind.AT,
        # Fires before now are not missed ones: the schedule did not exist.
        last_run_at=now(),
        description=f"{task.name}: {describe(spec)}",
        **_timing_row(spec),
    )
    periodic_task.save()
    return Schedule.objects.create(
        task=task,
        periodic_task=periodic_task,
        kind=spec.kind,
        expression=spec.expression,
        timezone=spec.timezone,
        misfire=spec.misfire,
        enabled=spec.enabled,
    )


@transaction.atomic
def update_schedule(schedule: Schedule, spec: ScheduleSpec) -> Schedule:
    """Change a schedule in place, keeping its beat row (so a fire it launched is not launched again)."""
    periodic_task = PeriodicTask.objects.select_for_update().get(pk=schedule.periodic_task_id)
    old_rows = (periodic_task.interval_id, periodic_task.crontab_id, periodic_task.clocked_id)
    # Compared with the row as stored: a form may have set the new values on ``schedule`` already.
    redefined = not spec.same_definition(Schedule.objects.get(pk=schedule.pk))
    was_enabled = periodic_task.enabled
    if redefined:
        for field, value in _timing_row(spec).items():
            setattr(periodic_task, field, value)
        periodic_task.one_off = spec.kind == ScheduleKind.AT
        periodic_task.total_run_count = 0
    periodic_task.enabled = beat_enabled(schedule.task, spec.enabled)
    if redefined or (periodic_task.enabled and not was_enabled):
        # Fires of a new definition, or while disabled, before now are not missed ones.
        periodic_task.last_run_at = now()
    periodic_task.description = f"{schedule.task.name}: {describe(spec)}"
    periodic_task.save()
    if redefined:
        _delete_timing_rows(*old_rows)
    for field in ("kind", "expression", "timezone", "misfire", "enabled"):
        setattr(schedule, field, getattr(spec, field))
    schedule.periodic_task = periodic_task
    schedule.save()
    return schedule


def delete_schedule(schedule: Schedule) -> None:
    """Delete a schedule; its beat rows go with it (see _delete_beat_rows)."""
    schedule.delete()


@transaction.atomic
def replace_schedules(task: Task, specs: Iterable[ScheduleSpec]) -> list[Schedule]:
    """Make the task's schedules exactly ``specs``.

    A schedule whose definition is unchanged keeps its row and beat row; the
    rest are changed in place in order, then created or deleted, so that
    editing a list never hands a fire to a new beat row.
    """
    specs = list(specs)
    existing = list(Schedule.objects.select_for_update().filter(task=task).order_by("pk"))
    kept: dict[int, Schedule] = {}
    unmatched = []
    for index, spec in enumerate(specs):
        same = next(
            (s for s in existing if s.pk not in {k.pk for k in kept.values()} and spec.same_definition(s)), None
        )
        if same is not None:
            kept[index] = same
        else:
            unmatched.append(index)
    spare = [s for s in existing if s.pk not in {k.pk for k in kept.values()}]
    result: list[Schedule | None] = [None] * len(specs)
    for index, schedule in kept.items():
        spec = specs[index]
        changed = (schedule.misfire, schedule.enabled) != (spec.misfire, spec.enabled)
        result[index] = update_schedule(schedule, spec) if changed else schedule
    for index in unmatched:
        spec = specs[index]
        result[index] = update_schedule(spare.pop(0), spec) if spare else create_schedule(task, spec)
    for schedule in spare:
        delete_schedule(schedule)
    return [s for s in result if s is not None]


def sync_enabled(task_ids: Iterable[int]) -> int:
    """Enable or disable the beat rows of these tasks' schedules to follow each task; return how many changed.

    Task.save() calls it (a receiver below); call it after a bulk update of
    ``enabled`` or ``paused_reason``, which sends no signal.
    """
    task_ids = list(task_ids)
    rows = PeriodicTask.objects.filter(taskhub_schedule__task_id__in=task_ids)
    should_run = Q(
        taskhub_schedule__enabled=True, taskhub_schedule__task__enabled=True, taskhub_schedule__task__paused_reason=""
    )
    # Fires while disabled are not missed ones: an enabled row starts from now.
    changed = rows.filter(should_run, enabled=False).update(enabled=True, last_run_at=now())
    changed += rows.filter(enabled=True).exclude(should_run).update(enabled=False, last_run_at=None)
    if changed:
        PeriodicTasks.update_changed()  # bulk updates send no signal beat would see
    return changed


@receiver(post_save, sender=Task, dispatch_uid="taskhub.schedules.follow_task")
def _follow_task(sender: type[Task], instance: Task, created: bool, raw: bool = False, **kwargs: object) -> None:
    if not created and not raw:
        sync_enabled([instance.pk])


@receiver(post_delete, sender=Schedule, dispatch_uid="taskhub.schedules.delete_beat_rows")
def _delete_beat_rows(sender: type[Schedule], instance: Schedule, **kwargs: object) -> None:
    # Also when the task is deleted (a cascade calls no delete() of ours): no beat row is left without its schedule.
    rows = PeriodicTask.objects.filter(pk=instance.periodic_task_id).values_list(
        "interval_id", "crontab_id", "clocked_id"
    )
    timing_rows = rows.first()
    if timing_rows is None:
        return  # deleted with its beat row (someone deleted the periodic task)
    PeriodicTask.objects.filter(pk=instance.periodic_task_id).delete()
    _delete_timing_rows(*timing_rows)
    PeriodicTasks.update_changed()


def schedules_of(task: Task) -> Iterator[Schedule]:
    return iter(task.schedules.select_related("periodic_task").order_by("pk"))


__all__ = [
    "ScheduleError",
    "ScheduleSpec",
    "create_schedule",
    "delete_schedule",
    "describe",
    "next_fire_time",
    "next_fire_times",
    "parse_schedule",
    "replace_schedules",
    "sync_enabled",
    "timing_of",
    "timing_of_periodic_task",
    "to_human",
    "update_schedule",
]
