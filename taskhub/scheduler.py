"""celery beat's scheduler for TaskHub: django-celery-beat's, firing at computed fire times, once each.

django-celery-beat's tables stay the store; what changes is when an entry is
due and what its message carries:

- Fire times come from the schedule (taskhub.schedules), not from "now":
  every beat process computes the same ones, and ``taskhub.launch_scheduled``
  gets the fire time it is for (``fire_time``) and its periodic task
  (``schedule_id``), unique together in the database. Two beats, a beat
  restart or an edit therefore cannot launch one fire twice.
- ``last_run_at`` holds the last fire time sent. After beat was down, the
  fires missed since then are launched once (the latest of them; misfire
  ``run_once``, the default) or not at all (``skip``); a fire less than
  MISFIRE_GRACE seconds late is not a missed one.
- With thousands of entries, django-celery-beat's scheduler spends its time
  comparing every entry with its copy on every tick, asking the database for
  changes on every tick, and saving each entry with two queries when it
  syncs. Here the heap is rebuilt only when the schedule was reloaded,
  changes are checked once a tick (and once a CHANGES_EVERY while fires
  follow each other), and a sync is one batch of WRITE_LAST_RUN that never
  moves ``last_run_at`` back (an edit sets it to now; a sync must not undo
  that).

Non-public names of django-celery-beat used here, each guarded by a test:
``_last_full_sync`` (its record of the last full read;
tests/test_recovery_checks.py), and ``_schedule`` (the entries by name),
``_dirty`` (names of entries to write) and ``_heap_invalidated`` (set when it
reloads), guarded in tests/test_schedules_beat.py.
"""

from __future__ import annotations

import copy
import datetime
import logging
import time
from collections import Counter

from celery import schedules as celery_schedules
from celery.utils.time import maybe_make_aware
from django.core.exceptions import ObjectDoesNotExist
from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, connection, transaction
from django.utils.timezone import now
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import SCHEDULE_SYNC_MAX_INTERVAL, ModelEntry
from django_celery_beat.schedulers import DatabaseScheduler as _DatabaseScheduler
from django_celery_beat.utils import NEVER_CHECK_TIMEOUT

from executions.db import drop_connection
from taskhub.models import Misfire
from taskhub.schedules import IntervalTiming, timing_of_periodic_task

logger = logging.getLogger("taskhub.beat")

# Seconds before the next tick after one that lost the database.
RETRY_AFTER = 1.0
# Seconds a fire may be late and still count as on time (not missed) for misfire "skip".
MISFIRE_GRACE = 60.0
# Seconds between two checks for changed schedules (one query each).
CHANGES_EVERY = 1.0
BEAT_TASK = "taskhub.launch_scheduled"


class ScheduleEntry(ModelEntry):
    """django-celery-beat's entry, due at the fire times taskhub.schedules computes.

    ``fire_time`` is the fire the entry was last found due for; the entry a
    fire leaves behind (``next``) starts from it. Kinds TaskHub does not
    compute (solar) behave as in django-celery-beat.
    """

    def __init__(self, model, app=None) -> None:
        super().__init__(model, app=app)
        self.fire_time: datetime.datetime | None = None
        try:
            self.timing = timing_of_periodic_task(model)
        except ValueError as exc:
            logger.error("Schedule %r cannot be read (%s); it fires as django-celery-beat decides.", model.name, exc)
            self.timing = None
        try:
            self.misfire = model.taskhub_schedule.misfire
        except ObjectDoesNotExist:  # a periodic task made outside TaskHub has no schedule of ours
            self.misfire = Misfire.RUN_ONCE
        self.last_run_at = maybe_make_aware(self.last_run_at).astimezone(datetime.UTC)

    def __copy__(self) -> ScheduleEntry:
        # Not through __reduce__, which celery's ScheduleEntry defines for its own constructor.
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def is_due(self) -> celery_schedules.schedstate:
        model = self.model
        if self.timing is None or not model.enabled or model.expires is not None:
            return super().is_due()
        if model.one_off and model.total_run_count > 0:
            return super().is_due()  # django-celery-beat disables it
        return self.is_due_at(datetime.datetime.now(datetime.UTC))

    def is_due_at(self, at: datetime.datetime) -> celery_schedules.schedstate:
        """Say whether a fire is due at ``at`` (setting ``fire_time``) and in how many seconds to ask again."""
        model = self.model
        since = self.last_run_at
        if model.start_time is not None and not isinstance(self.timing, IntervalTiming):
            since = max(since, model.start_time - datetime.timedelta(microseconds=1))
        first = self.timing.next_after(since)
        if first is None:
            return celery_schedules.schedstate(False, NEVER_CHECK_TIMEOUT)
        if first > at:
            return celery_schedules.schedstate(False, (first - at).total_seconds())
        fire = self.timing.latest(since, at) or first
        late = (at - fire).total_seconds()
        missed = fire != first or late > MISFIRE_GRACE
        if missed and self.misfire == Misfire.SKIP and late > MISFIRE_GRACE:
            after = self.timing.next_after(fire)
            logger.info("Schedule %r: skipping the fires missed since %s (misfire skip).", self.name, since)
            return celery_schedules.schedstate(False, (after - at).total_seconds() if after else NEVER_CHECK_TIMEOUT)
        if missed and self.misfire == Misfire.RUN_ONCE:
            logger.info("Schedule %r: fires missed since %s; launching once, for %s.", self.name, since, fire)
        self.fire_time = fire
        after = self.timing.next_after(fire)
        return celery_schedules.schedstate(
            True, max(0.0, (after - at).total_seconds()) if after else NEVER_CHECK_TIMEOUT
        )

    def __next__(self) -> ScheduleEntry:
        if self.timing is None or self.fire_time is None:
            return super().__next__()
        self.model.last_run_at = self.fire_time
        self.model.total_run_count += 1
        self.model.no_changes = True
        # A copy, not a new entry read from the model: nothing to parse again at every fire.
        entry = copy.copy(self)
        entry.last_run_at = self.fire_time
        entry.total_run_count = self.model.total_run_count
        entry.fire_time = None
        return entry

    next = __next__


