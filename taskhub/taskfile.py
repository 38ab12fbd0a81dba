"""Tasks as code: the YAML task file that `sync_tasks` applies and `export_tasks` writes.

A file describes tasks completely: a field a task leaves out takes the
model's default, so applying a file makes each task it names exactly what
the file says, and an exported file applied again changes nothing. Tasks are
matched by name. Everything is checked (types, the model's validators and
clean(), the rules the API applies) before anything is written, and the
changes are applied in one transaction: a bad file changes nothing.

    version: 1
    tasks:
      - name: nightly report
        command: python3 /opt/report.py --day yesterday
        timeout: 10m          # seconds, or "90s", "5m", "1h30m"
        retry_count: 2
        env:
          LOG_LEVEL: debug
        schedules:
          - cron: "30 2 * * *"
            timezone: Europe/Berlin
          - every: 5m

Schedules take the API's human forms (taskhub/schedules.py) and, like every
field, are the whole list: a task without `schedules` has none after a sync.
Not in the file: `paused_reason` (state the engine sets, not configuration)
and the timestamps.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import yaml
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction

from taskhub import schedules
from taskhub.durations import format_duration, parse_duration
from taskhub.models import Misfire, Task

# The API's limit (taskhub/schedule_api.py), for the same reason: no file makes thousands of beat rows.
SCHEDULES_MAX = 50

FILE_VERSION = 1
HIDDEN = "(value hidden)"


class TaskFileError(Exception):
    """A task file that cannot be applied; ``problems`` lists every reason, each naming the task and field."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


# -- reading values ----------------------------------------------------------------------------------------


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be text, not {_kind(value)} (put it in quotes)")
    return value


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {_kind(value)}")
    return value


def _whole(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a whole number, not {_kind(value)}")
    return value


def _optional_whole(value: object) -> int | None:
    return None if value is None else _whole(value)


def _optional_seconds(value: object) -> int | None:
    return None if value is None else _seconds(value)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"must be a number, not {_kind(value)}")
    return float(value)


def _seconds(value: object) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(str(exc).rstrip(".")) from None


def _as_is(value: object) -> object:
    # The model's validators check these (env names and values, exit-code lists, choices) and say why.
    return value


def _username(value: object) -> str | None:
    if value is None:
        return None
    return _text(value)


def _schedules(value: object) -> tuple[schedules.ScheduleSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f'must be a list of schedules such as [{{"every": "5m"}}], not {_kind(value)}')
    if len(value) > SCHEDULES_MAX:
        raise ValueError(f"at most {SCHEDULES_MAX} schedules per task (it has {len(value)})")
    specs = []
    for number, item in enumerate(value, start=1):
        if isinstance(item, dict) and READ_ONLY_SCHEDULE_KEYS & item.keys():
            item = {k: v for k, v in item.items() if k not in READ_ONLY_SCHEDULE_KEYS}
        try:
            specs.append(schedules.parse_schedule(item))
        except schedules.ScheduleError as exc:
            raise ValueError(f"schedule {number}: {exc.field}: {exc.message.rstrip('.')}") from None
    return _in_order(specs)


# Shown by the API; a file copied from an API answer may hold them, and they mean nothing here.
READ_ONLY_SCHEDULE_KEYS = frozenset({"id", "description", "next_fire_time"})


def _in_order(specs) -> tuple[schedules.ScheduleSpec, ...]:
    # The order of a list of schedules means nothing: compared and written in one order.
    return tuple(sorted(specs, key=lambda s: (s.kind, s.expression, s.timezone, s.misfire, not s.enabled)))


def _schedule_forms(specs: tuple[schedules.ScheduleSpec, ...]) -> list[dict[str, object]]:
    forms = []
    for spec in specs:
        form: dict[str, object] = {spec.kind: spec.expression}
        if spec.timezone:
            form["timezone"] = spec.timezone
        if spec.misfire != Misfire.RUN_ONCE:
            form["misfire"] = spec.misfire
        if not spec.enabled:
            form["enabled"] = False
        forms.append(form)
    return forms


def _schedules_in_words(specs: tuple[schedules.ScheduleSpec, ...]) -> str:
    if not specs:
        return "none"
    return "; ".join(
        schedules.describe(s)
        + ("" if s.enabled else " (disabled)")
        + (", skip missed" if s.misfire == Misfire.SKIP else "")
        for s in specs
    )


def _kind(value: object) -> str:
    if value is None:
        return "empty"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:39] + "…")
    return {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "a mapping"}.get(
        type(value), type(value).__name__
    )


