"""The runner on its own: real commands as subprocesses, no Django, no Celery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from executions.runner import CommandSpec, GroupWatcher, Hooks, OutputBuffer, build_env, run_command
from tests.conftest import ROOT, group_members, wait_for


def spec(argv, **kw) -> CommandSpec:
    kw.setdefault("timeout", 10)
    kw.setdefault("kill_grace", 1)
    kw.setdefault("env", build_env({}))
    return CommandSpec(argv=argv, **kw)


def sh(script: str, **kw) -> CommandSpec:
    return spec(["/bin/sh", "-c", script], **kw)


# -- output buffer -------------------------------------------------------------------------------


def test_output_within_the_limit_is_kept_whole():
    buf = OutputBuffer(100)
    for piece in (b"hello ", b"world"):
        buf.write(piece)
    assert (buf.text(), buf.truncated, buf.total) == ("hello world", False, 11)


def test_output_past_the_limit_keeps_both_ends_and_says_how_much_was_cut():
    buf = OutputBuffer(10)
    buf.write(b"ABCDE")
    for _ in range(1000):
        buf.write(b"-" * 97)
    buf.write(b"VWXYZ")
    text = buf.text()
    assert buf.truncated
    assert text.startswith("ABCDE")
    assert text.endswith("VWXYZ")
    assert f"cut {buf.total - 10} bytes" in text
    assert len(buf.tail) <= 2 * buf.tail_limit


def test_output_that_is_not_utf8_gets_replacement_characters():
    buf = OutputBuffer(100)
    buf.write(b"caf\xc3\xa9 \xff!")
    assert buf.text() == "café \ufffd!"


def test_nul_bytes_are_stored_as_replacement_characters():
    buf = OutputBuffer(100)
    buf.write(b"a\x00b")
    assert buf.text() == "a\ufffdb"


# -- outcomes ------------------------------------------------------------------------------------


def test_a_successful_command_reports_exit_code_output_and_resources():
    result = run_command(sh("echo out; echo err >&2"))
    assert (result.outcome, result.exit_code, result.signal) == ("succeeded", 0, None)
    assert (result.stdout, result.stderr) == ("out\n", "err\n")
    assert result.pid and result.cpu_user is not None and result.cpu_system is not None


def test_a_non_zero_exit_is_a_failure_with_its_code():
    result = run_command(sh("exit 7"))
    assert (result.outcome, result.exit_code) == ("failed", 7)
    assert "exited with code 7" in result.error


def test_a_command_killed_by_a_signal_reports_the_signal_not_an_exit_code():
    result = run_command(sh("kill -SEGV $$"))
    assert (result.outcome, result.exit_code, result.signal) == ("failed", None, signal.SIGSEGV)
    assert "SIGSEGV" in result.error


def test_stdin_is_closed():
    result = run_command(spec(["cat"]))
    assert (result.outcome, result.stdout) == ("succeeded", "")


def test_the_command_gets_a_minimal_environment_plus_its_own(monkeypatch):
    monkeypatch.setenv("WORKER_SECRET", "do-not-leak")
    result = run_command(spec(["env"], env=build_env({"MINE": "yes"})))
    names = {line.split("=", 1)[0] for line in result.stdout.splitlines()}
    assert "MINE=yes" in result.stdout.splitlines()
    assert "WORKER_SECRET" not in names
    assert "PATH" in names


def test_the_workers_secrets_never_reach_the_command(monkeypatch):
    secrets = {
        "DATABASE_URL": "postgres://taskhub:db-password@db/taskhub",
        "DJANGO_SECRET_KEY": "the-secret-key",
        "SECRET_KEY": "another-secret-key",
        "CELERY_BROKER_URL": "redis://:broker-password@redis:6379/0",
        "BROKER_URL": "redis://:broker-password@redis:6379/1",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    result = run_command(spec(["env"], env=build_env({"MINE": "yes"})))
    assert result.outcome == "succeeded"
    assert "MINE=yes" in result.stdout.splitlines()
    for name, value in secrets.items():
        assert name not in result.stdout
        assert value not in result.stdout


def test_the_command_runs_in_its_own_session():
    result = run_command(spec([sys.executable, "-c", "import os; print(os.getsid(0) == os.getpid())"]))
    assert result.stdout == "True\n"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"argv": ["definitely-not-a-command"]}, "command not found: 'definitely-not-a-command'"),
        ({"argv": ["true"], "cwd": "/nonexistent-dir"}, "working directory '/nonexistent-dir' does not exist"),
        ({"argv": ["true"], "cwd": "/etc/hostname"}, "is not a directory"),
        ({"argv": []}, "the command is empty"),
    ],
)
def test_a_command_that_cannot_start_reports_why(kw, message):
    result = run_command(spec(**kw))
    assert result.outcome == "not_started"
    assert message in result.error


def test_a_path_from_the_tasks_env_is_not_shown_when_the_command_is_not_found():
    path = "/opt/s3cret-tools/bin"
    env = build_env({"PATH": path})
    result = run_command(spec(["definitely-not-a-command"], env=env, secret_values=[path]))
    assert result.outcome == "not_started"
    assert "command not found: 'definitely-not-a-command' (searched the task's PATH)" in result.error
    assert "s3cret" not in result.error


def test_the_workers_own_path_is_still_shown_when_the_command_is_not_found():
    result = run_command(spec(["definitely-not-a-command"], secret_values=["elsewhere"]))
    assert f"searched PATH={build_env({})['PATH']!r}" in result.error


def test_hidden_values_are_masked_in_every_error_text_also_as_repr_escapes_them():
    escaped = "two\nlines"  # repr() shows it as two\\nlines
    result = run_command(spec(["true"], cwd=f"/srv/{escaped}/top-secret", secret_values=[escaped, "top-secret"]))
    assert result.outcome == "not_started"
    assert (
        result.error
        == "Cannot start: working directory '/srv/\u2022\u2022\u2022\u2022/\u2022\u2022\u2022\u2022' does not exist."
    )


# -- the command's own memory figure ------------------------------------------------------------

ALLOCATE = "b = bytearray({mib} * 2**20); import time; time.sleep({sleep})"


def own_peak_kb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))


def test_an_echo_is_not_charged_with_the_workers_memory():
    assert own_peak_kb() > 20 * 1024  # so the old figure (this process's size) would fail below
    result = run_command(spec(["echo", "hello"]))
    assert result.outcome == "succeeded"
    # Too small and too short to be told from this process: no figure rather than a wrong one.
    assert result.max_rss_kb is None


def test_a_command_bigger_than_the_worker_reports_its_own_peak():
    mib = max(100, own_peak_kb() // 1024 + 50)
    result = run_command(spec(["python3", "-c", ALLOCATE.format(mib=mib, sleep=1)]))
    assert result.outcome == "succeeded"
    assert mib * 1024 * 0.9 <= result.max_rss_kb < (mib + 50) * 1024


def test_a_command_smaller_than_the_worker_reports_its_peak_as_sampled_while_it_ran():
    mib = 12
    assert own_peak_kb() > (mib + 30) * 1024
    result = run_command(spec(["python3", "-c", ALLOCATE.format(mib=mib, sleep=1)], heartbeat_interval=0.2))
    assert result.outcome == "succeeded"
    assert mib * 1024 <= result.max_rss_kb < (mib + 30) * 1024


# -- deadlines, cancellation, no orphans ---------------------------------------------------------


def test_the_deadline_stops_the_command_with_sigterm():
    started = time.monotonic()
    result = run_command(spec(["sleep", "30"], timeout=1, kill_grace=5))
    assert result.outcome == "timeout"
    assert result.signal == signal.SIGTERM
    # Not before the deadline; the upper bound only tells a stopped command
    # from one left to sleep its 30 s, wide for a loaded machine.
    assert 0.9 <= time.monotonic() - started < 15


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace_and_nothing_survives():
    script = "trap '' TERM; (trap '' TERM; sleep 60) & (trap '' TERM; sleep 60 & sleep 60) & sleep 60"
    started = time.monotonic()
    result = run_command(sh(script, timeout=1, kill_grace=1))
    elapsed = time.monotonic() - started
    assert result.outcome == "timeout"
    assert result.signal == signal.SIGKILL
    # SIGKILL after timeout + grace, not before; the upper bound tells it from
    # the 60 s the group would otherwise take, wide for a loaded machine.
    assert 1.9 <= elapsed < 15
    # All were SIGKILLed before the result came back; a killed process lets go
    # of the pipes a moment before it is gone, so allow the kernel that moment.
    wait_for(lambda: group_members(result.pid) == [], timeout=1, what="the killed group to be gone")


def test_processes_left_behind_by_a_finished_command_are_stopped():
    result = run_command(sh("sleep 60 >/dev/null 2>&1 & echo started", kill_grace=1))
    assert (result.outcome, result.stdout) == ("succeeded", "started\n")
    # SIGKILL was sent before the result came back; the kernel takes a moment to finish it off.
    wait_for(lambda: group_members(result.pid) == [], timeout=1, what="the left-behind sleep to die")


def test_a_background_child_holding_the_output_open_does_not_hold_up_the_result():
    started = time.monotonic()
    result = run_command(sh("sleep 60 & echo done", kill_grace=1))
    assert result.outcome == "succeeded"
    # The result does not wait for the background sleep's 60 s (wide: a loaded machine).
    assert time.monotonic() - started < 20
    wait_for(lambda: group_members(result.pid) == [], timeout=1, what="the left-behind sleep to die")


def test_a_cancel_request_stops_the_command_within_the_poll_interval():
    asked = {}

    def cancel_requested() -> bool:
        if time.monotonic() - started > 0.5:
            asked.setdefault("at", time.monotonic())
            return True
        return False

    started = time.monotonic()
    result = run_command(
        spec(["sleep", "30"], cancel_poll_interval=0.2, kill_grace=1), Hooks(cancel_requested=cancel_requested)
    )
    assert result.outcome == "cancelled"
    # One poll (0.2 s) in the normal case; the bound tells a polled cancel from
    # the 30 s sleep running out, wide for a loaded machine.
    assert time.monotonic() - asked["at"] < 10
    wait_for(lambda: group_members(result.pid) == [], timeout=1, what="the cancelled group to be gone")


def test_heartbeats_see_the_output_so_far_while_the_command_runs():
    seen: list[str] = []
    result = run_command(
        sh("echo first; sleep 1; echo second; sleep 1", heartbeat_interval=0.3),
        Hooks(on_heartbeat=lambda out, err: seen.append(out.text())),
    )
    assert result.outcome == "succeeded"
    assert "first\n" in seen
    assert seen[-1] == "first\nsecond\n"


def test_a_quick_command_costs_no_heartbeat():
    beats: list[int] = []
    run_command(spec(["true"], heartbeat_interval=5), Hooks(on_heartbeat=lambda out, err: beats.append(1)))
    assert beats == []


def test_a_deadline_is_met_even_when_output_never_stops():
    result = run_command(spec(["yes"], timeout=1, kill_grace=1, output_limit=4096))
    assert result.outcome == "timeout"
    assert result.output_truncated
    # Stopped at its deadline rather than never (wide: a loaded machine).
    assert result.duration < 15


def test_a_replaced_watcher_still_kills_the_groups_registered_before_and_spares_unregistered_ones():
    watcher = GroupWatcher()
    groups = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(4)]
    try:
        for proc in groups[:3]:
            watcher.register(proc.pid)
        watcher.unregister(groups[1].pid)  # its slot is free again
        first = watcher._proc
        first.kill()  # the watcher dies: the next registration starts another
        first.wait(5)
        watcher.register(groups[3].pid)  # reuses the freed slot
        assert watcher._proc is not first

        watcher._proc.stdin.close()  # what this process's death does to the pipe
        watcher._proc.wait(5)

        killed = [proc.wait(5) for proc in (groups[0], groups[2], groups[3])]
        assert killed == [-signal.SIGKILL] * 3
        assert groups[1].poll() is None
    finally:
        for proc in groups:
            proc.kill()
            proc.wait(5)


def test_when_the_supervising_process_dies_the_watcher_kills_the_whole_group(tmp_path):
    pidfile = tmp_path / "pid"
    program = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from executions.runner import CommandSpec, Hooks, build_env, run_command
        def started(pid):
            open({str(pidfile)!r}, "w").write(str(pid))
        run_command(CommandSpec(argv=["/bin/sh", "-c", "(sleep 60 &) ; sleep 60 & sleep 60"], timeout=120,
                                env=build_env({{}})), Hooks(on_start=started))
        """
    )
    supervisor = subprocess.Popen([sys.executable, "-c", program])
    try:
        pgid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), timeout=10, what="the command"))
        wait_for(lambda: len(group_members(pgid)) >= 3, timeout=10, what="the children")

        os.kill(supervisor.pid, signal.SIGKILL)
        supervisor.wait(5)

        wait_for(lambda: group_members(pgid) == [], timeout=5, what="the group to be killed")
    finally:
        supervisor.kill()
