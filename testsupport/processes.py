"""Real `celery worker` and `celery beat` processes, each in its own session with its log in a file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from testsupport import ROOT
from testsupport.waiting import wait_for

CELERY = str(Path(sys.executable).with_name("celery"))
# What `celery worker` logs (at INFO) once it consumes, and `celery beat` once it schedules.
WORKER_READY = " ready."
BEAT_READY = "beat: Starting"


def worker_argv(
    *,
    hostname: str,
    app: str = "config",
    queues: str = "default",
    pool: str = "prefork",
    concurrency: int = 2,
    loglevel: str = "INFO",
) -> list[str]:
    """The command line of a worker; without mingle and gossip, which only slow a start down here."""
    return [
        sys.executable, CELERY, "-A", app, "worker", "--loglevel", loglevel, "--hostname", hostname,
        "-Q", queues, "--pool", pool, "--concurrency", str(concurrency), "--without-mingle", "--without-gossip",
    ]  # fmt: skip


def beat_argv(*, loglevel: str = "INFO", max_interval: float | None = None) -> list[str]:
    argv = [sys.executable, CELERY, "-A", "config", "beat", "--loglevel", loglevel, "--pidfile", ""]
    if max_interval is not None:
        argv += ["--max-interval", f"{max_interval:g}"]
    return argv


class ProcessExited(RuntimeError):
    """A process ended while it was starting."""


class CeleryProcess:
    """A `celery worker` or `celery beat` subprocess, started (again) on demand with the same arguments.

    ``ready`` is the text its log shows once it is ready, or a function of
    the process that says so. Its log is appended to ``log_path`` across starts.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        ready: str | Callable[[CeleryProcess], bool],
    ) -> None:
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_path
        self.ready = ready
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return " ".join(self.argv[3:5])  # "config worker", "config beat"

    def start(self, timeout: float = 60) -> CeleryProcess:
        """Start and wait until ready; raise ProcessExited (with its log) if it ends first."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            # A session of its own: stopping it reaches its pool and watchers, not the caller.
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise ProcessExited(f"{self.name} exited with {self.proc.returncode} while starting:\n{self.log()}")
            if callable(self.ready):
                return self.ready(self)
            return self.ready in self.log_path.read_text(errors="replace")[offset:]

        try:
            wait_for(ready, timeout=timeout, interval=0.1, what=f"{self.name} to be ready (log: {self.log_path})")
        except BaseException:
            self.kill()
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def processes(self) -> list:
        """The main process and its Python children (the pool), as psutil processes, without the commands."""
        import psutil

        main = psutil.Process(self.pid)
        names = ("python", "celery")
        return [main, *(c for c in main.children() if any(n in c.name().lower() for n in names))]

    def pool_pids(self) -> list[int]:
        return [process.pid for process in self.processes()[1:]]

    def stop(self, grace: float = 20) -> None:
        """Warm shutdown (SIGTERM to the main process), then SIGKILL to whatever is left of its group."""
        if self.proc is not None:
            stop_process_group(self.proc, grace)

    def kill(self) -> None:
        """SIGKILL the whole group at once."""
        if self.proc is not None:
            kill_process_group(self.proc)

    def kill_main(self) -> None:
        """SIGKILL the main process only, as the OOM killer or an operator would; the rest is left to it."""
        if self.running():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def stop_process_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """Warm-stop a celery process (SIGTERM to its main process), then SIGKILL whatever is left of its group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    kill_process_group(proc)


def kill_process_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process's whole group and reap the process (giving up after 10 s)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
