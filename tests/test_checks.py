"""System checks refuse settings that would lose or repeat work."""

from __future__ import annotations

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
