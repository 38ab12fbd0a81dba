"""The console's own pages beside the admin: an execution's live state (JSON), a run's attempts, a workflow run's graph, the dashboard.

Each view answers through the admin site (login, staff) and checks the
view permission; charts are SVG drawn here, on the server.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.utils.timezone import now

from executions import console, workflows
from executions.admin import VIEW_EXECUTION, exit_words, live_state
from executions.models import Status, TaskExecution, WorkflowRun
from taskhub.admin import STATUS_COLOURS, can_run

# The order statuses stack in the hourly chart, bottom up.
CHART_STATUSES = (
    Status.SUCCEEDED,
    Status.FAILED,
    Status.TIMEOUT,
    Status.LOST,
    Status.CANCELLED,
    Status.SKIPPED,
    Status.RUNNING,
    Status.PENDING,
)


def _may_view(request: HttpRequest) -> None:
    if not request.user.has_perm(VIEW_EXECUTION):
        raise PermissionDenied("Seeing executions needs the “Can view task execution” permission.")


def execution_live(request: HttpRequest, pk: int) -> JsonResponse:
    """The execution's status, timing and output tail, for its page to poll until it is finished."""
    _may_view(request)
    execution = TaskExecution.objects.filter(pk=pk).first()
    if execution is None:
        raise Http404(f"No execution #{pk}.")
    response = JsonResponse(live_state(execution))
    response["Cache-Control"] = "no-store"
    return response


# -- a run's attempts ------------------------------------------------------------------------


@dataclass
class Lane:
    execution: TaskExecution
    colour: str
    wait_x: float
    wait_w: float
    run_x: float
    run_w: float
    delay_words: str  # from the previous attempt's end to this one's start
    exit: str


TIMELINE_WIDTH = 900


def run_view(request: HttpRequest, run_id: uuid.UUID) -> HttpResponse:
    """One run's attempts side by side, on a timeline that shows the delays between them."""
    _may_view(request)
    attempts = list(TaskExecution.objects.filter(run_id=run_id).select_related("task", "triggered_by"))
    attempts.sort(key=lambda e: e.attempt)
    if not attempts:
        raise Http404(f"No run {run_id}.")
    at = now()
    start = min(e.created_at for e in attempts)
    end = max([e.finished_at or at for e in attempts] + [e.scheduled_for for e in attempts])
    span = max((end - start).total_seconds(), 0.001)

    def x(when: datetime) -> float:
        return round((when - start).total_seconds() / span * TIMELINE_WIDTH, 1)

    lanes, previous_end = [], None
    for e in attempts:
        began = e.started_at or (e.finished_at if e.status != Status.PENDING else None)
        wait_end = began or (e.finished_at or at)
        run_end = e.finished_at or at
        delay = console.seconds_words((began - previous_end).total_seconds()) if began and previous_end else ""
        lanes.append(
            Lane(
                execution=e,
                colour=STATUS_COLOURS.get(e.status, "#6c757d"),
                wait_x=x(e.created_at),
                wait_w=max(x(wait_end) - x(e.created_at), 0),
                run_x=x(e.started_at) if e.started_at else 0,
                run_w=max(x(run_end) - x(e.started_at), 2) if e.started_at else 0,
                delay_words=delay,
                exit=exit_words(e),
            )
        )
        previous_end = e.finished_at or previous_end
    context = {
        **admin.site.each_context(request),
        "title": f"Run {run_id}",
        "task": attempts[0].task,
        "run_id": run_id,
        "lanes": lanes,
        "height": 44 * len(lanes) + 10,
        "width": TIMELINE_WIDTH,
        "span": console.seconds_short(span),
        "start": start,
        "can_run": can_run(request, VIEW_EXECUTION),
        "last": attempts[-1],
    }
    return TemplateResponse(request, "console/run.html", context)


# -- the dashboard ---------------------------------------------------------------------------------


@dataclass
class Bar:
    x: float
    y: float
    height: float
    colour: str
    title: str


CHART_HEIGHT = 160
BAR_WIDTH = 28


