"""Prometheus metrics at /metrics: what happened (counters, histograms) and what is now (gauges).

- Events are counted where they happen, in the worker (and beat) processes:
  executions finished by task, queue and status, their durations, retries,
  lost attempts, recovery actions. Each process writes its counts to files
  in PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode) and
  /metrics adds up the files of every process of the host, dead ones too,
  so counts survive a pool process's restart.
- The state now is read at scrape time from where it is true for every
  host: executions running and the age of the oldest due pending execution
  from the database, queue depth from the broker.

Counting costs no database statement: the outcome's row and task are in
memory when it is recorded.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from django.conf import settings
from django.db.models import Count, Min
from django.http import HttpRequest, HttpResponse
from django.utils.timezone import now

# prometheus-client picks its multiprocess mode when it is imported, from the
# environment settings set; the folder must exist before the first count. A
# process that cannot make it still starts: its counts fail and are logged.
try:
    Path(settings.PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
except OSError as exc:
    logging.getLogger("taskhub").warning("PROMETHEUS_MULTIPROC_DIR: cannot make it (%s); nothing is counted.", exc)

from celery.signals import task_success  # noqa: E402
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402

logger = logging.getLogger("taskhub")

# Seconds: from a blink to a nightly job of several hours.
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, float("inf"))

FINISHED = Counter(
    "taskhub_executions_finished",
    "Attempts that reached a final status, by task, queue and status.",
    ["task", "queue", "status"],
)
STARTED = Counter(
    "taskhub_executions_started",
    "Attempts claimed by a worker to run, counted at the claim.",
    ["task", "queue"],
)
DURATION = Histogram(
    "taskhub_execution_duration_seconds",
    "Run time of finished attempts, from the claim to the outcome.",
    ["task", "queue", "status"],
    buckets=DURATION_BUCKETS,
)
RETRIES = Counter(
    "taskhub_execution_retries",
    "Next attempts planned by the retry policy (handed-back attempts not included).",
    ["task", "queue"],
)
LOST = Counter(
    "taskhub_executions_lost",
    "Attempts marked lost (worker died, stopped answering or handed back).",
    ["task", "queue"],
)
HANDED_BACK = Counter(
    "taskhub_executions_handed_back", "Attempts handed back at a worker's warm shutdown.", ["task", "queue"]
)
RUNS_FAILED = Counter(
    "taskhub_runs_failed", "Runs that ended without success (no attempt follows a failed one).", ["task", "queue"]
)
RECOVERY = Counter(
    "taskhub_recovery_actions",
    "Rows the recovery checks acted on: reap_lost marks silent executions lost, "
    "reconcile_pending sends unclaimed due executions again.",
    ["check"],
)
RECOVERY_ERRORS = Counter(
    "taskhub_recovery_errors", "Rows a recovery check failed on (logged with their id).", ["check"]
)

RECOVERY_CHECKS = {"executions.reap_lost": "reap_lost", "executions.reconcile_pending": "reconcile_pending"}
FAILURES = frozenset({"failed", "timeout", "lost"})


# -- counting, in the process where it happens -------------------------------------------


def _labels(execution) -> tuple[str, str]:
    task = execution.task  # loaded with the row by the claim and by the recovery checks
    return task.name, task.queue


def observe_start(execution) -> None:
    """Count an attempt a worker has just claimed: no database access."""
    try:
        STARTED.labels(*_labels(execution)).inc()
    except Exception:  # a metric must never fail the run it counts
        logger.exception("Could not count the start of execution %s.", execution.pk)


def observe_outcome(outcome) -> None:
    """Count a recorded outcome (an ``executions.lifecycle.Outcome``): no database access."""
    execution = outcome.execution
    name, queue = _labels(execution)
    status = str(execution.status)
    FINISHED.labels(name, queue, status).inc()
    if execution.started_at is not None:
        if execution.finished_at is not None:
            seconds = (execution.finished_at - execution.started_at).total_seconds()
            DURATION.labels(name, queue, status).observe(max(seconds, 0.0))
    if status == "lost":
        LOST.labels(name, queue).inc()
    if outcome.handed_back:
        HANDED_BACK.labels(name, queue).inc()
    elif outcome.next_execution is not None:
        RETRIES.labels(name, queue).inc()
    elif status in FAILURES or execution.exhausted:
        RUNS_FAILED.labels(name, queue).inc()


@task_success.connect
def _count_recovery(sender=None, result=None, **kwargs: object) -> None:
    check = RECOVERY_CHECKS.get(getattr(sender, "name", ""))
    if check is None or not isinstance(result, dict):
        return
    RECOVERY.labels(check).inc(result.get("done", 0))
    RECOVERY_ERRORS.labels(check).inc(result.get("errors", 0))


# -- the state now, read at scrape time --------------------------------------------------


def queue_depths(queues: Iterable[str]) -> dict[str, int | None]:
    """Messages waiting in each queue (None for a queue the broker could not say).

    A channel per queue: on RabbitMQ a passive declare of a queue that does not
    exist closes its channel, and the next queue must not pay for that.
    """
    from celery import current_app

    depths: dict[str, int | None] = {}
    try:
        with current_app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
            for name in queues:
                channel = conn.channel()
                try:
                    depths[name] = channel.queue_declare(queue=name, passive=True).message_count
                except Exception:
                    depths[name] = 0  # no such queue: nothing waits in it (Redis drops empty lists)
                finally:
                    try:
                        channel.close()
                    except Exception:
                        pass
    except Exception:
        logger.warning("Metrics: could not read queue depths from the broker.", exc_info=True)
        return {name: None for name in queues}
    return depths


class StateCollector:
    """Gauges read from the database and the broker when /metrics is scraped."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from executions.models import Status, TaskExecution
        from taskhub.models import Task

        at = now()
        queues = set(Task.objects.order_by().values_list("queue", flat=True).distinct()) | {
            settings.CELERY_TASK_DEFAULT_QUEUE
        }

        running = GaugeMetricFamily("taskhub_executions_running", "Attempts running now.", labels=["task", "queue"])
        # execution_active_due_idx holds only pending and running rows.
        rows = (
            TaskExecution.objects.filter(status=Status.RUNNING)
            .values("task__name", "task__queue")
            .annotate(n=Count("id"))
            .order_by()
        )
        for row in rows:
            running.add_metric([row["task__name"], row["task__queue"]], row["n"])
        yield running

        oldest = GaugeMetricFamily(
            "taskhub_oldest_due_pending_age_seconds",
            "How long the oldest due, unclaimed execution of each queue has waited (0 when none waits).",
            labels=["queue"],
        )
        due = dict(
            TaskExecution.objects.filter(status=Status.PENDING, scheduled_for__lte=at)
            .values_list("task__queue")
            .annotate(first=Min("scheduled_for"))
            .order_by()
        )
        for queue in sorted(queues | set(due)):
            first = due.get(queue)
            oldest.add_metric([queue], (at - first).total_seconds() if first else 0.0)
        yield oldest

        depth = GaugeMetricFamily("taskhub_queue_depth", "Messages waiting in each broker queue.", labels=["queue"])
        for queue, size in sorted(queue_depths(sorted(queues)).items()):
            if size is not None:
                depth.add_metric([queue], size)
        yield depth


# -- the endpoint ---------------------------------------------------------------------------


def _client_allowed(request: HttpRequest) -> bool:
    token = settings.TASKHUB_METRICS_TOKEN
    if token:
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    for entry in settings.TASKHUB_METRICS_ALLOW:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            logger.warning("TASKHUB_METRICS_ALLOW: %r is not an address or network; ignored.", entry)
    return False


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Serve the metrics in Prometheus' text format to a caller with the token or from an allowed address."""
    if not _client_allowed(request):
        response = HttpResponse(
            "Metrics need TASKHUB_METRICS_TOKEN as a Bearer token, or a client address in TASKHUB_METRICS_ALLOW.\n",
            status=403,
            content_type="text/plain",
        )
        if settings.TASKHUB_METRICS_TOKEN:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            response.status_code = 401
        return response
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    registry.register(StateCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
