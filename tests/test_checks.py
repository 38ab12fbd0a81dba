"""System checks refuse settings that would lose or repeat work."""

from __future__ import annotations

import subprocess
import sys

import pytest

from taskhub.checks import check_liveness_settings, check_single_host_broker


def ids(messages) -> list[str]:
    return [m.id for m in messages]


def test_the_default_settings_pass_the_checks():
    assert check_liveness_settings() == []


def test_a_heartbeat_slower_than_half_the_lost_limit_is_an_error(settings):
    settings.TASKHUB_HEARTBEAT = 40
    settings.TASKHUB_LOST_AFTER = 60
    [error] = check_liveness_settings()
    assert error.id == "taskhub.E001"
    assert "TASKHUB_HEARTBEAT (40s) must be at most half of TASKHUB_LOST_AFTER (60s)" in error.msg


def test_a_broker_countdown_beyond_the_visibility_timeout_is_an_error(settings):
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 300}
    settings.TASKHUB_MAX_ETA = 600
    assert ids(check_liveness_settings()) == ["taskhub.E002"]


def test_the_filesystem_broker_with_a_shared_database_is_warned_about(settings):
    settings.BROKER_SCHEME = "filesystem"
    settings.DATABASE_URL = "postgres://db.example/taskhub"
    assert ids(check_single_host_broker()) == ["taskhub.W001"]
    settings.BROKER_SCHEME = "redis"
    assert check_single_host_broker() == []


# -- settings from the environment -----------------------------------------------------------


@pytest.mark.django_db
def test_connection_options_in_the_database_url_reach_postgresql():
    """The README's way to trade durability for throughput: ``?options=-c synchronous_commit=off``."""
    from django.db import connection

    from tests.conftest import async_commit_database_url, database_url_for_subprocess, subprocess_env

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL connection options")
    code = (
        "import django; django.setup()\n"
        "from django.db import connection\n"
        "with connection.cursor() as c:\n"
        "    c.execute('SHOW synchronous_commit')\n"
        "    print(c.fetchone()[0])\n"
    )
    for given, expected in ((async_commit_database_url(), "off"), (database_url_for_subprocess(), "on")):
        shown = subprocess.run(
            [sys.executable, "-c", code],
            env=subprocess_env(DATABASE_URL=given),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()[-1]
        assert shown == expected
