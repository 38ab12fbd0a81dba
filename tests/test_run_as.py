"""Commands run as another user (TASKHUB_RUN_AS): real subprocesses as ``nobody``, the tests themselves as root."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from executions.checks import check_run_as
from executions.runner import CommandSpec, Hooks, build_env, may_switch_to, run_command, switch_problem
from tests.conftest import ROOT, group_members, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running commands as another user needs a root worker")

NOBODY = pwd.getpwnam("nobody")
SECRET = "s3cret-database-password"
# A root process without the capabilities to switch users (as a worker started so would be).
WITHOUT_SETUID = ["setpriv", "--bounding-set=-setuid,-setgid"]


def spec(argv: list[str], **kw: object) -> CommandSpec:
    kw.setdefault("timeout", 10)
    kw.setdefault("kill_grace", 1)
    kw.setdefault("run_as", "nobody")
    kw.setdefault("env", build_env({}, run_as=str(kw["run_as"])))
    return CommandSpec(argv=argv, **kw)


def sh(script: str, **kw: object) -> CommandSpec:
    return spec(["/bin/sh", "-c", script], **kw)


def run_in_worker(script: str, *, run_as: str, groups: list[int] | None = None, prefix: list[str] = ()) -> dict:
    """Run ``script`` through the runner in a fresh process with SECRET in its environment, as a worker has.

    A fresh process, because /proc/<pid>/environ shows the environment a
    process started with, not later changes to os.environ.
    """
    program = textwrap.dedent(
        f"""
        import dataclasses, json, os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from executions.runner import CommandSpec, build_env, run_command
        if {groups!r} is not None:
            os.setgroups({groups!r})
        spec = CommandSpec(argv=["/bin/sh", "-c", {script!r}], timeout=10, run_as={run_as!r},
                           env=build_env({{}}, run_as={run_as!r}))
        print(json.dumps(dataclasses.asdict(run_command(spec))))
        """
    )
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": f"postgres://taskhub:{SECRET}@db/taskhub"}
    done = subprocess.run([*prefix, sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# -- what the command can see ----------------------------------------------------------------------


def test_a_command_run_as_nobody_cannot_read_the_workers_environment():
    result = run_in_worker("id -u; cat /proc/$PPID/environ", run_as="nobody")
    assert result["outcome"] == "failed"
    assert result["stdout"] == f"{NOBODY.pw_uid}\n"
    assert "Permission denied" in result["stderr"]
    assert SECRET not in result["stdout"] + result["stderr"]


def test_without_run_as_the_command_runs_as_the_workers_own_user():
    result = run_in_worker("id -u; cat /proc/$PPID/environ", run_as="")
    assert result["outcome"] == "succeeded"
    assert result["stdout"].startswith(f"{os.geteuid()}\n")
    assert SECRET in result["stdout"]  # what TASKHUB_RUN_AS is for


def test_the_command_gets_the_users_primary_group_and_no_supplementary_groups():
    result = run_in_worker("id -g; id -G", run_as="nobody", groups=[4, 27])
    assert result["stdout"] == f"{NOBODY.pw_gid}\n{NOBODY.pw_gid}\n"


def test_the_command_gets_the_users_home_and_name_and_a_private_directory_removed_afterwards():
    script = 'pwd; stat -c "%U %a" .; echo "$TMPDIR|$HOME|$USER|$LOGNAME"; touch left-behind'
    result = run_command(sh(script))
    assert result.outcome == "succeeded", result.stderr
    cwd, owner, env = result.stdout.splitlines()
    assert owner == "nobody 700"
    assert env == f"{cwd}|{NOBODY.pw_dir}|nobody|nobody"
    assert not os.path.exists(cwd)


def test_the_tasks_own_home_and_tmpdir_win_over_the_users():
    env = build_env({"HOME": "/srv/task-home", "TMPDIR": "/var/tmp"}, run_as="nobody")
    result = run_command(sh('echo "$HOME|$TMPDIR"', env=env))
    assert result.stdout == "/srv/task-home|/var/tmp\n"


def test_a_uid_names_the_user_as_well_as_a_name():
    result = run_command(spec(["id", "-un"], run_as=str(NOBODY.pw_uid)))
    assert (result.outcome, result.stdout) == ("succeeded", "nobody\n")


# -- the runner's guarantees hold for another user -----------------------------------------------


def test_a_timeout_kills_the_whole_group_of_a_command_run_as_another_user():
    started = time.monotonic()
    result = run_command(sh("(sleep 60 &) ; sleep 60 & sleep 60", timeout=1, kill_grace=1))
    assert result.outcome == "timeout"
    assert result.signal == signal.SIGTERM
    # Stopped at its 1 s deadline rather than after the 60 s sleeps (wide: a loaded machine).
    assert time.monotonic() - started < 20
    wait_for(lambda: group_members(result.pid) == [], timeout=2, what="the sleep grandchildren to be gone")


def test_a_cancel_request_stops_a_command_run_as_another_user():
    started = time.monotonic()
    result = run_command(
        sh("sleep 60 & sleep 60", cancel_poll_interval=0.1),
        Hooks(cancel_requested=lambda: time.monotonic() - started > 0.3),
    )
    assert result.outcome == "cancelled"
    # Stopped on the cancel rather than after the 60 s sleeps (wide: a loaded machine).
    assert time.monotonic() - started < 20
    wait_for(lambda: group_members(result.pid) == [], timeout=2, what="the cancelled group to be gone")


def test_when_the_worker_dies_the_watcher_kills_a_group_run_as_another_user(tmp_path):
    pidfile = tmp_path / "pid"
    program = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from executions.runner import CommandSpec, Hooks, build_env, run_command
        def started(pid):
            open({str(pidfile)!r}, "w").write(f"{{pid}} {{os.readlink(f'/proc/{{pid}}/cwd')}}")
        run_command(CommandSpec(argv=["/bin/sh", "-c", "(sleep 60 &) ; sleep 60 & sleep 60"], timeout=120,
                                run_as="nobody", env=build_env({{}}, run_as="nobody")), Hooks(on_start=started))
        """
    )
    worker = subprocess.Popen([sys.executable, "-c", program])
    private_dir = ""
    try:
        started = wait_for(lambda: pidfile.exists() and pidfile.read_text(), timeout=10, what="the command")
        pgid, private_dir = int(started.split()[0]), started.split()[1]
        members = wait_for(lambda: len(group_members(pgid)) >= 3 and group_members(pgid), timeout=10, what="children")
        assert {os.stat(f"/proc/{pid}").st_uid for pid in members} == {NOBODY.pw_uid}

        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(5)

        wait_for(lambda: group_members(pgid) == [], timeout=5, what="the group to be killed")
    finally:
        worker.kill()
        # A worker killed outright cannot remove the command's private directory.
        shutil.rmtree(private_dir, ignore_errors=True)


