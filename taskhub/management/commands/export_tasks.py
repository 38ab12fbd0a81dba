from __future__ import annotations

import os
import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from taskhub import taskfile
from taskhub.models import Task


class Command(BaseCommand):
    help = "Write every task as a YAML task file (standard output by default); sync_tasks reads it back unchanged."

    def add_arguments(self, parser):
        parser.add_argument("file", nargs="?", default="-", help="Where to write (default: standard output).")

    def handle(self, *args, file: str, **options):
        tasks = list(Task.objects.select_related("owner").prefetch_related("schedules").order_by("name"))
        text = taskfile.dump(tasks)
        if file == "-":
            self.stdout.write(text, ending="")
            return
        try:
            _write_atomically(Path(file), text)
        except OSError as exc:
            raise CommandError(f"Cannot write {file}: {exc}") from None
        self.stderr.write(f"Wrote {len(tasks)} task(s) to {file}.")


def _write_atomically(path: Path, text: str) -> None:
    # The file holds env values: readable by its owner only, and never seen half-written.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
