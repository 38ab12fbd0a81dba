"""Tasks as code: `sync_tasks` and `export_tasks`, the task file format, and human durations."""

from __future__ import annotations

import io
import os
import stat
import textwrap

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django_celery_beat.models import PeriodicTask

from executions.models import Status, TaskExecution
from taskhub import schedules, taskfile
from taskhub.durations import format_duration, parse_duration
from taskhub.models import Schedule, Task

# -- durations ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        (0, 0),
        (90, 90),
        ("90", 90),
        ("90s", 90),
        ("5m", 300),
        ("1h30m", 5400),
        ("1h 30m", 5400),
        ("2d", 172800),
        ("1d2h3m4s", 93784),
        (" 10M ", 600),
        (3600.0, 3600),
    ],
)
def test_parse_duration_reads_seconds_and_human_forms(given, seconds):
    assert parse_duration(given) == seconds


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("", "is not a duration"),
        ("5 minutes", "is not a duration"),
        ("30m1h", "is not a duration"),  # units largest first
        ("1h1h", "is not a duration"),
        ("-5s", "is not a duration"),
        ("1.5h", "is not a duration"),
        (-1, "cannot be negative"),
        (1.5, "whole seconds"),
        (True, "not True"),
        (None, "not NoneType"),
        ("9" * 40 + "s", "too long"),
    ],
)
def test_parse_duration_refuses_what_is_not_a_duration_and_says_why(given, reason):
    with pytest.raises(ValueError, match=reason):
        parse_duration(given)


@pytest.mark.parametrize(
    ("seconds", "shown"), [(0, 0), (59, 59), (60, "1m"), (90, "1m30s"), (3600, "1h"), (5400, "1h30m"), (86401, "1d1s")]
)
def test_format_duration_writes_the_shortest_form_that_reads_back(seconds, shown):
    assert format_duration(seconds) == shown
    assert parse_duration(shown) == seconds


# -- the format -----------------------------------------------------------------------------------------


def test_every_task_field_is_in_the_file_format_or_deliberately_left_out():
    # A new Task field must be given a place in task files (or a reason to stay out of them).
    model_fields = {f.name for f in Task._meta.concrete_fields}
    assert model_fields == ({f.name for f in taskfile.FIELDS} - taskfile.RELATED) | taskfile.NOT_IN_FILE


def problems_of(text: str) -> list[str]:
    with pytest.raises(taskfile.TaskFileError) as caught:
        taskfile.load(textwrap.dedent(text))
    return caught.value.problems


def test_a_file_with_bad_fields_names_each_task_field_and_reason():
    problems = problems_of(
        """
        tasks:
          - name: report
            command: ./report
            timout: 60
            retry_count: "two"
            shell: "yes please"
          - command: ./orphan
          - name: sleeper
            command: sleep 1
            timeout: 5 minutes
        """
    )
    assert problems == [
        "Task 'report': unknown field 'timout' (did you mean 'timeout'?).",
        "Task 'report': retry_count: must be a whole number, not 'two'.",
        "Task 'report': shell: must be true or false, not 'yes please'.",
        "Task #2: name: this field is required.",
        "Task 'sleeper': timeout: '5 minutes' is not a duration; use seconds or a form such as "
        '90, "90s", "5m", "1h30m" or "2d".',
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tasks: [", "Not valid YAML"),
        ("- name: a", "must hold a mapping with a 'tasks' list"),
        ("{}", "'tasks' is missing"),
        ("tasks: {name: a}", "tasks: must be a list of tasks, not a mapping."),
        ("version: 2\ntasks: []", "reads version 1 files, not 2"),
        ("task: []", "Unknown top-level key(s) 'task'"),
        ("tasks:\n  - name: a\n    command: x\n    command: y", "the key 'command' is given twice"),
        ("tasks:\n  - {name: a, command: x}\n  - {name: a, command: y}", "Task 'a' (task #2) is also task #1"),
        ("tasks:\n  - just a string", "Task #1: must be a mapping of fields, not 'just a string'."),
    ],
)
def test_a_malformed_file_says_what_is_wrong(text, problem):
    assert any(problem in p for p in problems_of(text)), problems_of(text)


# -- sync -----------------------------------------------------------------------------------------------


def sync(tmp_path, text: str, *args: str) -> str:
    path = tmp_path / "tasks.yaml"
    path.write_text(textwrap.dedent(text))
    out = io.StringIO()
    call_command("sync_tasks", str(path), *args, stdout=out, no_color=True)
    return out.getvalue()


def refused(tmp_path, text: str, *args: str) -> str:
    with pytest.raises(CommandError) as caught:
        sync(tmp_path, text, *args)
    message = str(caught.value)
    assert "nothing changed, because:" in message
    return message


TWO_TASKS = """
    tasks:
      - name: nightly report
        command: python3 /opt/report.py --day yesterday
        timeout: 10m
        retry_count: 2
        retry_delay: 30s
        env:
          LOG_LEVEL: debug
          API_KEY: s3cret-value
      - name: cleanup
        command: find /tmp -mtime +7 -delete
        priority: 8
        success_exit_codes: [0, 3]
"""


