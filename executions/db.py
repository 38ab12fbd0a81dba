"""This thread's database connection after a connection error (worker, supervisor and beat)."""

from __future__ import annotations

import logging

from django.db import DatabaseError, connection

logger = logging.getLogger("executions")


def drop_connection() -> None:
    """Hand back this thread's connection after a connection error, and check the pool's."""
    try:
        connection.close()
    except DatabaseError:
        pass
    check_pool()


def check_pool() -> None:
    """With a connection pool (TASKHUB_DB_POOL), drop every dead connection it holds.

    Pooled connections are not checked each time one is borrowed (that was
    two more round trips per execution in a threads pool): after a
    database restart they are all dead, and one check of the pool, after
    the first error, finds them at once instead of each retry drawing the
    next dead one.
    """
    pool = getattr(connection, "pool", None)
    if pool is not None:
        try:
            pool.check()
        except Exception as exc:  # the pool reconnects in the background
            logger.debug("Connection pool check failed: %s", exc)
