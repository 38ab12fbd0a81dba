"""Settings read the environment and never write; `manage.py taskhub_setup` makes the files they read."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.settings import env_secret
from testsupport import ROOT

# Variables of this test session that would hide the defaults under test.
CONFIGURATION = (
    "DATABASE_URL",
    "DATABASE_URL_FILE",
    "CELERY_BROKER_URL",
    "CELERY_BROKER_URL_FILE",
    "DJANGO_SECRET_KEY",
    "DJANGO_SECRET_KEY_FILE",
    "TASKHUB_VAR_DIR",
)


def fresh_env(**variables: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in CONFIGURATION}
    env.update(DJANGO_SETTINGS_MODULE="config.settings", PYTHONUNBUFFERED="1", **variables)
    return env


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def tree(path: Path) -> list[tuple[str, int]]:
    """Every file and folder under ``path`` with its modification time, to show nothing was written."""
    return sorted((str(p.relative_to(path)), p.stat().st_mtime_ns) for p in [path, *path.rglob("*")])


# -- importing settings writes nothing ---------------------------------------------------------


def test_settings_import_into_a_read_only_var_dir_without_writing(tmp_path):
    var = tmp_path / "var"
    var.mkdir()
    var.chmod(0o500)
    before = tree(var)
    code = (
        "import django; django.setup()\n"
        "from django.conf import settings\n"
        "from config.celery import app\n"
        "print(settings.DATABASES['default']['ENGINE'], app.conf.broker_url, bool(settings.SECRET_KEY))\n"
    )

    result = run_python(code, fresh_env(TASKHUB_VAR_DIR=str(var), DJANGO_SECRET_KEY="k" * 50))

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["django.db.backends.sqlite3", "filesystem://localhost//", "True"]
    # Root ignores the read-only mode: the listing shows that nothing was even tried.
    assert tree(var) == before


def test_the_production_stack_starts_and_passes_its_checks_with_a_read_only_var_dir(tmp_path):
    var = tmp_path / "var"
    var.mkdir()
    var.chmod(0o500)
    before = tree(var)
    env = fresh_env(
        TASKHUB_VAR_DIR=str(var),
        DJANGO_SECRET_KEY="k" * 50,
        DATABASE_URL="postgres://nobody@127.0.0.1:9/taskhub",
        CELERY_BROKER_URL="redis://127.0.0.1:9/0",
    )

    result = manage("check", env=env)

    assert result.returncode == 0, result.stderr
    assert tree(var) == before


# -- secrets from files ----------------------------------------------------------------------


def test_each_secret_can_come_from_a_file_named_by_its_file_variable(tmp_path):
    files = {
        "DJANGO_SECRET_KEY": "from-a-file-" + "s" * 40,
        "DATABASE_URL": "postgres://app:pa55@db.example:5432/taskhub",
        "CELERY_BROKER_URL": "redis://:pa55@redis.example:6379/3",
    }
    env = fresh_env(TASKHUB_VAR_DIR=str(tmp_path / "var"))
    for name, value in files.items():
        path = tmp_path / name.lower()
        path.write_text(value + "\n")  # as secrets are usually written: with a newline
        env[f"{name}_FILE"] = str(path)
    code = (
        "from django.conf import settings\n"
        "print(settings.SECRET_KEY); print(settings.DATABASE_URL); print(settings.CELERY_BROKER_URL)\n"
        "print(settings.DATABASES['default']['PASSWORD'], settings.DATABASES['default']['HOST'])\n"
    )

    result = run_python(code, env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [*files.values(), "pa55 db.example"]


def test_env_secret_prefers_the_variable_then_the_file_then_the_default(monkeypatch, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-file\r\n")
    monkeypatch.delenv("TH_SECRET", raising=False)
    monkeypatch.delenv("TH_SECRET_FILE", raising=False)
    assert env_secret("TH_SECRET", "fallback") == "fallback"
    monkeypatch.setenv("TH_SECRET_FILE", str(secret))
    assert env_secret("TH_SECRET", "fallback") == "from-file"
    monkeypatch.delenv("TH_SECRET_FILE")
    monkeypatch.setenv("TH_SECRET", "from-env")
    assert env_secret("TH_SECRET", "fallback") == "from-env"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"TH_SECRET": "x", "TH_SECRET_FILE": "/etc/hostname"}, "Set TH_SECRET or TH_SECRET_FILE, not both."),
        ({"TH_SECRET_FILE": "{tmp}/missing"}, "TH_SECRET_FILE='{tmp}/missing': cannot read it"),
        ({"TH_SECRET_FILE": "{tmp}/empty"}, "TH_SECRET_FILE='{tmp}/empty': the file is empty."),
    ],
)
def test_env_secret_names_the_variable_when_its_file_is_unusable(monkeypatch, tmp_path, variables, message):
    (tmp_path / "empty").write_text("\n")
    monkeypatch.delenv("TH_SECRET", raising=False)
    monkeypatch.delenv("TH_SECRET_FILE", raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value.format(tmp=tmp_path))

    with pytest.raises(ImproperlyConfigured) as raised:
        env_secret("TH_SECRET", "fallback")

    assert message.format(tmp=tmp_path) in str(raised.value)


# -- taskhub_setup makes the files ------------------------------------------------------------


def test_setup_makes_var_private_with_a_secret_key_database_and_broker_folders(tmp_path):
    var = tmp_path / "var"
    env = fresh_env(TASKHUB_VAR_DIR=str(var))
    refused = manage("check", env=env)
    assert refused.returncode != 0
    assert "config.E001" in refused.stderr
    assert "run `make run` or `manage.py taskhub_setup`" in refused.stderr.lower()

    result = manage("taskhub_setup", "--no-examples", env=env)

    assert result.returncode == 0, result.stderr
    assert mode(var) == 0o700
    for name in ("secret_key", "taskhub.sqlite3", "admin-password.txt"):
        assert mode(var / name) == 0o600, name
    for name in ("broker", "broker/queue", "broker/control", "broker/processed"):
        assert mode(var / name) == 0o700, name
    assert len((var / "secret_key").read_text().strip()) >= 50
    assert (var / "taskhub.sqlite3").stat().st_size > 0  # migrated after it was made
    assert "Log in as 'admin'" in result.stdout
    assert manage("check", env=env).returncode == 0


def test_setup_again_keeps_the_key_and_tightens_an_existing_var_dir(tmp_path):
    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    var.chmod(0o755)
    env = fresh_env(TASKHUB_VAR_DIR=str(var))
    assert manage("taskhub_setup", "--no-examples", env=env).returncode == 0
    key = (var / "secret_key").read_text()
    var.chmod(0o755)

    result = manage("taskhub_setup", "--no-examples", env=env)

    assert result.returncode == 0, result.stderr
    assert (var / "secret_key").read_text() == key
    assert mode(var) == 0o700


def test_setup_writes_no_key_file_when_the_key_comes_from_the_environment(tmp_path):
    var = tmp_path / "var"
    env = fresh_env(TASKHUB_VAR_DIR=str(var), DJANGO_SECRET_KEY="k" * 50)

    result = manage("taskhub_setup", "--no-examples", env=env)

    assert result.returncode == 0, result.stderr
    assert not (var / "secret_key").exists()