@pytest.mark.django_db
def test_sync_creates_the_tasks_of_a_file_with_durations_read_as_seconds(tmp_path):
    out = sync(tmp_path, TWO_TASKS)

    report = Task.objects.get(name="nightly report")
    assert (report.timeout, report.retry_count, report.retry_delay) == (600, 2, 30)
    assert report.env == {"LOG_LEVEL": "debug", "API_KEY": "s3cret-value"}
    cleanup = Task.objects.get(name="cleanup")
    assert (cleanup.priority, cleanup.success_exit_codes, cleanup.timeout) == (8, [0, 3], 3600)
    assert "+ create 'nightly report'" in out
    assert "    timeout: 600" in out
    assert "env: API_KEY, LOG_LEVEL (value hidden)" in out
    assert "s3cret-value" not in out
    assert out.strip().endswith("2 created, 0 updated, 0 deleted, 0 unchanged.")


@pytest.mark.django_db
def test_sync_updates_what_changed_prints_old_and_new_and_hides_env_values(tmp_path):
    sync(tmp_path, TWO_TASKS)
    cleanup_stamp = Task.objects.get(name="cleanup").updated_at

    out = sync(tmp_path, TWO_TASKS.replace("timeout: 10m", "timeout: 1h30m").replace("s3cret-value", "rotated"))

    assert "~ update 'nightly report'" in out
    assert "    timeout: 600 → 5400" in out
    assert "    env: ~API_KEY (value hidden)" in out
    assert "s3cret-value" not in out and "rotated" not in out
    assert out.strip().endswith("0 created, 1 updated, 0 deleted, 1 unchanged.")
    report = Task.objects.get(name="nightly report")
    assert (report.timeout, report.env["API_KEY"]) == (5400, "rotated")
    assert Task.objects.get(name="cleanup").updated_at == cleanup_stamp  # untouched


@pytest.mark.django_db
def test_a_field_left_out_of_the_file_goes_back_to_its_default(tmp_path):
    sync(tmp_path, TWO_TASKS)
    out = sync(tmp_path, TWO_TASKS.replace("        priority: 8\n", ""))
    assert "    priority: 8 → 5" in out
    assert Task.objects.get(name="cleanup").priority == 5


@pytest.mark.django_db
def test_dry_run_prints_the_diff_and_changes_nothing(tmp_path):
    out = sync(tmp_path, TWO_TASKS, "--dry-run")
    assert "+ create 'nightly report'" in out
    assert "2 to create, 0 to update, 0 to delete, 0 unchanged." in out
    assert "Dry run: nothing was changed." in out
    assert not Task.objects.exists()


@pytest.mark.django_db
def test_tasks_not_in_the_file_are_kept_and_listed_unless_pruned(tmp_path, make_task):
    make_task(name="legacy")
    out = sync(tmp_path, TWO_TASKS)
    assert "not in the file, kept: 'legacy' (--prune deletes them)" in out
    assert Task.objects.filter(name="legacy").exists()

    out = sync(tmp_path, TWO_TASKS, "--prune")
    assert "- delete 'legacy'" in out
    assert set(Task.objects.values_list("name", flat=True)) == {"nightly report", "cleanup"}


@pytest.mark.django_db
def test_prune_refuses_the_whole_sync_when_a_task_to_delete_has_history(tmp_path, make_task):
    kept = make_task(name="with history")
    TaskExecution.objects.create(task=kept, status=Status.SUCCEEDED)
    make_task(name="deletable")

    message = refused(tmp_path, TWO_TASKS, "--prune")

    assert "Task 'with history' cannot be deleted (--prune): it has 1 execution; disable it instead" in message
    # All or nothing: neither the creations nor the other deletion happened.
    assert set(Task.objects.values_list("name", flat=True)) == {"with history", "deletable"}


@pytest.mark.django_db
def test_a_bad_task_changes_nothing_and_every_problem_names_its_task_and_field(tmp_path, make_task):
    make_task(name="cleanup", command="true", priority=2)
    bad = TWO_TASKS + textwrap.indent(
        textwrap.dedent(
            """\
            - name: broken
              command: 'echo "unclosed'
              timeout: 0
              env: {"1BAD": x}
              working_dir: relative/dir
              owner: nobody
            """
        ),
        "      ",
    )

    message = refused(tmp_path, bad)

    assert "Task 'broken': timeout: Timeout must be between 1 and 604800 seconds (7 days)." in message
    assert "Task 'broken': env: '1BAD' is not a valid variable name" in message
    assert "Task 'broken': command: Cannot split this command line: No closing quotation." in message
    assert "Task 'broken': working_dir: Use an absolute path (starting with /)." in message
    assert "Task 'broken': owner: there is no user named 'nobody'." in message
    # The good tasks of the same file were not applied either.
    assert list(Task.objects.values_list("name", "priority")) == [("cleanup", 2)]


@pytest.mark.django_db
def test_owner_is_given_by_user_name(tmp_path, operator):
    sync(tmp_path, f"tasks:\n  - name: owned\n    command: 'true'\n    owner: {operator.username}\n")
    assert Task.objects.get(name="owned").owner == operator


