"""Celery's settings kept at hand: every lookup answered from the configuration's first map."""

from __future__ import annotations

from celery import Celery
from celery.app.defaults import SETTING_KEYS


def _settings_at_hand(sender: Celery, source, **kwargs) -> None:
    # Celery looks its settings up dozens of times for every message it sends
    # or runs, each lookup trying the maps (changes, the settings read,
    # Celery's defaults) and several spellings of the name in turn. Settings
    # given later (a worker's command-line options) still go on top.
    source.update({key: source[key] for key in SETTING_KEYS})


def keep_at_hand(app: Celery) -> None:
    app.on_after_configure.connect(_settings_at_hand, sender=app, weak=False)
