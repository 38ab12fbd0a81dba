"""What a run message carries, against the real broker of the suite (Redis)."""

from __future__ import annotations

import pytest
from django.conf import settings

from config.celery import app

pytestmark = pytest.mark.skipif(settings.BROKER_SCHEME != "redis", reason="reads raw messages from Redis")


def drain(queue: str) -> list[dict]:
    """Take every message off ``queue`` (through the app's connection: its priority steps); return their headers."""
    headers = []
    with app.connection_for_read() as conn, conn.SimpleQueue(queue) as sq:
        while True:
            try:
                message = sq.get(timeout=1)
            except sq.Empty:
                return headers
            headers.append(message.headers)
            message.ack()


@pytest.mark.django_db(transaction=True)
def test_a_run_message_names_its_execution_and_carries_no_time_limits(make_task):
    from taskhub.services import launch

    task = make_task(command="true", queue="taskhub-test-message", timeout=3600)
    drain(task.queue)
    execution = launch(task)

    [headers] = drain(task.queue)
    assert headers["id"] == execution.celery_task_id
    assert headers["task"] == "executions.run_execution"
    assert (headers["argsrepr"], headers["kwargsrepr"]) == (f"[{execution.pk}]", "{}")
    # The runner enforces the deadline on the command's whole group: no
    # per-message limits, so a prefork worker's main process arms no timer per job.
    assert headers["timelimit"] in ([None, None], (None, None))