SCHEDULED = """
    tasks:
      - name: backup
        command: /usr/local/bin/backup
        schedules:
          - cron: "30 2 * * *"
            timezone: Europe/Berlin
          - every: 5m
            misfire: skip
"""


@pytest.mark.django_db
def test_sync_creates_changes_and_removes_a_tasks_schedules_with_their_beat_rows(tmp_path):
    out = sync(tmp_path, SCHEDULED)
    task = Task.objects.get(name="backup")
    assert sorted(Schedule.objects.filter(task=task).values_list("kind", "expression", "timezone", "misfire")) == [
        ("cron", "30 2 * * *", "Europe/Berlin", "run_once"),
        ("every", "5m", "", "skip"),
    ]
    assert PeriodicTask.objects.filter(taskhub_schedule__task=task, enabled=True).count() == 2
    assert "    schedules: " in out

    out = sync(tmp_path, SCHEDULED.replace("every: 5m", "every: 10m"))
    assert "~ update 'backup'" in out and "    schedules: " in out and " → " in out
    assert set(Schedule.objects.values_list("expression", flat=True)) == {"30 2 * * *", "10m"}

    out = sync(tmp_path, "tasks:\n  - name: backup\n    command: /usr/local/bin/backup\n")
    assert "    schedules: " in out and "→ none" in out
    assert not Schedule.objects.exists()
    assert not PeriodicTask.objects.filter(task="taskhub.launch_scheduled").exists()


@pytest.mark.django_db
def test_a_bad_schedule_names_the_task_the_schedule_and_its_key(tmp_path):
    message = refused(tmp_path, SCHEDULED.replace('"30 2 * * *"', '"61 2 * * *"'))
    assert "Task 'backup': schedules: schedule 1: cron: " in message
    assert not Task.objects.exists() and not PeriodicTask.objects.exists()


# -- export ---------------------------------------------------------------------------------------------


@pytest.fixture
def varied_tasks(make_task, operator):
    make_task(name="plain")
    make_task(
        name="everything",
        description="Nightly: übersicht",
        command='set -e\ncd /srv/app\n./manage.py report --since "1 day ago"\n',
        shell=True,
        env={"TOKEN": "t0ps3cret", "EMPTY": ""},
        working_dir="/srv",
        timeout=5400,
        kill_grace=3,
        retry_count=4,
        retry_delay=90,
        retry_backoff=1.5,
        retry_delay_max=86400,
        retry_jitter=True,
        success_exit_codes=[0, 3],
        retry_exit_codes=[75],
        no_retry_exit_codes=[2],
        retry_on_timeout=False,
        queue="reports",
        priority=9,
        max_concurrency=1,
        overlap_policy="skip",
        pause_after_exhausted=3,
        enabled=False,
        owner=operator,
    )
    scheduled = make_task(name="scheduled")
    for form in ({"cron": "0 6 * * mon-fri", "timezone": "Europe/Berlin"}, {"every": "90s", "enabled": False}):
        schedules.create_schedule(scheduled, schedules.parse_schedule(form))


@pytest.mark.django_db
def test_export_then_sync_changes_nothing(tmp_path, varied_tasks):
    before = {t.name: (taskfile.values_of(t), t.updated_at) for t in Task.objects.all()}
    beat_rows = set(PeriodicTask.objects.values_list("pk", "enabled"))
    exported = io.StringIO()
    call_command("export_tasks", stdout=exported)

    out = sync(tmp_path, exported.getvalue())

    assert out.strip().endswith("0 created, 0 updated, 0 deleted, 3 unchanged."), out
    after = {t.name: (taskfile.values_of(t), t.updated_at) for t in Task.objects.all()}
    assert after == before
    assert set(PeriodicTask.objects.values_list("pk", "enabled")) == beat_rows


@pytest.mark.django_db
def test_export_writes_only_what_differs_from_the_defaults_in_human_form(varied_tasks):
    exported = io.StringIO()
    call_command("export_tasks", stdout=exported)
    text = exported.getvalue()
    assert "- name: plain\n  command: 'true'\n" in text
    assert "  timeout: 1h30m\n" in text
    assert "  command: |\n    set -e\n    cd /srv/app\n" in text  # a script reads as one
    assert "  owner: olivia\n" in text


@pytest.mark.django_db
def test_sync_into_an_empty_database_recreates_an_exported_set(tmp_path, varied_tasks):
    path = tmp_path / "export.yaml"
    call_command("export_tasks", str(path), stderr=io.StringIO())
    expected = {t.name: taskfile.values_of(t) for t in Task.objects.all()}
    Task.objects.all().delete()

    call_command("sync_tasks", str(path), stdout=io.StringIO())

    assert {t.name: taskfile.values_of(t) for t in Task.objects.all()} == expected


@pytest.mark.django_db
def test_an_exported_file_is_readable_by_its_owner_only(tmp_path, varied_tasks):
    # It holds env values, which may be secrets.
    path = tmp_path / "export.yaml"
    call_command("export_tasks", str(path), stderr=io.StringIO())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
