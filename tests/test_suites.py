"""Suites on two real workers: provision once per host, a failed host excluded, background beside the tasks, cleanup after."""

from __future__ import annotations

import os

import pytest
from django.core.exceptions import ValidationError

from executions.models import HookKind, HookRun, Status, SuiteHost, SuiteHostState, TaskExecution
from taskhub.models import Suite
from taskhub.services import launch
from tests.conftest import finished, group_members, wait_for

# Each hook appends a line to HOOK_LOG; provision fails (exit 3) on hosts whose name starts with "bad".
PROVISION = (
    "import os, sys; host = os.environ['TASKHUB_HOST']; "
    "open(os.environ['HOOK_LOG'], 'a').write(f'provision {host}\\n'); sys.exit(3 if host.startswith('bad') else 0)"
)
BACKGROUND = (
    "import os, time; open(os.path.join(os.environ['PID_DIR'], 'background.pid'), 'w').write(str(os.getpid())); "
    "time.sleep(600)"
)
CLEANUP = "import os; open(os.environ['HOOK_LOG'], 'a').write(f\"cleanup {os.environ['TASKHUB_HOST']}\\n\")"
# A suite task that succeeds only while the background is alive.
# The background writes its pid file once its interpreter is up, which may be after a task's starts: wait for it.
SEES_BACKGROUND = (
    "python3 -c \"import os, time; path = os.path.join(os.environ['PID_DIR'], 'background.pid'); "
    "[time.sleep(0.05) for _ in range(200) if not (os.path.exists(path) and os.path.getsize(path))]; "
    "pid = int(open(path).read()); os.kill(pid, 0); time.sleep(0.5); print('background', pid)\""
)


def hook(code: str, **env: str) -> dict:
    return {"argv": ["python3", "-c", code], "env": env, "timeout": 60}


@pytest.mark.django_db(transaction=True)
def test_a_suite_on_two_workers_provisions_once_per_host_and_excludes_the_host_where_it_failed(
    celery_processes, make_task, tmp_path
):
    log, pid_dir = tmp_path / "hooks.log", str(tmp_path)
    suite = Suite.objects.create(
        name="nightly",
        provision=hook(PROVISION, HOOK_LOG=str(log)),
        background=hook(BACKGROUND, PID_DIR=pid_dir),
        cleanup=hook(CLEANUP, HOOK_LOG=str(log)),
    )
    checkers = [make_task(command=SEES_BACKGROUND, env={"PID_DIR": pid_dir}, suite=suite) for _ in range(3)]
    failing = make_task(command="python3 -c 'exit(1)'", suite=suite)

    # The bad host alone: provision fails there, and with no other host for the queue the execution fails, saying why.
    bad = f"bad-{os.getpid()}@%h"
    celery_processes(name=bad)
    alone = finished(launch(checkers[0]), timeout=60)
    assert alone.status == Status.FAILED and alone.stdout == ""
    assert "No worker host can run it" in alone.error and "provision failed" in alone.error, alone.error
    bad_row = SuiteHost.objects.get(suite=suite, host__startswith="bad-")
    assert (bad_row.state, bad_row.failures, bad_row.failure_type) == (SuiteHostState.FAILED, 1, "exit code 3")

    # With a good host beside it, the bad one sends the suite's work over and the good one runs all of it.
    celery_processes(name=f"good-{os.getpid()}@%h", purge=False)
    runs = [launch(task) for task in (*checkers, failing)]
    for execution in runs:
        finished(execution, timeout=90)
    assert all(e.worker.startswith("good-") for e in runs), [e.worker for e in runs]
    assert [e.status for e in runs] == [Status.SUCCEEDED] * 3 + [Status.FAILED]
    assert all(e.stdout.startswith("background ") for e in runs[:3])  # the background was alive beside them

    good_row = wait_for(
        lambda: SuiteHost.objects.filter(suite=suite, host__startswith="good-", state=SuiteHostState.DONE).first(),
        timeout=60,
        what="cleanup on the good host",
    )
    background_pid = int(open(os.path.join(pid_dir, "background.pid")).read())
    assert not group_members(background_pid)  # the background's whole group is gone
    kinds = list(HookRun.objects.filter(suite_host=good_row).order_by("id").values_list("kind", "status"))
    assert kinds == [
        (HookKind.PROVISION, "succeeded"),
        (HookKind.BACKGROUND, "stopped"),
        (HookKind.CLEANUP, "succeeded"),  # even though a task failed
    ]
    lines = log.read_text().splitlines()
    assert sorted(line.split("-")[0] for line in lines) == ["cleanup good", "provision bad", "provision good"]
    bad_row.refresh_from_db()
    assert bad_row.failures == 1  # excluded: never provisioned again
    assert not TaskExecution.objects.filter(status__in=[Status.PENDING, Status.RUNNING]).exists()


@pytest.mark.django_db
def test_clearing_a_failed_host_in_the_admin_gives_it_the_suite_again(admin_client):
    suite = Suite.objects.create(name="nightly", provision=hook("pass"))
    failed = SuiteHost.objects.create(suite=suite, host="w1@box", state=SuiteHostState.FAILED, failures=2, error="x")

    admin_client.post("/admin/executions/suitehost/", {"action": "clear", "_selected_action": [failed.pk]}, follow=True)

    failed.refresh_from_db()
    assert (failed.state, failed.failures, failed.error) == (SuiteHostState.PENDING, 2, "")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "bad_hook, says",
    [
        ({"command": "make", "argv": ["make"]}, "either"),
        ({"argv": []}, "non-empty list"),
        ({"command": "make", "timeout": 0}, "timeout"),
        ({"command": "make", "shell": True}, "unknown key"),
        ({"command": "make", "working_dir": "relative"}, "absolute"),
    ],
)
def test_a_hook_that_cannot_run_is_refused_when_the_suite_is_saved(bad_hook, says):
    with pytest.raises(ValidationError) as caught:
        Suite(name="s", provision=bad_hook).full_clean()
    assert says in str(caught.value)


