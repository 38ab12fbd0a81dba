"""History at scale: a million executions, and how fast the operator's lists answer.

Rows are made in PostgreSQL with generate_series (seconds, not hours), with a
plausible mix: most attempts succeeded, a few rare statuses, triggers and
queues (the filters that must not scan the table to find them). Each page is
timed in-process through Django's test client as a logged-in superuser
(server time: URL routing, queries, templates), and each of its queries on
the execution table is shown with EXPLAIN ANALYZE.
"""

from __future__ import annotations

import statistics
import time

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import NoReverseMatch, reverse

from executions.models import TaskExecution
from taskhub.models import Task

TARGET_MS = 300
TASKS = 100

GENERATE = """
INSERT INTO executions_taskexecution (
    task_id, run_id, attempt, status, "trigger", triggered_by_id, scheduled_for, enqueued_at, started_at,
    finished_at, exit_code, signal, stdout, stderr, output_truncated, error, worker, pid, celery_task_id,
    heartbeat_at, cancel_requested_at, max_rss_kb, cpu_user, cpu_system, created_at)
SELECT
    t.ids[1 + ((g::bigint * 7919) %% array_length(t.ids, 1))::int],
    gen_random_uuid(),
    CASE WHEN r.trig = 'retry' THEN 2 ELSE 1 END,
    r.status,
    r.trig,
    NULL,
    r.at, r.at, r.at, CASE WHEN r.status IN ('pending', 'running') THEN NULL ELSE r.at + interval '2 seconds' END,
    CASE WHEN r.status = 'succeeded' THEN 0 WHEN r.status = 'failed' THEN 1 END,
    NULL, 'line of output ' || g, '', false, '', 'worker-' || (g %% 4) || '@host', 1000 + g %% 30000,
    md5(g::text), r.at, NULL, 4000, 0.01, 0.01, r.at
FROM generate_series(1, %(n)s) AS g
CROSS JOIN (SELECT array_agg(id ORDER BY id) AS ids FROM taskhub_task WHERE name LIKE 'history-%%') AS t
CROSS JOIN LATERAL (
    SELECT
        now() - (%(n)s - g) * interval '5 seconds' AS at,
        CASE
            WHEN g > %(n)s - 20 THEN 'running'
            WHEN g > %(n)s - 40 THEN 'pending'
            WHEN g %% 100 < 85 THEN 'succeeded'
            WHEN g %% 100 < 95 THEN 'failed'
            WHEN g %% 100 < 98 THEN 'timeout'
            WHEN g %% 1000 < 995 THEN 'cancelled'
            ELSE 'lost'
        END AS status,
        CASE
            WHEN g %% 1000 = 7 THEN 'cli'
            WHEN g %% 100 < 60 THEN 'schedule'
            WHEN g %% 100 < 85 THEN 'manual'
            WHEN g %% 100 < 95 THEN 'retry'
            ELSE 'api'
        END AS trig
) AS r
"""


def generate(n: int) -> float:
    t0 = time.perf_counter()
    queues = ["default"] * 90 + ["batch"] * 9 + ["rare"]
    Task.objects.bulk_create(
        Task(name=f"history-{i:03d}", command="true", queue=queues[i % len(queues)]) for i in range(TASKS)
    )
    with connection.cursor() as cur:
        cur.execute(GENERATE, {"n": n})
        cur.execute("VACUUM ANALYZE executions_taskexecution")
        cur.execute("VACUUM ANALYZE taskhub_task")
    return time.perf_counter() - t0


def pages() -> list[tuple[str, str]]:
    rare_task = Task.objects.filter(queue="rare").values_list("pk", flat=True).first()
    some_task = Task.objects.filter(queue="default").values_list("pk", flat=True).first()
    run_id = TaskExecution.objects.order_by("-id").values_list("run_id", flat=True)[500]
    executions = reverse("admin:executions_taskexecution_changelist")
    tasks = reverse("admin:taskhub_task_changelist")
    found = [
        ("admin executions", executions),
        ("admin executions, status=failed", f"{executions}?status__exact=failed"),
        ("admin executions, status=running (rare)", f"{executions}?status__exact=running"),
        ("admin executions, one task", f"{executions}?task__id__exact={some_task}"),
        ("admin executions, trigger=cli (rare)", f"{executions}?trigger__exact=cli"),
        ("admin executions, queue=rare", f"{executions}?task__queue__exact=rare"),
        ("admin executions, page 200", f"{executions}?p=200"),
        ("admin executions, search run id", f"{executions}?q={run_id}"),
        ("admin task list", tasks),
        ("admin task page (recent runs)", reverse("admin:taskhub_task_change", args=[rare_task])),
    ]
    try:
        api = reverse("execution-list")
    except NoReverseMatch:
        api = None
    if api:
        found += [
            ("API executions", api),
            ("API executions, status=failed", f"{api}?status=failed"),
            ("API executions, one task", f"{api}?task={rare_task}"),
            ("API executions, run id", f"{api}?run_id={run_id}"),
        ]
    return found


def explain(sql: str) -> list[str]:
    with connection.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, SUMMARY ON) " + sql)
        return [line for (line,) in cur.fetchall()]


def run(n: int):
    from bench.figures import row

    seconds = generate(n)
    count = TaskExecution.objects.count()
    print(f"   generated {count:,} executions in {seconds:.0f}s", flush=True)
    if "testserver" not in settings.ALLOWED_HOSTS:
        settings.ALLOWED_HOSTS.append("testserver")
    admin, _ = User.objects.get_or_create(username="bench-admin", defaults={"is_staff": True, "is_superuser": True})
    # The pages are served without collectstatic; WhiteNoise only warns of a missing directory.
    settings.STATIC_ROOT.mkdir(parents=True, exist_ok=True)
    client = Client()
    client.force_login(admin)
    rows, details = [], {"executions": count, "generate_s": seconds, "pages": {}}
    for label, url in pages():
        response = client.get(url)  # warm: templates, caches, plans
        if response.status_code != 200:
            print(f"   {label}: HTTP {response.status_code}")
            details["pages"][label] = {"url": url, "status": response.status_code}
            rows.append(row(f"{label} (HTTP {response.status_code})", None, None, f"< {TARGET_MS} ms", False, "ms"))
            continue
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            client.get(url)
            times.append((time.perf_counter() - t0) * 1000)
        with CaptureQueriesContext(connection) as ctx:
            client.get(url)
        queries = []
        for q in ctx.captured_queries:
            sql = q["sql"]
            if "executions_taskexecution" not in sql or not sql.lstrip().upper().startswith("SELECT"):
                continue
            plan = explain(sql)
            queries.append({"sql": sql, "ms": float(q["time"]) * 1000, "plan": plan})
        median = statistics.median(times)
        details["pages"][label] = {"url": url, "ms": times, "queries": queries}
        print(f"   {label}: {median:.0f} ms (median of 5), {len(ctx.captured_queries)} queries")
        for q in queries:
            shown = [line for line in q["plan"] if "Execution Time" in line or not line.startswith(" ")]
            print(f"      {q['sql'][:150]}…" if len(q["sql"]) > 150 else f"      {q['sql']}")
            for line in q["plan"][:6]:
                print(f"        {line}")
            for line in shown[-1:]:
                print(f"        {line}")
        rows.append(row(f"{label} ({count:,} rows)", None, median, f"< {TARGET_MS} ms", median < TARGET_MS, "ms"))
    return rows, details
