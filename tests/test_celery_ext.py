"""celery_ext: TaskHub's extensions of kombu and Celery, against a real Redis; canaries fail when the libraries change."""

from __future__ import annotations

import base64
import json
import time

import pytest
import redis
from django.conf import settings
from kombu import Connection, Exchange, Queue

from celery_ext.broker import Transport
from config.celery import app
from tests.conftest import wait_for
from tests.test_broker import drain

pytestmark = pytest.mark.skipif(
    settings.BROKER_SCHEME != "redis", reason="TaskHub's transport serves redis:// brokers only"
)


def test_the_extensions_the_settings_name_are_the_ones_in_use():
    from celery_ext.broker import AMQP, Events

    assert settings.TASKHUB_CELERY_EXT >= {"transport", "producer", "settings", "unanswered", "unanswered_acks"}
    assert isinstance(app.amqp, AMQP) and isinstance(app.events, Events)
    options = app.conf.broker_transport_options
    assert options["unanswered_exchanges"] == ["celeryev"] and options["unanswered_acks"] is True


def test_celerys_settings_are_kept_in_the_first_map_and_later_ones_go_on_top():
    from celery import Celery
    from celery.app.defaults import SETTING_KEYS

    from celery_ext.settings import keep_at_hand

    fresh = Celery("fresh")
    fresh.config_from_object("django.conf:settings", namespace="CELERY")
    keep_at_hand(fresh)
    fresh.conf.task_default_queue = "given-before"  # as Celery(…, task_default_queue=…) would
    assert fresh.conf.task_serializer == "json"  # configured now
    assert set(SETTING_KEYS) <= set(fresh.conf.maps[0])  # Celery's configuration is still a chain of maps
    assert fresh.conf.task_default_queue == "given-before"
    fresh.conf.worker_concurrency = 7  # as a worker's command-line option does, after
    assert fresh.conf.worker_concurrency == 7


def clients_built_publishing(conn: Connection, queue: Queue, count: int, monkeypatch) -> int:
    """Publish ``count`` messages {"n": 0..count-1} to ``queue`` (declared by one more, {"n": -1}, first).

    Return how many redis.Redis clients were built while publishing the ``count``
    (the cost the transport avoids).
    """
    producer = conn.Producer()
    producer.publish({"n": -1}, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue])
    built: list[int] = []
    real_init = redis.Redis.__init__

    def init(self, *args, **kwargs):
        built.append(1)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "__init__", init)
    for n in range(count):
        producer.publish({"n": n}, exchange=queue.exchange, routing_key=queue.routing_key)
    monkeypatch.undo()
    return len(built)


def test_taskhub_app_uses_its_transport_for_redis_urls():
    with app.connection_for_write() as conn:
        assert isinstance(conn.transport, Transport)


def test_publishing_many_messages_builds_no_client_per_message(monkeypatch):
    queue = Queue("taskhub-test-broker", Exchange("taskhub-test-broker"), "taskhub-test-broker")
    with Connection(settings.CELERY_BROKER_URL, transport="celery_ext.broker:Transport") as conn:
        assert clients_built_publishing(conn, queue, 50, monkeypatch) == 0  # kombu's own: one per message
        got = []
        with conn.SimpleQueue(queue) as sq:
            for _ in range(51):
                message = sq.get(timeout=5)
                got.append(message.payload["n"])
                message.ack()
        assert got == list(range(-1, 50))


def test_kombus_own_transport_still_builds_one_client_per_message(monkeypatch):
    # The reason for celery_ext/broker.py: if kombu stops doing this, the transport can go.
    queue = Queue("taskhub-test-broker-stock", Exchange("taskhub-test-broker-stock"), "taskhub-test-broker-stock")
    with Connection(settings.CELERY_BROKER_URL) as conn:
        # At least one per message (two on kombu 5.7: the lookup and the push).
        assert clients_built_publishing(conn, queue, 5, monkeypatch) >= 5
        conn.default_channel.queue_purge(queue.name)


def test_a_client_passed_in_is_used_as_given():
    with Connection(settings.CELERY_BROKER_URL, transport="celery_ext.broker:Transport") as conn:
        channel = conn.default_channel
        mine = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        with channel.conn_or_acquire(mine) as client:
            assert client is mine
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
            assert first is not mine