@pytest.mark.django_db
def test_the_viewer_group_sees_suites_and_only_the_operator_group_clears_a_failed_host(client, django_user_model):
    from django.contrib.auth.models import Group

    suite = Suite.objects.create(name="nightly")
    failed = SuiteHost.objects.create(suite=suite, host="w1@box", state=SuiteHostState.FAILED, failures=1)
    users = {}
    for group in ("Viewer", "Operator"):
        users[group] = django_user_model.objects.create_user(group.lower(), password="pw", is_staff=True)
        users[group].groups.add(Group.objects.get(name=group))

    client.force_login(users["Viewer"])
    assert client.get("/admin/taskhub/suite/").status_code == 200
    assert client.get(f"/admin/executions/suitehost/{failed.pk}/change/").status_code == 200
    client.post("/admin/executions/suitehost/", {"action": "clear", "_selected_action": [failed.pk]})
    failed.refresh_from_db()
    assert failed.state == SuiteHostState.FAILED  # a viewer cannot clear it

    client.force_login(users["Operator"])
    client.post("/admin/executions/suitehost/", {"action": "clear", "_selected_action": [failed.pk]})
    failed.refresh_from_db()
    assert failed.state == SuiteHostState.PENDING


@pytest.mark.django_db
def test_the_api_creates_suites_refuses_bad_hooks_and_shows_each_host_with_its_hook_runs(admin_user, make_task):
    from rest_framework.test import APIClient

    api = APIClient()
    api.force_authenticate(admin_user)
    created = api.post(
        "/api/suites/",
        {"name": "nightly", "provision": {"command": "make provision", "timeout": 120}, "cleanup": {"argv": ["true"]}},
        format="json",
    )
    refused = api.post("/api/suites/", {"name": "broken", "background": {"command": ""}}, format="json")

    assert created.status_code == 201, created.content
    assert refused.status_code == 400 and "background" in refused.json()
    suite = Suite.objects.get(name="nightly")
    task = make_task(suite=suite)
    row = SuiteHost.objects.create(suite=suite, host="w1@box", state=SuiteHostState.FAILED, failures=1,
                                   failure_type="exit code 3", error="provision failed (exit code 3): no disk")  # fmt: skip
    HookRun.objects.create(suite_host=row, kind=HookKind.PROVISION, status="failed", exit_code=3)

    data = api.get(f"/api/suites/{suite.pk}/").json()

    assert data["tasks"] == [task.pk]
    (host,) = data["hosts"]
    assert (host["host"], host["state"], host["failures"], host["failure_type"]) == (
        "w1@box",
        "failed",
        1,
        "exit code 3",
    )
    assert [(r["kind"], r["status"], r["exit_code"]) for r in host["hook_runs"]] == [("provision", "failed", 3)]


@pytest.mark.django_db(transaction=True)
def test_a_worker_that_shuts_down_stops_its_suites_background_and_runs_their_cleanup(
    celery_processes, make_task, tmp_path
):
    log, pid_dir = tmp_path / "hooks.log", str(tmp_path)
    suite = Suite.objects.create(
        name="nightly", background=hook(BACKGROUND, PID_DIR=pid_dir), cleanup=hook(CLEANUP, HOOK_LOG=str(log))
    )
    worker = celery_processes(env={"TASKHUB_SHUTDOWN_GRACE": "1"})
    long_one = launch(make_task(command="sleep 30", suite=suite))
    wait_for(lambda: TaskExecution.objects.filter(pk=long_one.pk, status=Status.RUNNING).exists(), what="running")
    pid_file = os.path.join(pid_dir, "background.pid")
    background_pid = int(wait_for(lambda: os.path.exists(pid_file) and open(pid_file).read(), what="background"))
    assert group_members(background_pid)

    worker.stop()

    assert not group_members(background_pid)  # no suite process outlives its worker
    assert log.read_text().startswith("cleanup ")
    assert SuiteHost.objects.get(suite=suite).state == SuiteHostState.DONE


@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_s_suite_background_is_stopped_and_cleaned_up_when_it_starts_again(
    celery_processes, make_task, tmp_path
):
    log, pid_dir = tmp_path / "hooks.log", str(tmp_path)
    suite = Suite.objects.create(
        name="nightly", background=hook(BACKGROUND, PID_DIR=pid_dir), cleanup=hook(CLEANUP, HOOK_LOG=str(log))
    )
    name = f"same-{os.getpid()}@%h"
    first = celery_processes(name=name)
    launch(make_task(command="sleep 30", suite=suite))
    pid_file = os.path.join(pid_dir, "background.pid")
    background_pid = int(wait_for(lambda: os.path.exists(pid_file) and open(pid_file).read(), what="background"))

    first.kill()  # no shutdown: the background, in a session of its own, is left running
    assert group_members(background_pid)
    celery_processes(name=name, purge=False)

    wait_for(lambda: not group_members(background_pid), what="the left background stopped")
    wait_for(lambda: log.exists() and log.read_text().startswith("cleanup "), what="cleanup after the previous life")
    assert SuiteHost.objects.get(suite=suite).state in (SuiteHostState.DONE, SuiteHostState.RUNNING)
