from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

from celery import Celery
from celery.app.defaults import SETTING_KEYS

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

PREFIX = "CELERY_"


class DjangoCelerySettings(Mapping):
    """Django's CELERY_* settings under Celery's own names (CELERY_TASK_ACKS_LATE -> task_acks_late).

    What ``config_from_object("django.conf:settings", namespace="CELERY")``
    reads, read once, when Celery first asks (Django's settings are ready
    by then). Names Celery does not know keep their Django spelling too:
    Celery's Django fix-up reads CELERY_DB_REUSE_MAX so.
    """

    def __init__(self) -> None:
        self._values: dict[str, object] | None = None

    def _read(self) -> dict[str, object]:
        if self._values is None:
            from django.conf import settings

            values: dict[str, object] = {}
            for name in dir(settings):
                if name.startswith(PREFIX):
                    key = name[len(PREFIX) :].lower()
                    values[key] = getattr(settings, name)
                    if key not in SETTING_KEYS:
                        values[name] = values[key]
            self._values = values
        return self._values

    def __getitem__(self, key: str) -> object:
        return self._read()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())


def _settings_at_hand(sender: Celery, source, **kwargs) -> None:
    """Keep every Celery setting's value in the configuration's first map.

    Celery looks its settings up dozens of times for every message it sends
    or runs, each lookup trying the maps (changes, the settings read,
    Celery's defaults) and several spellings of the name in turn; read
    through Django's settings object with the CELERY namespace, a lookup
    costs about 4 µs, from the first map under 2: about 0.2 ms of CPU per
    launch on a 2-core machine. Settings given later (a worker's
    command-line options) still go on top.
    """
    source.update({key: source[key] for key in SETTING_KEYS})


def configure(app: Celery) -> Celery:
    """Give ``app`` TaskHub's Celery settings, Django's CELERY_* ones, kept at hand,
    and TaskHub's producers (config/broker.py). Call before the app is used."""
    app.config_from_object(DjangoCelerySettings())
    app.on_after_configure.connect(_settings_at_hand, sender=app)
    app.amqp_cls = "config.broker:AMQP"
    app.events_cls = "config.broker:Events"
    return app


app = configure(Celery("config"))
app.autodiscover_tasks()

# Worker life-cycle hooks (parent-death signal, recovery on start) and
# TaskHub's prefork pool.
import config.prefork  # noqa: E402,F401
import executions.worker  # noqa: E402,F401