class CountingQueue(Queue):
    """A kombu Queue that counts the bound copies made of it (kombu binds a copy to declare it)."""

    binds = 0

    def bind(self, channel):
        type(self).binds += 1
        return super().bind(channel)


def publish_declaring(producer, queue: Queue, count: int) -> None:
    for n in range(count):
        producer.publish({"n": n}, routing_key=queue.name, declare=[queue], retry=True)


def test_taskhub_app_and_its_worker_events_publish_through_its_producer():
    from celery_ext.broker import Producer

    with app.producer_or_acquire() as producer:
        assert isinstance(producer, Producer)
    with app.connection_for_write() as conn:
        dispatcher = app.events.Dispatcher(conn, enabled=True)
        assert isinstance(dispatcher.producer, Producer)
        dispatcher.close()


def test_an_entity_already_declared_is_not_copied_again_and_messages_still_arrive():
    from celery_ext.broker import Producer

    class Declared(CountingQueue):
        binds = 0

    queue = Declared("taskhub-test-declare", Exchange("taskhub-test-declare"), "taskhub-test-declare")
    with Connection(settings.CELERY_BROKER_URL, transport="celery_ext.broker:Transport") as conn:
        conn.default_channel.queue_purge(queue.name)
        publish_declaring(Producer(conn), queue, 20)
        assert Declared.binds == 1  # declared once, on the first message; then found in the cache
        client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        assert client.llen(queue.name) == 20
        # Declared for real: the queue is bound to its exchange on the broker.
        assert any(b"taskhub-test-declare" in m for m in client.smembers("_kombu.binding.taskhub-test-declare"))
        conn.default_channel.queue_purge(queue.name)


def test_kombus_own_producer_copies_the_entity_for_every_message():
    # The reason for celery_ext.broker.Producer: if kombu stops doing this, the class can go.
    import kombu

    class Stock(CountingQueue):
        binds = 0

    queue = Stock("taskhub-test-declare-stock", Exchange("taskhub-test-declare-stock"), "taskhub-test-declare-stock")
    with Connection(settings.CELERY_BROKER_URL, transport="celery_ext.broker:Transport") as conn:
        publish_declaring(kombu.Producer(conn), queue, 5)
        assert Stock.binds >= 5
        conn.default_channel.queue_purge(queue.name)


@pytest.mark.django_db(transaction=True)
def test_a_launch_sends_its_message_and_task_sent_event_in_one_round_trip(make_task, monkeypatch):
    from taskhub.services import launch

    task = make_task(command="true", queue="taskhub-test-batch")
    launch(task)  # the first message to a queue declares it (a few more commands, once per connection)
    drain(task.queue)
    events = redis.Redis.from_url(settings.CELERY_BROKER_URL).pubsub()
    events.psubscribe("*celeryev*")
    events.get_message(timeout=1)  # the subscription's confirmation
    pipelines: list[list[str]] = []
    direct: list[str] = []
    real_execute, real_command = redis.client.Pipeline.execute, redis.Redis.execute_command

    def execute(self, *args, **kwargs):
        pipelines.append([str(command[0][0]).upper() for command in self.command_stack])
        return real_execute(self, *args, **kwargs)

    def execute_command(self, *args, **options):
        if not isinstance(self, redis.client.Pipeline):
            direct.append(str(args[0]).upper())
        return real_command(self, *args, **options)

    monkeypatch.setattr(redis.client.Pipeline, "execute", execute)
    monkeypatch.setattr(redis.Redis, "execute_command", execute_command)
    execution = launch(task)
    monkeypatch.undo()

    assert pipelines == [["LPUSH", "PUBLISH"]]  # the message and its task-sent event, together
    assert "LPUSH" not in direct and "PUBLISH" not in direct
    assert [h["id"] for h in drain(task.queue)] == [execution.celery_task_id]
    sent = events.get_message(timeout=5)
    assert sent is not None and sent["channel"].endswith(b"task.sent")
    event = json.loads(base64.b64decode(json.loads(sent["data"])["body"]))
    assert event["uuid"] == execution.celery_task_id and event["queue"] == task.queue
    events.close()


