"""The task graph's edges: which tasks a task launches when its run ends, and the rule that they form no cycle.

Every path that writes links (the API's ``downstream``, the admin's inline,
task files) checks them with ``cycle_error`` first; ``Task.has_downstream``
follows the rows through the signals below, whatever wrote them.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from taskhub.models import Condition, Task, TaskLink


def _edges(excluding_upstream: int | None) -> dict[int, set[int]]:
    edges: dict[int, set[int]] = {}
    links = TaskLink.objects.values_list("upstream_id", "downstream_id")
    if excluding_upstream is not None:
        links = links.exclude(upstream_id=excluding_upstream)
    for up, down in links:
        edges.setdefault(up, set()).add(down)
    return edges


def find_cycle(task_id: int | None, downstream_ids: Iterable[int]) -> list[int] | None:
    """The task ids of a cycle that ``task_id`` with exactly ``downstream_ids`` below it would close, or None."""
    downstream_ids = list(downstream_ids)
    if task_id is None:  # a task not saved yet: nothing leads to it
        return None
    edges = _edges(excluding_upstream=task_id)
    edges[task_id] = set(downstream_ids)
    # Depth-first from the task; a path that comes back to it is the cycle.
    stack: list[tuple[int, list[int]]] = [(task_id, [task_id])]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(edges.get(node, ())):
            if nxt == task_id:
                return [*path, task_id]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def reachable_from(task_id: int) -> set[int]:
    """The tasks that ``task_id``'s links lead to, directly or through others (itself included)."""
    edges = _edges(excluding_upstream=None)
    seen, stack = {task_id}, [task_id]
    while stack:
        for nxt in edges.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def cycle_error(task: Task, downstream_ids: Iterable[int]) -> str | None:
    """The error to show when these downstream tasks would make a cycle through ``task``, naming its path."""
    cycle = find_cycle(task.pk, downstream_ids)
    if cycle is None:
        return None
    names = dict(Task.objects.filter(pk__in=cycle).values_list("pk", "name"))
    names[task.pk] = task.name
    path = " → ".join(names.get(pk, f"#{pk}") for pk in cycle)
    return f"These downstream tasks would make a cycle: {path}. A task cannot, through its links, launch itself."


def set_downstream(task: Task, links: list[tuple[Task, str]]) -> None:
    """Replace ``task``'s downstream links with ``links`` ((task, condition) pairs); ValidationError on a cycle."""
    for target, condition in links:
        if condition not in Condition.values:
            raise ValidationError(f"Unknown condition {condition!r}: use one of {', '.join(Condition.values)}.")
        if target.pk == task.pk:
            raise ValidationError(f"Task {task.name!r} cannot be its own downstream task.")
    error = cycle_error(task, [target.pk for target, _ in links])
    if error:
        raise ValidationError(error)
    with transaction.atomic():
        wanted = {target.pk: condition for target, condition in links}
        TaskLink.objects.filter(upstream=task).exclude(downstream_id__in=wanted).delete()
        for target_id, condition in wanted.items():
            TaskLink.objects.update_or_create(upstream=task, downstream_id=target_id, defaults={"condition": condition})
        refresh_has_downstream(task.pk)
    task.has_downstream = bool(links)


def refresh_has_downstream(task_id: int) -> None:
    Task.objects.filter(pk=task_id).update(has_downstream=TaskLink.objects.filter(upstream_id=task_id).exists())


@receiver(post_save, sender=TaskLink)
@receiver(post_delete, sender=TaskLink)
def _link_changed(sender, instance: TaskLink, **kwargs) -> None:
    refresh_has_downstream(instance.upstream_id)
