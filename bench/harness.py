"""Set-up of the benchmarks: a database and a Redis db of their own, real worker processes, CPU figures.

Starting and stopping processes, databases and waiting come from testsupport,
which the test suite uses too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from testsupport import ROOT
from testsupport.databases import create_database, with_path
from testsupport.processes import CeleryProcess, worker_argv


def configure_environment() -> dict[str, str]:
    """Point this process (and the workers it starts) at the benchmark's own database and Redis db.

    BENCH_DATABASE (default taskhub_bench) is created afresh on the server of
    DATABASE_URL; BENCH_REDIS_DB (default 10) is the Redis db used as broker
    and for the baseline's reports, flushed first. Return what was chosen.
    """
    database_url = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    broker_url = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    if not database_url.startswith(("postgres://", "postgresql://")) or not broker_url.startswith("redis://"):
        sys.exit("make bench needs DATABASE_URL=postgres://… and CELERY_BROKER_URL=redis://…")
    name = os.environ.get("BENCH_DATABASE", "taskhub_bench")
    redis_db = os.environ.get("BENCH_REDIS_DB", "10")
    bench_db_url = with_path(database_url, "/" + name)
    bench_broker = with_path(broker_url, "/" + redis_db)
    var_dir = Path(os.environ.get("TASKHUB_VAR_DIR", ROOT / "var")) / "bench"

    import redis

    admin_url = with_path(database_url, "/postgres")
    create_database(admin_url, name)
    redis.Redis.from_url(bench_broker).flushdb()

    os.environ.update(
        DATABASE_URL=bench_db_url,
        CELERY_BROKER_URL=bench_broker,
        BENCH_REPORT_URL=bench_broker,
        TASKHUB_VAR_DIR=str(var_dir),
        DJANGO_SETTINGS_MODULE="config.settings",
        PYTHONUNBUFFERED="1",
    )
    return {"database": name, "broker": bench_broker, "var_dir": str(var_dir), "admin_url": admin_url}


class Worker(CeleryProcess):
    """A real `celery worker` subprocess: TaskHub's app on queue ``default``, or ``app``/``queue`` given.

    Ready once it answers a ping (it logs at WARNING, so no "ready" line).
    The baseline runs in workers of its own (``Worker.baseline``), on plain Celery.
    """

    def __init__(
        self,
        name: str,
        *,
        pool: str = "prefork",
        concurrency: int = 2,
        env: dict | None = None,
        app: str = "config.celery",
        queue: str = "default",
    ) -> None:
        log_path = Path(os.environ["TASKHUB_VAR_DIR"]) / f"worker-{name}.log"
        log_path.unlink(missing_ok=True)  # one run's log per file
        argv = worker_argv(
            hostname=f"{name}@%h", app=app, queues=queue, pool=pool, concurrency=concurrency, loglevel="WARNING"
        )
        super().__init__(argv, env={**os.environ, **(env or {})}, log_path=log_path, ready=Worker._answers)
        self.worker_name = name

    @staticmethod
    def _answers(worker: Worker) -> bool:
        from config.celery import app

        return bool(app.control.ping(destination=[worker.hostname], timeout=0.5))

    @classmethod
    def baseline(cls, name: str, flavour: str = "stock", **kwargs) -> Worker:
        """A worker for the baseline task: plain Celery (``stock``)."""
        from bench.baseline import QUEUES, WORKER_APPS

        return cls(name, app=WORKER_APPS[flavour], queue=QUEUES[flavour], **kwargs)

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, grace: float = 30) -> None:
        super().stop(grace)

    @property
    def hostname(self) -> str:
        import socket

        return f"{self.worker_name}@{socket.gethostname()}"

    def rss(self, include_watchers: bool = True) -> int:
        """Resident memory of the worker's processes (and their group watchers), bytes."""
        import psutil

        total = 0
        main = psutil.Process(self.proc.pid)
        for proc in [main, *main.children(recursive=True)]:
            try:
                if "python" not in proc.name() and "celery" not in proc.name():
                    continue  # a command the worker runs (cheap check first: there may be a thousand)
                cmdline = proc.cmdline()
                if not cmdline or "python" not in os.path.basename(cmdline[0]):
                    continue  # a command the worker runs, not the worker
                if not include_watchers and "-c" in cmdline:
                    continue
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        return total


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def cpu_seconds(*workers: Worker) -> dict[str, float]:
    """CPU seconds used so far: by PostgreSQL, Redis, this process, the workers, and the whole machine.

    ``worker`` is the workers' main processes plus their pool processes (``worker_main``,
    ``worker_pool``); ``commands`` the commands its pool processes ran and
    reaped; ``machine`` every CPU's busy time (steal excluded), which also
    holds the kernel's share (network, context switches). PostgreSQL and
    Redis are counted whole (every backend on the machine, live or exited),
    so other load on the same servers shows up here too.
    """
    import psutil

    totals = {"postgres": 0.0, "redis": 0.0, "bench": 0.0, "worker": 0.0}
    for proc in psutil.process_iter(["name"]):
        name = proc.info["name"] or ""
        key = "postgres" if name.startswith("postgres") else "redis" if name.startswith("redis") else None
        if key is None:
            continue
        try:
            t = proc.cpu_times()
            totals[key] += t.user + t.system
            if key == "postgres":
                # Backends that exited (a worker's connection recycled after
                # CELERY_DB_REUSE_MAX tasks, autovacuum workers) leave their
                # CPU with the postmaster, which reaped them.
                totals[key] += t.children_user + t.children_system
        except psutil.Error:
            continue
    me = psutil.Process().cpu_times()
    totals["bench"] = me.user + me.system
    if workers:
        totals.update(worker_main=0.0, worker_pool=0.0, commands=0.0)
    for worker in workers:
        for i, proc in enumerate(worker.processes()):
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            totals["worker"] += t.user + t.system
            totals["worker_main" if i == 0 else "worker_pool"] += t.user + t.system
            if i:
                totals["commands"] += t.children_user + t.children_system
    m = psutil.cpu_times()  # guest time is already counted in user
    totals["machine"] = m.user + m.nice + m.system + getattr(m, "irq", 0.0) + getattr(m, "softirq", 0.0)
    return totals


