"""make bench: TaskHub against a bare Celery task, on the same broker, database and worker settings.

Prints a table (figure, baseline, TaskHub, ratio, target) and writes it as
JSON. Environment: DATABASE_URL / CELERY_BROKER_URL name the servers;
BENCH_DATABASE (taskhub_bench) and BENCH_REDIS_DB (10) are the benchmark's
own database and Redis db (the throughput figure makes and drops a scratch
database beside it, BENCH_DATABASE_flush, for its probe of the commit
flush); BENCH_ONLY=throughput,latency,… runs a subset;
BENCH_SCALE scales the counts (e.g. 0.1 for a quick look); BENCH_ROUNDS
(default 5) is how many alternating rounds the throughput figure runs,
BENCH_BLOCKS (default 4) in how many blocks per side, taking turns;
BENCH_CONCURRENCY_PROCESSES (default: cores) and BENCH_CONCURRENCY_POOL
(threads) are the concurrency figure's worker processes and pool;
BENCH_OUTPUT is the JSON path.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

from bench.harness import configure_environment
from testsupport import prepare_var_dir
from testsupport.databases import drop_database

ALL = ("throughput", "latency", "deadline", "retry", "concurrency", "output", "history", "schedules", "backlog")


def machine() -> dict[str, object]:
    import psutil

    return {
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main() -> int:
    only = [s for s in os.environ.get("BENCH_ONLY", "").split(",") if s] or list(ALL)
    unknown = set(only) - set(ALL)
    if unknown:
        sys.exit(f"BENCH_ONLY: unknown {', '.join(sorted(unknown))}; choose from {', '.join(ALL)}")
    where = configure_environment()
    import django

    django.setup()
    prepare_var_dir()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from bench import figures

    started = time.monotonic()
    rows: list[dict[str, object]] = []
    details: dict[str, object] = {}
    try:
        for name in only:
            print(f"== {name}", flush=True)
            t0 = time.monotonic()
            section_rows, section_details = getattr(figures, name)()
            rows.extend(section_rows)
            details[name] = section_details
            print(f"   ({time.monotonic() - t0:.0f}s)", flush=True)
    finally:
        from django.db import connections

        connections.close_all()
        if os.environ.get("BENCH_KEEP_DATABASE") != "1":
            drop_database(where["admin_url"], where["database"])

    report = {
        "machine": machine(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "seconds": round(time.monotonic() - started),
        "rows": rows,
        "details": details,
    }
    table = figures.render(rows)
    print()
    print(f"Machine: {report['machine']['cores']} cores, {report['machine']['memory_gib']} GiB; {report['seconds']}s")
    print(table)
    out = os.environ.get("BENCH_OUTPUT") or os.path.join(where["var_dir"], "results.json")
    with open(out, "w") as fh:
        json.dump(report, fh, indent=2, default=str)
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
