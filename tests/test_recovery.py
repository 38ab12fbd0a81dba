"""Fault injection with real processes: workers killed or stopped, Redis and PostgreSQL restarted.

Each test counts what actually ran with marker files: every command run
leaves one file named after its execution (attempt) id, so a second run of an
attempt shows as a second file. Tests that restart a server start their own
on a spare port (tests/servers.py), never the shared ones.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import dj_database_url
import pytest
from django.db import connections
from django.db.utils import load_backend
from django.utils.timezone import now

from executions.models import Status, TaskExecution, Trigger
from executions.tasks import run_execution
from taskhub.models import Task
from taskhub.services import launch
from tests.conftest import ROOT, group_members, processes_of_execution, subprocess_env, wait_for
from testsupport.servers import PostgresCluster, RedisServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

# Leave one marker file per run of the command, then wait while $HOLD exists
# (tests release held commands by deleting it). Attempts after the first do
# not wait, so a retried attempt finishes at once.
MARKED = (
    """sh -c 'mktemp "$MARKERS/$TASKHUB_EXECUTION_ID.XXXXXX" >/dev/null; """
    """[ "$TASKHUB_ATTEMPT" -gt 1 ] && exit 0; while [ -e "$HOLD" ]; do sleep 0.1; done'"""
)


