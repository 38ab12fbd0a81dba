"""The operator's console in the admin: what the pages show and who may act on them (no browser needed)."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group, Permission, User
from django.urls import reverse
from django.utils.timezone import now

from executions import console
from executions.models import Status, TaskExecution, Worker
from taskhub.admin import retry_policy_words
from taskhub.models import Task

pytestmark = pytest.mark.django_db


def finished_execution(task: Task, status: str = Status.SUCCEEDED, seconds: float = 2.0, **fields) -> TaskExecution:
    at = now()
    fields.setdefault("started_at", at - timedelta(seconds=seconds))
    fields.setdefault("finished_at", at)
    return TaskExecution.objects.create(task=task, status=status, **fields)


# -- the task list ---------------------------------------------------------------------------------


def test_the_task_list_shows_last_outcome_recent_strip_success_rate_and_median(as_operator, make_task):
    task = make_task(name="nightly")
    for _ in range(3):
        finished_execution(task, Status.SUCCEEDED, seconds=2)
    failed = finished_execution(task, Status.FAILED, seconds=4, exit_code=1)

    body = as_operator.get(reverse("admin:taskhub_task_changelist")).content.decode()

    assert 'data-status="failed"' in body  # the last outcome's badge
    assert body.count('class="th-sq"') == 4
    assert reverse("admin:executions_taskexecution_change", args=[failed.pk]) in body
    assert f"#{failed.pk} Failed · attempt 1 · 4.00 s" in body  # hover text of the newest square
    assert "75%" in body  # 3 of 4 succeeded
    assert "2.00 s" in body  # p50 of 2, 2, 2, 4


def test_the_task_list_says_each_schedule_in_words_with_its_next_fire(as_operator, make_task):
    from taskhub import schedules

    task = make_task(name="every-five")
    schedules.create_schedule(task, schedules.parse_schedule({"every": "5m"}))
    off = make_task(name="switched-off")
    schedules.create_schedule(off, schedules.parse_schedule({"cron": "30 2 * * *", "timezone": "UTC"}))
    off.enabled = False
    off.save()

    body = as_operator.get(reverse("admin:taskhub_task_changelist")).content.decode()

    assert re.search(r"every 5 minutes · next <time [^>]*>in (\d+ s|[1-5] min[^<]*)</time>", body)
    assert "at 02:30" in body and " · next off" in body


def test_the_strip_holds_the_newest_twenty_executions_only(as_operator, make_task):
    task = make_task()
    made = [finished_execution(task).pk for _ in range(25)]
    stats = console.task_stats([task.pk], at=now())[task.pk]
    assert [e.pk for e in stats.recent] == made[::-1][:20]


def test_a_viewer_sees_no_run_button_and_gets_403_on_the_run_url(as_viewer, make_task):
    task = make_task()
    body = as_viewer.get(reverse("admin:taskhub_task_changelist")).content.decode()
    assert 'class="th-run"' not in body
    page = as_viewer.get(reverse("admin:taskhub_task_change", args=[task.pk])).content.decode()
    assert "th-run-now" not in page and "Run with overrides" not in page

    response = as_viewer.post(reverse("admin:taskhub_task_run", args=[task.pk]))

    assert response.status_code == 403
    assert not TaskExecution.objects.exists()


def test_the_run_button_launches_and_records_who(as_operator, operator, make_task):
    task = make_task()
    body = as_operator.get(reverse("admin:taskhub_task_changelist")).content.decode()
    assert reverse("admin:taskhub_task_run", args=[task.pk]) in body

    response = as_operator.post(reverse("admin:taskhub_task_run", args=[task.pk]), {"then": "watch"})

    execution = TaskExecution.objects.get(task=task)
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:executions_taskexecution_change", args=[execution.pk])
    assert (execution.trigger, execution.triggered_by) == ("manual", operator)


def test_running_needs_the_view_permission_too(client, make_task):
    runner = User.objects.create_user("rita", password="pw", is_staff=True)
    runner.user_permissions.set(Permission.objects.filter(codename="run_task"))
    client.force_login(runner)
    assert client.post(reverse("admin:taskhub_task_run", args=[make_task().pk])).status_code == 403


def test_a_one_off_override_of_env_and_timeout_is_recorded_on_the_execution(as_operator, make_task):
    task = make_task(env={"KEEP": "1", "LEVEL": "info"}, timeout=600)

    as_operator.post(reverse("admin:taskhub_task_run", args=[task.pk]), {"env": '{"LEVEL": "debug"}', "timeout": "30"})

    execution = TaskExecution.objects.get(task=task)
    task.refresh_from_db()
    assert execution.env == {"KEEP": "1", "LEVEL": "debug"} and execution.timeout == 30
    assert task.env == {"KEEP": "1", "LEVEL": "info"} and task.timeout == 600  # the task itself is unchanged


def test_overriding_env_or_timeout_needs_the_change_permission(client, make_task):
    runner = User.objects.create_user("rita", password="pw", is_staff=True)
    runner.user_permissions.set(Permission.objects.filter(codename__in=["run_task", "view_task"]))
    client.force_login(runner)
    task = make_task()
    url = reverse("admin:taskhub_task_run", args=[task.pk])
    assert "Run with overrides" not in client.get(reverse("admin:taskhub_task_change", args=[task.pk])).content.decode()

    assert client.post(url, {"env": '{"LD_PRELOAD": "/tmp/evil.so"}'}).status_code == 403
    assert client.post(url, {"timeout": "5"}).status_code == 403
    assert not TaskExecution.objects.exists()

    assert client.post(url).status_code == 302  # running it as it is stays allowed
    assert TaskExecution.objects.get().env == {}


def test_a_viewer_sees_whether_a_task_is_enabled_without_a_toggle(as_viewer, make_task):
    make_task()
    body = as_viewer.get(reverse("admin:taskhub_task_changelist")).content.decode()
    assert "th-toggle" not in body and "icon-yes.svg" in body


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"timeout": "0"}, "Timeout must be between 1 and 604800 seconds"),
        ({"env": '{"1BAD": "x"}'}, "Extra environment: &#x27;1BAD&#x27; is not a valid variable name"),
        ({"env": "[1"}, "Enter a valid JSON"),
    ],
)
def test_a_bad_override_is_refused_with_a_message_naming_the_field(as_operator, make_task, form, message):
    task = make_task()
    response = as_operator.post(reverse("admin:taskhub_task_run", args=[task.pk]), form)
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not TaskExecution.objects.exists()


def test_the_enabled_toggle_flips_the_task_and_needs_change_permission(as_operator, make_task, client, viewer):
    task = make_task()
    as_operator.post(reverse("admin:taskhub_task_toggle", args=[task.pk]))
    task.refresh_from_db()
    assert task.enabled is False

    client.force_login(viewer)
    assert client.post(reverse("admin:taskhub_task_toggle", args=[task.pk])).status_code == 403
    task.refresh_from_db()
    assert task.enabled is False


def test_duplicate_copies_a_task_disabled_under_a_free_name(as_operator, make_task):
    task = make_task(name="backup", command="backup --all", retry_count=3)
    as_operator.post(reverse("admin:taskhub_task_changelist"), {"action": "duplicate", "_selected_action": [task.pk]})
    as_operator.post(reverse("admin:taskhub_task_changelist"), {"action": "duplicate", "_selected_action": [task.pk]})
    copies = Task.objects.exclude(pk=task.pk).order_by("name")
    assert [(c.name, c.command, c.retry_count, c.enabled) for c in copies] == [
        ("backup (copy 2)", "backup --all", 3, False),
        ("backup (copy)", "backup --all", 3, False),
    ]


def test_the_last_outcome_filter_lists_tasks_by_their_newest_execution(as_viewer, make_task):
    bad = make_task(name="bad")
    good = make_task(name="good")
    make_task(name="new")
    finished_execution(bad, Status.SUCCEEDED)
    finished_execution(bad, Status.FAILED)
    finished_execution(good, Status.FAILED)
    finished_execution(good, Status.SUCCEEDED)
    url = reverse("admin:taskhub_task_changelist")

    def names(value: str) -> list[str]:
        return [str(t) for t in as_viewer.get(url, {"last_outcome": value}).context["cl"].result_list]

    assert names("failed") == ["bad"]
    assert names("succeeded") == ["good"]
    assert names("never") == ["new"]


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({}, "No retries: one attempt only."),
        (
            {"retry_count": 3, "retry_delay": 60, "retry_backoff": 2, "retry_delay_max": 3600},
            "3 retries: after 60 s, then ×2, at most 1 h. Retried on any failure; timeouts too.",
        ),
        (
            {"retry_count": 1, "retry_delay": 90, "no_retry_exit_codes": [2], "retry_on_timeout": False},
            "1 retry: after 90 s. Retried on any failure, never on 2; timeouts are not retried.",
        ),
        ({"retry_count": 2, "retry_delay": 30, "retry_exit_codes": [75]}, "2 retries: after 30 s each."),
    ],
)
def test_the_retry_policy_reads_as_a_sentence(fields, words):
    assert retry_policy_words(Task(name="t", command="true", **fields)).startswith(words)


def test_the_task_page_states_the_retry_policy_and_offers_run_now(as_operator, make_task):
    task = make_task(retry_count=2, retry_delay=10)
    body = as_operator.get(reverse("admin:taskhub_task_change", args=[task.pk])).content.decode()
    assert "2 retries: after 10 s each." in body
    assert 'id="th-run-now"' in body and "Run with overrides" in body


# -- the execution list and page ---------------------------------------------------------------------------------


def test_the_execution_list_says_attempt_n_of_m_who_and_exit_or_signal(as_operator, make_task, operator):
    task = make_task(retry_count=3)
    finished_execution(task, Status.FAILED, attempt=2, exit_code=None, signal=9, triggered_by=operator)
    body = as_operator.get(reverse("admin:executions_taskexecution_changelist")).content.decode()
    assert "2 of 4" in body
    assert "olivia" in body
    assert "sig 9" in body


def test_the_execution_lists_date_links_come_from_the_calendar(as_viewer, make_task):
    finished_execution(make_task())
    url = reverse("admin:executions_taskexecution_changelist")
    today = now().date()

    years = as_viewer.get(url).content.decode()
    days = as_viewer.get(url, {"created_at__year": today.year, "created_at__month": today.month})

    assert f"?created_at__year={today.year}" in years
    assert f"created_at__day={today.day}" in days.content.decode()
    assert f"created_at__day={today.day + 1}&" not in days.content.decode()  # no day after today
    assert len(days.context["cl"].result_list) == 1


def test_the_execution_page_explains_an_empty_exit_code(as_operator, make_task):
    killed = finished_execution(make_task(), Status.TIMEOUT, exit_code=None, signal=15)
    body = as_operator.get(reverse("admin:executions_taskexecution_change", args=[killed.pk])).content.decode()
    assert "No exit code: the command was killed by signal 15 (SIGTERM) after its timeout." in body


def test_the_execution_page_marks_the_cut_and_renders_ansi_colours_safely(as_operator, make_task):
    marker = "[… TaskHub cut 100 bytes of output here; 200 bytes in all …]"
    execution = finished_execution(
        make_task(), stdout=f"\x1b[31mred\x1b[0m <b>\n\n{marker}\n\nend", output_truncated=True
    )
    body = as_operator.get(reverse("admin:executions_taskexecution_change", args=[execution.pk])).content.decode()
    assert '<span class="th-fg-red">red</span> &lt;b&gt;' in body
    assert f'<mark class="th-cut">{marker}</mark>' in body
    assert "\x1b" not in body


def test_an_execution_cannot_be_deleted_from_the_admin_even_by_a_superuser(client, make_task):
    client.force_login(User.objects.create_superuser("ada", "ada@example.com", "pw"))
    execution = finished_execution(make_task())
    page = client.get(reverse("admin:executions_taskexecution_change", args=[execution.pk])).content.decode()
    assert "deletelink" not in page
    assert client.post(reverse("admin:executions_taskexecution_delete", args=[execution.pk])).status_code == 403
    assert TaskExecution.objects.filter(pk=execution.pk).exists()


def test_the_execution_page_links_the_runs_attempts_and_shows_the_next_retry(as_operator, make_task):
    task = make_task(retry_count=2)
    first = finished_execution(task, Status.FAILED, exit_code=1)
    due = now() + timedelta(minutes=5)
    second = TaskExecution.objects.create(
        task=task, run_id=first.run_id, attempt=2, status=Status.PENDING, scheduled_for=due
    )
    body = as_operator.get(reverse("admin:executions_taskexecution_change", args=[first.pk])).content.decode()
    assert reverse("admin:executions_taskexecution_change", args=[second.pk]) in body
    assert 'id="th-next-retry"' in body and "Next retry: attempt 2, due" in body
    assert re.search(r">in [45] min<", body)  # five minutes from when the row was made


def test_the_live_endpoint_sends_status_duration_and_output(as_viewer, make_task):
    execution = TaskExecution.objects.create(
        task=make_task(),
        status=Status.RUNNING,
        started_at=now() - timedelta(seconds=3),
        heartbeat_at=now(),
        stdout="line 1\nline 2\n",
    )
    state = as_viewer.get(reverse("console:execution-live", args=[execution.pk])).json()
    assert (state["status"], state["terminal"], state["cancellable"]) == ("running", False, True)
    assert state["stdout_html"] == "line 1\nline 2\n"
    assert state["exit"] == "No exit code yet: the command is still running."
    assert state["duration"].endswith(" s")


def test_the_live_endpoint_needs_the_view_permission(client, make_task):
    execution = TaskExecution.objects.create(task=make_task())
    client.force_login(User.objects.create_user("sam", password="pw", is_staff=True))
    assert client.get(reverse("console:execution-live", args=[execution.pk])).status_code == 403


def test_cancel_from_the_page_records_who_in_the_admin_log(as_operator, operator, make_task):
    execution = TaskExecution.objects.create(task=make_task(), status=Status.PENDING)

    as_operator.post(reverse("admin:executions_taskexecution_cancel", args=[execution.pk]))

    execution.refresh_from_db()
    entry = LogEntry.objects.get(object_id=str(execution.pk))
    assert execution.status == Status.CANCELLED
    assert (entry.user, entry.get_change_message()) == (operator, "Requested cancellation.")


def test_a_viewer_sees_no_cancel_button_and_gets_403_on_the_cancel_url(as_viewer, make_task):
    execution = TaskExecution.objects.create(task=make_task(), status=Status.PENDING)
    page = as_viewer.get(reverse("admin:executions_taskexecution_change", args=[execution.pk])).content.decode()
    assert 'id="th-cancel"' not in page
    assert as_viewer.post(reverse("admin:executions_taskexecution_cancel", args=[execution.pk])).status_code == 403
    execution.refresh_from_db()
    assert execution.status == Status.PENDING


def test_run_again_from_the_page_starts_a_new_run(as_operator, operator, make_task):
    done = finished_execution(make_task(command="echo hi"))
    response = as_operator.post(reverse("admin:executions_taskexecution_run_again", args=[done.pk]))
    new = TaskExecution.objects.exclude(pk=done.pk).get()
    assert response["Location"] == reverse("admin:executions_taskexecution_change", args=[new.pk])
    assert new.run_id != done.run_id and new.triggered_by == operator


# -- the run page and the dashboard ----------------------------------------------------------------------------


def test_the_run_page_shows_each_attempt_and_the_delay_between_them(as_viewer, make_task):
    task = make_task(retry_count=1)
    at = now()
    first = finished_execution(
        task, Status.FAILED, started_at=at - timedelta(seconds=100), finished_at=at - timedelta(seconds=90)
    )
    TaskExecution.objects.create(
        task=task,
        run_id=first.run_id,
        attempt=2,
        status=Status.SUCCEEDED,
        started_at=at - timedelta(seconds=30),
        finished_at=at - timedelta(seconds=20),
    )
    body = as_viewer.get(reverse("console:run", args=[first.run_id])).content.decode()
    assert "Attempt 1" in body and "Attempt 2" in body
    assert "+60 s after the previous" in body


def test_an_unknown_run_is_a_404(as_viewer):
    assert as_viewer.get(reverse("console:run", args=[uuid.uuid4()])).status_code == 404


def test_the_dashboard_shows_the_figures_of_the_last_day(as_viewer, make_task):
    slow, flaky = make_task(name="slow", queue="reports"), make_task(name="flaky")
    for seconds in (1, 2, 3, 4, 100):
        finished_execution(slow, seconds=seconds)
    for _ in range(3):
        finished_execution(flaky, Status.FAILED)
    TaskExecution.objects.create(task=slow, status=Status.PENDING)
    TaskExecution.objects.create(task=slow, status=Status.PENDING, scheduled_for=now() + timedelta(hours=1))
    running = TaskExecution.objects.create(task=flaky, status=Status.RUNNING, started_at=now(), worker="w1@host")
    Worker.objects.create(hostname="w1@host", queues="default", pid=1, started_at=now(), last_seen_at=now())

    response = as_viewer.get(reverse("console:dashboard"))

    data = response.context["data"]
    assert response.status_code == 200
    assert [(name, round(p50, 1), n) for name, _, p50, _, n in data.durations][0] == ("slow", 3.0, 5)
    assert data.failing[0][0] == "flaky" and data.failing[0][2] == 3
    assert data.queues == [("reports", 1, 1)]
    assert [e.pk for e in data.running] == [running.pk]
    assert data.workers[0][1] is True
    body = response.content.decode()
    assert body.count("<rect") >= 3 and "w1@host" in body


def test_the_admin_index_links_the_dashboard(as_viewer):
    assert reverse("console:dashboard") in as_viewer.get(reverse("admin:index")).content.decode()


# -- groups ---------------------------------------------------------------------------------------------------------


def test_viewer_and_operator_groups_exist_with_their_permissions():
    def perms(name: str) -> set[str]:
        return set(Group.objects.get(name=name).permissions.values_list("codename", flat=True))

    assert {"view_task", "view_taskexecution", "view_periodictask"} <= perms("Viewer")
    assert not {"run_task", "change_task"} & perms("Viewer")
    assert {"view_task", "view_taskexecution", "add_task", "change_task", "run_task", "add_periodictask"} <= perms(
        "Operator"
    )


def test_a_member_of_the_operator_group_can_run_and_a_viewer_cannot(client, make_task):
    task = make_task()
    ops = User.objects.create_user("opal", password="pw", is_staff=True)
    ops.groups.add(Group.objects.get(name="Operator"))
    watcher = User.objects.create_user("walt", password="pw", is_staff=True)
    watcher.groups.add(Group.objects.get(name="Viewer"))

    client.force_login(watcher)
    assert client.post(reverse("admin:taskhub_task_run", args=[task.pk])).status_code == 403
    client.force_login(ops)
    assert client.post(reverse("admin:taskhub_task_run", args=[task.pk])).status_code == 302
    assert TaskExecution.objects.filter(task=task, triggered_by=ops).exists()


# -- output rendering --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "html"),
    [
        ("plain <x>", "plain &lt;x&gt;"),
        ("\x1b[1;32mok\x1b[0m done", '<span class="th-fg-green th-bold">ok</span> done'),
        ("\x1b[31munclosed", '<span class="th-fg-red">unclosed</span>'),
        ("a\x1b[2Kb\x1b]0;title\x07c", "abc"),  # cursor and title escapes dropped
    ],
)
def test_output_is_escaped_and_ansi_colours_become_classes(text, html):
    assert console.output_html(text) == html


# -- exhausted runs ---------------------------------------------------------------------------------------------------


def test_the_exhausted_runs_page_lists_them_and_runs_them_again_in_bulk(as_operator, operator, make_task):
    task = make_task(retry_count=1)
    exhausted = finished_execution(task, Status.FAILED, attempt=2, exhausted=True)
    plain = finished_execution(task, Status.FAILED)
    url = reverse("admin:executions_taskexecution_changelist")
    assert [e.pk for e in as_operator.get(url, {"exhausted__exact": "1"}).context["cl"].result_list] == [exhausted.pk]

    response = as_operator.post(
        url, {"action": "rerun_exhausted", "_selected_action": [exhausted.pk, plain.pk]}, follow=True
    )

    new = TaskExecution.objects.exclude(pk__in=[exhausted.pk, plain.pk]).get()
    assert (new.attempt, new.triggered_by, new.status) == (1, operator, Status.PENDING)
    assert f"#{plain.pk}: not an exhausted run" in response.content.decode()


# -- on both stacks: PostgreSQL's SQL and the portable fallback agree ---------------------------------------------------


@pytest.mark.usefixtures("both_stacks")
def test_task_stats_and_the_dashboard_agree_on_both_databases(make_task):
    task = make_task()
    for seconds, status in [(1, Status.SUCCEEDED), (2, Status.SUCCEEDED), (3, Status.FAILED), (10, Status.SUCCEEDED)]:
        finished_execution(task, status, seconds=seconds)
    TaskExecution.objects.create(task=task, status=Status.CANCELLED)  # not rated

    stats = console.task_stats([task.pk], at=now())[task.pk]
    board = console.dashboard(at=now())

    assert (stats.rated, stats.succeeded, stats.p50) == (4, 3, pytest.approx(2.5, abs=0.01))
    assert len(stats.recent) == 5 and stats.last_outcome.status == Status.CANCELLED
    name, _, p50, p95, n = board.durations[0]
    assert (name, n) == (task.name, 4)
    assert p50 == pytest.approx(2.5, abs=0.01) and p95 == pytest.approx(8.95, abs=0.01)
    assert sum(sum(counts.values()) for _, counts in board.per_hour) == 5