class DatabaseScheduler(_DatabaseScheduler):
    """django-celery-beat's DatabaseScheduler with computed fire times; a tick that loses the database waits.

    django-celery-beat catches database errors where it checks for schedule
    changes and where it writes entries, not where it then reloads the
    schedule: the database going away between the two (a restart) raised
    out of ``tick`` and stopped beat, and every schedule with it. Here such
    a tick is logged, its connection dropped, the next tick comes after
    RETRY_AFTER seconds and reloads the whole schedule (through
    ``_last_full_sync``).
    """

    Entry = ScheduleEntry
    # Seconds between writes of last_run_at (one batch of WRITE_LAST_RUN).
    sync_every = 15

    def __init__(self, *args, **kwargs) -> None:
        self._changes_checked_at: float | None = None
        self._checked_this_tick = False
        self._sent_since_check = 0
        self._heap_of: dict | None = None
        self._fired: Counter[str] = Counter()
        super().__init__(*args, **kwargs)

    def tick(self, *args, **kwargs):
        self._checked_this_tick = False
        try:
            return super().tick(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            logger.warning("Database unavailable while scheduling (%s); trying again in %gs.", exc, RETRY_AFTER)
            drop_connection()
            self._last_full_sync = datetime.datetime.min  # reload everything next time
            return RETRY_AFTER

    def adjust(self, n: float | None, drift: float = 0.0) -> float | None:
        # Celery wakes 10 ms early for every entry; an entry due at a computed
        # fire time then answers "not yet" and beat spins until it is (about
        # a third of its CPU at 50 fires a second). Wake at the fire time.
        return n

    def enabled_models_qs(self):
        # All enabled rows, with their TaskHub schedule (misfire policy). Not
        # django-celery-beat's filter on crontab hours: fire times are computed
        # here, and an entry left out until a later reload would miss its fire.
        horizon = now() + datetime.timedelta(seconds=SCHEDULE_SYNC_MAX_INTERVAL)
        return (
            self.Model.objects.enabled()
            .select_related("taskhub_schedule")
            .exclude(clocked__isnull=False, clocked__clocked_time__gt=horizon)
        )

    def schedule_changed(self) -> bool:
        # django-celery-beat asks at every read of the schedule, several times
        # a tick, and a busy beat ticks for every fire: ask once a tick, and
        # once a CHANGES_EVERY while it is sending fires.
        at = time.monotonic()
        if self._checked_this_tick:
            return False
        recent = self._changes_checked_at is not None and at - self._changes_checked_at < CHANGES_EVERY
        if self._sent_since_check and recent:
            return False
        self._checked_this_tick = True
        self._changes_checked_at = at
        self._sent_since_check = 0
        return super().schedule_changed()

    def populate_heap(self, *args, **kwargs) -> None:
        super().populate_heap(*args, **kwargs)
        self._heap_of = self._schedule

    def schedules_equal(self, *args, **kwargs) -> bool:
        # The heap is rebuilt when the schedule was reloaded (a new dict), not
        # after comparing every entry with its copy at every tick.
        if self._heap_invalidated:
            self._heap_invalidated = False
            return False
        return self._heap_of is not None and self._schedule is self._heap_of

    def reserve(self, entry: ModelEntry) -> ModelEntry:
        new_entry = super().reserve(entry)
        self._fired[new_entry.name] += 1
        self._sent_since_check += 1
        return new_entry

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        fire_time = getattr(entry, "fire_time", None)
        if fire_time is not None and entry.task == BEAT_TASK:
            entry = copy.copy(entry)
            entry.kwargs = {**entry.kwargs, "fire_time": fire_time.isoformat(), "schedule_id": entry.model.pk}
        return super().apply_async(entry, producer, advance=advance, **kwargs)

    def sync(self) -> None:
        if not self._dirty or self._schedule is None:
            return
        names, self._dirty = self._dirty, set()
        fired, self._fired = self._fired, Counter()
        entries = [self._schedule[name] for name in names if name in self._schedule]
        try:
            close_old_connections()
            write_last_runs(entries, fired)
        except (DatabaseError, InterfaceError) as exc:
            logger.warning("Could not write when schedules last fired (%s); trying again later.", exc)
            self._dirty |= names
            self._fired.update(fired)


# Write one entry's last fire time and fire count; never move a later last_run_at
# back (an edit set it to now), nor give a disabled row one (enabling starts from now).
WRITE_LAST_RUN = (
    f"UPDATE {PeriodicTask._meta.db_table} SET last_run_at = %s, total_run_count = total_run_count + %s "
    "WHERE id = %s AND enabled AND (last_run_at IS NULL OR last_run_at < %s)"
)


def write_last_runs(entries: list[ModelEntry], fired: Counter[str]) -> None:
    """Write the entries' last fire times and fire counts: WRITE_LAST_RUN for each, in one transaction."""
    rows = []
    for entry in entries:
        model = entry.model
        if model.last_run_at is not None:
            at = connection.ops.adapt_datetimefield_value(maybe_make_aware(model.last_run_at))
            rows.append((at, fired.get(entry.name, 0), model.pk, at))
    if not rows:
        return
    # executemany: one pipelined batch on PostgreSQL, not a round trip per row.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(WRITE_LAST_RUN, rows)
