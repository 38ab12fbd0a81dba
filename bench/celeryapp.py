"""The Celery app the benchmark workers run: TaskHub's own app plus the baseline task."""

from __future__ import annotations

from bench import baseline  # noqa: F401  (registers bench.baseline)
from config.celery import app

__all__ = ["app"]
