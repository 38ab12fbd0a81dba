"""A command line scripts can trust: `run_task --wait` exit statuses and streaming, `--json`, `cancel_execution`.

The commands run as real processes against the test database, and real
workers run the tasks.
"""

from __future__ import annotations

import io
import json
import queue
import subprocess
import sys
import threading

import pytest
from django.core.management import call_command

from executions.models import Status, TaskExecution
from executions.runner import OutputBuffer
from taskhub.management.commands.run_task import StreamFollower, exit_status
from tests.conftest import ROOT, subprocess_env, wait_for
from tests.test_cli import manage

# -- exit statuses and output following, without processes ------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"status": Status.SUCCEEDED, "exit_code": 0}, 0),
        ({"status": Status.SUCCEEDED, "exit_code": 3}, 0),  # 3 is one of the task's success codes
        ({"status": Status.FAILED, "exit_code": 3}, 3),
        ({"status": Status.FAILED, "exit_code": 0}, 1),  # 0 is not a success code: never report success
        ({"status": Status.FAILED, "exit_code": None, "signal": 9}, 137),
        ({"status": Status.FAILED, "exit_code": None}, 1),  # could not start
        ({"status": Status.TIMEOUT, "signal": 15}, 124),
        ({"status": Status.CANCELLED, "signal": 15}, 130),
        ({"status": Status.LOST}, 1),
        ({"status": Status.SKIPPED}, 1),
    ],
)
def test_exit_status_follows_the_shell_conventions(fields, expected):
    assert exit_status(TaskExecution(**fields)) == expected


def test_the_follower_prints_each_complete_line_once():
    follower = StreamFollower()
    assert follower.feed("one\ntw") == ["one"]
    assert follower.feed("one\ntwo\nthr") == ["two"]
    assert follower.feed("one\ntwo\nthr") == []
    assert follower.feed("one\ntwo\nthree", final=True) == ["three"]
    assert follower.feed("one\ntwo\nthree", final=True) == []


def test_the_follower_says_how_much_the_runner_cut_and_goes_on_with_the_end():
    buffer = OutputBuffer(limit=40)  # keeps 20 bytes at each end
    follower = StreamFollower()
    buffer.write(b"line 01\nline 02\n")
    assert follower.feed(buffer.text()) == ["line 01", "line 02"]
    for n in range(3, 10):
        buffer.write(f"line {n:02}\n".encode())

    lines = follower.feed(buffer.text())

    # 72 bytes written; kept: the first 20 and the last 20; shown before: 16.
    assert lines == [
        "line",  # the rest of the kept beginning: it will not grow again
        "[… 32 bytes of output not shown: TaskHub keeps the beginning and the end …]",
        " 07",
        "line 08",
        "line 09",
    ]
    buffer.write(b"line 10\n")
    assert follower.feed(buffer.text(), final=True) == ["line 10"]


# -- real processes ---------------------------------------------------------------------------------------