@pytest.mark.django_db(transaction=True)
def test_a_failed_publish_batch_is_sent_again_the_usual_way(make_task, monkeypatch, caplog):
    from kombu.exceptions import BatchPublishError
    from kombu.transport.redis import PublishBatch

    from executions.messaging import send
    from executions.models import TaskExecution
    from taskhub.services import launch

    task = make_task(command="true", queue="taskhub-test-batch-fail")
    drain(task.queue)
    execution = TaskExecution.objects.get(pk=launch(task).pk)
    drain(task.queue)  # the launch's own message: the one below is sent again by hand

    def fail(self):  # the broker went away mid-flush, as kombu reports it
        self.discard()
        raise BatchPublishError("Redis publish batch failed; delivery is uncertain")

    monkeypatch.setattr(PublishBatch, "flush", fail)
    assert send(execution) is True
    monkeypatch.undo()
    assert [h["id"] for h in drain(task.queue)] == [execution.celery_task_id]
    assert "again after a failed publish batch" in caplog.text


# -- task events without waiting for Redis's reply ------------------------------------


def event_subscriber():
    subscriber = redis.Redis.from_url(settings.CELERY_BROKER_URL).pubsub()
    subscriber.psubscribe("*celeryev*")
    assert subscriber.get_message(timeout=2)["type"] == "psubscribe"
    return subscriber


def events_received(subscriber, count: int) -> list[str]:
    """The uuids of the next ``count`` task events (fewer if they stop coming for 5 s)."""
    uuids = []
    while len(uuids) < count:
        message = subscriber.get_message(timeout=5)
        if message is None:
            break
        if message["type"] == "pmessage":
            uuids.append(json.loads(base64.b64decode(json.loads(message["data"])["body"]))["uuid"])
    return uuids


def send_events(conn: Connection, uuids: list[str]) -> None:
    dispatcher = app.events.Dispatcher(conn, enabled=True)  # Celery's own, as a worker sends with
    for uuid in uuids:
        dispatcher.send("task-received", uuid=uuid)
    dispatcher.close()


def test_task_events_go_out_without_a_round_trip_and_arrive(monkeypatch):
    subscriber = event_subscriber()
    answered: list[str] = []
    real_command = redis.Redis.execute_command

    def execute_command(self, *args, **options):
        answered.append(str(args[0]).upper())
        return real_command(self, *args, **options)

    with app.connection_for_write() as conn:
        send_events(conn, ["warm-up"])  # connects, declares
        assert events_received(subscriber, 1) == ["warm-up"]
        monkeypatch.setattr(redis.Redis, "execute_command", execute_command)
        uuids = [f"event-{n}" for n in range(50)]
        send_events(conn, uuids)
        monkeypatch.undo()
        publisher = conn.default_channel._unanswered
        assert publisher._conn is not None and not publisher._poll.poll(0)  # no reply waits unread
    assert "PUBLISH" not in answered  # none went through redis-py's request/reply path
    assert events_received(subscriber, 50) == uuids
    subscriber.close()


def test_an_event_after_redis_dropped_the_connection_is_not_lost():
    subscriber = event_subscriber()
    admin = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    with app.connection_for_write() as conn:
        send_events(conn, ["before"])
        publisher = conn.default_channel._unanswered
        port = publisher._conn._sock.getsockname()[1]
        (client,) = [c for c in admin.client_list() if c["addr"].endswith(f":{port}")]
        admin.client_kill_filter(_id=client["id"])
        wait_for(lambda: publisher._poll.poll(0), timeout=5, what="the connection's end to reach the publisher")
        send_events(conn, ["after"])
        assert publisher._conn._sock.getsockname()[1] != port  # a new connection
    assert events_received(subscriber, 2) == ["before", "after"]
    subscriber.close()


def test_a_server_that_refuses_client_reply_gets_events_the_usual_way(caplog):
    admin = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    user = "taskhub-test-no-client-command"
    admin.acl_setuser(user, enabled=True, passwords=["+secret"], keys="*", channels="*", commands=["+@all", "-client"])
    try:
        url = settings.CELERY_BROKER_URL.replace("redis://", f"redis://{user}:secret@", 1)
        subscriber = event_subscriber()
        with Connection(url, transport=Transport, transport_options={"unanswered_exchanges": ["celeryev"]}) as conn:
            send_events(conn, ["one", "two"])
            assert conn.default_channel._unanswered.supported is False
        assert events_received(subscriber, 2) == ["one", "two"]
        assert "does not take CLIENT REPLY OFF" in caplog.text
        subscriber.close()
    finally:
        admin.acl_deluser(user)


