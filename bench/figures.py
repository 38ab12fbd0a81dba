"""The figures of ``make bench``; each returns (table rows, details)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
import uuid
from urllib.parse import quote, urlsplit

import redis
from django.db import connection
from django.db.models import Count, Max, Min
from django.utils import timezone

from bench.baseline import QUEUES, TASKS
from bench.harness import Profiler, Worker, cpu_seconds, percentile
from executions.confine import live_processes
from executions.messaging import broker_priority
from executions.models import Status, TaskExecution
from taskhub.models import Task
from taskhub.services import launch
from testsupport.databases import create_database, drop_database, with_path
from testsupport.waiting import wait_for

SCALE = float(os.environ.get("BENCH_SCALE", "1"))
# The settings both sides run under: prefork, two processes, prefetch 1 (from settings).
PREFORK = {"pool": "prefork", "concurrency": 2}


def scaled(n: int, minimum: int = 5) -> int:
    return max(minimum, int(n * SCALE))


def row(figure: str, baseline_value, value, target: str, met: bool | None, unit: str = "", ratio=None) -> dict:
    if ratio is None and isinstance(baseline_value, (int, float)) and isinstance(value, (int, float)):
        ratio = value / baseline_value if baseline_value else None
    return {
        "figure": figure,
        "baseline": baseline_value,
        "taskhub": value,
        "ratio": ratio,
        "unit": unit,
        "target": target,
        "met": met,
    }


def _fmt(value, unit: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        text = f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.2f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return f"{text} {unit}".strip()


def render(rows: list[dict]) -> str:
    header = ("figure", "baseline", "TaskHub", "ratio", "target", "met")
    lines = [
        (
            r["figure"],
            _fmt(r["baseline"], r["unit"]),
            _fmt(r["taskhub"], r["unit"]),
            "—" if r["ratio"] is None else f"{r['ratio']:.2f}",
            r["target"],
            {True: "yes", False: "NO", None: "—"}[r["met"]],
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
    return "\n".join(out)


def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["BENCH_REPORT_URL"])


def _send_baseline(argv: list[str], key: str, *, flavour: str = "stock", **kwargs) -> None:
    """Send the baseline task through its own Celery app (plain Celery)."""
    TASKS[flavour].apply_async(args=[argv, key], kwargs=kwargs, queue=QUEUES[flavour], priority=broker_priority(5))


def _task(name: str, command: str, **fields) -> Task:
    fields.setdefault("timeout", 60)
    fields.setdefault("kill_grace", 1)
    task, _ = Task.objects.update_or_create(name=name, defaults={"command": command, **fields})
    return task


def _pg_counters() -> dict[str, int]:
    with connection.cursor() as cur:
        cur.execute(
            "SELECT sessions, xact_commit, tup_inserted, tup_updated, tup_returned + tup_fetched "
            "FROM pg_stat_database WHERE datname = current_database()"
        )
        sessions, commits, inserted, updated, read = cur.fetchone()
    return {"sessions": sessions, "commits": commits, "inserted": inserted, "updated": updated, "read": read}


def _pg_settled_counters() -> dict[str, int]:
    # Backends add their counters to pg_stat_database at most once a second,
    # and a backend that went idle sooner after its last report does so only
    # after PGSTAT_IDLE_INTERVAL (10 s): the workers' backends, just idle.
    time.sleep(10.5)
    with connection.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
    return _pg_counters()


def _pg_delta(before: dict[str, int], n: int) -> dict[str, float]:
    after = _pg_settled_counters()
    return {k: round((after[k] - before[k]) / n, 2) for k in before}


def _cpu_per(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    return {k: round((after[k] - before[k]) * 1000 / n, 2) for k in before}


def _finished_count(task: Task, first_id: int = 0) -> int:
    return TaskExecution.objects.filter(task=task, pk__gte=first_id, finished_at__isnull=False).count()


def _wait_all(task: Task, n: int, timeout: float, *, first_id: int = 0) -> None:
    """Wait until ``n`` executions of ``task`` (those from ``first_id`` on) have finished."""
    # Watch the newest row by its primary key, then count once: counting
    # every 50 ms would itself load PostgreSQL while it is measured. The
    # watch is one raw statement (about 0.05 ms of CPU): through the ORM,
    # compiling it cost about 0.5 ms every 20 ms, charged to TaskHub's side
    # (the baseline's side watches a Redis list). The count reads only the
    # rows from ``first_id`` on: counting the whole history after each
    # block read twice as many rows per execution as the execution itself.
    last = TaskExecution.objects.filter(task=task).order_by("-id").values_list("pk", flat=True).first()
    sql = f"SELECT finished_at IS NOT NULL FROM {TaskExecution._meta.db_table} WHERE id = %s"

    def finished() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(sql, [last])
            row = cursor.fetchone()
        return bool(row and row[0])

    wait_for(finished, timeout=timeout, interval=0.02, what=f"the last execution of {task}")
    wait_for(
        lambda: _finished_count(task, first_id) >= n, timeout=timeout, interval=0.05, what=f"{n} executions of {task}"
    )


# -- 1. throughput ----------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return percentile(values, 50)


# The sides of the throughput figure: the baseline on plain Celery (what the
# target is against), TaskHub, and TaskHub on PostgreSQL's asynchronous
# commit (what its three durable commits cost; not TaskHub's default).
SIDES = ("baseline", "taskhub", "taskhub_async")
TASKHUB_SIDES = ("taskhub", "taskhub_async")
ASYNC_COMMIT = "-c synchronous_commit=off"


def _async_commit_url(url: str) -> str:
    """``url`` with the connection option that makes every commit of its sessions asynchronous."""
    return f"{url}{'&' if '?' in url else '?'}options={quote(ASYNC_COMMIT)}"


def _flush_wait_ms(url: str, n: int = 200) -> float:
    """How much longer a commit takes when it waits for its WAL flush, now, in ms (mean of ``n``).

    One-row INSERTs into the database at ``url`` (a database of their own,
    so that the figure's counters of TaskHub's database stay its own; the
    WAL is the server's), committed with and without waiting for the flush,
    alternating: the difference is what each of TaskHub's durable commits
    waits for the disk on this machine.
    """
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_flush_probe (id bigserial PRIMARY KEY, v int)")
        took = {"on": 0.0, "off": 0.0}
        for i in range(n):
            for mode in ("on", "off") if i % 2 else ("off", "on"):
                conn.execute(f"SET synchronous_commit = {mode}")
                t0 = time.perf_counter()
                conn.execute("INSERT INTO bench_flush_probe (v) VALUES (%s)", [i])
                took[mode] += time.perf_counter() - t0
        conn.execute("TRUNCATE bench_flush_probe")
    return (took["on"] - took["off"]) * 1000 / n


@contextlib.contextmanager
def _scratch_database(suffix: str):
    """A database beside the benchmark's, on the same server, dropped afterwards; yield its URL."""
    url = os.environ["DATABASE_URL"]
    admin_url = with_path(url, "/postgres")
    name = f"{urlsplit(url).path.lstrip('/')}_{suffix}"
    create_database(admin_url, name)
    try:
        yield with_path(url, "/" + name)
    finally:
        drop_database(admin_url, name)


@contextlib.contextmanager
def _async_commit():
    """This process's launches commit asynchronously meanwhile, as the async side's worker does."""
    with connection.cursor() as cur:
        cur.execute("SET synchronous_commit = off")
    try:
        yield
    finally:
        with connection.cursor() as cur:
            cur.execute("RESET synchronous_commit")


def throughput():
    """The sides in alternating rounds (baseline, TaskHub, TaskHub on asynchronous commit).

    Each side has its own worker (same settings: prefork, concurrency 2,
    prefetch 1); the ratio is the median of the rounds' ratios. The third
    side is TaskHub with every commit of its worker and of the launches
    asynchronous (``synchronous_commit=off`` in the connection options):
    the difference to the second is what waiting for the three WAL flushes
    of each execution costs on this machine. Within a
    round each side runs its executions in blocks (``BENCH_BLOCKS``, 4),
    the sides taking turns block by block, in an order that rotates: a
    shared machine's speed drifts within seconds, and the sides of a
    round then meet it alike instead of one after the other.
    """
    blocks = max(1, int(os.environ.get("BENCH_BLOCKS", "4")))
    block = max(10, scaled(2000, 50) // blocks)
    n = block * blocks
    rounds = max(1, int(os.environ.get("BENCH_ROUNDS", "5")))
    r = _redis()
    details: dict[str, object] = {"n": n, "rounds": rounds, "blocks": blocks}
    seconds: dict[str, list[float]] = {side: [] for side in SIDES}
    send_rate: dict[str, list[float]] = {side: [] for side in SIDES}
    cpu_total: dict[str, dict[str, float]] = {side: {} for side in SIDES}
    profiles: dict[str, object] = {}
    flush_wait: list[float] = []  # by round
    flavour = {"baseline": "stock"}
    with contextlib.ExitStack() as stack:
        probe_url = stack.enter_context(_scratch_database("flush"))
        workers = {
            "baseline": Worker.baseline("bench-tp-base", "stock", **PREFORK),
            "taskhub": Worker("bench-tp", **PREFORK),
            "taskhub_async": Worker(
                "bench-tp-async",
                queue="bench-async",
                env={"DATABASE_URL": _async_commit_url(os.environ["DATABASE_URL"])},
                **PREFORK,
            ),
        }
        for worker in workers.values():
            stack.enter_context(worker)
        tasks = {
            "taskhub": _task("bench-true", "true"),
            "taskhub_async": _task("bench-true-async", "true", queue="bench-async"),
        }
        committing = {"taskhub": contextlib.nullcontext, "taskhub_async": _async_commit}
        # Warm every side up (pool processes import, connect, start their watchers).
        for _ in range(20):
            for side, fl in flavour.items():
                _send_baseline(["true"], f"bench:warm:{side}", flavour=fl)
            for task in tasks.values():
                launch(task)
        for side in flavour:
            wait_for(lambda s=side: r.llen(f"bench:warm:{s}") >= 20, timeout=60, what=f"{side} warm-up")
        for task in tasks.values():
            _wait_all(task, 20, 60)
            task.executions.all().delete()
        before = _pg_settled_counters()  # the warm-up's counted before, not in the figure

        for i in range(rounds):
            elapsed = dict.fromkeys(SIDES, 0.0)
            launching = dict.fromkeys(SIDES, 0.0)
            for b in range(blocks):
                for side in SIDES[b % len(SIDES) :] + SIDES[: b % len(SIDES)]:
                    worker = workers[side]
                    cpu0 = cpu_seconds(worker)
                    # py-spy (BENCH_PROFILE=1) samples each side's first block only.
                    with Profiler(worker, side) if i == b == 0 else contextlib.nullcontext() as prof:
                        t0 = time.perf_counter()
                        if side in tasks:
                            task = tasks[side]
                            with committing[side]():
                                first_id = launch(task).pk
                                for _ in range(block - 1):
                                    launch(task)
                            sent = time.perf_counter()
                            _wait_all(task, block, 600, first_id=first_id)
                        else:
                            key = f"bench:tp:{side}:{i}:{b}"
                            for _ in range(block):
                                _send_baseline(["true"], key, flavour=flavour[side])
                            sent = time.perf_counter()
                            wait_for(
                                lambda k=key: r.llen(k) >= block, timeout=600, interval=0.02, what=f"{side} throughput"
                            )
                        elapsed[side] += time.perf_counter() - t0
                        launching[side] += sent - t0
                    cpu1 = cpu_seconds(worker)
                    for k in cpu1:
                        cpu_total[side][k] = cpu_total[side].get(k, 0.0) + cpu1[k] - cpu0[k]
                    if i == b == 0:
                        profiles[side] = prof.summary()
            for side in SIDES:
                seconds[side].append(elapsed[side])
                send_rate[side].append(n / launching[side])
            flush_wait.append(_flush_wait_ms(probe_url))
        per_execution = _pg_delta(before, n * rounds * len(tasks))
        succeeded = {side: task.executions.filter(status=Status.SUCCEEDED).count() for side, task in tasks.items()}
    for side in SIDES:
        details[side] = {
            "rates_per_s": [round(n / s, 1) for s in seconds[side]],
            "send_per_s": [round(x, 1) for x in send_rate[side]],
            "cpu_ms_per_job": {k: round(v * 1000 / (n * rounds), 2) for k, v in cpu_total[side].items()},
            "profile": profiles.get(side),
        }
    details["postgres_per_execution"] = per_execution  # both TaskHub sides
    for side in TASKHUB_SIDES:
        details[side]["succeeded"] = succeeded[side]

    def round_ratios(base: str, side: str) -> list[float]:
        return [b / h for b, h in zip(seconds[base], seconds[side], strict=True)]

    ratios = round_ratios("baseline", "taskhub")
    ratios_async = round_ratios("baseline", "taskhub_async")
    details["ratios"] = [round(x, 3) for x in ratios]
    details["ratios_async_commit"] = [round(x, 3) for x in ratios_async]
    details["flush_wait_ms"] = [round(x, 3) for x in flush_wait]
    details["bookkeeping"] = book = _bookkeeping(tasks["taskhub"], min(n, 1000))
    base_machine = details["baseline"]["cpu_ms_per_job"]["machine"]
    book["ceiling"] = round(base_machine / (base_machine + book["machine_ms"]), 3)
    rate = {side: _median([n / s for s in seconds[side]]) for side in SIDES}
    ratio = _median(ratios)
    per_side = ", ".join(f"{side} {details[side]['rates_per_s']}" for side in SIDES)
    print(
        f"   rounds (per s): {per_side}; "
        f"ratios {details['ratios']} "
        f"(TaskHub on asynchronous commit against the baseline {details['ratios_async_commit']}); "
        f"per execution in PostgreSQL (both TaskHub sides): {per_execution}"
    )
    print(
        f"   a commit's wait for its WAL flush after each round, ms: {details['flush_wait_ms']} "
        "(TaskHub's execution waits for three)"
    )
    print(f"   the 3 statements alone, CPU ms per execution: {book}")
    for side in SIDES:
        print(f"   {side} CPU ms per job: {details[side]['cpu_ms_per_job']}")
        if details[side]["profile"]:
            print(f"   {side} worker profile: {json.dumps(details[side]['profile'], ensure_ascii=False)}")
    return [
        row(
            f"throughput, {n} × `true` (launch → finish) in {blocks} blocks taking turns, median of {rounds} rounds",
            rate["baseline"],
            rate["taskhub"],
            "≥ 0.8 × baseline",
            ratio >= 0.8 and succeeded["taskhub"] == n * rounds,
            "/s",
            ratio=ratio,
        ),
        row(
            "  TaskHub on PostgreSQL's asynchronous commit (synchronous_commit=off: not the default, a database "
            "crash can lose its last commits)",
            rate["baseline"],
            rate["taskhub_async"],
            "—",
            None,
            "/s",
            ratio=_median(ratios_async),
        ),
        row(
            "launch rate (create row + send)",
            _median(send_rate["baseline"]),
            _median(send_rate["taskhub"]),
            "—",
            None,
            "/s",
        ),
        row(
            "PostgreSQL connects per execution",
            None,
            per_execution["sessions"],
            "≈ 0",
            per_execution["sessions"] < 0.05,
        ),
        row("PostgreSQL commits per execution", None, per_execution["commits"], "—", None),
        row(
            "the 3 statements alone, machine CPU per execution (ratio: best TaskHub could do against the baseline)",
            base_machine,
            book["machine_ms"],
            "—",
            None,
            "ms",
            ratio=book["ceiling"],
        ),
    ], details


def _bookkeeping(task: Task, n: int) -> dict[str, float]:
    """What the three statements every execution needs cost on their own.

    The launch INSERT, the claim and the outcome UPDATE, run back to back in
    this process with no broker, no worker and no command: CPU here, in the
    PostgreSQL backend serving it, and on the whole machine (the kernel's
    share included), per execution. ``ceiling`` is the throughput ratio
    TaskHub would reach if these statements were all it added to the
    baseline's job (whose machine CPU per job is measured alongside).
    """
    import psutil

    connection.ensure_connection()
    backend = psutil.Process(connection.connection.info.backend_pid)

    def counters() -> tuple[float, float, float]:
        b = backend.cpu_times()
        return time.process_time(), b.user + b.system, cpu_seconds()["machine"]

    fields = {
        "exit_code": 0, "signal": None, "stdout": "", "stderr": "", "output_truncated": False, "error": "",
        "pid": 1, "max_rss_kb": 1000, "cpu_user": 0.0, "cpu_system": 0.0, "handed_back": False,
    }  # fmt: skip
    snapshot = TaskExecution.snapshot_of(task)
    before = counters()
    for _ in range(n):
        at = timezone.now()
        execution = TaskExecution.create_pending(
            task,
            run_id=uuid.uuid4(),
            attempt=1,
            trigger="api",
            triggered_by_id=None,
            scheduled_for=at,
            enqueued=True,
            at=at,
            snapshot=snapshot,
            celery_task_id="bench",
        )
        claimed = TaskExecution.claim(execution.pk, worker="bench", celery_task_id="bench", due_by=at)
        claimed.record_outcome(Status.SUCCEEDED, **fields)
    after = counters()
    client, postgres, machine = ((a - b) * 1000 / n for a, b in zip(after, before, strict=True))
    return {"n": n, "client_ms": round(client, 3), "postgres_ms": round(postgres, 3), "machine_ms": round(machine, 3)}


# -- 2. dispatch latency --------------------------------------------------------------------------

STAMP = ["date", "+%s.%N"]


def latency():
    n = scaled(300, 20)
    r = _redis()
    with Worker("bench-lat", **PREFORK), Worker.baseline("bench-lat-base", **PREFORK):
        task = _task("bench-stamp", "date +%s.%N")
        for _ in range(5):  # warm up
            ex = launch(task)
            _wait_row(ex)
            _send_baseline(STAMP, "bench:lat:warm")
            r.blpop("bench:lat:warm", timeout=30)
        base, hub = [], []
        for i in range(n):
            key = f"bench:lat:{i}"
            t0 = time.time()
            _send_baseline(STAMP, key)
            record = json.loads(r.blpop(key, timeout=30)[1])
            base.append(float(record["stdout"]) - t0)
            t0 = time.time()
            ex = launch(task)
            ex = _wait_row(ex)
            hub.append(float(ex.stdout) - t0)
    ms = lambda v: v * 1000  # noqa: E731
    b50, b99, h50, h99 = (ms(percentile(v, p)) for v, p in ((base, 50), (base, 99), (hub, 50), (hub, 99)))
    print(f"   baseline p50 {b50:.1f} ms p99 {b99:.1f} ms; TaskHub p50 {h50:.1f} ms p99 {h99:.1f} ms")
    details = {"n": n, "baseline_ms": [ms(v) for v in base], "taskhub_ms": [ms(v) for v in hub]}
    return [
        row(
            f"dispatch latency p50 (launch → command started, {n} sequential)",
            b50,
            h50,
            "≤ baseline + 5 ms",
            h50 <= b50 + 5,
            "ms",
        ),
        row("dispatch latency p99", b99, h99, "—", None, "ms"),
    ], details


def _wait_row(ex: TaskExecution, timeout: float = 30) -> TaskExecution:
    deadline = time.monotonic() + timeout
    while True:
        row_ = TaskExecution.objects.filter(pk=ex.pk, finished_at__isnull=False).first()
        if row_ is not None:
            return row_
        if time.monotonic() > deadline:
            raise TimeoutError(f"execution {ex.pk} did not finish")
        time.sleep(0.002)


# -- 3. deadline precision ---------------------------------------------------------------------------


def _deadline_run(worker_kwargs: dict, n: int, label: str) -> tuple[list[float], dict]:
    """Launch n commands with a 1 s timeout (every other one ignoring SIGTERM) and time their groups' end."""
    stamp_dir = os.path.join(os.environ["TASKHUB_VAR_DIR"], f"stamps-{label}")
    shutil.rmtree(stamp_dir, ignore_errors=True)  # ids start afresh with the database
    os.makedirs(stamp_dir)
    polite = _task(
        f"bench-deadline-polite-{label}",
        f"sh -c 'echo $$ $(date +%s.%N) > {stamp_dir}/$TASKHUB_EXECUTION_ID; sleep 30 & sleep 30; wait'",
        timeout=1,
        kill_grace=1,
    )
    stubborn = _task(
        f"bench-deadline-stubborn-{label}",
        f"sh -c 'trap \"\" TERM; echo $$ $(date +%s.%N) > {stamp_dir}/$TASKHUB_EXECUTION_ID; sleep 30 & sleep 30; wait'",
        timeout=1,
        kill_grace=1,
    )
    worker = Worker(f"bench-dl-{label}", **worker_kwargs).start()
    lateness: list[float] = []
    try:
        launched = [(launch(stubborn if i % 2 else polite), bool(i % 2)) for i in range(n)]
        pending = {ex.pk: ignores for ex, ignores in launched}
        watched: dict[int, tuple[int, float, bool]] = {}  # pk -> (pgid, deadline epoch, ignores TERM)
        give_up = time.monotonic() + 60 + n * 3 / worker_kwargs["concurrency"]
        while (pending or watched) and time.monotonic() < give_up:
            for pk in list(pending):
                path = os.path.join(stamp_dir, str(pk))
                try:
                    with open(path) as fh:
                        pgid, started = fh.read().split()
                except (OSError, ValueError):
                    continue
                ignores = pending.pop(pk)
                deadline = float(started) + 1 + (1 if ignores else 0)
                watched[pk] = (int(pgid), deadline, ignores)
            alive = _live_groups({pgid for pgid, _, _ in watched.values()}) if watched else set()
            for pk, (pgid, deadline, _ignores) in list(watched.items()):
                if pgid not in alive:
                    lateness.append(time.time() - deadline)
                    del watched[pk]
            time.sleep(0.002)
        _wait_all_tasks([polite, stubborn], n, 60)
        statuses = _statuses(TaskExecution.objects.filter(task__in=[polite, stubborn]))
    finally:
        worker.stop()
    return lateness, {"statuses": statuses, "missing": n - len(lateness)}


def _live_groups(pgids: set[int]) -> set[int]:
    """Which of these process groups still have a live (not zombie) member.

    A killed process whose parent died first stays a zombie until PID 1
    reaps it, which on some hosts takes a second or more; it runs no code
    and holds no resources, so it does not count as alive.
    """
    return {group for _, group, _ in live_processes() if group in pgids}


def _statuses(qs) -> dict[str, int]:
    return dict(qs.order_by().values_list("status").annotate(n=Count("id")))


def _wait_all_tasks(tasks: list[Task], n: int, timeout: float) -> None:
    wait_for(
        lambda: TaskExecution.objects.filter(task__in=tasks, finished_at__isnull=False).count() >= n,
        timeout=timeout,
        what="deadline executions to finish",
    )


def deadline():
    n = scaled(50, 10)
    rows, details = [], {}
    threads = {"pool": "threads", "concurrency": n, "env": {"TASKHUB_DB_POOL": "1"}}
    for label, kwargs in (("prefork", PREFORK), ("threads", threads)):
        late, info = _deadline_run(kwargs, n, label)
        ms = [v * 1000 for v in late]
        p50, p99, worst = percentile(ms, 50), percentile(ms, 99), max(ms) if ms else float("nan")
        details[label] = {"lateness_ms": ms, **info}
        print(f"   {label}: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms; {info}")
        rows.append(
            row(
                f"deadline → group gone p99, {n} × 1 s timeout, half ignore SIGTERM ({label})",
                None,
                p99,
                "< 100 ms",
                p99 < 100 and not info["missing"],
                "ms",
            )
        )
    return rows, details


# -- 4. retry timing ----------------------------------------------------------------------------------


def retry():
    runs = scaled(20, 5)
    r = _redis()
    with Worker("bench-retry", **PREFORK), Worker.baseline("bench-retry-base", **PREFORK):
        task = _task("bench-retry", "false", retry_count=2, retry_delay=1, retry_backoff=1)
        first = [launch(task) for _ in range(runs)]
        for _ in range(runs):
            _send_baseline(["false"], "bench:retry", fail_times=2, retry_delay=1, due=0)
        wait_for(
            lambda: TaskExecution.objects.filter(task=task, attempt=3, finished_at__isnull=False).count() >= runs,
            timeout=120,
            what="retries",
        )
        wait_for(lambda: r.llen("bench:retry") >= runs * 3, timeout=60, what="baseline retries")
    hub = [
        (ex.started_at - ex.scheduled_for).total_seconds() * 1000
        for ex in TaskExecution.objects.filter(task=task, attempt__gt=1)
    ]
    base = [
        (rec["picked"] - rec["due"]) * 1000
        for rec in (json.loads(x) for x in r.lrange("bench:retry", 0, -1))
        if rec["retries"] > 0
    ]
    b99, h99 = percentile(base, 99), percentile(hub, 99)
    print(
        f"   {len(hub)} retries: TaskHub p50 {percentile(hub, 50):.0f} ms p99 {h99:.0f} ms; baseline p99 {b99:.0f} ms"
    )
    del first
    return [
        row(f"retry start − scheduled_for p99 ({len(hub)} retries)", b99, h99, "< 500 ms", h99 < 500, "ms"),
    ], {"taskhub_ms": hub, "baseline_ms": base}


# -- 5. concurrency -------------------------------------------------------------------------------------


class _Sampler(threading.Thread):
    def __init__(self, fn, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.fn, self.interval, self.peak, self.stop_flag = fn, interval, 0, threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self.peak = max(self.peak, self.fn())
            except Exception:
                pass
            time.sleep(self.interval)

    def stop(self) -> int:
        self.stop_flag.set()
        self.join()
        return self.peak


def concurrency():
    """1000 `sleep 5` on one worker host, taken from the broker at once.

    The host runs one threads-pool worker process per core (README, "Many
    long commands"; ``BENCH_CONCURRENCY_PROCESSES``): one Python process
    runs its threads one at a time. The executions are launched first, to
    a queue the workers do not yet consume; the clock starts when they are
    told to consume it (Celery's add_consumer). Launched one after another
    from this process while the workers ran them, the first were done
    before the last were launched on a slow machine, and the figure timed
    this process's launch loop as much as the workers.
    """
    from config.celery import app

    n = scaled(1000, 20)
    pool = os.environ.get("BENCH_CONCURRENCY_POOL", "threads")
    processes = max(1, int(os.environ.get("BENCH_CONCURRENCY_PROCESSES", os.cpu_count() or 1)))
    # The pool setting documented for many long commands: threads, pooled connections.
    env = {"TASKHUB_DB_POOL": "1"} if pool == "threads" else {}
    queue = "bench-many"
    shares = [n // processes + (1 if i < n % processes else 0) for i in range(processes)]
    with contextlib.ExitStack() as stack:
        workers = [
            stack.enter_context(Worker(f"bench-many-{i}", pool=pool, concurrency=c, env=env, queue="bench-many-idle"))
            for i, c in enumerate(shares)
        ]

        def rss() -> int:
            return sum(w.rss() for w in workers)

        task = _task("bench-sleep", "sleep 5", timeout=60, queue=queue)
        idle = rss()
        t0 = time.perf_counter()
        for _ in range(n):
            launch(task)
        launched = time.perf_counter() - t0
        sampler = _Sampler(rss, 0.5)  # each sample walks a thousand processes
        sampler.start()
        cpu0 = cpu_seconds(*workers)
        with Profiler(workers[0], "many") as prof:
            t0 = time.perf_counter()
            hostnames = [w.hostname for w in workers]
            replies = app.control.add_consumer(queue, destination=hostnames, reply=True, timeout=10)
            if len(replies or []) != len(workers):
                raise RuntimeError(f"not every worker of {hostnames} answered add_consumer: {replies}")
            _wait_all(task, n, 300)
            wall = time.perf_counter() - t0
        cpu_ms = _cpu_per(cpu0, cpu_seconds(*workers), n)
        peak = sampler.stop()
        print(f"   CPU ms per execution: {cpu_ms}; profile: {json.dumps(prof.summary(), ensure_ascii=False)}")
        statuses = _statuses(task.executions.all())
        first_start = task.executions.order_by("started_at").values_list("started_at", flat=True).first()
        last_start = task.executions.order_by("-started_at").values_list("started_at", flat=True).first()
    mib = peak / 2**20
    where = f"{processes} {pool}-pool worker process{'es' if processes > 1 else ''}, {'+'.join(map(str, shares))}"
    print(
        f"   {n} × sleep 5 on one host, {where}: {wall:.1f}s from add_consumer to the last finished (launched "
        f"beforehand in {launched:.1f}s; first to last start {(last_start - first_start).total_seconds():.1f}s), "
        f"peak RSS {mib:.0f} MiB, idle {idle / 2**20:.0f} MiB; {statuses}"
    )
    ok = statuses.get(Status.SUCCEEDED, 0) == n
    return [
        row(
            f"{n} concurrent `sleep 5`, all waiting in the broker: wall time ({where})",
            None,
            wall,
            "< 15 s",
            wall < 15 and ok,
            "s",
        ),
        row(f"{n} concurrent `sleep 5`: worker memory (all processes)", None, mib, "< 1024 MiB", mib < 1024, "MiB"),
    ], {
        "n": n,
        "pool": pool,
        "processes": shares,
        "wall_s": wall,
        "launch_s": launched,
        "start_spread_s": (last_start - first_start).total_seconds(),
        "peak_rss_mib": mib,
        "idle_rss_mib": idle / 2**20,
        "statuses": statuses,
    }


# -- 6. output memory ---------------------------------------------------------------------------------------


def output():
    size = int(1e9 * min(SCALE, 1)) if SCALE < 1 else int(1e9)
    r = _redis()
    workers = {
        "taskhub": Worker("bench-out", pool="prefork", concurrency=1),
        "baseline": Worker.baseline("bench-out-base", pool="prefork", concurrency=1),
    }
    command = f"head -c {size} /dev/zero"

    def pool_rss(worker: Worker) -> int:
        return max(p.memory_info().rss for p in worker.processes()[1:])

    with contextlib.ExitStack() as stack:
        for worker in workers.values():
            stack.enter_context(worker)
        task = _task("bench-output", command, timeout=600)
        # Warm the pool processes up (imports, connection, watcher) with a small command.
        _wait_row(launch(_task("bench-output-warm", "echo warm")), 120)
        _send_baseline(["echo", "warm"], "bench:out:warm")
        wait_for(lambda: r.llen("bench:out:warm"), timeout=60, what="baseline warm-up")
        results = {}
        for side, worker in workers.items():
            before = pool_rss(worker)
            sampler = _Sampler(lambda w=worker: pool_rss(w), 0.02)
            sampler.start()
            t0 = time.perf_counter()
            if side == "taskhub":
                ex = _wait_row(launch(task), 300)
            else:
                _send_baseline(command.split(), "bench:out")
                wait_for(lambda: r.llen("bench:out"), timeout=300, interval=0.05, what="baseline output run")
            seconds = time.perf_counter() - t0
            peak = sampler.stop()
            results[side] = {"growth_mib": (peak - before) / 2**20, "seconds": seconds}
        results["taskhub"]["stored_stdout_bytes"] = len(ex.stdout)
        results["taskhub"]["status"] = ex.status
    b, h = results["baseline"]["growth_mib"], results["taskhub"]["growth_mib"]
    print(f"   {size / 1e9:.1f} GB of output: baseline RSS +{b:.0f} MiB, TaskHub +{h:.0f} MiB ({results})")
    return [
        row(f"worker RSS growth, one command printing {size / 1e9:.1f} GB", b, h, "< 64 MiB", h < 64, "MiB")
    ], results


# -- 7. history at scale -------------------------------------------------------------------------------------


def history():
    from bench import history as hist

    return hist.run(scaled(1_000_000, 10_000))


# -- 8. schedules (bench/schedules.py) ----------------------------------------------------------------------


def schedules():
    from bench.schedules import schedules as figure

    return figure()


# -- 9. a backlog after statistics taken at rest ------------------------------------------------------------


def backlog():
    """Drain a backlog launched while no worker ran, with PostgreSQL's statistics taken at rest.

    Statistics are usually taken when nothing is pending (autoanalyze waits
    for a tenth of the table to change), so the planner meets a burst as if
    there were no active rows; a claim that let it choose read the whole
    backlog for every row it claimed (tests/test_query_plans.py). The
    figure counts the rows PostgreSQL read per execution while the backlog
    drains, and the drain's rate, from the first start to the last finish.
    """
    n = scaled(5000, 100)
    task = _task("bench-backlog", "true")
    at = timezone.now()
    TaskExecution.objects.bulk_create(
        (
            TaskExecution(task=task, status=Status.SUCCEEDED, scheduled_for=at, started_at=at, finished_at=at)
            for _ in range(4 * n)
        ),
        batch_size=5000,
    )
    with connection.cursor() as cur:
        cur.execute(f"ANALYZE {TaskExecution._meta.db_table}, {Task._meta.db_table}")
    first_id = launch(task).pk
    for _ in range(n - 1):
        launch(task)
    before = _pg_settled_counters()
    with Worker("bench-backlog", **PREFORK):
        _wait_all(task, n, 900, first_id=first_id)
    per_execution = _pg_delta(before, n)
    drained = TaskExecution.objects.filter(task=task, pk__gte=first_id)
    span = drained.aggregate(start=Min("started_at"), end=Max("finished_at"))
    rate = n / (span["end"] - span["start"]).total_seconds()
    read = per_execution["read"]
    print(f"   {n} drained at {rate:.0f}/s; PostgreSQL read {read:.0f} rows per execution")
    return [
        row(f"backlog of {n:,} × `true` after statistics at rest: drain rate", None, rate, "—", None, "/s"),
        row(
            f"backlog of {n:,}: PostgreSQL rows read per execution",
            None,
            read,
            "< 50 (not the backlog)",
            read < 50,
        ),
    ], {"n": n, "rate_per_s": round(rate, 1), "postgres_per_execution": per_execution}
