"""Soak: many trivial executions through two workers while workers and the broker keep failing.

Run with ``python -m bench.soak`` (not part of the test suite). It creates a
database of its own on the server of DATABASE_URL (``<name>_soak``) and starts
its own redis-server (no persistence) on a spare port, two ``celery worker``
processes (one pool process each) and ``celery beat``. It launches
SOAK_EXECUTIONS (10000) executions of a command that only leaves a marker
file; every SOAK_KILL_EVERY (20) seconds it SIGKILLs a worker while one of its
commands runs and starts it again, and it restarts Redis once. Then it checks:

- every execution ends terminal, nothing is stuck pending or running;
- the commands that ran (marker files) are the attempts recorded as started,
  but for attempts killed between their claim and their command's start;
- no attempt ran twice, no run succeeded twice;
- no command process is left behind.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from testsupport import prepare_var_dir
from testsupport.databases import create_database, with_path
from testsupport.processes import BEAT_READY, WORKER_READY, CeleryProcess, beat_argv, worker_argv
from testsupport.proctable import descends_from, processes_of_task
from testsupport.servers import RedisServer

EXECUTIONS = int(os.environ.get("SOAK_EXECUTIONS", "10000"))
KILL_EVERY = float(os.environ.get("SOAK_KILL_EVERY", "20"))
# Recovery intervals for the run (seconds): short, so a lost attempt is
# noticed and a lost message re-sent within the run.
RECOVERY_ENV = {"TASKHUB_LOST_AFTER": "10", "TASKHUB_REQUEUE_AFTER": "10", "TASKHUB_HEARTBEAT": "2"}
TASK_NAME = "soak-marker"


def _fresh_database(server_url: str) -> str:
    name = (urlsplit(server_url).path.lstrip("/") or "taskhub") + "_soak"
    create_database(with_path(server_url, "/postgres"), name)
    return with_path(server_url, "/" + name)


def _soak_processes() -> list[int]:
    """Live processes started for the soak's task (found by TASKHUB_TASK in their environment)."""
    return processes_of_task(TASK_NAME)


def _runs_command(pool_process) -> bool:
    """Return True if the pool process has a command running (its other child is its group watcher)."""
    try:
        return any(child.name() in ("sh", "mktemp") for child in pool_process.children())
    except psutil.Error:
        return False


def _freeze_mid_run(worker_pid: int, deadline: float) -> bool:
    """Stop (SIGSTOP) the worker's pool processes at a moment one of them runs a command.

    Freezing first and looking second makes the moment exact: a frozen pool
    process cannot record its command's outcome before the SIGKILL that
    follows takes the worker (and, through the parent-death signal, the pool).
    Return False if no command ran before ``deadline`` (the pool is left running).
    """
    pool = psutil.Process(worker_pid).children()
    while time.monotonic() < deadline:
        for process in pool:
            os.kill(process.pid, signal.SIGSTOP)
        if any(_runs_command(process) for process in pool):
            return True
        for process in pool:
            os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.003)
    return False