class Markers:
    """The marker directory and the file whose existence holds commands."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory / "markers"
        self.dir.mkdir()
        self.hold = directory / "hold"
        self.hold.touch()

    @property
    def env(self) -> dict[str, str]:
        return {"MARKERS": str(self.dir), "HOLD": str(self.hold)}

    def release(self) -> None:
        self.hold.unlink(missing_ok=True)

    def runs(self) -> Counter[int]:
        """How many times the command ran, per execution id."""
        return Counter(int(name.split(".", 1)[0]) for name in os.listdir(self.dir))


@pytest.fixture
def markers(tmp_path) -> Markers:
    return Markers(tmp_path)


def all_terminal(queryset, count: int, timeout: float = 60, what: str = "") -> list[TaskExecution]:
    """Wait until ``count`` runs have ended (no attempt pending or running); return every attempt."""

    def done():
        rows = list(queryset.order_by("run_id", "attempt"))
        runs = {r.run_id for r in rows}
        return rows if len(runs) >= count and all(r.is_terminal for r in rows) else None

    return wait_for(done, timeout=timeout, interval=0.2, what=what or f"{count} runs to end")


def assert_each_attempt_ran_at_most_once_and_every_run_succeeded_once(rows, runs: Counter[int]) -> None:
    started = {r.pk for r in rows if r.started_at is not None}
    assert max(runs.values()) == 1, {pk: n for pk, n in runs.items() if n > 1}
    assert set(runs) == started  # what ran is what was recorded as started
    by_run: dict[uuid.UUID, list[TaskExecution]] = {}
    for row in rows:
        by_run.setdefault(row.run_id, []).append(row)
    for attempts in by_run.values():
        assert [a.status for a in attempts].count(Status.SUCCEEDED) == 1, attempts
        assert attempts[-1].status == Status.SUCCEEDED


def held_commands_running(queryset, count: int, timeout: float = 30) -> list[TaskExecution]:
    """Wait until ``count`` executions are running with their command started; return them."""

    def running():
        rows = [r for r in queryset.filter(status=Status.RUNNING) if processes_of_execution(r.pk)]
        return rows if len(rows) >= count else None

    return wait_for(running, timeout=timeout, interval=0.1, what=f"{count} commands to run")


# -- a worker killed with SIGKILL ------------------------------------------------------------


def test_a_worker_killed_with_sigkill_leaves_no_command_behind_and_on_restart_hands_its_runs_to_new_attempts(
    celery_processes, make_task, markers
):
    name = f"victim-{os.getpid()}@%h"
    env = {"TASKHUB_REQUEUE_AFTER": "3", "TASKHUB_LOST_AFTER": "60"}
    worker = celery_processes(name=name, env=env)
    celery_processes.beat(env=env)
    task = make_task(command=MARKED, env=markers.env, retry_count=1, retry_delay=0, timeout=120)
    launched = [launch(task) for _ in range(12)]
    running = held_commands_running(TaskExecution.objects.filter(task=task), 2)
    groups = {r.pk: r.pid or processes_of_execution(r.pk)[0] for r in running}

    os.kill(worker.pid, signal.SIGKILL)

    # The commands die with the worker: every process of their groups, at once.
    wait_for(
        lambda: all(not processes_of_execution(pk) for pk in groups),
        timeout=5,
        what="the killed worker's commands to be stopped",
    )
    wait_for(
        lambda: all(group_members(pgid) == [] for pgid in groups.values()),
        timeout=1,
        what="every process of their groups to be gone",
    )
    for row in running:
        row.refresh_from_db()
        assert row.status == Status.RUNNING  # nobody has noticed yet (the reaper waits 60 s)

    celery_processes(name=name, env=env, purge=False)
    markers.release()
    rows = all_terminal(TaskExecution.objects.filter(task=task), len(launched), timeout=60)

    lost = [r for r in rows if r.status == Status.LOST]
    assert sorted(r.pk for r in lost) == sorted(groups)
    for row in lost:
        assert f"worker {row.worker} restarted" in row.error
        assert TaskExecution.objects.get(run_id=row.run_id, attempt=2).status == Status.SUCCEEDED
    assert_each_attempt_ran_at_most_once_and_every_run_succeeded_once(rows, markers.runs())
    assert len(rows) == len(launched) + len(lost)


def test_a_worker_that_dies_for_good_has_its_executions_marked_lost_by_the_reaper_and_retried_elsewhere(
    celery_processes, make_task, markers
):
    env = {"TASKHUB_LOST_AFTER": "6", "TASKHUB_HEARTBEAT": "1", "TASKHUB_REQUEUE_AFTER": "60"}
    doomed = celery_processes(queues="doomed", env=env)
    task = make_task(command=MARKED, env=markers.env, retry_count=1, retry_delay=0, queue="doomed", timeout=120)
    launched = [launch(task) for _ in range(2)]
    running = held_commands_running(TaskExecution.objects.filter(task=task), 2)
    doomed_name = running[0].worker

    os.kill(doomed.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: all(not processes_of_execution(r.pk) for r in running), timeout=5, what="no orphans")
    celery_processes(queues="doomed,default", env=env)  # beat's recovery check goes to `default`
    celery_processes.beat(env=env)
    markers.release()

    rows = all_terminal(TaskExecution.objects.filter(task=task), len(launched), timeout=60)
    noticed_after = max(r.finished_at for r in rows if r.status == Status.LOST)

    lost = [r for r in rows if r.status == Status.LOST]
    assert len(lost) == 2
    for row in lost:
        assert f"worker {doomed_name} stopped answering" in row.error
        assert row.attempt == 1
    # Within LOST_AFTER of the last heartbeat, plus half an interval for the check, plus slack.
    assert (time.monotonic() - killed_at) < 60
    assert all((noticed_after - r.heartbeat_at).total_seconds() < 6 + 3 + 6 for r in lost)
    assert_each_attempt_ran_at_most_once_and_every_run_succeeded_once(rows, markers.runs())


# -- duplicate messages ---------------------------------------------------------------------------


@pytest.mark.parametrize("copies", [2, 3])
def test_the_same_run_message_delivered_several_times_runs_each_command_once(
    celery_processes, make_task, markers, copies
):
    workers = [celery_processes(concurrency=2), celery_processes(concurrency=2)]
    markers.release()
    task = make_task(command=MARKED, env=markers.env)
    launched = [launch(task) for _ in range(12)]
    for execution in launched:
        for _ in range(copies - 1):
            # A redelivery carries the same task id.
            run_execution.apply_async(args=[execution.pk], queue="default", task_id=execution.celery_task_id)

    rows = all_terminal(TaskExecution.objects.filter(task=task), len(launched))
    # One more copy after the runs ended: a late redelivery.
    run_execution.apply_async(args=[launched[0].pk], queue="default")
    wait_for(
        lambda: sum(w.log().count("duplicate or late message ignored") for w in workers) >= 12 * (copies - 1) + 1,
        timeout=30,
        what="every duplicate to be seen and ignored",
    )

    assert len(rows) == 12  # no extra attempts
    assert_each_attempt_ran_at_most_once_and_every_run_succeeded_once(rows, markers.runs())
    assert sum(markers.runs().values()) == 12


# -- warm shutdown -----------------------------------------------------------------------------------


def test_a_warm_shutdown_lets_short_commands_finish_and_hands_long_ones_back_to_run_again(
    celery_processes, make_task, markers, tmp_path
):
    grace = 6
    env = {"TASKHUB_SHUTDOWN_GRACE": str(grace)}
    stopping = celery_processes(queues="shut", concurrency=4, env=env)
    short = make_task(
        name="short",
        command="""sh -c 'mktemp "$MARKERS/$TASKHUB_EXECUTION_ID.XXXXXX" >/dev/null; sleep 3'""",
        env=markers.env,
        queue="shut",
    )
    # retry_count=0: a hand-back is not a retry, the run must go on all the same.
    long = make_task(name="long", command=MARKED, env=markers.env, queue="shut", kill_grace=1, timeout=120)
    long_runs = [launch(long) for _ in range(2)]
    held_commands_running(TaskExecution.objects.filter(task=long), 2)
    short_runs = [launch(short) for _ in range(2)]
    held_commands_running(TaskExecution.objects.filter(task=short), 2, timeout=10)
    queued = [launch(long) for _ in range(6)]

    asked = time.monotonic()
    stopping.proc.send_signal(signal.SIGTERM)
    stopping.proc.wait(grace + 1 + 15)
    took = time.monotonic() - asked

    assert took >= grace - 0.5  # the long commands got their grace
    assert took < grace + 1 + 10  # stopped after it: grace + kill_grace + a poll, plus slack
    for execution in long_runs:
        assert processes_of_execution(execution.pk) == []
        execution.refresh_from_db()
        assert execution.status == Status.LOST
        assert execution.handed_back and execution.error.startswith("Handed back:")
        assert f"worker {execution.worker} shut down" in execution.error
        nxt = TaskExecution.objects.get(run_id=execution.run_id, attempt=2)
        assert nxt.status == Status.PENDING and nxt.trigger == Trigger.RETRY
    for execution in short_runs:
        execution.refresh_from_db()
        assert execution.status == Status.SUCCEEDED
    for execution in queued:
        execution.refresh_from_db()
        assert execution.status == Status.PENDING  # not started during the shutdown

    celery_processes(queues="shut", concurrency=4, env=env, purge=False)
    markers.release()
    rows = all_terminal(TaskExecution.objects.filter(task__in=[short, long]), 10, timeout=60)
    assert_each_attempt_ran_at_most_once_and_every_run_succeeded_once(rows, markers.runs())
    assert len(rows) == 10 + len(long_runs)  # one extra attempt per handed-back run


# -- Redis restarted ----------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


def _send_via(broker_url: str, execution: TaskExecution, **options: object) -> None:
    app = run_execution.app
    with app.connection_for_write(broker_url) as conn:
        producer = app.amqp.Producer(conn)
        run_execution.apply_async(args=[execution.pk], queue="default", producer=producer, **options)


def test_restarting_redis_loses_no_queued_or_delayed_work_and_runs_each_command_once(
    celery_processes, make_task, markers, own_redis
):
    env = {"CELERY_BROKER_URL": own_redis.url, "TASKHUB_REQUEUE_AFTER": "3", "TASKHUB_LOST_AFTER": "60"}
    celery_processes(concurrency=2, env=env)
    celery_processes.beat(env=env)
    task = make_task(command=MARKED, env=markers.env, timeout=120)
    at = now()

    def row(delay: float, sent: bool) -> TaskExecution:
        due = at + timedelta(seconds=delay)
        execution = TaskExecution.objects.create(
            task=task, run_id=uuid.uuid4(), attempt=1, status=Status.PENDING, trigger=Trigger.API,
            scheduled_for=due, enqueued_at=at if sent else None, celery_task_id=str(uuid.uuid4()),
        )  # fmt: skip
        if sent:
            _send_via(own_redis.url, execution, countdown=delay or None, task_id=execution.celery_task_id)
        return execution

    queued = [row(0, sent=True) for _ in range(12)]
    in_broker = [row(8, sent=True) for _ in range(4)]  # a countdown the worker holds
    in_database = [row(8, sent=False) for _ in range(4)]  # a long delay kept out of the broker
    held_commands_running(TaskExecution.objects.filter(task=task), 2)
    assert own_redis.queued() >= 8  # work waiting in the broker when it goes

    import redis

    first_life = redis.Redis(port=own_redis.port).info("server")["run_id"]
    own_redis.restart()  # nothing on disk: every message is gone
    # A new server that kept nothing. (Its queues are not checked for empty:
    # beat's reconciler may already have sent the due rows again.)
    assert redis.Redis(port=own_redis.port).info("server")["run_id"] != first_life
    markers.release()

    everything = queued + in_broker + in_database
    rows = all_terminal(TaskExecution.objects.filter(task=task), len(everything), timeout=90)
    assert_each_attempt_ran_at_most_once_and_every_run_succeeded_once(rows, markers.runs())
    assert len(rows) == len(everything)
    for execution in in_broker + in_database:
        execution.refresh_from_db()
        assert execution.started_at >= execution.scheduled_for  # not run before it was due


# -- PostgreSQL restarted -----------------------------------------------------------------------------


@pytest.fixture
def own_postgres():
    """A PostgreSQL cluster of this test's own, migrated, reachable as the ``fault`` database alias."""
    cluster = PostgresCluster()
    try:
        cluster.init()
        url = cluster.create_database("taskhub")
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=subprocess_env(DATABASE_URL=url),
            check=True,
        )
        # A connection made here rather than declared in settings: the test
        # machinery lets such dynamically created connections through.
        cfg = connections.configure_settings(
            {"default": connections.settings["default"], "fault": dj_database_url.parse(url)}
        )["fault"]
        connections["fault"] = load_backend(cfg["ENGINE"]).DatabaseWrapper(cfg, "fault")
        yield cluster, url
    finally:
        if hasattr(connections._connections, "fault"):
            connections["fault"].close()
            del connections["fault"]
        cluster.remove()


