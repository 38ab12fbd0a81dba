"""Task graphs at run time: what the end of a run launches downstream, a workflow run's graph, and cancelling it.

- A root launch of a task with downstream tasks starts a workflow run
  (taskhub.services.launch); every run it sets off carries its id.
- When a run in a workflow run ends (its last attempt is recorded and no
  attempt follows), each downstream task whose condition the end meets
  launches with trigger ``upstream`` and a link to the execution that fired
  it, once all of its upstream tasks that this workflow run can reach have
  ended meeting theirs. Cancelled and skipped runs launch nothing: cancelling
  stops the graph there.
- All of this happens in the transaction that records the run's end, under a
  lock on the workflow run's row: two upstream runs that end together launch
  their common downstream task once, a crash between the outcome and the
  launch loses neither, and nothing launches after a cancel.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils.timezone import now

from executions.models import TERMINAL, InvalidTransition, Status, TaskExecution, Trigger, WorkflowRun
from taskhub.limits import ActiveRunLimitReached
from taskhub.links import reachable_from
from taskhub.models import Condition, Task, TaskDisabled, TaskLink
from taskhub.services import launch, record_not_launched

logger = logging.getLogger("executions")

# Which conditions the end of a run meets, by the status of its last attempt.
MEETS: dict[str, frozenset[str]] = {
    Status.SUCCEEDED: frozenset({Condition.ON_SUCCESS, Condition.ON_FINISH}),
    Status.FAILED: frozenset({Condition.ON_FAILURE, Condition.ON_FINISH}),
    Status.TIMEOUT: frozenset({Condition.ON_FAILURE, Condition.ON_FINISH}),
    Status.LOST: frozenset({Condition.ON_FAILURE, Condition.ON_FINISH}),
}


def lock(workflow_run_id: uuid.UUID) -> WorkflowRun | None:
    """Lock a workflow run's row for the rest of the caller's transaction; None when it was deleted."""
    return WorkflowRun.objects.select_for_update().filter(pk=workflow_run_id).first()


def run_ended(execution: TaskExecution, workflow: WorkflowRun) -> list[TaskExecution]:
    """Launch what the end of ``execution``'s run sets off; call it holding ``lock(workflow)``.

    Return the executions it created (launched, or skipped with the reason
    when a downstream task may not launch: disabled, over a limit).
    """
    met = MEETS.get(execution.status)
    if not met or workflow.cancelled_at is not None:
        return []
    created = []
    reachable: set[int] | None = None  # read once, and only if a link gets as far as needing it
    links = TaskLink.objects.filter(upstream_id=execution.task_id, condition__in=met).select_related("downstream")
    for link in links:
        target = link.downstream
        if TaskExecution.objects.filter(workflow_run_id=workflow.pk, task=target, attempt=1).exists():
            continue  # launched already by another upstream run
        if reachable is None:
            reachable = reachable_from(workflow.root_task_id) if workflow.root_task_id else set()
        if not _upstream_met(workflow, target, reachable):
            continue  # the last upstream run to end launches it
        created.append(_launch(target, workflow, execution))
    return created


def _upstream_met(workflow: WorkflowRun, target: Task, reachable: set[int]) -> bool:
    """Whether every upstream task of ``target`` in ``reachable`` (from the root) has ended meeting its condition."""
    wanted = [
        (up, condition)
        for up, condition in TaskLink.objects.filter(downstream=target).values_list("upstream_id", "condition")
        if up in reachable
    ]
    ends = _run_ends(workflow.pk, [up for up, _ in wanted])
    return all(condition in MEETS.get(ends.get(up, ""), ()) for up, condition in wanted)


def _run_ends(workflow_run_id: uuid.UUID, task_ids: list[int]) -> dict[int, str]:
    """The status each task's run in the workflow run ended with (its latest attempt's); runs not ended are left out."""
    latest: dict[int, tuple[int, str]] = {}
    rows = TaskExecution.objects.filter(workflow_run_id=workflow_run_id, task_id__in=task_ids)
    for task_id, attempt, status in rows.values_list("task_id", "attempt", "status"):
        if task_id not in latest or attempt > latest[task_id][0]:
            latest[task_id] = (attempt, status)
    return {task_id: status for task_id, (_, status) in latest.items() if status in TERMINAL}


def _launch(target: Task, workflow: WorkflowRun, upstream: TaskExecution) -> TaskExecution:
    fields = {"workflow_run_id": workflow.pk, "upstream_execution_id": upstream.pk}
    try:
        with transaction.atomic():  # a refused launch leaves the outcome's transaction intact
            return launch(target, trigger=Trigger.UPSTREAM, **fields)
    except (TaskDisabled, ActiveRunLimitReached, ValueError, IntegrityError) as exc:
        logger.warning("Workflow run %s: task %r not launched: %s", workflow.pk, target.name, exc)
        return record_not_launched(
            target, f"Not launched by its upstream run: {exc}", trigger=Trigger.UPSTREAM, **fields
        )


# -- cancelling -------------------------------------------------------------------------


def cancel(workflow: WorkflowRun, *, user=None) -> int:
    """Cancel a workflow run: nothing launches in it any more, its pending attempts are cancelled, its running ones stopped.

    Return how many executions were cancelled or asked to stop.
    """
    with transaction.atomic():
        locked = lock(workflow.pk)
        if locked is not None and locked.cancelled_at is None:
            locked.cancelled_at = now()
            locked.cancelled_by = user if user is not None and user.is_authenticated else None
            locked.save(update_fields=["cancelled_at", "cancelled_by"])
            workflow.cancelled_at, workflow.cancelled_by = locked.cancelled_at, locked.cancelled_by
    # After the commit: an attempt planned before it is in this list; none is planned after it.
    stopped = 0
    for execution in TaskExecution.objects.filter(workflow_run=workflow, status__in=[Status.PENDING, Status.RUNNING]):
        try:
            execution.request_cancel()
        except InvalidTransition:
            continue  # it finished meanwhile
        stopped += 1
    return stopped


# -- the graph, for the admin page and the API ------------------------------------------


@dataclass
class Node:
    run_id: uuid.UUID
    task: Task
    status: str
    attempts: int
    latest: TaskExecution
    first: TaskExecution
    depth: int = 0

    @property
    def started_at(self) -> datetime | None:
        return self.first.started_at

    @property
    def finished_at(self) -> datetime | None:
        return self.latest.finished_at if self.latest.is_terminal else None


@dataclass
class Edge:
    upstream: uuid.UUID
    downstream: uuid.UUID
    condition: str


@dataclass
class Graph:
    workflow: WorkflowRun
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)

    @property
    def status(self) -> str:
        """running while an attempt is pending or running; then cancelled, succeeded (every run did) or failed."""
        if any(node.status in (Status.PENDING, Status.RUNNING) for node in self.nodes):
            return "running"
        if self.workflow.cancelled_at is not None:
            return "cancelled"
        return "succeeded" if all(node.status == Status.SUCCEEDED for node in self.nodes) else "failed"


def graph(workflow: WorkflowRun) -> Graph:
    """The runs of a workflow run and the links between them, each run at its depth from the root."""
    rows = TaskExecution.objects.filter(workflow_run=workflow).select_related("task").order_by("id")
    runs: dict[uuid.UUID, list[TaskExecution]] = {}
    for row in rows:
        runs.setdefault(row.run_id, []).append(row)
    nodes = {}
    for run_id, attempts in runs.items():
        attempts.sort(key=lambda e: e.attempt)
        first, latest = attempts[0], attempts[-1]
        nodes[run_id] = Node(run_id, first.task, latest.status, len(attempts), latest, first)
    by_task = {node.task.pk: node for node in nodes.values()}
    by_execution = {row.pk: row.run_id for attempts in runs.values() for row in attempts}
    edges: dict[tuple[uuid.UUID, uuid.UUID], Edge] = {}
    links = TaskLink.objects.filter(downstream_id__in=by_task, upstream_id__in=by_task)
    for up, down, condition in links.values_list("upstream_id", "downstream_id", "condition"):
        edges[(by_task[up].run_id, by_task[down].run_id)] = Edge(by_task[up].run_id, by_task[down].run_id, condition)
    for node in nodes.values():  # the recorded link, should the task's links have changed since
        fired_by = by_execution.get(node.first.upstream_execution_id)
        if fired_by is not None and (fired_by, node.run_id) not in edges:
            edges[(fired_by, node.run_id)] = Edge(fired_by, node.run_id, "")
    for _ in range(len(nodes)):  # longest path from the root; the graph has no cycle
        for edge in edges.values():
            nodes[edge.downstream].depth = max(nodes[edge.downstream].depth, nodes[edge.upstream].depth + 1)
    ordered = sorted(nodes.values(), key=lambda n: (n.depth, n.task.name))
    return Graph(workflow=workflow, nodes=ordered, edges=list(edges.values()))