@dataclass(frozen=True)
class FileField:
    """How one Task field is read from a file and written to one."""

    name: str
    read: Callable[[object], object]
    write: Callable[[object], object] = _as_is
    secret_values: bool = False
    show: Callable[[object], str] | None = None  # in a diff; JSON when None


# Every Task field a file sets, in the order an export writes them; tests/test_taskfile.py
# fails when the model gains a field that is neither here nor in NOT_IN_FILE.
FIELDS: tuple[FileField, ...] = (
    FileField("name", _text),
    FileField("description", _text),
    FileField("command", _text),
    FileField("shell", _flag),
    FileField("env", _as_is, secret_values=True),
    FileField("working_dir", _text),
    FileField("resources", _as_is),
    FileField("keep_artifacts", _flag),
    FileField("timeout", _seconds, format_duration),
    FileField("kill_grace", _seconds, format_duration),
    FileField("retry_count", _whole),
    FileField("retry_delay", _seconds, format_duration),
    FileField("retry_backoff", _number),
    FileField("retry_delay_max", _seconds, format_duration),
    FileField("retry_jitter", _flag),
    FileField("success_exit_codes", _as_is),
    FileField("retry_exit_codes", _as_is),
    FileField("no_retry_exit_codes", _as_is),
    FileField("retry_on_timeout", _flag),
    FileField("queue", _text),
    FileField("priority", _whole),
    FileField("max_concurrency", _whole),
    FileField("overlap_policy", _text),
    FileField("pause_after_exhausted", _whole),
    FileField("memory_limit_mb", _optional_whole),
    FileField("cpu_limit_seconds", _optional_seconds, lambda v: v if v is None else format_duration(v)),
    FileField("open_files_limit", _optional_whole),
    FileField("process_limit", _optional_whole),
    FileField("isolated", _flag),
    FileField("enabled", _flag),
    FileField("owner", _username),
    FileField("schedules", _schedules, _schedule_forms, show=_schedules_in_words),
)
FIELD_BY_NAME = {f.name: f for f in FIELDS}
# Model fields a file leaves alone: the id, timestamps, and state the engine sets
# (has_downstream follows the task's links, which files do not carry yet, nor a task to wait for or a suite).
NOT_IN_FILE = frozenset(
    {"id", "created_at", "updated_at", "paused_reason", "has_downstream", "wait_for_task", "wait_for_status",
     "wait_timeout", "suite"}
)  # fmt: skip
# File fields kept in other tables: saved after the task, by their own functions.
RELATED = frozenset({"schedules"})
REQUIRED = ("name", "command")


def defaults() -> dict[str, object]:
    """Return the value each file field takes when a task leaves it out (the model's default)."""
    values: dict[str, object] = {"owner": None, "schedules": ()}
    for f in FIELDS:
        if f.name not in REQUIRED and f.name not in values:
            values[f.name] = Task._meta.get_field(f.name).get_default()
    return values


def values_of(task: Task) -> dict[str, object]:
    """Return a saved task's fields as a file holds them (prefetch its owner and schedules)."""
    values = _own_values(task)
    values["schedules"] = _in_order(
        schedules.ScheduleSpec(s.kind, s.expression, s.timezone, s.misfire, s.enabled) for s in task.schedules.all()
    )
    return values


def _own_values(task: Task) -> dict[str, object]:
    # The fields in the task's own row; the owner by user name.
    values = {f.name: getattr(task, f.name) for f in FIELDS if f.name not in ("owner", *RELATED)}
    values["owner"] = task.owner.get_username() if task.owner_id else None
    return values


# -- parsing -----------------------------------------------------------------------------------------------


@dataclass
class TaskSpec:
    """One task as the file describes it: every field, defaults filled in."""

    name: str
    values: dict[str, object]
    position: int  # 1-based, for messages about a task without a usable name


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(text: str) -> list[TaskSpec]:
    """Parse a task file; raise TaskFileError naming every problem found."""
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise TaskFileError([f"Not valid YAML: {exc}"]) from None
    entries = _entries(document)
    problems: list[str] = []
    specs: list[TaskSpec] = []
    first_seen: dict[str, int] = {}
    for position, entry in enumerate(entries, start=1):
        spec = _spec(entry, position, problems)
        if spec is None:
            continue
        if spec.name in first_seen:
            problems.append(
                f"Task {spec.name!r} (task #{position}) is also task #{first_seen[spec.name]}: names must be unique."
            )
            continue
        first_seen[spec.name] = position
        specs.append(spec)
    if problems:
        raise TaskFileError(problems)
    return specs


