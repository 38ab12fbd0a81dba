from __future__ import annotations

import math
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count, QuerySet
from django.utils.timezone import now

from executions.models import TaskExecution, WorkflowRun

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
            self._report(old, older_than)
            return
        total = 0
        # Small batches keep locks and transaction size bounded on big tables.
        while True:
            ids = list(old.order_by("id").values_list("id", flat=True)[:batch])
            if not ids:
                break
            # Their artifacts go with them; the count is of executions.
            _, by_model = TaskExecution.objects.filter(id__in=ids).delete()
            total += by_model.get(TaskExecution._meta.label, 0)
            self.stdout.write(f"Deleted {total} so far…")
        # Workflow runs none of whose executions is left.
        emptied, _ = WorkflowRun.objects.filter(
            created_at__lt=now() - timedelta(days=older_than), executions__isnull=True
        ).delete()
        self.stdout.write(
            self.style.SUCCESS(
                f"Deleted {total} execution(s) older than {older_than:g} day(s), and {emptied} workflow run(s) "
                "left without any."
            )
        )

    def _report(self, old: QuerySet, older_than: float) -> None:
        """Say what a run without --dry-run would delete: how many, by status."""
        counts = {row["status"]: row["n"] for row in old.order_by().values("status").annotate(n=Count("id"))}
        total = sum(counts.values())
        by_status = ", ".join(f"{status} {counts[status]}" for status in sorted(counts))
        self.stdout.write(
            f"Would delete {total} execution(s) older than {older_than:g} day(s)"
            + (f": {by_status}." if by_status else ".")
            + " Dry run: nothing was deleted."
        )
