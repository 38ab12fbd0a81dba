"""TaskHub's prefork pool: Celery's own, without the time limits' cancelled timers piling up.

Every run message carries Celery's backstop time limits (the task's
timeout plus margins). In a prefork worker the main process arms a timer
for each job in its event loop's heap, and when the job ends it only marks
that timer cancelled: the entry stays in the heap until the time it was
due (kombu's ``Timer.cancel``). With a one-hour timeout and a few hundred
jobs a second that is a million entries, about 600 bytes each, held by
the worker's main process (celery/celery#1129, #5200). This pool takes the
cancelled ones out whenever the heap has doubled since it last did (and
holds at least 512), so it holds at most about twice as many entries as
there are timers still armed, a few per running job.

Used for every worker started on the prefork pool (``worker_init`` swaps
it in); ``celery inspect stats`` shows the heap's size as ``timer-entries``.
The module's name keeps "prefork" in it: Celery's Django fix-up looks for
that word to close a connection pool a pool process inherited.
"""

from __future__ import annotations

import heapq

from celery import concurrency
from celery.concurrency import asynpool, prefork
from celery.signals import worker_init

# Below this many entries the heap is left alone.
COMPACT_FROM = 512


class AsynPool(asynpool.AsynPool):
    timer_queue: list | None = None

    def _create_timelimit_handlers(self, hub) -> None:
        super()._create_timelimit_handlers(hub)
        # The heap itself, changed in place: the event loop's iterator over
        # the timer holds this very list.
        queue = self.timer_queue = hub.timer._queue
        set_timeout = self.on_timeout_set
        compact_at = COMPACT_FROM

        def on_timeout_set(R, soft, hard) -> None:
            nonlocal compact_at
            if len(queue) >= compact_at:
                queue[:] = [item for item in queue if not item.entry.canceled]
                heapq.heapify(queue)
                # Linear work once the heap has doubled: constant per job.
                compact_at = max(COMPACT_FROM, 2 * len(queue))
            set_timeout(R, soft, hard)

        self.on_timeout_set = on_timeout_set


class TaskPool(prefork.TaskPool):
    Pool = AsynPool

    def _get_info(self) -> dict:
        info = super()._get_info()
        queue = getattr(self._pool, "timer_queue", None)
        info["timer-entries"] = len(queue) if queue is not None else "N/A"
        return info


@worker_init.connect
def use_taskhub_prefork_pool(sender: object = None, **kwargs: object) -> None:
    """Run a prefork worker (the default pool, or ``--pool prefork``) on TaskHub's TaskPool."""
    if (
        getattr(sender, "pool_cls", None) is not None
        and concurrency.get_implementation(sender.pool_cls) is prefork.TaskPool
    ):
        sender.pool_cls = TaskPool