class Running:
    """A `manage.py` process whose standard output is read line by line as it comes."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for_line(self, text: str, timeout: float = 30) -> None:
        def arrived() -> bool:
            while not self.lines.empty():
                self.seen.append(self.lines.get())
            return any(text in line for line in self.seen)

        wait_for(arrived, timeout=timeout, what=f"{text!r} in the output; so far: {self.seen}")

    def finish(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)  # it ends at the end of the output
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code


@pytest.mark.django_db(transaction=True)
def test_run_task_wait_streams_output_while_the_command_runs(celery_processes, make_task, tmp_path):
    # Heartbeats (which save the output so far) several times a second, so the lines arrive quickly.
    celery_processes(env={"TASKHUB_HEARTBEAT": "0.3"})
    go = tmp_path / "go"
    make_task(
        name="talker",
        command=f"echo first; echo oops >&2; while [ ! -e {go} ]; do sleep 0.05; done; echo second",
        shell=True,
    )
    run = Running("run_task", "talker", "--wait", "--poll", "0.1")

    run.wait_for_line("[stdout] first")
    run.wait_for_line("[stderr] oops")
    # Shown while the command still runs: it cannot end before the file exists.
    assert TaskExecution.objects.get().status == Status.RUNNING
    go.touch()

    assert run.finish() == 0
    lines = run.seen
    assert lines.count("  [stdout] first") == 1
    assert lines.count("  [stdout] second") == 1
    assert any(line.startswith("attempt 1: running on ") for line in lines)
    assert lines[-1].startswith("attempt 1: succeeded, exit code 0")
    assert lines.index("  [stdout] first") < lines.index("  [stdout] second") < len(lines) - 1


@pytest.mark.django_db(transaction=True)
def test_run_task_wait_exits_with_the_commands_code_124_on_timeout_and_1_when_it_could_not_start(worker, make_task):
    make_task(name="three", command="echo about to fail; exit 3", shell=True)
    make_task(name="slow", command="sleep 30", timeout=1, kill_grace=1)
    make_task(name="missing", command="/nonexistent/program --flag")
    # Side by side: the worker runs two at once.
    runs = {name: Running("run_task", name, "--wait", "--poll", "0.1") for name in ("three", "slow", "missing")}

    codes = {name: run.finish() for name, run in runs.items()}

    assert codes == {"three": 3, "slow": 124, "missing": 1}, {n: r.seen for n, r in runs.items()}
    assert "  [stdout] about to fail" in runs["three"].seen
    three = runs["three"].seen
    # The output, then the outcome, then why.
    assert three[-3] == "  [stdout] about to fail"
    assert three[-2].startswith("attempt 1: failed, exit code 3")
    assert three[-1].startswith("  error: ")
    assert any(line.startswith("attempt 1: timeout") for line in runs["slow"].seen)
    assert any(line.startswith("attempt 1: failed") for line in runs["missing"].seen)
    assert any("error: " in line and "/nonexistent/program" in line for line in runs["missing"].seen)


@pytest.mark.django_db(transaction=True)
def test_run_task_wait_exits_130_when_the_run_is_cancelled(worker, make_task):
    make_task(name="long", command="sleep 60", kill_grace=1)
    run = Running("run_task", "long", "--wait", "--poll", "0.1")
    run.wait_for_line("attempt 1: running")
    execution = TaskExecution.objects.get()

    cancel = manage("cancel_execution", str(execution.pk))

    assert cancel.returncode == 0, cancel.stderr
    assert f"Execution {execution.pk} is running on " in cancel.stdout
    assert run.finish() == 130
    assert run.seen[-2].startswith("attempt 1: cancelled")
    assert run.seen[-1] == "  error: Cancelled while running: the command was stopped."
    execution.refresh_from_db()
    assert execution.status == Status.CANCELLED


@pytest.mark.django_db(transaction=True)
def test_run_task_json_prints_the_final_record_alone_on_standard_output(worker, make_task):
    make_task(name="reporter", command="echo hello; exit 3", shell=True, env={"SECRET": "hunter2"})

    done = manage("run_task", "reporter", "--wait", "--json", "--poll", "0.1")

    assert done.returncode == 3
    record = json.loads(done.stdout)
    execution = TaskExecution.objects.get()
    assert record["id"] == execution.pk
    assert (record["status"], record["exit_code"], record["stdout"]) == ("failed", 3, "hello\n")
    assert record["task_name"] == "reporter"
    assert record["env"] == {"SECRET": "••••"}  # as the API shows it to someone who may not change tasks
    # Progress went to standard error.
    assert "[stdout] hello" in done.stderr
    assert "attempt 1: failed, exit code 3" in done.stderr


@pytest.mark.django_db(transaction=True)
def test_cancel_execution_exits_0_when_it_took_1_when_already_finished_2_when_unknown(make_task):
    task = make_task(name="queued")
    pending = TaskExecution.objects.create(task=task, status=Status.PENDING)
    finished = TaskExecution.objects.create(task=task, status=Status.SUCCEEDED)

    took = manage("cancel_execution", str(pending.pk))
    too_late = manage("cancel_execution", str(finished.pk))
    unknown = manage("cancel_execution", "999999")

    assert (took.returncode, took.stdout.strip()) == (0, f"Execution {pending.pk} was pending: cancelled.")
    pending.refresh_from_db()
    assert pending.status == Status.CANCELLED
    assert too_late.returncode == 1
    assert f"Execution {finished.pk} ('queued', attempt 1) has already finished: it is succeeded." in too_late.stderr
    assert (unknown.returncode, unknown.stderr.strip()) == (2, "CommandError: There is no execution 999999.")


@pytest.mark.django_db
def test_run_task_json_without_wait_prints_the_pending_execution(make_task):
    make_task(name="later")
    out = io.StringIO()

    call_command("run_task", "later", "--json", stdout=out)

    record = json.loads(out.getvalue())
    assert (record["id"], record["status"], record["trigger"]) == (TaskExecution.objects.get().pk, "pending", "cli")
