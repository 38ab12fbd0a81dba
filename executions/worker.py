"""Hooks into the Celery worker's life cycle.

- Pool processes die with the worker's main process (parent-death signal).
- On a warm shutdown, commands still running after TASKHUB_SHUTDOWN_GRACE are
  stopped and handed back (executions/shutdown.py).
- When the worker is ready, what a previous life of it left running is
  stopped and marked lost.
"""

from __future__ import annotations

import ctypes
import logging
import signal
from datetime import UTC, datetime

from celery.signals import worker_process_init, worker_ready, worker_shutting_down

from executions import shutdown

logger = logging.getLogger("executions")

PR_SET_PDEATHSIG = 1

# When this worker process started; rows running under its name that were
# claimed before it belong to a previous life of the worker.
_started_at = datetime.now(UTC)


@worker_shutting_down.connect
def start_shutdown_grace(sig: str = "", how: str = "", **kwargs: object) -> None:
    """Start the grace period after which running commands are stopped and handed back.

    Celery's warm shutdown waits for running tasks however long they take;
    a cold shutdown terminates the pool at once (the group watchers then
    stop the commands, and the rows are recovered as lost).
    """
    from django.conf import settings

    if how != "Warm":
        return
    grace = settings.TASKHUB_SHUTDOWN_GRACE
    shutdown.begin_grace(grace)
    logger.warning(
        "Worker shutting down: commands still running in %gs are stopped and handed back to run again.", grace
    )


@worker_process_init.connect
def die_with_the_worker(**kwargs: object) -> None:
    """Make a pool process die when the worker's main process does.

    Without this, a pool process outlives a SIGKILLed main process and its
    command runs on unsupervised. Its death then closes the pipe to its
    group watcher, which stops the command's whole process group.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (AttributeError, OSError):  # not Linux
        logger.debug("prctl(PR_SET_PDEATHSIG) unavailable")


def warn_if_commits_do_not_wait() -> None:
    """Say so in the log when this worker's commits do not wait for their flush (``synchronous_commit=off``)."""
    from django.db import DatabaseError, connection

    if connection.vendor != "postgresql":
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            (value,) = cursor.fetchone()
    except DatabaseError as exc:
        # Only a warning is at stake: the recovery that follows must still run.
        logger.warning("Could not read PostgreSQL's synchronous_commit: %s", exc)
        return
    if value == "off":
        logger.warning(
            "PostgreSQL's synchronous_commit is off for this worker: its commits do not wait for their flush, "
            "and a crash of PostgreSQL or its host can lose the last of them: a claim undone lets a command "
            "run twice, an outcome lost is recorded as lost (README, Reliability)."
        )


@worker_ready.connect
def recover_previous_life(sender: object = None, **kwargs: object) -> None:
    from django.db import connection

    from executions.recovery import recover_host

    hostname = getattr(sender, "hostname", None)
    if not hostname:
        return
    try:
        warn_if_commits_do_not_wait()
        count = recover_host(hostname, started_before=_started_at)
        if count:
            logger.warning("Worker %s found %s execution(s) from its previous run; marked lost.", hostname, count)
    except Exception:
        logger.exception("Recovery of executions left by a previous run of %s failed.", hostname)
    finally:
        connection.close()
