"""The schedules figure: many enabled schedules firing once a minute, each fire launched exactly once, and how late.

BENCH_SCALE scales the number of schedules (10,000 at 1); BENCH_SCHEDULE_MINUTES
(default 5) is how many minutes are measured. The schedules fire every 60 s,
spread evenly over the minute (each its own ``start_time``), so beat sends a
steady 1/60 of them each second. One real ``celery beat`` (TaskHub's
scheduler) sends the fires; threads-pool workers launch them, one per core
(BENCH_LAUNCH_PROCESSES) with BENCH_LAUNCH_THREADS threads each (default 8):
each launch mostly waits for its commit and its message.
The launched executions go to a queue nobody serves (``bench-sink``): the
figure is about scheduling, not about running ``true`` 170 times a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.db import connection
from django.utils.timezone import now
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

from bench.harness import Worker, percentile
from executions.models import TaskExecution
from taskhub.models import Misfire, Schedule, ScheduleKind, Task
from taskhub.schedules import BEAT_TASK, IntervalTiming
from testsupport.processes import CeleryProcess, beat_argv
from testsupport.waiting import wait_for

SINK = "bench-sink"
SCHEDULES_PER_TASK = 10
LAUNCH_THREADS = int(os.environ.get("BENCH_LAUNCH_THREADS", "8"))
# One threads-pool launching worker per core, as operations.md advises: one such process runs its
# threads one at a time, and alone it sat at 88% of a core here with fires falling 8 s behind.
LAUNCH_PROCESSES = int(os.environ.get("BENCH_LAUNCH_PROCESSES", str(os.cpu_count() or 1)))
# Seconds between beat's start and the measured window: loading every schedule, first fires.
WARM_UP = 30
# The recovery checks must not re-send the fires' executions, which wait in a queue nobody serves.
PROCESS_ENV = {"TASKHUB_REQUEUE_AFTER": "86400"}


def _scale() -> float:
    return float(os.environ.get("BENCH_SCALE", "1"))


def _make_schedules(n: int, base: datetime) -> list[tuple[int, datetime]]:
    """Create ``n`` enabled schedules every 60 s, the i-th anchored i/n of a minute after ``base``; return (id, anchor)."""
    tasks = Task.objects.bulk_create(
        Task(name=f"bench-schedule-{i}", command="true", queue=SINK, timeout=60)
        for i in range(max(1, n // SCHEDULES_PER_TASK))
    )
    minute = IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS)
    started = now()
    anchors = [base + timedelta(microseconds=round(60e6 * i / n)) for i in range(n)]
    rows = PeriodicTask.objects.bulk_create(
        PeriodicTask(
            name=f"bench schedule {i}",
            task=BEAT_TASK,
            kwargs=json.dumps({"task_id": tasks[i % len(tasks)].pk}),
            interval=minute,
            start_time=anchor,
            last_run_at=started,
        )
        for i, anchor in enumerate(anchors)
    )
    Schedule.objects.bulk_create(
        Schedule(
            task=tasks[i % len(tasks)], kind=ScheduleKind.EVERY, expression="60s", misfire=Misfire.RUN_ONCE,
            periodic_task=row,
        )
        for i, row in enumerate(rows)
    )  # fmt: skip
    PeriodicTasks.update_changed()
    return [(row.pk, anchor) for row, anchor in zip(rows, anchors, strict=True)]


def _expected(schedules: list[tuple[int, datetime]], start: datetime, end: datetime) -> set[tuple[int, datetime]]:
    every = timedelta(seconds=60)
    out = set()
    for pk, anchor in schedules:
        fire = IntervalTiming(every, anchor).next_after(start - timedelta(microseconds=1))
        while fire < end:
            out.add((pk, fire))
            fire += every
    return out


def _launched(start: datetime, end: datetime) -> list[tuple[int, datetime, datetime]]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT schedule_id, fire_time, created_at FROM {TaskExecution._meta.db_table} "
            "WHERE fire_time >= %s AND fire_time < %s AND attempt = 1",
            [start, end],
        )
        return cursor.fetchall()


def _cpu(process: CeleryProcess) -> float:
    return sum(p.cpu_times().user + p.cpu_times().system for p in process.processes())


def schedules():
    from bench.figures import row

    n = max(60, int(10_000 * _scale()))
    minutes = int(os.environ.get("BENCH_SCHEDULE_MINUTES", "5"))
    var_dir = Path(os.environ["TASKHUB_VAR_DIR"])
    base = now().replace(second=0, microsecond=0)
    t0 = time.monotonic()
    schedules = _make_schedules(n, base)
    print(f"   {n:,} schedules made in {time.monotonic() - t0:.1f}s", flush=True)

    beat = CeleryProcess(
        beat_argv(loglevel="WARNING"),
        env={**os.environ, **PROCESS_ENV},
        log_path=var_dir / "beat-schedules.log",
        ready=lambda process: True,
    )
    # Launching is mostly waiting on the database and the broker: threads-pool workers, which borrow their
    # connections from a pool (as the operations doc advises); without it each launch would open a
    # connection of its own.
    workers = [
        Worker(
            f"bench-schedules-{i}",
            pool="threads",
            concurrency=LAUNCH_THREADS,
            env={**PROCESS_ENV, "TASKHUB_DB_POOL": "1"},
        )
        for i in range(LAUNCH_PROCESSES)
    ]
    with contextlib.ExitStack() as stack:
        for worker in workers:
            stack.enter_context(worker)
        beat.start()
        stack.callback(beat.stop)
        started = now()
        start = (started + timedelta(seconds=WARM_UP)).replace(microsecond=0)
        end = start + timedelta(minutes=minutes)
        time.sleep(max(0.0, (start - now()).total_seconds()))
        cpu_before, wall_before = _cpu(beat), time.monotonic()
        workers_before = sum(_cpu(w) for w in workers)
        with _profiled(beat, var_dir / "profile-beat.txt"), _profiled(workers[0], var_dir / "profile-launcher.txt"):
            time.sleep(max(0.0, (end - now()).total_seconds()))
        beat_cpu = (_cpu(beat) - cpu_before) / (time.monotonic() - wall_before)
        worker_cpu = (sum(_cpu(w) for w in workers) - workers_before) / (time.monotonic() - wall_before)
        expected = _expected(schedules, start, end)
        with contextlib.suppress(TimeoutError):
            # The last fires of the window, launched a little after it ends.
            wait_for(lambda: len(_launched(start, end)) >= len(expected), timeout=60, interval=1, what="the last fires")
        launched = _launched(start, end)
        beat_alive = beat.running()
    PeriodicTask.objects.filter(task=BEAT_TASK).update(enabled=False)
    _drop_sink()

    counts = Counter((pk, fire.astimezone(UTC)) for pk, fire, _ in launched)
    missing = len(expected - set(counts))
    twice = sum(1 for c in counts.values() if c > 1)
    unexpected = len(set(counts) - expected)
    lateness = [(created - fire).total_seconds() for _, fire, created in launched]
    p50, p99 = percentile(lateness, 50), percentile(lateness, 99)
    details = {
        "schedules": n,
        "minutes": minutes,
        "fires_expected": len(expected),
        "fires_launched": len(counts),
        "missing": missing,
        "launched_twice": twice,
        "unexpected": unexpected,
        "lateness_p50_s": round(p50, 3),
        "lateness_p99_s": round(p99, 3),
        "lateness_max_s": round(max(lateness, default=float("nan")), 3),
        "beat_cpu_pct_of_a_core": round(100 * beat_cpu, 1),
        "launching_processes": LAUNCH_PROCESSES,
        "worker_cpu_pct_of_a_core": round(100 * worker_cpu, 1),
        "beat_alive_at_end": beat_alive,
    }
    print(f"   {json.dumps(details)}", flush=True)
    if not beat_alive:
        print(beat.log()[-5000:], file=sys.stderr)
    label = f"{n:,} schedules × {minutes} min, {LAUNCH_PROCESSES} launching worker{'s' if LAUNCH_PROCESSES > 1 else ''}"
    exact = missing == 0 and twice == 0 and unexpected == 0
    return [
        row(f"schedules: {label}, fires launched exactly once", None, f"{len(counts):,}/{len(expected):,}",
            "all, none twice", exact),
        row(f"schedules: {label}, fire-to-launch lateness p50", None, p50, "—", None, "s"),
        row(f"schedules: {label}, fire-to-launch lateness p99", None, p99, "< 2 s", p99 < 2, "s"),
        row(f"schedules: {label}, beat CPU", None, round(100 * beat_cpu, 1), "—", None, "% of a core"),
    ], details  # fmt: skip


@contextlib.contextmanager
def _profiled(process: CeleryProcess, path: Path):
    """py-spy sampling ``process`` while the window runs (BENCH_PROFILE=1); yields the path of its report."""
    if os.environ.get("BENCH_PROFILE") != "1":
        yield None
        return
    spy = str(Path(sys.executable).with_name("py-spy"))
    proc = subprocess.Popen(
        [spy, "record", "-p", str(process.pid), "--nonblocking", "-r", "50", "-f", "raw", "-o", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield path
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        print(f"   profile: {path}", flush=True)


def _drop_sink() -> None:
    import redis

    client = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])
    for key in client.scan_iter(f"{SINK}*"):
        client.delete(key)
