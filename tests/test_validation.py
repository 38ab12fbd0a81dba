"""Bad input is refused early, in words that name the field: bounds, long commands, NULs, odd names."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils.timezone import now

from taskhub.models import Task
from tests.conftest import ROOT, subprocess_env

pytestmark = pytest.mark.django_db


def errors_of(**fields) -> dict[str, list[str]]:
    fields.setdefault("name", "t")
    fields.setdefault("command", "true")
    with pytest.raises(ValidationError) as info:
        Task(**fields).full_clean()
    return info.value.message_dict


# -- bounds on durations and counts ----------------------------------------------------------------

BOUNDS = [
    # field, lowest allowed, highest allowed, words of the message
    ("timeout", 1, 604800, "Timeout must be between 1 and 604800 seconds"),
    ("kill_grace", 0, 3600, "Kill grace must be between 0 and 3600 seconds"),
    ("retry_delay", 0, 2592000, "Retry delay must be between 0 and 2592000 seconds"),
    ("retry_delay_max", 0, 2592000, "Maximum retry delay must be between 0 and 2592000 seconds"),
    ("retry_count", 0, 1000, "Retry count must be between 0 and 1000"),
    ("retry_backoff", 1, 100, "Retry backoff must be between 1 and 100"),
    ("priority", 0, 9, "Priority must be between 0 and 9"),
]


@pytest.mark.parametrize(("field", "low", "high", "message"), BOUNDS)
def test_each_duration_and_count_is_refused_just_past_its_bounds(field, low, high, message):
    for value in (low - 1, high + 1):
        assert any(message in m for m in errors_of(**{field: value})[field]), (field, value)
    for value in (low, high):
        Task(name="t", command="true", **{field: value}).full_clean()


@pytest.mark.parametrize(("field", "low", "high", "message"), BOUNDS)
def test_the_database_refuses_values_past_the_bounds_too(make_task, field, low, high, message):
    task = make_task()
    for value in (low - 1, high + 1):
        with pytest.raises(IntegrityError), transaction.atomic():
            Task.objects.filter(pk=task.pk).update(**{field: value})


@pytest.mark.parametrize("backoff", [math.nan, math.inf])
def test_a_backoff_that_is_not_a_finite_number_is_refused_by_validation_and_database(make_task, backoff):
    assert "retry_backoff" in errors_of(retry_backoff=backoff)
    task = make_task()
    with pytest.raises(IntegrityError), transaction.atomic():
        Task.objects.filter(pk=task.pk).update(retry_backoff=backoff)


def test_a_huge_retry_delay_is_refused_by_validation_and_by_the_admin_form(client, operator):
    assert "Retry delay must be between 0 and 2592000 seconds" in errors_of(retry_delay=10**12)["retry_delay"][0]

    client.force_login(operator)
    response = client.post(reverse("admin:taskhub_task_add"), task_form(retry_delay=str(10**12)))
    assert response.status_code == 200
    assert "Retry delay must be between 0 and 2592000 seconds" in response.content.decode()
    assert not Task.objects.exists()


def test_the_defaults_are_within_the_bounds():
    Task(name="t", command="true").full_clean()


def test_retry_delays_stay_finite_at_the_largest_allowed_values():
    task = Task(retry_delay=2592000, retry_delay_max=2592000, retry_backoff=100, retry_count=1000)
    for n in (1, 2, 10, 1000, 10**6):
        delay = task.retry_delay_for(n)
        assert math.isfinite(delay) and 0 <= delay <= 2592000, n
        now() + timedelta(seconds=delay)  # planning the retry does not overflow
    task.retry_jitter = True
    assert 0 <= task.retry_delay_for(10**6) <= 2592000


# -- the command line ---------------------------------------------------------------------------------


def test_a_megabyte_single_word_command_is_refused_fast_without_splitting_it():
    started = time.monotonic()
    errors = errors_of(command="a" * 1_000_000)
    elapsed = time.monotonic() - started
    assert any("at most 65536 characters" in m for m in errors["command"])
    # Splitting it took 16 s; refusing it by length takes milliseconds. The
    # bound tells the two apart, wide for a loaded machine.
    assert elapsed < 8, f"validation took {elapsed:.1f}s"


def test_a_command_of_exactly_the_limit_is_accepted():
    Task(name="t", command="a" * 65536).full_clean()
    assert "command" in errors_of(command="a" * 65537)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("command", "echo a\x00b", "Command must not contain a NUL character"),
        ("working_dir", "/tmp/a\x00b", "Working directory must not contain a NUL character"),
    ],
)
def test_a_nul_character_is_refused_in_the_command_and_the_working_directory(field, value, message):
    assert f"{message}." in errors_of(**{field: value})[field]


# -- the environment --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TASKHUB_TASK\n": "x"}, "is not a valid variable name"),
        ({"GOOD\n": "x"}, "is not a valid variable name"),
        ({"GOOD": "a\x00b"}, "The value of 'GOOD' must not contain a NUL character"),
        ({"GOOD": {"nested": "x"}}, "The value of 'GOOD' must be a string, not dict"),
        ({"N" * 256: "x"}, "is too long: at most 255 characters"),
        ({"GOOD": "v" * 32769}, "The value of 'GOOD' is too long: at most 32768 characters"),
        ({f"V{i}": "x" for i in range(257)}, "at most 256 variables (it has 257)"),
    ],
)
def test_bad_environments_are_refused_with_a_clear_message(env, message):
    assert any(message in m for m in errors_of(env=env)["env"])


def test_an_environment_at_its_limits_is_accepted():
    Task(name="t", command="true", env={f"V{i}": "x" for i in range(256)}).full_clean()
    Task(name="t", command="true", env={"N" * 255: "v" * 32768}).full_clean()


def task_form(**overrides: str) -> dict[str, str]:
    form = {
        "name": "deep",
        "description": "",
        "command": "true",
        "env": "{}",
        "working_dir": "",
        "timeout": "3600",
        "kill_grace": "10",
        "retry_count": "0",
        "retry_delay": "60",
        "retry_backoff": "1",
        "retry_delay_max": "3600",
        "queue": "default",
        "priority": "5",
        "enabled": "on",
        "executions-TOTAL_FORMS": "0",
        "executions-INITIAL_FORMS": "0",
    }
    form.update(overrides)
    return form


def nested_object(depth: int) -> str:
    return '{"A": ' * depth + '"x"' + "}" * depth


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (nested_object(2), "The value of &#x27;A&#x27; must be a string, not dict"),
        (nested_object(900), "The value of &#x27;A&#x27; must be a string, not dict"),
        (nested_object(1000), "nested too deeply"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_a_nested_environment_in_the_admin_form_is_a_form_error(client, operator, env, message):
    client.force_login(operator)
    response = client.post(reverse("admin:taskhub_task_add"), task_form(env=env))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Task.objects.exists()


# -- the task name -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["backup\u202egpj.exe", "zero\u200bwidth", "bell\x07", "new\nline"])
def test_a_name_with_control_or_bidirectional_characters_is_refused(name):
    assert any("control or invisible formatting characters" in m for m in errors_of(name=name)["name"])


def test_a_name_in_any_script_is_accepted():
    Task(name="Sauvegarde nocturne – été, 夜間バックアップ", command="true").full_clean()


# -- purge_executions ------------------------------------------------------------------------------------


@pytest.mark.parametrize("days", ["nan", "inf", "-1", "0", "1e10", "36501"])
def test_purge_refuses_a_number_of_days_that_is_not_a_sensible_age(days):
    with pytest.raises(CommandError, match="--older-than must be a number of days above 0 and at most 36500"):
        call_command("purge_executions", "--older-than", days)


def test_purge_with_a_bad_age_says_so_without_a_traceback():
    done = subprocess.run(
        [sys.executable, "manage.py", "purge_executions", "--older-than", "nan"],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "CommandError: --older-than must be a number of days above 0" in done.stderr
    assert "Traceback" not in done.stderr


def test_purge_accepts_the_largest_age():
    call_command("purge_executions", "--older-than", "36500", "--dry-run")
