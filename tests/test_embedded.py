"""The defining scenarios on the embedded default: SQLite under var/ and the filesystem broker.

Run by the second pass of `make test`, with DATABASE_URL and CELERY_BROKER_URL unset.
"""

from __future__ import annotations

import pytest
from django.conf import settings

from tests import test_worker as core

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True)]


def test_the_embedded_default_is_sqlite_and_the_filesystem_broker():
    assert settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3"
    assert settings.BROKER_SCHEME == "filesystem"


def test_timeout_scenario_on_the_embedded_default(worker, make_task):
    core.test_a_command_past_its_timeout_ends_timeout_and_its_process_is_gone(worker, make_task)


def test_retry_scenario_on_the_embedded_default(worker, make_task):
    core.test_a_failing_command_with_two_retries_yields_three_failed_attempts_of_one_run(worker, make_task)


def test_duplicate_message_runs_once_on_the_embedded_default(worker, make_task, tmp_path):
    core.test_the_same_run_message_delivered_twice_runs_the_command_once(worker, make_task, tmp_path)
