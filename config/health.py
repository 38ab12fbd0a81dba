"""/healthz: is the database reachable, the broker reachable, a worker alive.

Anonymous callers (load balancers, probes) get ``ok`` per part and nothing
else; staff users who are logged in also get the detail (error text, the
workers and when each was last seen). Errors are logged with their
traceback. Workers are judged by the rows they write themselves
(executions.Worker), so a probe costs two queries and a broker connection,
never a broadcast and a wait for replies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils.timezone import now

logger = logging.getLogger("taskhub.health")

# Seconds the broker gets to accept a connection and answer, so a probe
# answers within the load balancer's own timeout.
BROKER_TIMEOUT = 2.0


@dataclass
class Part:
    ok: bool
    detail: dict[str, object] = field(default_factory=dict)

    def public(self) -> dict[str, object]:
        return {"ok": self.ok}

    def full(self) -> dict[str, object]:
        return {"ok": self.ok, **self.detail}


def healthz(request: HttpRequest) -> JsonResponse:
    parts = {"database": check_database(), "broker": check_broker(), "workers": check_workers()}
    # Web can serve while no worker runs (work waits in the broker): only the
    # database and the broker decide the status code.
    healthy = parts["database"].ok and parts["broker"].ok
    show = Part.full if _is_staff(request) else Part.public
    body = {"ok": healthy, "checks": {name: show(part) for name, part in parts.items()}}
    return JsonResponse(body, status=200 if healthy else 503)


def _is_staff(request: HttpRequest) -> bool:
    try:
        return request.user.is_authenticated and request.user.is_staff
    except Exception:
        # Reading the session needs the database; when it is down, answer as to anyone.
        logger.warning("/healthz: could not read the caller's session", exc_info=True)
        return False


def check_database() -> Part:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        logger.exception("/healthz: the database is unreachable")
        return Part(False, {"error": _describe(exc)})
    return Part(True)


def check_broker() -> Part:
    from config.celery import app

    # One attempt, each step bounded: connect, and the first command's reply.
    bounded = {"socket_timeout": BROKER_TIMEOUT, "socket_connect_timeout": BROKER_TIMEOUT}
    try:
        with app.connection_for_write(connect_timeout=BROKER_TIMEOUT, transport_options=bounded) as conn:
            conn.ensure_connection(max_retries=0, timeout=BROKER_TIMEOUT)
    except Exception as exc:
        logger.exception("/healthz: the broker is unreachable")
        return Part(False, {"error": _describe(exc)})
    return Part(True)


def check_workers() -> Part:
    from executions.models import Worker

    at = now()
    try:
        workers = list(Worker.objects.all())
    except Exception as exc:
        logger.exception("/healthz: could not read the workers' liveness")
        return Part(False, {"error": _describe(exc)})
    seen = [
        {
            "name": worker.hostname,
            "queues": worker.queue_names,
            "pid": worker.pid,
            "started_at": worker.started_at.isoformat(),
            "last_seen_at": worker.last_seen_at.isoformat(),
            "alive": worker.is_alive(at),
        }
        for worker in workers
    ]
    names = [worker["name"] for worker in seen if worker["alive"]]
    return Part(bool(names), {"names": names, "seen": seen})


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
