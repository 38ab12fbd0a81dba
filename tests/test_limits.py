"""Limits on what a command may use: real commands past each limit are stopped, and the error names the limit."""

from __future__ import annotations

import os
import shutil
import signal
import sys

import pytest

from executions.confine import Limits
from executions.models import Status
from executions.runner import CommandSpec, Hooks, build_env, run_command
from taskhub.services import launch
from tests.conftest import finished, group_members

HOG_MEMORY = "import time; data = b'x' * (200 * 1024 * 1024); time.sleep(30)"
SPIN = "while True: pass"
# Ten sleeping children at once.
FORK_TEN = "import subprocess; ps = [subprocess.Popen(['sleep', '30']) for _ in range(10)]; [p.wait() for p in ps]"
OPEN_MANY = "files = [open('/dev/null') for _ in range(200)]"


def python(code: str, limits: Limits, timeout: float = 30) -> CommandSpec:
    return CommandSpec(argv=["python3", "-c", code], timeout=timeout, kill_grace=1, env=build_env({}), limits=limits)


def run_tracking_group(spec: CommandSpec):
    pids = []
    result = run_command(spec, Hooks(on_start=pids.append))
    return result, pids[0]


def test_a_command_past_its_memory_limit_is_stopped_at_once_with_the_limit_named():
    result, pgid = run_tracking_group(python(HOG_MEMORY, Limits(memory_mb=50)))

    assert result.outcome == "failed" and result.signal == signal.SIGKILL
    assert "memory limit (50 MiB)" in result.error, result.error
    assert result.duration < 10  # not its 30 s sleep, nor its timeout
    assert not group_members(pgid)


def test_a_process_past_its_cpu_time_limit_is_stopped_by_the_kernel_with_the_limit_named():
    result = run_command(python(SPIN, Limits(cpu_seconds=1)))

    assert result.outcome == "failed" and result.signal in (signal.SIGXCPU, signal.SIGKILL)
    assert "CPU time limit (1 s)" in result.error, result.error
    assert (result.cpu_user or 0) + (result.cpu_system or 0) >= 0.9


def test_a_command_running_more_processes_than_its_limit_is_stopped_whole():
    result, pgid = run_tracking_group(python(FORK_TEN, Limits(processes=5)))

    assert result.outcome == "failed"
    assert "process limit (5)" in result.error, result.error
    assert result.duration < 10
    assert not group_members(pgid)  # the sleeping children went with it


def test_a_command_refused_files_past_its_open_files_limit_says_so():
    result = run_command(python(OPEN_MANY, Limits(open_files=32)))

    assert result.outcome == "failed" and result.exit_code == 1
    assert "open files limit (32)" in result.error, result.error
    assert "Too many open files" in result.stderr


def test_a_command_within_its_limits_runs_as_without_them():
    limits = Limits(memory_mb=200, cpu_seconds=10, open_files=64, processes=5)
    result = run_command(python("import os; print(os.getpid() > 0)", limits))

    assert (result.outcome, result.exit_code, result.stdout, result.error) == ("succeeded", 0, "True\n", "")


def test_an_isolated_command_on_a_host_without_bubblewrap_does_not_start_and_says_why(monkeypatch, tmp_path):
    # A search path without bwrap stands for a host without it, whether or not this one has it.
    monkeypatch.setenv("PATH", str(tmp_path))
    result = run_command(python("print('ran')", Limits(isolate=True)))

    assert result.outcome == "not_started" and result.stdout == ""
    assert "bubblewrap (bwrap)" in result.error and "does not have it" in result.error


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="this host has no bubblewrap (CI installs it)")
def test_an_isolated_command_has_no_network_and_cannot_write_outside_its_directory(tmp_path):
    code = (
        "import socket, pathlib\n"
        "try:\n    socket.create_connection(('127.0.0.1', 5432), timeout=2); print('network')\n"
        "except OSError:\n    print('no network')\n"
        "try:\n    pathlib.Path('/usr/taskhub-probe').write_text('x'); print('wrote /usr')\n"
        "except OSError:\n    print('read-only /usr')\n"
        "pathlib.Path('here').write_text('x'); print('wrote here')\n"
    )
    spec = python(code, Limits(isolate=True))
    spec.cwd = str(tmp_path)
    result = run_command(spec)

    assert result.stdout.split("\n")[:3] == ["no network", "read-only /usr", "wrote here"], result.stderr


# -- through a task, with a real worker -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_task_memory_limit_fails_its_attempt_with_the_limit_named(worker, make_task):
    task = make_task(command=f'python3 -c "{HOG_MEMORY}"', memory_limit_mb=50, retry_count=0)

    execution = finished(launch(task))

    assert execution.status == Status.FAILED
    assert "memory limit (50 MiB)" in execution.error, execution.error


@pytest.mark.django_db(transaction=True)
def test_a_task_asking_for_isolation_on_a_host_without_bubblewrap_fails_with_the_reason(celery_processes, make_task):
    # The worker's search path holds only its virtualenv's programs: no bwrap there.
    celery_processes(env={"PATH": os.path.dirname(sys.executable)})
    task = make_task(command="echo ran", isolated=True, retry_count=0)

    execution = finished(launch(task))

    assert execution.status == Status.FAILED and execution.stdout == ""
    assert "bubblewrap" in execution.error, execution.error


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="this host has no bubblewrap (CI installs it)")
@pytest.mark.django_db(transaction=True)
def test_an_isolated_task_runs_on_a_real_worker_without_network(worker, make_task):
    probe = "import socket; s = socket.socket(); s.settimeout(2); print(s.connect_ex(('127.0.0.1', 5432)) == 0)"
    task = make_task(command=f'python3 -c "{probe}"', isolated=True, retry_count=0)

    execution = finished(launch(task))

    # The same probe outside bubblewrap reaches the database this test itself uses.
    assert (execution.status, execution.stdout) == (Status.SUCCEEDED, "False\n"), execution.error