def dashboard_view(request: HttpRequest) -> HttpResponse:
    _may_view(request)
    data = console.dashboard(at=now())
    top = max([sum(counts.values()) for _, counts in data.per_hour] + [1])
    bars, labels = [], []
    for i, (hour, counts) in enumerate(data.per_hour):
        y = CHART_HEIGHT
        for status in CHART_STATUSES:
            n = counts.get(status, 0)
            if not n:
                continue
            h = n / top * CHART_HEIGHT
            y -= h
            bars.append(
                Bar(
                    x=i * BAR_WIDTH + 40,
                    y=round(y, 1),
                    height=round(h, 1),
                    colour=STATUS_COLOURS[status],
                    title=f"{hour:%H}:00 · {n} {status}",
                )
            )
        if i % 3 == 0:
            labels.append((i * BAR_WIDTH + 40 + BAR_WIDTH / 2, f"{hour:%H}:00"))
    slowest = max([p95 or 0 for _, _, _, p95, _ in data.durations] + [0.001])
    durations = [
        (
            name,
            pk,
            console.seconds_short(p50),
            console.seconds_short(p95),
            n,
            _share(p50, slowest),
            _share(p95, slowest),
        )
        for name, pk, p50, p95, n in data.durations
    ]
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        "data": data,
        "bars": bars,
        "labels": labels,
        "top": top,
        "chart_width": len(data.per_hour) * BAR_WIDTH + 50,
        "chart_height": CHART_HEIGHT,
        "legend": [(s.label, STATUS_COLOURS[s]) for s in CHART_STATUSES],
        "durations": durations,
        "running": [(e, console.duration_words(e.duration)) for e in data.running],
        "workers": [(w, alive, console.ago_words(w.last_seen_at, data.at)) for w, alive in data.workers],
        "total": sum(sum(c.values()) for _, c in data.per_hour),
    }
    return TemplateResponse(request, "console/dashboard.html", context)


def _share(value: float | None, of: float) -> float:
    return round((value or 0) / of * 100, 1)


# -- a workflow run's graph --------------------------------------------------------------------

NODE_W, NODE_H, COLUMN_GAP, ROW_GAP = 200, 48, 80, 24


@dataclass
class Box:
    node: workflows.Node
    x: int
    y: int
    colour: str


@dataclass
class Line:
    x1: int
    y1: int
    x2: int
    y2: int
    label: str


def workflow_view(request: HttpRequest, workflow_id: uuid.UUID) -> HttpResponse:
    """A workflow run's runs as a graph, columns by depth from the root, with a cancel button while it runs."""
    _may_view(request)
    workflow = WorkflowRun.objects.select_related("root_task", "cancelled_by").filter(pk=workflow_id).first()
    if workflow is None:
        raise Http404(f"No workflow run {workflow_id}.")
    if request.method == "POST":
        if not can_run(request, VIEW_EXECUTION):
            raise PermissionDenied("Cancelling needs the “Can run tasks” and “Can view task execution” permissions.")
        stopped = workflows.cancel(workflow, user=request.user)
        messages.success(request, f"Workflow run cancelled: {stopped} execution(s) cancelled or asked to stop.")
        return HttpResponseRedirect(request.path)
    g = workflows.graph(workflow)
    boxes, rows_in = {}, {}
    for node in g.nodes:
        row = rows_in.get(node.depth, 0)
        rows_in[node.depth] = row + 1
        boxes[node.run_id] = Box(
            node,
            x=10 + node.depth * (NODE_W + COLUMN_GAP),
            y=10 + row * (NODE_H + ROW_GAP),
            colour=STATUS_COLOURS.get(node.status, "#6c757d"),
        )
    lines = [
        Line(
            boxes[e.upstream].x + NODE_W,
            boxes[e.upstream].y + NODE_H // 2,
            boxes[e.downstream].x,
            boxes[e.downstream].y + NODE_H // 2,
            e.condition.replace("_", " "),
        )
        for e in g.edges
    ]
    context = {
        **admin.site.each_context(request),
        "title": f"Workflow run {workflow.pk}",
        "workflow": workflow,
        "graph": g,
        "boxes": list(boxes.values()),
        "lines": lines,
        "node_w": NODE_W,
        "node_h": NODE_H,
        "width": 20 + (max(rows_in, default=0) + 1) * (NODE_W + COLUMN_GAP),
        "height": 20 + max(rows_in.values(), default=1) * (NODE_H + ROW_GAP),
        "can_cancel": can_run(request, VIEW_EXECUTION) and g.status == "running",
    }
    return TemplateResponse(request, "console/workflow.html", context)
