from __future__ import annotations

import sys
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from taskhub import taskfile


class Command(BaseCommand):
    help = (
        "Create and update tasks from a YAML task file (matched by name), printing what changes. "
        "A bad file changes nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="The task file (YAML), or - for standard input.")
        parser.add_argument("--dry-run", action="store_true", help="Show what would change; change nothing.")
        parser.add_argument(
            "--prune",
            action="store_true",
            help="Also delete tasks the file does not name; refused, with nothing changed, "
            "if any of them cannot be deleted (it has executions).",
        )

    def handle(self, *args, file: str, dry_run: bool, prune: bool, **options):
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"Cannot read {file}: {exc}") from None
        try:
            specs = taskfile.load(text)
            # One transaction: the tasks stay locked from the comparison to the last write.
            with transaction.atomic():
                plan = taskfile.plan(specs, prune=prune)
                if not dry_run:
                    taskfile.apply(plan)
        except taskfile.TaskFileError as exc:
            problems = "\n".join(f"  {p}" for p in exc.problems)
            raise CommandError(f"{file}: nothing changed, because:\n{problems}") from None
        for line in plan.lines(done=not dry_run):
            style = {"+": self.style.SUCCESS, "-": self.style.ERROR, "~": self.style.WARNING}.get(line[:1], str)
            self.stdout.write(style(line))
        if dry_run:
            self.stdout.write("Dry run: nothing was changed.")