def test_a_delivery_and_its_ack_go_out_without_a_round_trip(monkeypatch):
    queue = Queue("taskhub-test-unanswered-ack", Exchange("taskhub-test-unanswered-ack"), "taskhub-test-unanswered-ack")
    admin = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    pipelines: list[list[str]] = []
    real_execute = redis.client.Pipeline.execute

    def execute(self, *args, **kwargs):
        pipelines.append([str(command[0][0]).upper() for command in self.command_stack])
        return real_execute(self, *args, **kwargs)

    with app.connection_for_write() as conn, conn.SimpleQueue(queue) as sq:
        sq.put({"n": 1})
        monkeypatch.setattr(redis.client.Pipeline, "execute", execute)
        message = sq.get(timeout=5)
        channel = message.channel
        tag = message.delivery_tag
        # kombu's safety net while it runs: the message kept under its tag, to hand back if the worker stops.
        wait_for(lambda: admin.hexists(channel.unacked_key, tag), timeout=5, what="the delivery record")
        assert json.loads(admin.hget(channel.unacked_key, tag))[0] == message._raw
        assert admin.zscore(channel.unacked_index_key, tag) == pytest.approx(time.time(), abs=60)
        message.ack()
        monkeypatch.undo()
        # kombu's own are MULTI/ZADD/HSET/EXEC and MULTI/ZREM/HDEL/EXEC pipelines, waiting for EXEC's reply.
        assert pipelines == []
        wait_for(
            lambda: (
                not admin.hexists(channel.unacked_key, tag) and admin.zscore(channel.unacked_index_key, tag) is None
            ),
            timeout=5,
            what="the ack to reach Redis",
        )
        channel.qos.prefetch_count = 1
        assert channel.qos.can_consume()  # kombu's own bookkeeping counts it acked: room for the next
        with pytest.raises(sq.Empty):
            sq.get(timeout=0.5)


def test_a_message_delivered_and_not_acked_goes_back_to_its_queue_when_the_connection_closes():
    queue = Queue("taskhub-test-restore", Exchange("taskhub-test-restore"), "taskhub-test-restore")
    admin = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    with app.connection_for_write() as conn, conn.SimpleQueue(queue) as sq:
        sq.put({"n": 1})
        message = sq.get(timeout=5)
        channel = message.channel
        wait_for(lambda: admin.hexists(channel.unacked_key, message.delivery_tag), timeout=5, what="the record")
    # Closing the connection handed the message back (a worker's warm shutdown does so).
    assert not admin.hexists(channel.unacked_key, message.delivery_tag)
    with app.connection_for_write() as again, again.SimpleQueue(queue) as sq:
        restored = sq.get(timeout=5)
        assert restored.payload == {"n": 1}
        restored.ack()


def test_a_late_ack_after_the_broker_connection_was_lost_goes_kombus_way():
    # What a worker does after a reconnect: a task that ran through the outage
    # acks on its old, closed channel (once an AttributeError that stopped the worker).
    queue = Queue("taskhub-test-late-ack", Exchange("taskhub-test-late-ack"), "taskhub-test-late-ack")
    admin = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    conn = app.connection_for_write()
    with conn.SimpleQueue(queue) as sq:
        sq.put({"n": 1})
        message = sq.get(timeout=5)
        channel = message.channel
        wait_for(lambda: admin.hexists(channel.unacked_key, message.delivery_tag), timeout=5, what="the record")
        conn.close()  # kombu restores the unacked message to its queue
        assert channel.closed
        message.ack()  # kombu's pipeline on the channel's client, reconnecting
        assert not admin.hexists(channel.unacked_key, message.delivery_tag)
    with app.connection_for_write() as again, again.SimpleQueue(queue) as sq:
        restored = sq.get(timeout=5)
        assert restored.payload == {"n": 1}
        restored.ack()
