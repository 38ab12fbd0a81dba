"""Looking into the broker the tests run against, Redis or RabbitMQ: what waits in a queue, and emptying it."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from urllib.parse import unquote, urlsplit, urlunsplit

AMQP_SCHEMES = {"amqp", "amqps", "pyamqp"}


def scheme_of(url: str) -> str:
    return urlsplit(url).scheme.split("+")[0]


def vhost_of(url: str) -> str:
    """The RabbitMQ virtual host an amqp:// URL names ("/" when it names none)."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def amqp_queues(url: str) -> dict[str, int]:
    """Every queue of the URL's virtual host with its messages (ready and unacknowledged), from rabbitmqctl."""
    rabbitmqctl = shutil.which("rabbitmqctl") or "rabbitmqctl"
    out = subprocess.run(
        [rabbitmqctl, "list_queues", "-q", "-p", vhost_of(url), "--formatter", "json", "name", "messages"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return {row["name"]: int(row["messages"] or 0) for row in json.loads(out or "[]")}


def purge_amqp(url: str) -> None:
    """Drop every message waiting in the URL's virtual host (the workers' own reply queues included)."""
    from kombu import Connection

    names = list(amqp_queues(url))
    with Connection(url) as conn:
        for name in names:
            channel = conn.channel()
            try:
                channel.queue_purge(name)
            except Exception:
                pass  # gone meanwhile (an auto-delete reply queue)
            finally:
                try:
                    channel.close()
                except Exception:
                    pass


def _execution_id(body: bytes | str) -> int:
    args, _kwargs, _embed = json.loads(body)
    return args[0]


def queued_run_ids(url: str, queue: str = "default") -> list[int]:
    """Execution ids of the run messages waiting in ``queue``, sorted; the messages stay where they are."""
    if scheme_of(url) in AMQP_SCHEMES:
        from amqp.exceptions import NotFound
        from kombu import Connection

        ids = []
        with Connection(url) as conn:
            channel = conn.channel()
            try:
                # Taken without acknowledging: closing the channel gives them all back to the queue.
                while (message := channel.basic_get(queue, no_ack=False)) is not None:
                    ids.append(_execution_id(message.body))
            except NotFound:
                return []  # never declared: nothing waits in it
            channel.close()
        return sorted(ids)
    import redis

    client = redis.Redis.from_url(url)
    ids = []
    for key in client.keys(f"{queue}*"):
        if client.type(key) != b"list":
            continue
        for raw in client.lrange(key, 0, -1):
            ids.append(_execution_id(base64.b64decode(json.loads(raw)["body"])))
    return sorted(ids)


def redis_db_for(url: str, xdist_worker: str) -> str:
    """``url`` with the Redis database that pytest-xdist process ``xdist_worker`` ("gw0", "gw1"…) uses.

    Counted on from the given database, wrapping within Redis's 16.
    """
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    db = (base + 1 + int(xdist_worker.removeprefix("gw"))) % 16
    return urlunsplit(parts._replace(path=f"/{db}"))
