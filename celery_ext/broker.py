"""kombu's Redis transport and Celery's producers, as TaskHub runs them (settings.TASKHUB_CELERY_EXT).

- ``transport``: one Redis client per channel. kombu's Redis channel builds
  a new ``redis.Redis`` client for every message it publishes
  (``Channel.conn_or_acquire``), and redis-py builds each client's table of
  response callbacks afresh (redis/redis-py#3624): more CPU than the LPUSH
  it carries. The client keeps no connection of its own (every command
  borrows one from the channel's pool), so one per channel does what a
  fresh one per call did.
- ``unanswered``: task events go out on a connection of their own on which
  Redis sends no replies (``UnansweredCommands``, CLIENT REPLY OFF), so a
  worker's main loop does not wait for a round trip per event.
- ``unanswered_acks``: kombu's record of each delivered message and its ack
  likewise. Redis's error replies are not seen on that connection: an ack
  refused is a message redelivered after the visibility timeout, whose
  execution is no longer pending (nothing runs twice); a delivery record
  refused (out of memory) only means kombu cannot hand that message back at
  a worker's death, and the reconciler sends the still-pending execution
  again. Redis out of memory also fails the run messages themselves, on the
  answered connection, where it is logged.
- ``producer``: Celery's producers ask the connection's declaration cache
  before copying the entities to declare.

The figures that keep each one are in docs/performance.md; each has a
canary in tests/test_celery_ext.py that fails when kombu or Celery change
under it.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from contextlib import contextmanager

import kombu
import redis
from celery.app import amqp as celery_amqp
from celery.app import events as celery_events
from celery.events import dispatcher as celery_dispatcher
from kombu import pools
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps
from kombu.utils.objects import cached_property

logger = logging.getLogger("taskhub.broker")


class UnansweredCommands:
    """Commands on a Redis connection of its own on which Redis sends no replies (CLIENT REPLY OFF).

    A worker publishes two or three task events per execution, records
    each message delivered to it until it acks it (kombu's safety net, to
    hand the message back if the worker stops) and acks it: each a round
    trip that blocks its main loop while Redis answers with what no one
    reads (how many subscribers got an event, how many keys were set or
    removed): with redis-py borrowing a connection from
    the pool, checking it, sending, waiting and parsing, 0.1-0.2 ms of CPU
    each. Here each is one write. Events are monitoring (Flower, ``celery
    events``): Redis drops them anyway when no one subscribes, and TaskHub's
    record of a run is in the database. An ack that never arrived leaves
    the message to come back after the visibility timeout, as after a
    worker crash; its execution is no longer pending, so nothing runs twice.
    A delivery record that never arrived only means kombu cannot hand that
    message back to its queue (worker shutdown or death before the
    command started): its execution is still pending, and the reconciler
    sends it again, as for any message the broker lost.

    Before each write the socket is polled: a connection Redis closed
    (restart, idle timeout) is readable, and is replaced instead of
    swallowing the command. A server that refuses CLIENT REPLY (old Redis,
    some proxies) is found out when connecting: ``send`` then returns
    False and the caller sends the usual way.
    """

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._conn: redis.Connection | None = None
        self._poll: select.poll | None = None
        self._pid = 0
        self.supported = True

    def send(self, *commands: tuple) -> bool:
        """Send ``commands`` (in one write) without waiting for replies; False when that cannot be done."""
        with self._lock:
            for _ in range(2):
                conn = self._connection()
                if conn is None:
                    return False
                try:
                    conn.send_packed_command(conn.pack_commands(commands), check_health=False)
                    return True
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    self._drop()  # a fresh connection for the second try
        return False

    def _connection(self) -> redis.Connection | None:
        if self._pid != os.getpid():
            # A forked child: the parent's socket is the parent's.
            self._conn = self._poll = None
            self._pid = os.getpid()
        if self._conn is not None and self._poll.poll(0):
            # Nothing is ever sent back on this connection: readable means
            # closed by Redis (or an error reply). Start afresh.
            self._drop()
        if self._conn is None and self.supported:
            self._conn = self._open()
        return self._conn

    def _open(self) -> redis.Connection | None:
        conn = self._pool.connection_class(**self._pool.connection_kwargs)
        try:
            conn.connect()
            # OFF, then a PING that goes unanswered if OFF took, then ON,
            # answered "OK": a server without CLIENT REPLY answers the OFF
            # with an error first.
            conn.send_packed_command(
                conn.pack_commands([("CLIENT", "REPLY", "OFF"), ("PING",), ("CLIENT", "REPLY", "ON")])
            )
            if conn.read_response() not in (b"OK", "OK"):
                raise redis.ResponseError("CLIENT REPLY OFF did not take")
            conn.send_packed_command(conn.pack_command("CLIENT", "REPLY", "OFF"))
        except redis.ResponseError as exc:
            logger.warning("Redis does not take CLIENT REPLY OFF (%s); events and acks wait for replies.", exc)
            self.supported = False
            conn.disconnect()
            return None
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            conn.disconnect()
            return None
        self._poll = select.poll()
        self._poll.register(conn._sock, select.POLLIN)
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
        self._conn = self._poll = None

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._drop()


class QoS(kombu_redis.QoS):
    """kombu's bookkeeping of delivered messages: its MULTI/…/EXEC transactions, unanswered where the channel says so."""

    def _transaction_unanswered(self, *commands: tuple) -> bool:
        """Send ``commands`` in MULTI/EXEC without waiting for the reply; False: send them kombu's way."""
        return self.channel.unanswered_acks and self.channel.send_unanswered(("MULTI",), *commands, ("EXEC",))

    def append(self, message, delivery_tag):
        # The record of a delivered message until its ack (built only when it can go unanswered).
        if self.channel.unanswered_acks:
            delivery = message.delivery_info
            record = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
            if self._transaction_unanswered(
                ("ZADD", self.unacked_index_key, time.time(), delivery_tag),
                ("HSET", self.unacked_key, delivery_tag, record),
            ):
                virtual.QoS.append(self, message, delivery_tag)
                return
        super().append(message, delivery_tag)

    def ack(self, delivery_tag):
        if self._transaction_unanswered(
            ("ZREM", self.unacked_index_key, delivery_tag),
            ("HDEL", self.unacked_key, delivery_tag),
        ):
            virtual.QoS.ack(self, delivery_tag)
            return
        super().ack(delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS
    # Transport options: fanout exchanges published to (TaskHub names
    # Celery's event exchange), and whether acks are sent, without waiting
    # for Redis's reply.
    unanswered_exchanges: tuple[str, ...] = ()
    unanswered_acks = False
    from_transport_options = kombu_redis.Channel.from_transport_options + ("unanswered_exchanges", "unanswered_acks")

    @cached_property
    def _shared_client(self):
        return self._create_client()

    @contextmanager
    def conn_or_acquire(self, client=None):
        yield client or self._shared_client

    @cached_property
    def _unanswered(self) -> UnansweredCommands:
        return UnansweredCommands(self.pool)

    def send_unanswered(self, *commands: tuple) -> bool:
        """Send ``commands`` without waiting for replies; False: send them kombu's way.

        A closed channel (its broker connection was lost: a late ack after
        a reconnect) goes kombu's way, as do keys kombu prefixes.
        """
        if self.closed or self.global_keyprefix:
            return False
        return self._unanswered.send(*commands)

    def _put_fanout(self, exchange, message, routing_key, **kwargs):
        if exchange not in self.unanswered_exchanges or kwargs.get("_publish_batch"):
            return super()._put_fanout(exchange, message, routing_key, **kwargs)
        payload = dumps(message)
        for topic in self._get_publish_topics(exchange, routing_key):
            if not self.send_unanswered(("PUBLISH", topic, payload)):
                with self.conn_or_acquire() as client:
                    client.publish(topic, payload)

    def close(self):
        if "_unanswered" in self.__dict__:
            self._unanswered.close()
        super().close()


class Transport(kombu_redis.Transport):
    Channel = Channel


# -- publishing: the declaration cache checked before anything is copied --------------


class Producer(kombu.Producer):
    """kombu's Producer, asking its connection's declaration cache first.

    Every message Celery publishes names the entities to declare first (the
    run message its queue, every event the event exchange). kombu's
    ``maybe_declare`` binds a copy of each entity (and of a queue's
    exchange) and wraps the declaration in a retrying call before it looks
    in the connection's cache of declared entities, where after the first
    message it finds them: about 0.1 ms of CPU per launch. This looks in
    that same cache first (no I/O: nothing to retry) and otherwise leaves
    it to kombu.
    """

    def maybe_declare(self, entity, retry=False, **retry_policy):
        if entity and entity.can_cache_declaration:
            channel = self.channel
            connection = getattr(channel, "connection", None)
            if connection is not None and hash(entity) in connection.client.declared_entities:
                return False
        return super().maybe_declare(entity, retry, **retry_policy)


class AMQP(celery_amqp.AMQP):
    """Celery's messaging for an app, its producers of TaskHub's class.

    Celery takes its producer pool from kombu's shared pools (one per
    connection, of kombu's Producer); this app has one of its own, over the
    same shared pool of connections.
    """

    Producer = Producer

    @property
    def producer_pool(self) -> pools.ProducerPool:
        if self._producer_pool is None:
            connections = pools.connections[self.app.connection_for_write()]
            self._producer_pool = pools.ProducerPool(connections, limit=self.app.pool.limit, Producer=self.Producer)
        return self._producer_pool

    publisher_pool = producer_pool


class EventDispatcher(celery_dispatcher.EventDispatcher):
    """Celery's event dispatcher (a worker's task events): publishes through TaskHub's Producer."""

    def enable(self) -> None:
        super().enable()
        with self.mutex:  # the same producer Celery makes, of TaskHub's class
            self.producer = Producer(
                self.channel or self.connection, exchange=self.exchange, serializer=self.serializer, auto_declare=False
            )


class Events(celery_events.Events):
    dispatcher_cls = "celery_ext.broker:EventDispatcher"
