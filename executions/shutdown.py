"""A worker's warm shutdown, as its pool processes see it: when to stop and hand back running commands."""

from __future__ import annotations

import mmap
import struct
import time

# The shutdown deadline (CLOCK_MONOTONIC seconds, 0 = none), in an anonymous
# shared mapping made when this module is imported, i.e. in the worker's main
# process before it forks its pool: the main process writes it when a warm
# shutdown begins, pool processes read it while they supervise a command.
# CLOCK_MONOTONIC is one clock for every process on the host.
_deadline = mmap.mmap(-1, struct.calcsize("d"))


def begin_grace(seconds: float) -> None:
    """Start the grace period after which running commands are stopped and handed back."""
    struct.pack_into("d", _deadline, 0, time.monotonic() + seconds)


def grace_expired() -> bool:
    """Return True once a warm shutdown of this worker has outlasted its grace."""
    (deadline,) = struct.unpack_from("d", _deadline)
    return deadline > 0 and time.monotonic() >= deadline
