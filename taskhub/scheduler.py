"""celery beat's scheduler for TaskHub: django-celery-beat's, kept running through database outages."""

from __future__ import annotations

import datetime
import logging

from django.db import InterfaceError, OperationalError
from django_celery_beat.schedulers import DatabaseScheduler as _DatabaseScheduler

from executions.db import drop_connection

logger = logging.getLogger("taskhub.beat")

# Seconds before the next tick after one that lost the database.
RETRY_AFTER = 1.0


class DatabaseScheduler(_DatabaseScheduler):
    """django-celery-beat's DatabaseScheduler; a tick that loses the database waits and tries again.

    django-celery-beat catches database errors where it checks for schedule
    changes and where it writes entries, not where it then reloads the
    schedule: the database going away between the two (a restart) raised
    out of ``tick`` and stopped beat, and every schedule with it. Here such
    a tick is logged, its connection dropped, the next tick comes after
    RETRY_AFTER seconds and reloads the whole schedule.

    The reload is asked for through ``_last_full_sync``, django-celery-beat's
    own record of its last full read (not a public name):
    tests/test_recovery_checks.py fails if setting it no longer makes the
    next tick read the whole schedule.
    """

    def tick(self, *args, **kwargs):
        try:
            return super().tick(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            logger.warning("Database unavailable while scheduling (%s); trying again in %gs.", exc, RETRY_AFTER)
            drop_connection()
            self._last_full_sync = datetime.datetime.min  # reload everything next time
            return RETRY_AFTER
