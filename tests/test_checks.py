"""System checks refuse settings that would lose or repeat work."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.test import override_settings

from config.checks import check_local_files, check_secret_key
from taskhub.checks import check_liveness_settings, check_single_host_broker

# The checks only read DATABASES; no connection is made with the overridden value.
READS_DATABASES = pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")


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


def test_no_secret_key_is_an_error_that_says_how_to_make_one(settings, tmp_path):
    settings.GENERATED_SECRET_KEY_FILE = tmp_path / "secret_key"
    assert check_secret_key() == []
    # Not the settings fixture: it reads every setting back on leaving, and Django refuses an empty key.
    with override_settings(SECRET_KEY=""):
        [error] = check_secret_key()
    assert error.id == "config.E001"
    assert f"{tmp_path / 'secret_key'} does not exist" in error.msg
    assert "`make run` or `manage.py taskhub_setup`, or set DJANGO_SECRET_KEY" in error.hint


@READS_DATABASES
def test_missing_files_of_the_embedded_default_are_an_error_naming_them(settings, tmp_path):
    settings.DATABASES = {
        **settings.DATABASES,
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "db" / "x.sqlite3")},
    }
    settings.BROKER_SCHEME = "filesystem"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(tmp_path / "in"),
        "control_folder": str(tmp_path / "control"),
    }
    (tmp_path / "control").mkdir()
    [error] = check_local_files()
    assert error.id == "config.E002"
    assert f"{tmp_path / 'db'}, {tmp_path / 'in'}." in error.msg
    assert "taskhub_setup" in error.hint


@READS_DATABASES
def test_a_server_database_and_broker_need_no_local_files(settings):
    settings.DATABASES = {**settings.DATABASES, "default": {"ENGINE": "django.db.backends.postgresql", "NAME": "x"}}
    settings.BROKER_SCHEME = "redis"
    assert check_local_files() == []


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
