"""Schedules: human forms, fire times (DST included, from computed times), words, and their beat rows."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

from executions.models import TaskExecution, Trigger
from taskhub.models import Misfire, Schedule
from taskhub.schedules import (
    IntervalTiming,
    ScheduleError,
    ScheduleSpec,
    create_schedule,
    delete_schedule,
    describe,
    next_fire_time,
    next_fire_times,
    parse_cron,
    parse_schedule,
    replace_schedules,
    sync_enabled,
    update_schedule,
)
from taskhub.tasks import launch_scheduled

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- human forms ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind", "expression", "timezone"),
    [
        ({"cron": "30 2 * * *", "timezone": "Europe/Berlin"}, "cron", "30 2 * * *", "Europe/Berlin"),
        ("*/5  * * * *", "cron", "*/5 * * * *", ""),
        ({"cron": "@daily"}, "cron", "@daily", ""),
        ({"cron": "0 9 * * mon-fri"}, "cron", "0 9 * * mon-fri", ""),
        ({"every": "90s"}, "every", "90s", ""),
        ({"every": "1h30m"}, "every", "1h30m", ""),
        ({"every": 45}, "every", "45", ""),
        ({"at": "2027-01-01T02:00:00+01:00"}, "at", "2027-01-01T02:00:00+01:00", ""),
        ({"at": "2027-01-01T02:00", "timezone": "Europe/Berlin"}, "at", "2027-01-01T02:00:00+01:00", "Europe/Berlin"),
    ],
)
def test_human_forms_are_read(data, kind, expression, timezone):
    spec = parse_schedule(data)
    assert (spec.kind, spec.expression, spec.timezone) == (kind, expression, timezone)
    assert spec.misfire == Misfire.RUN_ONCE and spec.enabled is True


@pytest.mark.parametrize(
    ("data", "field", "says"),
    [
        ({"cron": "61 * * * *"}, "cron", "minute field: 61 is out of range 0–59"),
        ({"cron": "* * *"}, "cron", "5 fields"),
        ({"cron": "0 0 31 2 *"}, "cron", "never fires"),
        ({"cron": "5-1 * * * *"}, "cron", "goes backwards"),
        ({"cron": "*/0 * * * *"}, "cron", "step"),
        ({"cron": "0 0 * * funday"}, "cron", "day of week field"),
        ({"every": "0s"}, "every", "between 1 second"),
        ({"every": "soon"}, "every", "not a duration"),
        ({"at": "tomorrow"}, "at", "ISO 8601"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "timezone", "not a known time zone"),
        ({"cron": "* * * * *", "misfire": "all"}, "misfire", "'run_once' or 'skip'"),
        ({"cron": "* * * * *", "enabled": "yes"}, "enabled", "true or false"),
        ({"cron": "* * * * *", "every": "5m"}, "schedule", "exactly one"),
        ({"cron": "* * * * *", "when": 1}, "when", "Unknown key"),
        (42, "schedule", "object"),
    ],
)
def test_bad_human_forms_name_the_field(data, field, says):
    with pytest.raises(ScheduleError) as caught:
        parse_schedule(data)
    assert caught.value.field == field
    assert says in caught.value.message


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (ScheduleSpec("every", "5m"), "every 5 minutes"),
        (ScheduleSpec("every", "90s"), "every 1 minute 30 seconds"),
        (ScheduleSpec("every", "1h"), "every hour"),
        (ScheduleSpec("cron", "*/5 * * * *", "UTC"), "every 5 minutes, UTC"),
        (ScheduleSpec("cron", "30 2 * * 1-5", "Europe/Berlin"), "at 02:30 on Mon–Fri, Europe/Berlin"),
        (ScheduleSpec("cron", "0 8,20 * * sat,sun", "UTC"), "at 08:00, 20:00 on Sat, Sun, UTC"),
        (ScheduleSpec("cron", "0 9 1 * *", "UTC"), "at 09:00 on day 1 of the month, UTC"),
        (ScheduleSpec("cron", "@daily", "UTC"), "at 00:00, UTC"),
        (ScheduleSpec("at", "2027-01-01T02:00:00+01:00"), "once at 2027-01-01 02:00+01:00"),
    ],
)
def test_schedules_are_described_in_words(spec, words):
    assert describe(spec) == words


# -- fire times -------------------------------------------------------------------------------------


def test_cron_fires_in_its_time_zone():
    fires = parse_cron("30 2 * * 1-5", "Europe/Berlin").fires(utc(2027, 1, 1, 12), 3)  # a Friday
    assert [f.astimezone(BERLIN).strftime("%a %H:%M") for f in fires] == ["Mon 02:30", "Tue 02:30", "Wed 02:30"]
    assert fires[0] == utc(2027, 1, 4, 1, 30)


def test_cron_with_both_day_fields_fires_on_either_as_cron_does():
    fires = parse_cron("0 0 13 * 5", "UTC").fires(utc(2027, 1, 1), 4)
    assert [f.date() for f in fires] == [date(2027, 1, 8), date(2027, 1, 13), date(2027, 1, 15), date(2027, 1, 22)]


def test_a_fire_is_strictly_after_the_time_asked():
    timing = parse_cron("*/5 * * * *", "UTC")
    assert timing.next_after(utc(2027, 1, 1, 10, 5)) == utc(2027, 1, 1, 10, 10)
    assert timing.next_after(utc(2027, 1, 1, 10, 4, 59)) == utc(2027, 1, 1, 10, 5)


def test_a_daily_0230_berlin_schedule_fires_once_per_local_day_through_a_year_of_clock_changes():
    timing = parse_cron("30 2 * * *", "Europe/Berlin")
    fires = []
    fire = timing.next_after(utc(2025, 12, 31, 12))
    while fire < utc(2026, 12, 31, 12):
        fires.append(fire)
        fire = timing.next_after(fire)

    local_days = [f.astimezone(BERLIN).date() for f in fires]
    assert len(fires) == 365 and len(set(local_days)) == 365
    by_day = {f.astimezone(BERLIN).date(): f for f in fires}
    # Spring forward (2026-03-29): 02:30 does not exist; it fires at the next valid local time, 03:00 CEST.
    assert by_day[date(2026, 3, 29)] == utc(2026, 3, 29, 1, 0)
    assert by_day[date(2026, 3, 29)].astimezone(BERLIN).strftime("%H:%M %Z") == "03:00 CEST"
    # Fall back (2026-10-25): 02:30 happens twice; it fires at the first one only.
    assert by_day[date(2026, 10, 25)] == utc(2026, 10, 25, 0, 30)
    assert by_day[date(2026, 10, 25)].astimezone(BERLIN).strftime("%H:%M %Z") == "02:30 CEST"
    # Every other day at 02:30 local time.
    ordinary = [f for d, f in by_day.items() if d not in (date(2026, 3, 29),)]
    assert {f.astimezone(BERLIN).strftime("%H:%M") for f in ordinary} == {"02:30"}


def test_a_schedule_on_every_hour_keeps_its_steps_through_the_repeated_hour():
    timing = parse_cron("*/30 * * * *", "Europe/Berlin")
    autumn = timing.fires_on(date(2026, 10, 25))
    spring = timing.fires_on(date(2026, 3, 29))
    assert len(autumn) == 50  # 25 hours of half hours
    assert all(b - a == timedelta(minutes=30) for a, b in zip(autumn, autumn[1:], strict=False))
    assert len(spring) == 46  # 23 hours: 02:00 and 02:30 do not exist
    assert timing.next_after(utc(2026, 3, 29, 0, 30)) == utc(2026, 3, 29, 1, 0)  # 01:30 CET → 03:00 CEST


def test_an_hourly_fixed_hour_set_does_not_fire_twice_in_the_repeated_hour():
    timing = parse_cron("0,30 1-3 * * *", "Europe/Berlin")
    fires = timing.fires_on(date(2026, 10, 25))
    local = [f.astimezone(BERLIN).strftime("%H:%M %Z") for f in fires]
    assert local == ["01:00 CEST", "01:30 CEST", "02:00 CEST", "02:30 CEST", "03:00 CET", "03:30 CET"]


def test_interval_fires_are_multiples_of_the_interval_from_the_anchor():
    timing = IntervalTiming(timedelta(seconds=90))
    assert timing.next_after(utc(2027, 1, 1, 0, 0, 1)) == utc(2027, 1, 1, 0, 1, 30)
    anchored = IntervalTiming(timedelta(minutes=1), anchor=utc(2027, 1, 1, 0, 0, 17))
    assert anchored.next_after(utc(2027, 1, 1, 10, 0, 0)) == utc(2027, 1, 1, 10, 0, 17)
    assert anchored.latest(utc(2027, 1, 1, 9), utc(2027, 1, 1, 10, 0, 16)) == utc(2027, 1, 1, 9, 59, 17)


def test_next_five_fire_times_in_the_schedule_time_zone_and_the_operators():
    fires = next_fire_times(ScheduleSpec("cron", "0 9 * * *", "America/New_York"), 5, after=utc(2027, 1, 1))
    assert len(fires) == 5
    assert {f.astimezone(ZoneInfo("America/New_York")).strftime("%H:%M") for f in fires} == {"09:00"}
    assert {f.astimezone(UTC).strftime("%H:%M") for f in fires} == {"14:00"}


# -- beat rows, with the task -----------------------------------------------------------------------


def beat_row(schedule: Schedule) -> PeriodicTask:
    return PeriodicTask.objects.get(pk=schedule.periodic_task_id)


def test_a_schedule_is_a_beat_row_for_launch_scheduled(make_task):
    task = make_task()
    schedule = create_schedule(task, parse_schedule({"cron": "30 2 * * *", "timezone": "Europe/Berlin"}))
    row = beat_row(schedule)
    assert row.task == "taskhub.launch_scheduled"
    assert json.loads(row.kwargs) == {"task_id": task.pk}
    assert row.enabled and row.crontab.hour == "2" and str(row.crontab.timezone) == "Europe/Berlin"
    assert row.last_run_at is not None  # fires before it existed are not missed ones
    assert next_fire_time(schedule) is not None


def test_the_beat_row_is_described_and_timed_as_its_schedule(make_task):
    schedule = create_schedule(make_task(), parse_schedule({"cron": "30 2 * * 1-5", "timezone": "Europe/Berlin"}))
    row = beat_row(schedule)
    assert describe(row) == describe(schedule) == "at 02:30 on Mon–Fri, Europe/Berlin"
    assert next_fire_time(row) == next_fire_time(schedule) is not None
    interval = beat_row(create_schedule(make_task(), parse_schedule({"every": "5m"})))
    assert describe(interval) == "every 5 minutes"
    PeriodicTask.objects.filter(pk=interval.pk).update(enabled=False)
    assert next_fire_time(PeriodicTask.objects.get(pk=interval.pk)) is None


def test_disabling_the_task_disables_its_beat_rows_and_enabling_brings_them_back(make_task):
    task = make_task()
    on = create_schedule(task, parse_schedule({"every": "5m"}))
    off = create_schedule(task, parse_schedule({"every": "1h", "enabled": False}))

    task.enabled = False
    task.save()
    assert not beat_row(on).enabled and not beat_row(off).enabled
    assert next_fire_time(Schedule.objects.get(pk=on.pk)) is None

    task.enabled = True
    task.save()
    assert beat_row(on).enabled and not beat_row(off).enabled
    assert beat_row(on).last_run_at is not None  # fires while disabled are not missed ones


def test_a_paused_task_keeps_its_beat_rows_disabled_until_the_pause_is_lifted(make_task):
    task = make_task()
    schedule = create_schedule(task, parse_schedule({"every": "5m"}))
    type(task).objects.filter(pk=task.pk).update(paused_reason="paused after 3 runs in a row …")
    assert sync_enabled([task.pk]) == 1
    assert not beat_row(schedule).enabled

    task.refresh_from_db()
    task.paused_reason = ""
    task.save()
    assert beat_row(schedule).enabled


def test_deleting_a_schedule_or_its_task_leaves_no_beat_row(make_task):
    task = make_task()
    first = create_schedule(task, parse_schedule({"cron": "0 * * * *"}))
    second = create_schedule(task, parse_schedule({"every": "90s"}))
    third = create_schedule(task, parse_schedule({"at": "2030-01-01T00:00:00+00:00"}))
    delete_schedule(first)
    assert not PeriodicTask.objects.filter(pk=first.periodic_task_id).exists()
    assert not CrontabSchedule.objects.exists()

    task.delete()
    assert not Schedule.objects.exists()
    assert not PeriodicTask.objects.filter(pk__in=[second.periodic_task_id, third.periodic_task_id]).exists()
    assert not IntervalSchedule.objects.exists() and not ClockedSchedule.objects.exists()


def test_deleting_the_beat_row_deletes_its_schedule(make_task):
    schedule = create_schedule(make_task(), parse_schedule({"every": "90s"}))
    PeriodicTask.objects.get(pk=schedule.periodic_task_id).delete()
    assert not Schedule.objects.filter(pk=schedule.pk).exists()


def test_an_edit_keeps_the_beat_row_and_starts_the_new_definition_from_now(make_task):
    schedule = create_schedule(make_task(), parse_schedule({"cron": "0 * * * *"}))
    PeriodicTask.objects.filter(pk=schedule.periodic_task_id).update(last_run_at=utc(2020, 1, 1))

    update_schedule(schedule, parse_schedule({"every": "10m", "misfire": "skip"}))

    row = beat_row(schedule)
    assert row.pk == schedule.periodic_task_id and row.interval.every == 600 and row.crontab is None
    assert row.last_run_at > utc(2026, 1, 1)
    assert not CrontabSchedule.objects.exists()
    assert Schedule.objects.get(pk=schedule.pk).misfire == Misfire.SKIP


def test_replacing_the_list_keeps_unchanged_schedules_and_their_beat_rows(make_task):
    task = make_task()
    keep, change, drop = (
        create_schedule(task, parse_schedule(data))
        for data in ({"every": "5m"}, {"cron": "0 2 * * *"}, {"at": "2030-01-01T00:00:00+00:00"})
    )

    result = replace_schedules(task, [parse_schedule({"cron": "0 3 * * *"}), parse_schedule({"every": "5m"})])

    assert [s.expression for s in result] == ["0 3 * * *", "5m"]
    assert result[1].pk == keep.pk and result[1].periodic_task_id == keep.periodic_task_id
    assert result[0].periodic_task_id == change.periodic_task_id  # changed in place
    assert not PeriodicTask.objects.filter(pk=drop.periodic_task_id).exists()
    assert PeriodicTask.objects.filter(task="taskhub.launch_scheduled").count() == 2


# -- a fire launches once ---------------------------------------------------------------------------


def test_a_fire_sent_twice_launches_once(make_task):
    task = make_task()
    schedule = create_schedule(task, parse_schedule({"every": "1m"}))
    fire = "2027-01-01T10:00:00+00:00"

    first = launch_scheduled(task_id=task.pk, fire_time=fire, schedule_id=schedule.periodic_task_id)
    second = launch_scheduled(task_id=task.pk, fire_time=fire, schedule_id=schedule.periodic_task_id)
    other = launch_scheduled(
        task_id=task.pk, fire_time="2027-01-01T10:01:00+00:00", schedule_id=schedule.periodic_task_id
    )

    assert first is not None and second is None and other is not None
    executions = TaskExecution.objects.filter(task=task)
    assert executions.count() == 2
    row = executions.get(pk=first)
    assert row.trigger == Trigger.SCHEDULE
    assert row.schedule_id == schedule.periodic_task_id and row.fire_time == utc(2027, 1, 1, 10)


def test_a_message_without_a_fire_time_launches_as_before(make_task):
    task = make_task()
    assert launch_scheduled(task_id=task.pk) is not None
    assert launch_scheduled(task_id=task.pk) is not None
    assert TaskExecution.objects.filter(task=task, fire_time__isnull=True).count() == 2


def test_a_fire_over_the_owners_limit_of_active_runs_launches_nothing(make_task, operator, settings):
    settings.TASKHUB_USER_ACTIVE_RUNS = 1
    task = make_task(owner=operator)
    assert launch_scheduled(task_id=task.pk, fire_time="2027-01-01T10:00:00+00:00") is not None

    assert launch_scheduled(task_id=task.pk, fire_time="2027-01-01T10:01:00+00:00") is None
    assert TaskExecution.objects.filter(task=task).count() == 1
