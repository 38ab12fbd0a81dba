"""The files the embedded default keeps under ``var/``, made by ``manage.py taskhub_setup``.

Importing settings never writes (a read-only container must start), so the
secret key, the SQLite database and the filesystem broker's folders are made
here, each private to its owner before anything is written to it.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.utils import get_random_secret_key

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dir(path: Path) -> bool:
    """Create ``path`` and its missing parents as 0700, or tighten it to 0700; return True if it changed."""
    if path.is_dir():
        if path.stat().st_mode & 0o777 == PRIVATE_DIR:
            return False
        path.chmod(PRIVATE_DIR)
        return True
    missing = [path, *(parent for parent in path.parents if not parent.exists())]
    for folder in reversed(missing):
        folder.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        folder.chmod(PRIVATE_DIR)  # mkdir's mode is filtered by the umask
    return True


def write_private_file(path: Path, content: str) -> bool:
    """Create ``path`` as 0600 holding ``content``; return False, writing nothing, if it exists.

    The mode is set when the file is created, so the content is never
    readable by others, not even for a moment.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(content)
    return True


def secret_key_configured() -> bool:
    """Return True if settings carry a secret key (Django raises on reading an empty one)."""
    try:
        return bool(settings.SECRET_KEY)
    except ImproperlyConfigured:
        return False


def prepare() -> list[Path]:
    """Make what the settings in use need under var/ and return the paths created or tightened.

    Safe to run again: existing files keep their content.
    """
    changed: list[Path] = []
    var_dir = Path(settings.VAR_DIR)
    if make_private_dir(var_dir):
        changed.append(var_dir)
    key_file = Path(settings.GENERATED_SECRET_KEY_FILE)
    if not secret_key_configured() and write_private_file(key_file, get_random_secret_key() + "\n"):
        changed.append(key_file)
    database = settings.DATABASES["default"]
    if database["ENGINE"] == "django.db.backends.sqlite3" and str(database["NAME"]) != ":memory:":
        changed += _prepare_sqlite(Path(database["NAME"]))
    for folder in broker_folders():
        if make_private_dir(folder):
            changed.append(folder)
    return changed


def _prepare_sqlite(path: Path) -> list[Path]:
    changed = []
    if make_private_dir(path.parent):
        changed.append(path.parent)
    # An empty file is an empty SQLite database: made here it is 0600 from
    # the start, and SQLite gives its -wal and -shm files the same mode.
    if write_private_file(path, ""):
        changed.append(path)
    return changed


def broker_folders() -> list[Path]:
    """The filesystem broker's folders (none for other brokers)."""
    if settings.BROKER_SCHEME != "filesystem":
        return []
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    names = ("data_folder_in", "data_folder_out", "control_folder", "processed_folder")
    return sorted({Path(options[name]) for name in names if options.get(name)})