def main() -> None:
    server_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/taskhub")
    if not server_url.startswith(("postgres://", "postgresql://")):
        sys.exit("the soak needs DATABASE_URL=postgres://… (a database of its own is created on that server)")
    work = Path(tempfile.mkdtemp(prefix="taskhub-soak-"))
    markers = work / "markers"
    markers.mkdir()
    redis_server = RedisServer(work / "redis").start()
    env = {
        **os.environ,
        **RECOVERY_ENV,
        "DATABASE_URL": _fresh_database(server_url),
        "CELERY_BROKER_URL": redis_server.url,
        "TASKHUB_VAR_DIR": str(work / "var"),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update(env)

    import django

    django.setup()
    prepare_var_dir()
    from django.core.management import call_command
    from django.db import transaction

    call_command("migrate", interactive=False, verbosity=0)

    from executions.models import Status, TaskExecution
    from taskhub.models import Task
    from taskhub.services import launch

    def worker(n: int) -> CeleryProcess:
        argv = worker_argv(hostname=f"soak{n}@%h", concurrency=1)
        return CeleryProcess(argv, env=env, log_path=work / f"worker{n}.log", ready=WORKER_READY)

    workers = [worker(1), worker(2)]
    beat = CeleryProcess(beat_argv(), env=env, log_path=work / "beat.log", ready=BEAT_READY)
    for proc in [*workers, beat]:
        proc.start()

    task = Task.objects.create(
        name=TASK_NAME,
        command="""sh -c 'mktemp "$SOAK_MARKERS/$TASKHUB_EXECUTION_ID.XXXXXX" >/dev/null'""",
        env={"SOAK_MARKERS": str(markers)},
        timeout=60,
        kill_grace=1,
        retry_count=5,
        retry_delay=1,
    )

    stop_chaos = threading.Event()
    kills = []
    orphans_after_kill: set[int] = set()
    redis_restarts = []
    started = time.monotonic()

    def chaos() -> None:
        turn = 0
        while not stop_chaos.wait(KILL_EVERY):
            victim = workers[turn % 2]
            turn += 1
            # Kill it while one of its commands runs, the moment that matters
            # (a timer alone tends to fire while the worker waits on the broker).
            _freeze_mid_run(victim.proc.pid, time.monotonic() + 5)
            victim.kill_main()
            kills.append(time.monotonic() - started)
            # Whatever the killed worker was running must be gone within moments.
            time.sleep(2)
            alive = {w.proc.pid for w in workers if w.proc and w.proc.poll() is None}
            orphans_after_kill.update(pid for pid in _soak_processes() if not descends_from(pid, alive))
            victim.start()
            if len(kills) == 3 and not redis_restarts:
                redis_server.restart()
                redis_restarts.append(time.monotonic() - started)

    chaos_thread = threading.Thread(target=chaos, daemon=True)
    chaos_thread.start()

    batch = 500
    for first in range(0, EXECUTIONS, batch):
        with transaction.atomic():
            for _ in range(min(batch, EXECUTIONS - first)):
                launch(task)
    submitted_in = time.monotonic() - started
    print(f"submitted {EXECUTIONS} executions in {submitted_in:.0f}s", flush=True)

    # Wait until every run has ended (its last attempt terminal and no attempt
    # pending or running), or until nothing has moved for a long while.
    last_change, last_active = time.monotonic(), None
    while True:
        active = TaskExecution.objects.filter(task=task, status__in=[Status.PENDING, Status.RUNNING]).count()
        if active == 0:
            break
        if active != last_active:
            last_change, last_active = time.monotonic(), active
        if time.monotonic() - last_change > 180:
            break
        time.sleep(1)
    wall = time.monotonic() - started
    stop_chaos.set()
    chaos_thread.join(KILL_EVERY + 90)

    rows = list(TaskExecution.objects.filter(task=task).values("pk", "run_id", "attempt", "status", "started_at"))
    runs: dict[object, list[dict]] = {}
    for row in rows:
        runs.setdefault(row["run_id"], []).append(row)
    ran = Counter(name.split(".", 1)[0] for name in os.listdir(markers))
    started_attempts = {str(r["pk"]) for r in rows if r["started_at"] is not None}
    final = [max(attempts, key=lambda r: r["attempt"]) for attempts in runs.values()]
    succeeded = sum(1 for r in final if r["status"] == Status.SUCCEEDED)
    lost_and_retried = sum(
        1
        for attempts in runs.values()
        for r in attempts
        if r["status"] == Status.LOST and any(o["attempt"] > r["attempt"] for o in attempts)
    )
    lost_not_retried = sum(
        1
        for attempts in runs.values()
        for r in attempts
        if r["status"] == Status.LOST and not any(o["attempt"] > r["attempt"] for o in attempts)
    )
    attempts_ran_twice = sum(1 for count in ran.values() if count > 1)
    runs_succeeded_twice = sum(
        1 for attempts in runs.values() if sum(r["status"] == Status.SUCCEEDED for r in attempts) > 1
    )
    ran_not_started = set(ran) - started_attempts
    started_not_ran = started_attempts - set(ran)
    lost_ids = {str(r["pk"]) for r in rows if r["status"] == Status.LOST}
    stuck = sum(1 for r in rows if r["status"] in (Status.PENDING, Status.RUNNING))
    left_running = _soak_processes()

    for proc in [beat, *workers]:
        proc.stop()
    redis_server.kill()

    print()
    print(f"submitted            {EXECUTIONS}")
    print(f"succeeded            {succeeded}")
    print(f"lost-and-retried     {lost_and_retried}   (lost with no attempt left: {lost_not_retried})")
    print(f"duplicated           {attempts_ran_twice + runs_succeeded_twice}   "
          f"(attempts whose command ran twice: {attempts_ran_twice}; runs that succeeded twice: {runs_succeeded_twice})")  # fmt: skip
    print(f"stuck                {stuck}")
    print(f"orphans              {len(orphans_after_kill) + len(left_running)}   "
          f"(found 2s after a kill: {len(orphans_after_kill)}; left at the end: {len(left_running)})")  # fmt: skip
    print(f"wall time            {wall:.0f}s")
    print()
    print(f"attempts in all      {len(rows)}")
    print(f"commands that ran    {sum(ran.values())}   (marker files)")
    print(f"attempts started     {len(started_attempts)}")
    print(f"  started, command never ran (killed between claim and start; all lost: "
          f"{started_not_ran <= lost_ids})   {len(started_not_ran)}")  # fmt: skip
    print(f"  ran without a recorded start   {len(ran_not_started)}")
    print(f"worker SIGKILLs      {len(kills)}   Redis restarts: {len(redis_restarts)}")
    print(f"logs and markers in  {work}")
    ok = (
        stuck == 0
        and succeeded == EXECUTIONS
        and attempts_ran_twice == 0
        and runs_succeeded_twice == 0
        and not ran_not_started
        and started_not_ran <= lost_ids
        and not orphans_after_kill
        and not left_running
    )
    print("RESULT", "ok" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
