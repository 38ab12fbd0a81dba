"""Workers say in the database that they are alive (executions.Worker), so /healthz need not ask them.

The worker's main process writes its row when it starts and every
TASKHUB_WORKER_HEARTBEAT seconds, on the worker's own timer (a bootstep, the
way Celery documents for periodic work in the worker), and deletes it at
shutdown. A worker that stops without saying so (killed, host gone, hung)
leaves a row that stops being written; three missed heartbeats and it is not
alive.
"""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime

from celery import bootsteps
from celery.signals import worker_init
from django.conf import settings
from django.db import close_old_connections
from django.utils.timezone import now

logger = logging.getLogger("executions")


class Liveness(bootsteps.StartStopStep):
    """Write this worker's row at start and on every heartbeat; delete it at shutdown."""

    label = "TaskHub liveness"
    requires = {"celery.worker.components:Timer"}

    def __init__(self, parent, **kwargs) -> None:
        super().__init__(parent, **kwargs)
        self.tref = None
        self.started_at: datetime | None = None
        self.suites_thread: threading.Thread | None = None

    def start(self, worker) -> None:
        self.started_at = now()
        _recover_suites(worker.hostname)
        self.heartbeat(worker)
        self.tref = worker.timer.call_repeatedly(settings.TASKHUB_WORKER_HEARTBEAT, self.heartbeat, (worker,))

    def stop(self, worker) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        if self.started_at is None:
            return
        _shut_down_suites(worker.hostname)
        from executions.models import Worker

        try:
            Worker.forget(hostname=worker.hostname, pid=os.getpid(), started_at=self.started_at)
        except Exception:
            # Its row then ages out: three heartbeats later it is not alive.
            logger.exception("Could not remove worker %s's liveness row at shutdown", worker.hostname)
        self.started_at = None

    # A cold shutdown stops the step the same way.
    terminate = stop

    def heartbeat(self, worker) -> None:
        from executions.models import Worker

        try:
            Worker.record(
                hostname=worker.hostname,
                queues=sorted(worker.app.amqp.queues.consume_from),
                pid=os.getpid(),
                started_at=self.started_at,
            )
        except Exception:
            # Never let a database error stop the timer: the next tick tries again.
            logger.exception("Could not record that worker %s is alive", worker.hostname)
            close_old_connections()
        self.clean_up_suites(worker.hostname)

    def clean_up_suites(self, hostname: str) -> None:
        """Suites whose work on this host ended while their last tasks ran elsewhere: clean up, off the timer."""
        if self.suites_thread is not None and self.suites_thread.is_alive():
            return
        self.suites_thread = threading.Thread(target=_clean_up_suites, args=(hostname,), daemon=True)
        self.suites_thread.start()


def _recover_suites(hostname: str) -> None:
    # What a previous life of this worker left of its suites (a killed worker cannot stop their backgrounds).
    from executions import suites

    try:
        suites.recover(hostname)
    except Exception:
        logger.exception("Could not recover the suites on %s", hostname)


def _shut_down_suites(hostname: str) -> None:
    # No suite's background outlives the worker that started it.
    from executions import suites

    try:
        suites.shut_down(hostname)
    except Exception:
        logger.exception("Could not stop the suites on %s at shutdown", hostname)


def _clean_up_suites(hostname: str) -> None:
    from executions import suites

    try:
        suites.clean_up_idle(hostname)
    except Exception:
        logger.exception("Could not clean up idle suites on %s", hostname)
    finally:
        close_old_connections()


@worker_init.connect
def _add_liveness_step(sender, **kwargs) -> None:
    # worker_init comes just before the worker builds its blueprint from
    # app.steps; adding the step here needs no import of the app (config.celery
    # imports this module).
    sender.app.steps["worker"].add(Liveness)
