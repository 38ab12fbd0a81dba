"""Production settings from the environment, each read by a fresh process as a deployment would."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.http import HttpRequest
from django.urls import path

ROOT = Path(__file__).resolve().parent.parent
HOST = "taskhub.example.com"


class Boom(Exception):
    """Raised by the failing view below; nothing else raises it."""


def boom(request: HttpRequest):
    raise Boom("the view failed on purpose")


# This module is also the URL configuration of the logging test's process.
urlpatterns = [path("boom/", boom)]


def settings_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """The environment of a production process: this suite's database and broker, none of its DJANGO_ knobs."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "TASKHUB_API_THROTTLE_", "TASKHUB_CACHE_URL", "TASKHUB_LOGIN_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS=HOST,
        TASKHUB_VAR_DIR=str(tmp_path / "var"),
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    prelude = "import django; django.setup()\nfrom django.conf import settings\n"
    return run([sys.executable, "-c", prelude + textwrap.dedent(code)], env)


def settings_of(env: dict[str, str], *names: str) -> dict[str, object]:
    result = python(f"import json; print(json.dumps({{n: getattr(settings, n) for n in {list(names)!r}}}))", env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


HTTPS_SETTINGS = (
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SECURE_SSL_REDIRECT",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_PROXY_SSL_HEADER",
    "CSRF_TRUSTED_ORIGINS",
)


# -- check --deploy -------------------------------------------------------------------------------


def test_check_deploy_is_clean_with_django_secure(tmp_path):
    result = run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        settings_env(tmp_path, DJANGO_SECURE="1"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues (0 silenced)" in result.stdout


def test_without_django_secure_check_deploy_names_each_https_setting_missing(tmp_path):
    result = run([sys.executable, "manage.py", "check", "--deploy"], settings_env(tmp_path))
    for check in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert check in result.stderr, result.stderr


# -- each knob from the environment -----------------------------------------------------------------


def test_django_secure_turns_on_https_settings_with_a_year_of_hsts(tmp_path):
    values = settings_of(settings_env(tmp_path, DJANGO_SECURE="1"), *HTTPS_SETTINGS)
    assert values == {
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": True,
        "SECURE_SSL_REDIRECT": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_PROXY_SSL_HEADER": None,
        "CSRF_TRUSTED_ORIGINS": [],
    }


def test_each_https_setting_can_be_set_on_its_own(tmp_path):
    env = settings_env(
        tmp_path,
        DJANGO_HSTS_SECONDS="600",
        DJANGO_SESSION_COOKIE_SECURE="1",
        DJANGO_PROXY_SSL_HEADER="X-Forwarded-Proto=https",
        DJANGO_CSRF_TRUSTED_ORIGINS="https://taskhub.example.com, https://ops.example.com",
    )
    assert settings_of(env, *HTTPS_SETTINGS) == {
        "SECURE_HSTS_SECONDS": 600,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
        "SECURE_HSTS_PRELOAD": False,
        "SECURE_SSL_REDIRECT": False,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": False,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "CSRF_TRUSTED_ORIGINS": ["https://taskhub.example.com", "https://ops.example.com"],
    }


def test_django_secure_settings_can_be_turned_off_one_by_one(tmp_path):
    env = settings_env(tmp_path, DJANGO_SECURE="1", DJANGO_HSTS_PRELOAD="0", DJANGO_SSL_REDIRECT="0")
    values = settings_of(env, "SECURE_HSTS_PRELOAD", "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE")
    assert values == {"SECURE_HSTS_PRELOAD": False, "SECURE_SSL_REDIRECT": False, "SESSION_COOKIE_SECURE": True}


def test_throttle_rates_come_from_the_environment(tmp_path):
    env = settings_env(tmp_path, TASKHUB_API_THROTTLE_ANON="5/min", TASKHUB_API_THROTTLE_USER="off")
    rates = settings_of(env, "REST_FRAMEWORK")["REST_FRAMEWORK"]["DEFAULT_THROTTLE_RATES"]
    assert rates == {"anon": "5/min", "user": None}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DJANGO_PROXY_SSL_HEADER", "X-Forwarded-Proto"),
        ("DJANGO_PROXY_SSL_HEADER", "X Forwarded=https"),
        ("DJANGO_HSTS_SECONDS", "a year"),
        ("DJANGO_SECURE", "maybe"),
        ("TASKHUB_API_THROTTLE_USER", "lots"),
        ("TASKHUB_CACHE_URL", "memcached://cache:11211"),
        ("TASKHUB_LOGIN_FAILURE_LIMIT", "0"),
    ],
)
def test_a_bad_value_stops_the_process_with_a_message_naming_the_variable(tmp_path, name, value):
    result = python("pass", settings_env(tmp_path, **{name: value}))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"{name}={value!r}" in result.stderr


# -- what a client sees ---------------------------------------------------------------------------------


def test_with_django_secure_http_is_redirected_except_the_health_probe_and_https_gets_hsts(tmp_path):
    code = """
        import json
        from django.test import Client
        client = Client(HTTP_HOST="taskhub.example.com")
        plain = client.get("/admin/")
        health = client.get("/healthz")
        secure = client.get("/admin/login/", HTTP_X_FORWARDED_PROTO="https")
        print(json.dumps({
            "plain": [plain.status_code, plain.get("Location")],
            "health": health.status_code,
            "secure": [secure.status_code, secure.get("Strict-Transport-Security")],
        }))
    """
    env = settings_env(tmp_path, DJANGO_SECURE="1", DJANGO_PROXY_SSL_HEADER="X-Forwarded-Proto=https")
    result = python(code, env)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["plain"] == [301, "https://taskhub.example.com/admin/"]
    assert seen["health"] != 301
    assert seen["secure"] == [200, "max-age=31536000; includeSubDomains; preload"]


def test_a_failing_request_leaves_its_traceback_in_the_log_with_debug_off(tmp_path):
    code = """
        from django.test import Client, override_settings
        with override_settings(ROOT_URLCONF="tests.test_production_settings"):
            response = Client(raise_request_exception=False).get("/boom/", HTTP_HOST="taskhub.example.com")
        print("status", response.status_code)
    """
    result = python(code, settings_env(tmp_path))
    assert "status 500" in result.stdout, result.stderr
    log = result.stderr
    assert "ERROR django.request Internal Server Error: /boom/" in log
    assert "Traceback (most recent call last)" in log
    assert "Boom: the view failed on purpose" in log
