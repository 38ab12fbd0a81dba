"""kombu's Redis transport, reusing one Redis client per channel.

kombu's Redis channel builds a new ``redis.Redis`` client for every message
it publishes to a queue and every event it publishes to a fanout exchange
(``Channel.conn_or_acquire``). redis-py builds each client's table of ~170
response callbacks afresh, upper-casing every name (redis/redis-py#3624), so
that object costs more CPU than the LPUSH it carries: about 0.1 ms per
message, several times per execution (the run message and its task-sent
event at launch; task-received, -started and -succeeded events in the
worker). The client keeps no connection of its own: every command borrows
one from the channel's pool and hands it back, so one client per channel
does exactly what a fresh one per call did.

TaskHub's Celery app uses this transport for ``redis://`` broker URLs
(settings ``CELERY_BROKER_TRANSPORT``); other schemes keep kombu's own.
For every broker it publishes through ``Producer`` below (``AMQP`` and
``Events``, set by config.celery.configure).
"""

from __future__ import annotations

from contextlib import contextmanager

import kombu
from celery.app import amqp as celery_amqp
from celery.app import events as celery_events
from celery.events import dispatcher as celery_dispatcher
from kombu import pools
from kombu.transport import redis as kombu_redis
from kombu.utils.objects import cached_property


class Channel(kombu_redis.Channel):
    @cached_property
    def _shared_client(self):
        return self._create_client()

    @contextmanager
    def conn_or_acquire(self, client=None):
        yield client or self._shared_client


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
    dispatcher_cls = "config.broker:EventDispatcher"
