"""The hand-written Celery task TaskHub is weighed against.

What an operator would write without TaskHub: run the command with
``subprocess.run``, capture its output, and nothing else. It reports to a
Redis list so the benchmark can tell when it ran (one RPUSH, the least a
caller needs to learn that a job ended).
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import redis
from celery import shared_task

_redis: redis.Redis | None = None


def _report(key: str, record: dict) -> None:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ["BENCH_REPORT_URL"])
    _redis.rpush(key, json.dumps(record))


@shared_task(bind=True, name="bench.baseline", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
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
