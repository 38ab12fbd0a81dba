from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from executions.models import InvalidTransition, Status, TaskExecution

# Exit statuses: 0 the request took, 1 the execution had already finished, 2 there is no such execution.
EXIT_ALREADY_FINISHED = 1
EXIT_NOT_FOUND = 2


class Command(BaseCommand):
    help = (
        "Cancel an execution: a pending one at once, a running one within a couple of seconds "
        "(SIGTERM, then SIGKILL after its kill grace). Exit 0 when the request took, 1 when it had "
        "already finished, 2 when there is no such execution."
    )

    def add_arguments(self, parser):
        parser.add_argument("id", type=int, help="The execution's id.")

    def handle(self, *args, id: int, **options):
        execution = TaskExecution.objects.select_related("task").filter(pk=id).first()
        if execution is None:
            raise CommandError(f"There is no execution {id}.", returncode=EXIT_NOT_FOUND)
        try:
            execution.request_cancel()
        except InvalidTransition:
            raise CommandError(
                f"Execution {id} ({execution.task.name!r}, attempt {execution.attempt}) has already finished: "
                f"it is {execution.status}. Nothing to cancel.",
                returncode=EXIT_ALREADY_FINISHED,
            ) from None
        if execution.status == Status.CANCELLED:
            self.stdout.write(f"Execution {id} was pending: cancelled.")
        else:
            # The grace the attempt runs with is its own snapshot's, not the task's as edited since.
            grace = execution.kill_grace if execution.kill_grace is not None else execution.task.kill_grace
            self.stdout.write(
                f"Execution {id} is running on {execution.worker or 'a worker'}: asked it to stop "
                f"(SIGTERM, then SIGKILL after {grace}s)."
            )
