"""The hand-written Celery task TaskHub is weighed against, in a Celery app of its own.

What an operator would write without TaskHub: run the command with
``subprocess.run``, capture its output, and nothing else. It reports to a
Redis list so the benchmark can tell when it ran (one RPUSH, the least a
caller needs to learn that a job ended).

``app`` is plain Celery: TaskHub's Celery settings (broker, prefetch 1,
acks_late, task events, priorities, visibility timeout), read from the same
Django settings the way Celery's Django guide shows
(``config_from_object("django.conf:settings", namespace="CELERY")``), on
kombu's own Redis transport: TaskHub's app is configured the same way.
Its workers run ``-A bench.baseline:app`` on the queue ``baseline``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import redis
from celery import Celery

# The baseline's queue, and the app its workers run (-A).
QUEUES = {"stock": "baseline"}
WORKER_APPS = {"stock": "bench.baseline:app"}


def _stock_app(name: str) -> Celery:
    app = Celery(name)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    app.conf.broker_transport = None  # kombu's own for the URL's scheme
    app.conf.beat_schedule = {}
    return app


app = _stock_app("bench-baseline")

_redis: redis.Redis | None = None


def _report(key: str, record: dict) -> None:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ["BENCH_REPORT_URL"])
    _redis.rpush(key, json.dumps(record))


def baseline(self, argv: list[str], key: str, *, fail_times: int = 0, retry_delay: float = 1.0, due: float = 0) -> None:
    picked = time.time()
    proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL)
    _report(
        key,
        {
            "picked": picked,
            "due": due,
            "retries": self.request.retries,
            "stdout": proc.stdout[:200].decode("utf-8", "replace"),
            "returncode": proc.returncode,
        },
    )
    if self.request.retries < fail_times:
        raise self.retry(
            countdown=retry_delay,
            max_retries=fail_times,
            kwargs={"key": key, "fail_times": fail_times, "retry_delay": retry_delay, "due": time.time() + retry_delay},
        )


TASKS = {
    flavour: celery_app.task(
        bind=True, name="bench.baseline", shared=False, acks_late=True, reject_on_worker_lost=True, ignore_result=True
    )(baseline)
    for flavour, celery_app in (("stock", app),)
}