@pytest.mark.parametrize(
    "pool",
    [
        pytest.param({"concurrency": 2}, id="prefork"),
        # Pooled connections, not checked when borrowed: all dead after the
        # restart, the first error has the pool checked.
        pytest.param(
            {
                "pool": "threads",
                "concurrency": 8,
                "env": {"TASKHUB_DB_POOL": "1", "TASKHUB_THREAD_DB_CONNECTIONS": "3"},
            },
            id="threads",
        ),
    ],
)
def test_restarting_postgresql_while_commands_run_loses_no_outcome_and_worker_and_beat_carry_on(
    celery_processes, markers, own_postgres, pool
):
    cluster, url = own_postgres
    env = {"DATABASE_URL": url, "TASKHUB_LOST_AFTER": "60", "TASKHUB_REQUEUE_AFTER": "4"}
    worker = celery_processes(**{**pool, "env": {**env, **pool.get("env", {})}})
    beat = celery_processes.beat(env=env)
    task = Task.objects.using("fault").create(
        name="through-an-outage",
        command="""sh -c 'mktemp "$MARKERS/$TASKHUB_EXECUTION_ID.XXXXXX" >/dev/null; sleep 2'""",
        env=markers.env,
        timeout=60,
    )

    def send_one() -> TaskExecution:
        # A pending row in the fault database and its message, sent by hand.
        execution = TaskExecution.objects.using("fault").create(
            task=task,
            run_id=uuid.uuid4(),
            attempt=1,
            status=Status.PENDING,
            trigger=Trigger.API,
            scheduled_for=now(),
            enqueued_at=now(),
            celery_task_id=str(uuid.uuid4()),
        )
        run_execution.apply_async(args=[execution.pk], queue="default", task_id=execution.celery_task_id)
        return execution

    for _ in range(8):
        send_one()
    wait_for(lambda: len(markers.runs()) >= 2, timeout=30, what="two commands to start")

    connections["fault"].close()
    cluster.stop()
    # The two commands finish while the database is down; their outcomes wait.
    running = list(markers.runs())
    wait_for(
        lambda: all(processes_of_execution(pk) == [] for pk in running),
        timeout=20,
        what="the running commands to end while the database is down",
    )
    if "pool" not in pool:
        # A prefork process retries its write; a thread waits for the pool to reconnect.
        wait_for(
            lambda: worker.log().count("Database unavailable while recording the outcome") >= 2,
            timeout=20,
            what="the worker to retry the final writes",
        )
    cluster.start()
    beat_seen, worker_seen = len(beat.log()), len(worker.log())

    rows = all_terminal(TaskExecution.objects.using("fault").filter(task=task), 8, timeout=90)
    assert_each_attempt_ran_at_most_once_and_every_run_succeeded_once(rows, markers.runs())
    assert {r.status for r in rows} == {Status.SUCCEEDED}
    assert len(rows) == 8
    if "pool" in pool:
        # The pool, whose connections all died, serves new executions.
        after = send_one()
        (done,) = all_terminal(TaskExecution.objects.using("fault").filter(pk=after.pk), 1, timeout=30)
        assert done.status == Status.SUCCEEDED
        assert worker.proc.poll() is None
        return
    # Both survived, and the recovery checks run again.
    wait_for(
        lambda: (
            "Sending due task taskhub-reap-lost" in beat.log()[beat_seen:]
            and re.search(r"Task executions\.reap_lost\[[^\]]+\] succeeded", worker.log()[worker_seen:])
        ),
        timeout=20,
        what="beat to send and the worker to run a recovery check after the restart",
    )
    assert worker.proc.poll() is None and beat.proc.poll() is None
