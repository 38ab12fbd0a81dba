"""The embedded default: SQLite under var/ and the filesystem broker, with nothing else installed.

Run by the second pass of `make test`, with DATABASE_URL and CELERY_BROKER_URL
unset. The defining scenarios run in this pass too: they use the
``both_stacks`` fixture in their own modules (test_worker.py).
"""

from __future__ import annotations

import pytest
from django.conf import settings

pytestmark = pytest.mark.embedded


def test_the_embedded_default_is_sqlite_and_the_filesystem_broker():
    assert settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
    assert settings.BROKER_SCHEME == "filesystem"
