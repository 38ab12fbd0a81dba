"""TaskHub's beat scheduler: computed fire times, misfire policies, fires launched once by two real beats."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from django.utils.timezone import now
from django_celery_beat.models import PeriodicTask, PeriodicTasks

from config.celery import app
from executions.models import TaskExecution
from taskhub.scheduler import MISFIRE_GRACE, DatabaseScheduler, ScheduleEntry, write_last_runs
from taskhub.schedules import create_schedule, parse_schedule, update_schedule

from .conftest import wait_for


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def entry_for(task, data: dict, *, last_run_at: datetime) -> ScheduleEntry:
    schedule = create_schedule(task, parse_schedule(data))
    PeriodicTask.objects.filter(pk=schedule.periodic_task_id).update(last_run_at=last_run_at)
    model = PeriodicTask.objects.select_related("taskhub_schedule").get(pk=schedule.periodic_task_id)
    return ScheduleEntry(model, app=app)


# -- when an entry is due (computed times, no waiting) ---------------------------------------------


def test_an_entry_is_due_at_its_fire_time_and_carries_it(make_task):
    entry = entry_for(make_task(), {"every": "1m"}, last_run_at=utc(2027, 1, 1, 10, 0))

    assert entry.is_due_at(utc(2027, 1, 1, 10, 0, 59)) == (False, 1.0)
    due, again = entry.is_due_at(utc(2027, 1, 1, 10, 1, 0, 300_000))
    assert due and entry.fire_time == utc(2027, 1, 1, 10, 1)
    assert again == pytest.approx(59.7)

    following = next(entry)
    assert following.last_run_at == utc(2027, 1, 1, 10, 1) and following.fire_time is None
    assert following.is_due_at(utc(2027, 1, 1, 10, 1, 0, 500_000)) == (False, 59.5)


def test_two_schedulers_find_the_same_fire_time_whenever_they_look(make_task):
    task = make_task()
    early = entry_for(task, {"every": "2s"}, last_run_at=utc(2027, 1, 1, 10, 0, 0))
    late = ScheduleEntry(PeriodicTask.objects.get(pk=early.model.pk), app=app)
    assert early.is_due_at(utc(2027, 1, 1, 10, 0, 2, 10_000)).is_due
    assert late.is_due_at(utc(2027, 1, 1, 10, 0, 3, 900_000)).is_due
    assert early.fire_time == late.fire_time == utc(2027, 1, 1, 10, 0, 2)


def test_after_beat_was_down_run_once_launches_one_fire_for_all_missed(make_task):
    entry = entry_for(make_task(), {"cron": "30 2 * * *", "timezone": "UTC"}, last_run_at=utc(2027, 1, 1, 2, 30))

    due, _ = entry.is_due_at(utc(2027, 1, 4, 9, 0))  # three fires missed

    assert due and entry.fire_time == utc(2027, 1, 4, 2, 30)
    assert next(entry).is_due_at(utc(2027, 1, 4, 9, 0, 1)).is_due is False


def test_after_beat_was_down_skip_launches_none_of_the_missed_fires(make_task):
    data = {"cron": "30 2 * * *", "timezone": "UTC", "misfire": "skip"}
    entry = entry_for(make_task(), data, last_run_at=utc(2027, 1, 1, 2, 30))

    due, again = entry.is_due_at(utc(2027, 1, 4, 9, 0))

    assert not due and entry.fire_time is None
    assert again == (utc(2027, 1, 5, 2, 30) - utc(2027, 1, 4, 9, 0)).total_seconds()
    # The next fire, on time, is launched.
    assert entry.is_due_at(utc(2027, 1, 5, 2, 30, 1)).is_due and entry.fire_time == utc(2027, 1, 5, 2, 30)


def test_skip_still_launches_a_fire_that_is_only_a_little_late(make_task):
    data = {"every": "10s", "misfire": "skip"}
    entry = entry_for(make_task(), data, last_run_at=utc(2027, 1, 1, 10, 0, 0))
    at = utc(2027, 1, 1, 10, 0, 10) + timedelta(seconds=MISFIRE_GRACE / 2)
    assert entry.is_due_at(at).is_due
    assert entry.fire_time == utc(2027, 1, 1, 10, 0, 40)  # the latest; the ones before it are skipped


def test_writing_last_runs_never_moves_an_edit_back(make_task):
    hour_ago = now().replace(second=0, microsecond=0) - timedelta(hours=1)
    entry = entry_for(make_task(), {"every": "1m"}, last_run_at=hour_ago)
    entry.is_due_at(hour_ago + timedelta(minutes=1, microseconds=1))
    next(entry)
    update_schedule(entry.model.taskhub_schedule, parse_schedule({"every": "5m"}))  # sets last_run_at to now
    edited = PeriodicTask.objects.get(pk=entry.model.pk).last_run_at

    write_last_runs([entry], Counter({entry.name: 1}))

    assert PeriodicTask.objects.get(pk=entry.model.pk).last_run_at == edited
    PeriodicTask.objects.filter(pk=entry.model.pk).update(last_run_at=hour_ago)
    write_last_runs([entry], Counter({entry.name: 1}))
    row = PeriodicTask.objects.get(pk=entry.model.pk)
    assert row.last_run_at == hour_ago + timedelta(minutes=1) and row.total_run_count == 1  # counted from the edit


# -- django-celery-beat's non-public names this scheduler relies on --------------------------------


@pytest.mark.django_db(transaction=True)  # the scheduler closes connections left outside autocommit
def test_the_non_public_names_of_django_celery_beat_used_by_the_scheduler_still_mean_the_same(make_task):
    task = make_task()
    create_schedule(task, parse_schedule({"every": "1h"}))
    scheduler = DatabaseScheduler(app=app)

    schedule = scheduler.schedule
    assert scheduler._schedule is schedule and any(isinstance(e, ScheduleEntry) for e in schedule.values())
    scheduler.populate_heap()
    assert scheduler._heap and scheduler.schedules_equal(None, schedule)

    name, entry = next((n, e) for n, e in schedule.items() if isinstance(e, ScheduleEntry))
    entry.is_due_at(now() + timedelta(hours=2))
    scheduler.reserve(entry)
    assert name in scheduler._dirty  # entries to write at the next sync
    scheduler.sync()
    assert not scheduler._dirty

    PeriodicTasks.update_changed()
    scheduler._checked_this_tick, scheduler._changes_checked_at = False, None  # a tick, a while later
    reloaded = scheduler.schedule
    assert reloaded is not schedule  # a reload makes a new dict …
    assert scheduler._heap_invalidated  # … and says the heap is stale
    assert not scheduler.schedules_equal(None, reloaded)


# -- two real beats at once ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_beats_running_at_once_launch_every_fire_exactly_once(celery_processes, make_task):
    worker = celery_processes(concurrency=2)
    schedules = [create_schedule(make_task(command="true"), parse_schedule({"every": "2s"})) for _ in range(3)]
    beats = [celery_processes.beat(), celery_processes.beat()]
    both_up = now()
    until = both_up + timedelta(seconds=60)

    def launched_to_the_end():
        return all(
            TaskExecution.objects.filter(schedule_id=s.periodic_task_id, fire_time__gte=until).exists()
            for s in schedules
        )

    wait_for(launched_to_the_end, timeout=90, interval=1, what="60 s of fires of every schedule")
    for beat in beats:
        beat.stop()

    first = both_up.replace(microsecond=0) + timedelta(seconds=4 - both_up.second % 2)
    expected = []
    fire = first
    while fire <= until:
        expected.append(fire)
        fire += timedelta(seconds=2)
    for schedule in schedules:
        fires = Counter(
            TaskExecution.objects.filter(
                schedule_id=schedule.periodic_task_id, attempt=1, fire_time__gte=first, fire_time__lte=until
            ).values_list("fire_time", flat=True)
        )
        assert sorted(fires) == expected  # no gaps
        assert set(fires.values()) == {1}  # none twice
    # Both beats sent the fires: the second copy of each found it launched already.
    assert all("Sending due task" in beat.log() for beat in beats)
    assert "was launched already" in worker.log()
