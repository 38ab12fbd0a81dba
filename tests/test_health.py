"""/healthz: a status per part for anyone, the detail for staff, workers judged by the rows they write."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from django.utils.timezone import now

from executions.models import Worker
from tests.conftest import ROOT, subprocess_env, wait_for

HEARTBEAT = 1.0  # seconds, for the workers these tests start
REFUSED = "127.0.0.1:1"  # nothing listens on port 1: connections are refused at once

# Requests /healthz as anonymous and, if a username is given, as that user; prints both answers.
PROBE = """
import json, sys, time
import django
django.setup()
from django.contrib.auth.models import User
from django.test import Client

answers = []
anonymous = Client(HTTP_HOST="localhost")
response = anonymous.get("/healthz")
answers.append({"status": response.status_code, "body": response.json()})
if len(sys.argv) > 1:
    staff = Client(HTTP_HOST="localhost")
    staff.force_login(User.objects.get(username=sys.argv[1]))
    response = staff.get("/healthz")
    answers.append({"status": response.status_code, "body": response.json()})
print(json.dumps(answers))
"""


def probe(env: dict[str, str], *usernames: str) -> tuple[list[dict], str]:
    """Ask /healthz from a process of its own (its settings name the broker and database); return answers and log."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *usernames], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


def healthz(client) -> dict:
    return client.get("/healthz").json()


def node_name(prefix: str) -> tuple[str, str]:
    """A worker's --hostname argument and the node name it becomes."""
    return f"{prefix}@%h", f"{prefix}@{socket.gethostname()}"


# -- anonymous callers see a status per part, nothing more ---------------------------------------


def test_anonymous_callers_get_a_status_per_part_but_no_error_text_when_nothing_is_reachable():
    env = subprocess_env(
        DATABASE_URL=f"postgres://taskhub:s3cret@{REFUSED}/taskhub", CELERY_BROKER_URL=f"redis://{REFUSED}/0"
    )

    [answer], log = probe(env)

    assert answer == {
        "status": 503,
        "body": {"ok": False, "checks": {"database": {"ok": False}, "broker": {"ok": False}, "workers": {"ok": False}}},
    }
    # The detail goes to the log, with its traceback.
    assert "/healthz: the database is unreachable" in log
    assert "/healthz: the broker is unreachable" in log
    assert "Traceback (most recent call last)" in log


@pytest.mark.django_db(transaction=True)
def test_staff_see_the_error_text_that_anonymous_callers_do_not(viewer):
    env = subprocess_env(CELERY_BROKER_URL=f"redis://{REFUSED}/0")

    (anonymous, staff), _ = probe(env, viewer.username)

    assert anonymous["status"] == staff["status"] == 503
    assert anonymous["body"]["checks"]["broker"] == {"ok": False}
    assert staff["body"]["checks"]["database"] == {"ok": True}
    assert staff["body"]["checks"]["broker"]["ok"] is False
    assert "Connection refused" in staff["body"]["checks"]["broker"]["error"]
    assert "refused" not in json.dumps(anonymous["body"])


@pytest.mark.django_db
def test_a_logged_in_user_who_is_not_staff_gets_the_anonymous_answer(client, outsider):
    Worker.objects.create(hostname="w@host", queues="default", pid=1, started_at=now(), last_seen_at=now())
    client.force_login(outsider)

    answer = healthz(client)

    assert answer["checks"]["workers"] == {"ok": True}
    assert "w@host" not in json.dumps(answer)


def test_a_broker_that_never_answers_is_reported_within_the_bound():
    with socket.socket() as silent:  # accepts connections (the kernel does) and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        code = (
            "import time, django; django.setup()\n"
            "from config.health import check_broker\n"
            "started = time.monotonic(); part = check_broker()\n"
            "print(part.ok, time.monotonic() - started)\n"
        )
        env = subprocess_env(CELERY_BROKER_URL=f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )

    ok, took = result.stdout.split()
    assert ok == "False"
    # The check gives the broker 2 s; the rest is slack for a loaded machine,
    # far below the minutes a probe would hang without the bound.
    assert float(took) < 10


# -- workers, from the rows they write -----------------------------------------------------------


@pytest.mark.usefixtures("both_stacks")  # the embedded broker runs the worker's timer in a thread
@pytest.mark.django_db(transaction=True)
def test_a_running_worker_appears_in_the_staff_view_and_keeps_its_row_fresh(celery_processes, client, viewer, settings):
    settings.TASKHUB_WORKER_HEARTBEAT = HEARTBEAT
    argument, name = node_name("health-live")
    worker = celery_processes(name=argument, queues="default,reports", env={"TASKHUB_WORKER_HEARTBEAT": HEARTBEAT})
    client.force_login(viewer)

    seen = wait_for(lambda: _seen(healthz(client), name), timeout=10, what=f"{name} in /healthz")

    assert seen["alive"] is True
    assert seen["queues"] == ["default", "reports"]
    assert seen["pid"] == worker.pid
    first = Worker.objects.get(hostname=name).last_seen_at
    wait_for(
        lambda: Worker.objects.get(hostname=name).last_seen_at > first,
        timeout=10 * HEARTBEAT,
        what="the next heartbeat",
    )
    answer = healthz(client)
    assert answer["checks"]["workers"]["ok"] is True
    assert name in answer["checks"]["workers"]["names"]
    client.logout()
    assert healthz(client)["checks"]["workers"] == {"ok": True}


@pytest.mark.usefixtures("both_stacks")
@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_is_not_alive_after_three_missed_heartbeats(celery_processes, client, viewer, settings):
    settings.TASKHUB_WORKER_HEARTBEAT = HEARTBEAT
    argument, name = node_name("health-killed")
    worker = celery_processes(name=argument, env={"TASKHUB_WORKER_HEARTBEAT": HEARTBEAT})
    client.force_login(viewer)
    wait_for(lambda: healthz(client)["checks"]["workers"]["ok"], timeout=10, what="the worker to be alive")

    worker.kill()  # SIGKILL: no shutdown, its row stays behind
    killed_at = time.monotonic()

    # Three heartbeats, plus slack for a loaded machine; the bound is the
    # feature (a dead worker shows as such), not a performance figure.
    def reported_dead() -> dict | None:
        answer = healthz(client)
        return None if answer["checks"]["workers"]["ok"] else answer

    answer = wait_for(
        reported_dead,
        timeout=Worker.MISSED_HEARTBEATS * HEARTBEAT + 10,
        what="the killed worker to be reported not alive",
    )
    assert time.monotonic() - killed_at >= (Worker.MISSED_HEARTBEATS - 1) * HEARTBEAT  # not at once: it aged out
    assert _seen(answer, name)["alive"] is False
    assert answer["ok"] is True  # the web side still serves; only the workers part is down


@pytest.mark.usefixtures("both_stacks")
@pytest.mark.django_db(transaction=True)
def test_a_worker_stopped_warmly_removes_its_row(celery_processes):
    argument, name = node_name("health-stopped")
    worker = celery_processes(name=argument)
    wait_for(lambda: Worker.objects.filter(hostname=name).exists(), timeout=10, what="the worker's row")

    worker.stop()

    assert not Worker.objects.filter(hostname=name).exists()


def _seen(answer: dict, name: str) -> dict | None:
    return next((w for w in answer["checks"]["workers"].get("seen", []) if w["name"] == name), None)