def _entries(document: object) -> list[object]:
    expected = "a mapping with a 'tasks' list (and optionally 'version: 1')"
    if not isinstance(document, dict):
        raise TaskFileError([f"The file must hold {expected}; it holds {_kind(document)}."])
    unknown = sorted(str(k) for k in document if k not in ("version", "tasks"))
    if unknown:
        raise TaskFileError([f"Unknown top-level key(s) {', '.join(map(repr, unknown))}: the file holds {expected}."])
    version = document.get("version", FILE_VERSION)
    if version != FILE_VERSION:
        raise TaskFileError([f"version: this TaskHub reads version {FILE_VERSION} files, not {version!r}."])
    if "tasks" not in document:
        raise TaskFileError([f"The file must hold {expected}; 'tasks' is missing."])
    entries = document["tasks"]
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise TaskFileError([f"tasks: must be a list of tasks, not {_kind(entries)}."])
    return entries


def _spec(entry: object, position: int, problems: list[str]) -> TaskSpec | None:
    if not isinstance(entry, dict):
        problems.append(f"Task #{position}: must be a mapping of fields, not {_kind(entry)}.")
        return None
    raw_name = entry.get("name")
    label = f"Task {raw_name!r}" if isinstance(raw_name, str) and raw_name else f"Task #{position}"
    found = len(problems)
    for key in entry:
        if key not in FIELD_BY_NAME:
            problems.append(f"{label}: unknown field {key!r}{_suggestion(key)}.")
    for required in REQUIRED:
        if entry.get(required) in (None, ""):
            problems.append(f"{label}: {required}: this field is required.")
    values = defaults()
    for key, raw in entry.items():
        f = FIELD_BY_NAME.get(key)
        if f is None or (key in REQUIRED and raw in (None, "")):
            continue
        try:
            values[key] = f.read(raw)
        except ValueError as exc:
            problems.append(f"{label}: {key}: {exc}.")
    if len(problems) > found:
        return None
    return TaskSpec(name=values["name"], values=values, position=position)


