from __future__ import annotations

import math

from django.core.management.base import BaseCommand, CommandError

from executions.models import TaskExecution

# A hundred years: past it the cut-off date leaves the calendar (an overflow, not an answer).
MAX_DAYS = 36500


class Command(BaseCommand):
    help = "Delete finished executions older than a number of days (pending and running ones are kept)."

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=float, required=True, metavar="DAYS")
        parser.add_argument("--batch", type=int, default=5000, help="Rows deleted per statement (default 5000).")
        parser.add_argument("--dry-run", action="store_true", help="Only count what would be deleted.")

    def handle(self, *args, older_than: float, batch: int, dry_run: bool, **options):
        if not (math.isfinite(older_than) and 0 < older_than <= MAX_DAYS):
            raise CommandError(
                f"--older-than must be a number of days above 0 and at most {MAX_DAYS}, not {older_than:g}."
            )
        if batch < 1:
            raise CommandError("--batch must be at least 1.")
        old = TaskExecution.objects.older_than(older_than)
        if dry_run:
            self.stdout.write(f"Would delete {old.count()} execution(s) older than {older_than:g} day(s).")
            return
        total = 0
        # Small batches keep locks and transaction size bounded on big tables.
        while True:
            ids = list(old.order_by("id").values_list("id", flat=True)[:batch])
            if not ids:
                break
            deleted, _ = TaskExecution.objects.filter(id__in=ids).delete()
            total += deleted
            self.stdout.write(f"Deleted {total} so far…")
        self.stdout.write(self.style.SUCCESS(f"Deleted {total} execution(s) older than {older_than:g} day(s)."))
