"""RabbitMQ as the broker: priority queues, long delays kept out of it, lost messages sent again.

Run in `make test`'s RabbitMQ pass (CELERY_BROKER_URL=amqp://…); skipped on other brokers.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils.timezone import now

from executions.models import Status, TaskExecution, Trigger
from executions.recovery import reconcile_pending
from executions.tasks import run_execution
from taskhub.services import launch
from tests.conftest import finished, wait_for
from testsupport.brokers import AMQP_SCHEMES, amqp_queues, purge_amqp, queued_run_ids, vhost_of
from testsupport.rabbitmq import RabbitMQServer

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(settings.BROKER_SCHEME not in AMQP_SCHEMES, reason="needs CELERY_BROKER_URL=amqp://…"),
]


def queue_arguments(name: str) -> dict[str, object]:
    import json
    import subprocess

    out = subprocess.run(
        ["rabbitmqctl", "list_queues", "-q", "-p", vhost_of(settings.CELERY_BROKER_URL), "--formatter", "json",
         "name", "arguments"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    # rabbitmqctl lists a queue's arguments as [name, type, value] triples.
    rows = {row["name"]: row["arguments"] for row in json.loads(out)}
    return {key: value for key, _type, value in rows.get(name, [])}


def test_a_tasks_own_queue_is_declared_as_a_priority_queue_and_serves_urgent_work_first(celery_processes, make_task):
    purge_amqp(settings.CELERY_BROKER_URL)
    queue = f"reports-{uuid.uuid4().hex[:6]}"
    low = make_task(name="low", command="true", queue=queue, priority=0)
    high = make_task(name="high", command="true", queue=queue, priority=9)
    launched = [launch(task) for task in (low, low, high, low, high)]  # nobody serves the queue yet

    assert queue_arguments(queue).get("x-max-priority") == 10
    assert sorted(queued_run_ids(settings.CELERY_BROKER_URL, queue)) == sorted(e.pk for e in launched)
    celery_processes(queues=queue, concurrency=1, purge=False)
    rows = [finished(e) for e in launched]

    order = [r.task.priority for r in sorted(rows, key=lambda r: r.started_at)]
    assert order == [9, 9, 0, 0, 0], order
    assert all(r.status == Status.SUCCEEDED for r in rows)


def test_a_retry_due_past_the_max_eta_is_held_in_the_database_not_in_rabbitmq(celery_processes, make_task):
    celery_processes()
    task = make_task(command="false", retry_count=1, retry_delay=3600)

    first = finished(launch(task))
    nxt = wait_for(
        lambda: TaskExecution.objects.filter(run_id=first.run_id, attempt=2).first(), timeout=15, what="attempt 2"
    )

    assert first.status == Status.FAILED
    assert nxt.status == Status.PENDING and nxt.enqueued_at is None
    assert nxt.scheduled_for - first.finished_at >= timedelta(seconds=3590)
    # Not in any queue, ready or held by the worker unacknowledged (as an ETA message would be).
    assert amqp_queues(settings.CELERY_BROKER_URL).get("default", 0) == 0


def test_a_message_rabbitmq_lost_is_sent_again_once_the_queue_has_drained_and_runs_once(celery_processes, make_task):
    purge_amqp(settings.CELERY_BROKER_URL)
    task = make_task(command="echo once")
    long_ago = now() - timedelta(minutes=10)
    lost = TaskExecution.objects.create(
        task=task, status=Status.PENDING, trigger=Trigger.API, scheduled_for=long_ago, enqueued_at=long_ago
    )
    waiting = launch(make_task(command="true"))  # a message in the queue: a backlog, not a lost message

    assert reconcile_pending(requeue_after=60) == {"done": 0, "errors": 0}
    assert queued_run_ids(settings.CELERY_BROKER_URL) == [waiting.pk]

    purge_amqp(settings.CELERY_BROKER_URL)  # what a broker restart without durable messages does
    assert reconcile_pending(requeue_after=60) == {"done": 1, "errors": 0}
    assert queued_run_ids(settings.CELERY_BROKER_URL) == [lost.pk]
    celery_processes(purge=False)

    assert finished(lost).status == Status.SUCCEEDED and lost.stdout == "once\n"
    assert TaskExecution.objects.filter(task=task).count() == 1


@pytest.fixture
def own_rabbitmq(tmp_path):
    server = RabbitMQServer(tmp_path / "rabbitmq").start()
    yield server
    server.stop()


def _send_via(broker_url: str, execution: TaskExecution) -> None:
    app = run_execution.app
    with app.connection_for_write(broker_url) as conn:
        run_execution.apply_async(args=[execution.pk], queue="default", producer=app.amqp.Producer(conn))


def test_after_a_rabbitmq_restart_workers_reconnect_and_nothing_is_lost_or_run_twice(
    celery_processes, make_task, own_rabbitmq
):
    env = {"CELERY_BROKER_URL": own_rabbitmq.url, "TASKHUB_REQUEUE_AFTER": "3", "TASKHUB_LOST_AFTER": "60"}
    celery_processes(env=env, purge=False)
    task = make_task(command="echo ran")
    long_ago = now() - timedelta(minutes=10)

    def pending(**fields) -> TaskExecution:
        return TaskExecution.objects.create(task=task, status=Status.PENDING, trigger=Trigger.API, **fields)

    before = pending()
    _send_via(own_rabbitmq.url, before)
    assert finished(before).status == Status.SUCCEEDED

    own_rabbitmq.restart()
    after = [pending() for _ in range(3)]
    for execution in after:
        _send_via(own_rabbitmq.url, execution)  # through the restarted broker: the worker has reconnected
    lost = pending(scheduled_for=long_ago, enqueued_at=long_ago)  # its message went with the old broker
    rows = [finished(e) for e in after]
    with run_execution.app.connection_for_write(own_rabbitmq.url) as conn:  # what beat sends every few seconds
        run_execution.app.send_task("executions.reconcile_pending", queue="default", connection=conn)

    rows.append(finished(lost))
    assert all(r.status == Status.SUCCEEDED and r.stdout == "ran\n" for r in rows)
    assert TaskExecution.objects.filter(task=task).count() == 5  # each ran once: no retry, no duplicate row