def _suggestion(key: object) -> str:
    close = difflib.get_close_matches(str(key), list(FIELD_BY_NAME), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- planning ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    field: str
    old: object
    new: object

    def describe(self) -> str:
        f = FIELD_BY_NAME[self.field]
        if f.secret_values:
            return _env_changes(self.old, self.new)
        show = f.show or _shown
        return f"{self.field}: {show(self.old)} → {show(self.new)}"


@dataclass
class Plan:
    """What applying a file does: tasks to create, to update (with their changes), to delete; nothing written yet."""

    create: list[Task] = field(default_factory=list)
    update: list[tuple[Task, list[Change]]] = field(default_factory=list)
    delete: list[Task] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    not_in_file: list[str] = field(default_factory=list)

    @property
    def changes_anything(self) -> bool:
        return bool(self.create or self.update or self.delete)

    def lines(self, *, done: bool = True) -> list[str]:
        """Describe the plan as a diff: + created, ~ updated (field: old → new), - deleted; env values hidden."""
        out: list[str] = []
        for task in self.create:
            out.append(f"+ create {task.name!r}")
            out.extend(f"    {line}" for line in _creation_lines(task))
        for task, changes in self.update:
            out.append(f"~ update {task.name!r}")
            out.extend(f"    {change.describe()}" for change in changes)
        for task in self.delete:
            out.append(f"- delete {task.name!r}")
        if self.not_in_file:
            names = ", ".join(map(repr, self.not_in_file))
            out.append(f"  not in the file, kept: {names} (--prune deletes them)")
        words = ("created", "updated", "deleted") if done else ("to create", "to update", "to delete")
        counts = (len(self.create), len(self.update), len(self.delete))
        out.append(
            ", ".join(f"{n} {w}" for n, w in zip(counts, words, strict=True)) + f", {len(self.unchanged)} unchanged."
        )
        return out


def plan(specs: list[TaskSpec], *, prune: bool = False) -> Plan:
    """Compare the file with the database; raise TaskFileError if any task is invalid or cannot be pruned.

    Call inside a transaction: the tasks are locked (FOR UPDATE) until it ends,
    so nothing changes them, or adds an execution to one being deleted,
    between this check and apply().
    """
    current = {
        task.name: task
        for task in Task.objects.select_for_update(of=("self",)).select_related("owner").prefetch_related("schedules")
    }
    users = _owners(specs)
    result = Plan()
    problems: list[str] = []
    for spec in specs:
        task = current.get(spec.name)
        before = values_of(task) if task is not None else None
        candidate = task if task is not None else Task()
        _assign(candidate, spec, users, problems)
        candidate.file_schedules = spec.values["schedules"]  # saved by apply(), after the task
        problems.extend(_model_problems(candidate, spec.name))
        if task is None:
            result.create.append(candidate)
            continue
        changes = [
            Change(name, before[name], spec.values[name]) for name in before if before[name] != spec.values[name]
        ]
        if changes:
            result.update.append((candidate, changes))
        else:
            result.unchanged.append(spec.name)
    named = {spec.name for spec in specs}
    leftovers = [task for name, task in sorted(current.items()) if name not in named]
    if prune:
        result.delete = leftovers
        problems.extend(
            f"Task {task.name!r} cannot be deleted (--prune): {blocker}."
            for task in leftovers
            if (blocker := task.deletion_blocker()) is not None
        )
    else:
        result.not_in_file = [task.name for task in leftovers]
    if problems:
        raise TaskFileError(problems)
    return result


def _owners(specs: list[TaskSpec]) -> dict[str, object]:
    names = {spec.values["owner"] for spec in specs if spec.values["owner"]}
    if not names:
        return {}
    user_model = get_user_model()
    lookup = {f"{user_model.USERNAME_FIELD}__in": names}
    return {user.get_username(): user for user in user_model.objects.filter(**lookup)}


def _assign(task: Task, spec: TaskSpec, users: dict[str, object], problems: list[str]) -> None:
    for name, value in spec.values.items():
        if name in RELATED:
            continue
        if name == "owner":
            if value is not None and value not in users:
                problems.append(f"Task {spec.name!r}: owner: there is no user named {value!r}.")
            task.owner = users.get(value) if value is not None else None
        else:
            setattr(task, name, value)


def _model_problems(task: Task, name: str) -> list[str]:
    # full_clean runs the fields' validators and Task.clean(): the rules the admin and the API apply.
    try:
        task.full_clean()
    except ValidationError as exc:
        return [
            f"Task {name!r}: {message}" if where == "__all__" else f"Task {name!r}: {where}: {message}"
            for where, messages in exc.message_dict.items()
            for message in messages
        ]
    return []


def apply(result: Plan) -> None:
    """Write a plan: create, update and delete in one transaction."""
    with transaction.atomic():
        for task in result.create:
            task.save()
            if task.file_schedules:
                schedules.replace_schedules(task, task.file_schedules)
        for task, changes in result.update:
            task.save(update_fields=[c.field for c in changes if c.field not in RELATED] + ["updated_at"])
            if any(c.field == "schedules" for c in changes):
                schedules.replace_schedules(task, task.file_schedules)
        for task in result.delete:
            task.delete()


# -- writing -----------------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Write multi-line text (a shell script in `command`) as a literal block, the way people write it."""


def _represent_text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_text)


def dump(tasks: Iterable[Task]) -> str:
    """Return a task file describing ``tasks``: each field that differs from its default."""
    base = defaults()
    entries = []
    for task in tasks:  # prefetch_related("schedules")
        values = values_of(task)
        entry = {}
        for f in FIELDS:
            value = values[f.name]
            if f.name in REQUIRED or value != base[f.name]:
                entry[f.name] = f.write(value)
        entries.append(entry)
    header = (
        "# TaskHub tasks. `python manage.py sync_tasks FILE` applies this file; a field left out takes its default.\n"
    )
    body = yaml.dump(
        {"version": FILE_VERSION, "tasks": entries},
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=120,
    )
    return header + body


# -- describing values -----------------------------------------------------------------------------------


def _creation_lines(task: Task) -> list[str]:
    base = defaults()
    values = {**_own_values(task), "schedules": task.file_schedules}
    lines = []
    for f in FIELDS:
        value = values[f.name]
        if f.name == "name" or (f.name not in REQUIRED and value == base[f.name]):
            continue
        if f.secret_values:
            lines.append(f"{f.name}: {', '.join(sorted(value))} {HIDDEN}")
        else:
            lines.append(f"{f.name}: {(f.show or _shown)(value)}")
    return lines


def _env_changes(old: dict, new: dict) -> str:
    parts = []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            parts.append(f"+{name}")
        elif name not in new:
            parts.append(f"-{name}")
        elif old[name] != new[name]:
            parts.append(f"~{name}")
    return f"env: {' '.join(parts)} {HIDDEN}"


def _shown(value: object) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return json.dumps(value, ensure_ascii=False)
