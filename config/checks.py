"""System checks for what settings read but never make: the secret key and the embedded default's files."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.checks import Error, register

from config import local_files

SETUP_HINT = "Run `make run` or `manage.py taskhub_setup`, or set DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE)."


@register()
def check_secret_key(app_configs=None, **kwargs) -> list[Error]:
    if local_files.secret_key_configured():
        return []
    return [
        Error(
            f"No secret key is configured: DJANGO_SECRET_KEY and DJANGO_SECRET_KEY_FILE are unset and "
            f"{settings.GENERATED_SECRET_KEY_FILE} does not exist.",
            hint=SETUP_HINT,
            id="config.E001",
        )
    ]


@register()
def check_local_files(app_configs=None, **kwargs) -> list[Error]:
    missing = [path for path in _local_paths() if not path.exists()]
    if not missing:
        return []
    return [
        Error(
            f"The embedded default's files are missing: {', '.join(str(path) for path in missing)}.",
            hint="Run `make run` or `manage.py taskhub_setup` to create them.",
            id="config.E002",
        )
    ]


def _local_paths() -> list[Path]:
    """What the embedded default needs under var/: the SQLite database's folder and the broker's folders."""
    paths = local_files.broker_folders()
    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3" and str(database["NAME"]) != ":memory:":
        paths.insert(0, Path(database["NAME"]).parent)
    return paths
