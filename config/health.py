"""/healthz: is the database reachable, the broker reachable, any worker answering."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, JsonResponse


def healthz(request: HttpRequest) -> JsonResponse:
    from config.celery import app

    checks: dict[str, dict[str, object]] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = {"ok": True}
    except Exception as exc:
        checks["database"] = {"ok": False, "error": str(exc)}
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        checks["broker"] = {"ok": True}
    except Exception as exc:
        checks["broker"] = {"ok": False, "error": str(exc)}
    try:
        replies = app.control.ping(timeout=1.0) or []
        names = sorted(name for reply in replies for name in reply)
        checks["workers"] = {"ok": bool(names), "names": names}
    except Exception as exc:
        checks["workers"] = {"ok": False, "error": str(exc)}
    healthy = checks["database"]["ok"] and checks["broker"]["ok"]
    return JsonResponse({"ok": healthy, "checks": checks}, status=200 if healthy else 503)