class Profiler:
    """py-spy sampling the worker and its pool processes (BENCH_PROFILE=1), summarised by function."""

    def __init__(self, worker: Worker, label: str) -> None:
        self.worker = worker
        self.path = Path(os.environ["TASKHUB_VAR_DIR"]) / f"profile-{label}.txt"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Profiler:
        if os.environ.get("BENCH_PROFILE") == "1":
            spy = str(Path(sys.executable).with_name("py-spy"))
            self.proc = subprocess.Popen(
                [spy, "record", "-p", str(self.worker.proc.pid), "--subprocesses", "--nonblocking", "--gil",
                 "-r", "100", "-f", "raw", "-o", str(self.path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1)  # let it attach
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(60)

    def summary(self, top: int = 15) -> dict[str, object] | None:
        """Share of samples per function (self time) and per layer (inclusive), for pool processes."""
        if self.proc is None or not self.path.exists():
            return None
        own: dict[str, int] = {}
        layers: dict[str, int] = {}
        total = 0
        for line in self.path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            if any("_poll" in f or "select (selectors" in f or "wait (" in f for f in frames[-2:]):
                continue  # idle: waiting for work or for the command
            total += n
            leaf = frames[-1]
            own[leaf] = own.get(leaf, 0) + n
            seen = set()
            for frame in frames:
                layer = _layer(frame)
                if layer and layer not in seen:
                    seen.add(layer)
                    layers[layer] = layers.get(layer, 0) + n
        if not total:
            return None
        pct = lambda v: round(100 * v / total, 1)  # noqa: E731
        return {
            "samples": total,
            "layers_pct": {k: pct(v) for k, v in sorted(layers.items(), key=lambda kv: -kv[1])},
            "top_self_pct": {k: pct(v) for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:top]},
        }


LAYERS = (
    ("runner (fork/exec, pipes, wait)", ("executions/runner.py",)),
    ("subprocess", ("subprocess.py",)),
    ("Django ORM", ("django/db/models",)),
    ("database driver", ("psycopg/",)),
    ("kombu/redis", ("kombu/", "redis/")),
    ("celery tracing/events", ("celery/app/trace.py", "celery/events")),
    ("TaskHub engine", ("executions/lifecycle.py", "executions/statements.py", "executions/messaging.py")),
)


def _layer(frame: str) -> str | None:
    for name, needles in LAYERS:
        if any(n in frame for n in needles):
            return name
    return None
