"""Hooks into the Celery worker's life cycle."""

from __future__ import annotations

import ctypes
import logging
import signal

from celery.signals import worker_process_init, worker_ready

logger = logging.getLogger("executions")

PR_SET_PDEATHSIG = 1


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


@worker_ready.connect
def recover_previous_life(sender: object = None, **kwargs: object) -> None:
    from django.db import connection

    from executions.recovery import recover_host

    hostname = getattr(sender, "hostname", None)
    if not hostname:
        return
    try:
        count = recover_host(hostname)
        if count:
            logger.warning("Worker %s found %s execution(s) from its previous run; marked lost.", hostname, count)
    except Exception:
        logger.exception("Recovery of executions left by a previous run of %s failed.", hostname)
    finally:
        connection.close()
