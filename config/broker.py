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
"""

from __future__ import annotations

from contextlib import contextmanager

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