# -- when it cannot be done ----------------------------------------------------------------------


def test_a_user_that_does_not_exist_fails_the_execution_with_the_reason():
    result = run_command(spec(["true"], run_as="no-such-user", env=build_env({})))
    assert result.outcome == "not_started"
    assert result.error == "Cannot start: TASKHUB_RUN_AS user 'no-such-user' does not exist."


def test_a_worker_without_the_right_to_switch_never_runs_the_command_as_itself(tmp_path):
    marker = tmp_path / "ran"
    result = run_in_worker(f"touch {marker}", run_as="nobody", prefix=WITHOUT_SETUID)
    assert result["outcome"] == "not_started"
    assert "may not run commands as another user: it lacks CAP_SETGID, CAP_SETUID" in result["error"]
    assert not marker.exists()


def test_a_worker_without_the_right_to_switch_still_runs_commands_as_its_own_user():
    result = run_in_worker("id -u", run_as="root", prefix=WITHOUT_SETUID)
    assert (result["outcome"], result["stdout"]) == ("succeeded", "0\n")


@pytest.mark.parametrize(
    ("euid", "effective", "ambient", "expected"),
    [
        (0, "000001ffffffffff", "0000000000000000", ""),
        (1000, "00000000000000eb", "0000000000000000", ""),
        (0, "000001ffffffff3f", "0000000000000000", "it lacks CAP_SETGID, CAP_SETUID."),
        (1000, "0000000000000000", "0000000000000000", "it lacks CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_KILL"),
        (1000, "00000000000000eb", "00000000000000c0", "it has ambient capabilities, which the command would"),
        (0, "000001ffffffffff", "00000000000000c0", ""),
    ],
)
def test_switching_users_needs_the_capabilities_and_no_ambient_ones_unless_root(euid, effective, ambient, expected):
    status = f"Name:\tcelery\nCapInh:\t0000000000000000\nCapEff:\t{effective}\nCapAmb:\t{ambient}\n"
    problem = switch_problem(status, euid)
    if expected:
        assert problem.startswith(f"the worker (uid {euid}) may not run commands as another user: {expected}")
    else:
        assert problem == ""


# -- the system check and the worker's start --------------------------------------------------


def test_the_check_warns_about_a_user_that_does_not_exist(settings):
    settings.TASKHUB_RUN_AS = "no-such-user"
    assert [(w.id, w.msg) for w in check_run_as()] == [
        ("executions.W002", "TASKHUB_RUN_AS user 'no-such-user' does not exist on this host.")
    ]


def test_the_check_is_quiet_when_unset_or_when_the_process_may_switch(settings):
    for value in ("", "nobody"):
        settings.TASKHUB_RUN_AS = value
        assert check_run_as() == [] and may_switch_to(value) == ""


def worker_environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", **extra}


def test_the_check_warns_when_the_process_may_not_switch_users():
    done = subprocess.run(
        [*WITHOUT_SETUID, sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=worker_environment(TASKHUB_RUN_AS="nobody"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "(executions.W001) TASKHUB_RUN_AS='nobody' asks for another user, but the worker (uid 0)" in done.stderr


def test_a_worker_that_may_not_switch_users_refuses_to_start():
    done = subprocess.run(
        [*WITHOUT_SETUID, sys.executable, "-m", "celery", "-A", "config", "worker", "--pool", "solo"],
        cwd=ROOT,
        env=worker_environment(TASKHUB_RUN_AS="nobody"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "TaskHub worker cannot start: TASKHUB_RUN_AS='nobody' asks for another user" in done.stderr
    assert "ready" not in done.stdout + done.stderr


@pytest.mark.django_db(transaction=True)
def test_a_task_run_by_a_worker_set_to_run_as_nobody_cannot_read_the_workers_secrets(celery_processes, make_task):
    from executions.models import Status
    from taskhub.services import launch
    from tests.conftest import finished

    celery_processes(env={"TASKHUB_RUN_AS": "nobody", "DJANGO_SECRET_KEY": "s3cret-of-the-worker-" + "x" * 40})
    whoami = finished(launch(make_task(command="id -un")))
    peek = finished(launch(make_task(command="cat /proc/$PPID/environ", shell=True)))

    assert whoami.status == Status.SUCCEEDED and whoami.stdout == "nobody\n"
    assert peek.status == Status.FAILED and "Permission denied" in peek.stderr
    assert "s3cret-of-the-worker" not in peek.stdout
