"""Flower against a TaskHub deployment, unchanged: `celery -A config flower` sees the workers and their tasks."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from taskhub.services import launch
from tests.conftest import ROOT, finished, subprocess_env, wait_for
from testsupport.processes import CELERY, kill_process_group, stop_process_group
from testsupport.servers import spare_port

pytestmark = pytest.mark.django_db(transaction=True)


def get_json(url: str) -> object | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return None


@pytest.fixture
def flower(tmp_path):
    port = spare_port()
    log = open(tmp_path / "flower.log", "ab")
    proc = subprocess.Popen(
        [CELERY, "-A", "config", "flower", f"--port={port}", "--address=127.0.0.1"],
        cwd=ROOT,
        # Flower 2 serves its API without authentication only when told to; fine on loopback in a test.
        env=subprocess_env(FLOWER_UNAUTHENTICATED_API="true"),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    yield f"http://127.0.0.1:{port}"
    stop_process_group(proc, grace=10)
    kill_process_group(proc)


def test_flower_lists_the_worker_and_the_executions_it_runs(worker, make_task, flower):
    workers = wait_for(lambda: get_json(f"{flower}/api/workers?refresh=1"), timeout=60, what="Flower's worker list")
    [info] = [info for name, info in workers.items() if name.startswith("w1-")]
    assert "executions.run_execution" in info["registered"]

    execution = finished(launch(make_task(command="true")))
    seen = wait_for(
        lambda: (
            (task := get_json(f"{flower}/api/task/info/{execution.celery_task_id}"))
            and task.get("state") == "SUCCESS"
            and task
        ),
        timeout=30,
        what="Flower to see the execution's task succeed",
    )

    assert seen["name"] == "executions.run_execution"
    assert seen["args"] == f"[{execution.pk}]"
