"""What the test suite and the benchmarks both use to run TaskHub for real.

Worker and beat processes (``processes``), throw-away Redis and PostgreSQL
servers (``servers``), databases made and dropped for a run (``databases``),
the process table (``proctable``) and waiting for a condition (``waiting``).
Nothing here imports pytest: the suite's fixtures in ``tests/conftest.py``
wrap these, and the benchmarks call them directly.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def prepare_var_dir() -> None:
    """Make this process's TASKHUB_VAR_DIR as `manage.py taskhub_setup` does, and use the secret key made there.

    Settings never write files, and they were read before the key existed.
    Call after ``django.setup()``.
    """
    from django.conf import settings

    from config import local_files

    local_files.prepare()
    if not local_files.secret_key_configured():
        settings.SECRET_KEY = settings.GENERATED_SECRET_KEY_FILE.read_text().strip()
