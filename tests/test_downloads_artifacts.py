"""Before the command, its downloads; after it, its artifacts: a local HTTP server and real workers."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from rest_framework.test import APIClient

from executions import workspace
from executions.models import Artifact, Status, TaskExecution
from taskhub.services import launch
from tests.conftest import finished, wait_for

PAYLOAD = b"id,name\n1,alpha\n2,beta\n"
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def http_server(tmp_path) -> Iterator[str]:
    """A real HTTP server on loopback serving a directory with data.csv; its base URL."""
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "data.csv").write_bytes(PAYLOAD)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def api_as(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


# -- downloads -------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_download_with_the_right_checksum_is_in_the_working_directory_before_the_command(
    worker, make_task, http_server
):
    task = make_task(
        command="python3 -c \"print(open('input/data.csv').read().splitlines()[1])\"",
        resources=[{"url": f"{http_server}/data.csv", "path": "input/data.csv", "sha256": PAYLOAD_SHA256}],
    )

    execution = finished(launch(task))

    assert execution.status == Status.SUCCEEDED, execution.error
    assert execution.stdout == "1,alpha\n"


@pytest.mark.django_db(transaction=True)
def test_a_wrong_checksum_fails_the_attempt_with_the_reason_and_it_is_retried_by_the_policy(
    worker, make_task, http_server
):
    wrong = "0" * 64
    task = make_task(
        command="echo should-not-run",
        retry_count=1,
        retry_delay=0,
        resources=[{"url": f"{http_server}/data.csv", "path": "data.csv", "sha256": wrong}],
    )

    first = finished(launch(task))
    second = finished(
        wait_for(lambda: TaskExecution.objects.filter(run_id=first.run_id, attempt=2).first(), what="the retry")
    )

    for attempt in (first, second):
        assert attempt.status == Status.FAILED and attempt.stdout == ""
        assert "checksum mismatch" in attempt.error and PAYLOAD_SHA256 in attempt.error, attempt.error
        assert attempt.exit_code is None
    assert "retried by the task's retry policy" in first.decided_by
    assert second.exhausted


@pytest.mark.django_db(transaction=True)
def test_a_missing_file_fails_the_attempt_saying_what_the_server_answered(worker, make_task, http_server):
    task = make_task(command="true", resources=[{"url": f"{http_server}/gone.csv", "path": "gone.csv"}])

    execution = finished(launch(task))

    assert execution.status == Status.FAILED
    assert "HTTP 404" in execution.error and "gone.csv" in execution.error, execution.error


@pytest.mark.django_db
@pytest.mark.parametrize(
    "resources, says",
    [
        ([{"url": "file:///etc/passwd", "path": "p"}], "http:// or https://"),
        ([{"url": "https://example.com/a", "path": "../escape"}], "without .."),
        ([{"url": "https://example.com/a", "path": "/etc/cron.d/x"}], "relative"),
        ([{"url": "https://example.com/a", "path": "a", "sha256": "abc"}], "64 hexadecimal"),
        ([{"url": "https://example.com/a", "path": "a", "md5": "x"}], "unknown key"),
        ({"url": "https://example.com/a"}, "list of downloads"),
    ],
)
def test_a_download_that_could_do_harm_or_not_work_is_refused_when_saved(make_task, resources, says):
    with pytest.raises(ValidationError) as caught:
        make_task(resources=resources)
    assert says in str(caught.value)


# -- artifacts ---------------------------------------------------------------------------------------

WRITE_ARTIFACTS = (
    "python3 -c \"import os; d = os.environ['TASKHUB_ARTIFACTS_DIR']; os.makedirs(d + '/logs'); "
    "open(d + '/report.txt', 'w').write('all good'); open(d + '/logs/big.bin', 'wb').write(b'x' * 4096); "
    "os.symlink('/etc/passwd', d + '/link')\""
)


@pytest.fixture
def small_cap_worker(celery_processes):
    """A worker that keeps at most 1 KiB of artifacts per attempt."""
    return celery_processes(env={"TASKHUB_ARTIFACTS_LIMIT": "1024"})


@pytest.mark.django_db(transaction=True)
def test_artifacts_are_listed_kept_within_the_cap_and_downloaded(small_cap_worker, make_task, operator, viewer, client):
    task = make_task(command=WRITE_ARTIFACTS, keep_artifacts=True)

    execution = finished(launch(task))

    assert execution.status == Status.SUCCEEDED, execution.error
    api = api_as(viewer)
    listed = api.get(f"/api/executions/{execution.pk}/artifacts/").json()
    assert [(a["name"], a["size"], a["kept"]) for a in listed] == [
        ("logs/big.bin", 4096, False),  # past the 1 KiB cap: listed, not kept
        ("report.txt", 8, True),
    ]  # the symbolic link to /etc/passwd was not followed
    (report,) = [a for a in listed if a["kept"]]
    download = api.get(report["url"])
    assert download.status_code == 200 and download.content == b"all good"
    assert download["Content-Disposition"].startswith("attachment;")
    assert api.get(f"/api/executions/{execution.pk}/artifacts/logs/big.bin").status_code == 404

    client.force_login(viewer)
    page = client.get(f"/admin/executions/taskexecution/{execution.pk}/change/").content.decode()
    assert "report.txt" in page and "big.bin (4096 bytes): not kept, past the attempt" in page
    kept = Artifact.objects.get(execution=execution, name="report.txt")
    assert client.get(f"/admin/executions/taskexecution/{execution.pk}/artifacts/{kept.pk}/").content == b"all good"


@pytest.mark.django_db(transaction=True)
def test_artifacts_are_purged_with_their_execution(worker, make_task):
    execution = finished(launch(make_task(command=WRITE_ARTIFACTS, keep_artifacts=True)))
    assert Artifact.objects.filter(execution=execution).count() == 2
    TaskExecution.objects.filter(pk=execution.pk).update(created_at=execution.created_at.replace(year=2000))

    call_command("purge_executions", "--older-than", "1")

    assert not TaskExecution.objects.filter(pk=execution.pk).exists()
    assert not Artifact.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_attempt_that_leaves_no_artifacts_writes_none_and_a_task_that_keeps_none_gets_no_directory(
    worker, make_task
):
    show = "python3 -c \"import os; print(os.environ.get('TASKHUB_ARTIFACTS_DIR', 'none'))\""
    keeping = finished(launch(make_task(command=show, keep_artifacts=True)))
    not_keeping = finished(launch(make_task(command=show)))

    assert keeping.status == Status.SUCCEEDED and keeping.stdout.startswith("/")
    assert not_keeping.stdout == "none\n"  # it pays nothing for artifacts
    assert not Artifact.objects.exists()


def test_an_attempt_lists_at_most_max_files_artifacts_however_its_directories_split_them(tmp_path):
    for folder in ("a", "b", "c"):
        (tmp_path / folder).mkdir()
        for i in range(workspace.MAX_FILES // 2):
            (tmp_path / folder / f"{i:04}.txt").write_bytes(b"x")

    files = workspace.collect(str(tmp_path), limit=10)

    assert len(files) == workspace.MAX_FILES
    assert files[0].name == "a/0000.txt" and files[-1].name == f"b/{workspace.MAX_FILES // 2 - 1:04}.txt"
    assert [f.content for f in files[:11]] == [b"x"] * 10 + [None]  # kept within the cap, then listed only
