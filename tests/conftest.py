"""Shared fixtures: personas, tasks, and real Celery worker / beat processes.

Worker and beat processes are real ``celery`` subprocesses pointed at the test
database pytest-django created (through DATABASE_URL in their environment) and
at the broker the suite runs against (CELERY_BROKER_URL). Tests that use them
must commit what the worker must see: mark them ``django_db(transaction=True)``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.db import connection

from bench.harness import CELERY, ROOT, kill_process_group, stop_process_group
from bench.harness import wait_for as poll_until
from executions.runner import processes_with_env
from taskhub.models import Task


def pytest_collection_modifyitems(config, items):
    # Tests marked `embedded` run only in the embedded pass of `make test`
    # (no DATABASE_URL / CELERY_BROKER_URL), and the rest only outside it.
    embedded_run = "DATABASE_URL" not in os.environ
    for item in items:
        is_embedded = item.get_closest_marker("embedded") is not None
        if embedded_run and not is_embedded:
            item.add_marker(pytest.mark.skip(reason="runs against PostgreSQL + Redis (set DATABASE_URL)"))
        elif not embedded_run and is_embedded:
            item.add_marker(pytest.mark.skip(reason="runs in the embedded pass (no DATABASE_URL)"))


# -- waiting ---------------------------------------------------------------------------


def wait_for(condition: Callable[[], object], *, timeout: float = 30, interval: float = 0.05, what: str = "") -> object:
    """Return the first truthy value of ``condition()``; fail the test after ``timeout`` seconds."""
    try:
        return poll_until(condition, timeout=timeout, interval=interval, what=what or repr(condition))
    except TimeoutError as exc:
        pytest.fail(str(exc))


# -- personas ----------------------------------------------------------------------------


def _user_with_perms(username: str, codenames: list[str]) -> User:
    user = User.objects.create_user(username, f"{username}@example.com", "pw-" + username, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def operator(db) -> User:
    """May view, change and run tasks, and view executions."""
    return _user_with_perms(
        "olivia",
        ["view_task", "add_task", "change_task", "delete_task", "run_task", "view_taskexecution"],
    )


@pytest.fixture
def viewer(db) -> User:
    """May look at tasks and executions, nothing more."""
    return _user_with_perms("victor", ["view_task", "view_taskexecution"])


@pytest.fixture
def outsider(db) -> User:
    """Has an account but no permission on TaskHub."""
    return User.objects.create_user("oscar", "oscar@example.com", "pw-oscar")


@pytest.fixture
def make_task(db) -> Callable[..., Task]:
    counter = iter(range(1, 10_000))

    def make(**fields: object) -> Task:
        fields.setdefault("name", f"task-{next(counter)}")
        fields.setdefault("command", "true")
        task = Task(**fields)
        task.full_clean()
        task.save()
        return task

    return make


# -- real worker and beat processes -------------------------------------------------------------


def database_url_for_subprocess() -> str:
    """The URL of the database this test session uses (pytest-django's test database)."""
    cfg = connection.settings_dict
    if cfg["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{cfg['NAME']}"
    user = cfg.get("USER") or ""
    auth = f"{user}:{cfg['PASSWORD']}@" if cfg.get("PASSWORD") else (f"{user}@" if user else "")
    host = cfg.get("HOST") or "127.0.0.1"
    port = f":{cfg['PORT']}" if cfg.get("PORT") else ""
    return f"postgres://{auth}{host}{port}/{cfg['NAME']}"


def async_commit_database_url() -> str:
    """The test database's URL with the connection option the README shows: commits that do not wait for their flush."""
    return database_url_for_subprocess() + "?options=-c%20synchronous_commit%3Doff"


def purge_broker() -> None:
    """Drop messages left in the test broker by earlier tests."""
    if settings.BROKER_SCHEME in {"redis", "rediss"}:
        import redis

        redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    elif settings.BROKER_SCHEME == "filesystem":
        for sub in ("queue", "processed", "control"):
            path = settings.BROKER_DIR / sub
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True, exist_ok=True)


class CeleryProcess:
    """A `celery worker` or `celery beat` subprocess with its log in a file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, ready_marker: str) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.ready_marker = ready_marker
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> CeleryProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.argv[3]} exited with {self.proc.returncode} while starting:\n{self.log()}")
            return self.ready_marker in self.log_path.read_text(errors="replace")[offset:]

        wait_for(ready, timeout=timeout, interval=0.1, what=f"{' '.join(self.argv[3:5])} to be ready")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pool_pids(self) -> list[int]:
        import psutil

        return [child.pid for child in psutil.Process(self.pid).children() if "python" in child.name().lower()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20) -> None:
        """Warm shutdown (SIGTERM to the main process), then SIGKILL to whatever is left of its group."""
        if self.proc is None:
            return
        stop_process_group(self.proc, timeout)
        self._log.close()

    def kill(self) -> None:
        if self.proc is None:
            return
        kill_process_group(self.proc)
        self._log.close()


def subprocess_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url_for_subprocess(),
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        TASKHUB_VAR_DIR=str(settings.VAR_DIR),
        PYTHONUNBUFFERED="1",
        DJANGO_SETTINGS_MODULE="config.settings",
    )
    env.update({k: str(v) for k, v in overrides.items()})
    return env


@pytest.fixture
def celery_processes(request, tmp_path) -> Iterator[Callable[..., CeleryProcess]]:
    """Factory for worker/beat processes; every one started is stopped at teardown."""
    started: list[CeleryProcess] = []
    counter = iter(range(1, 1000))

    def start_worker(
        *,
        queues: str = "default",
        concurrency: int = 2,
        pool: str = "prefork",
        env: dict[str, str] | None = None,
        name: str | None = None,
        purge: bool = True,
    ) -> CeleryProcess:
        if purge and not started:
            purge_broker()
        n = next(counter)
        hostname = name or f"w{n}-{os.getpid()}@%h"
        argv = [
            sys.executable, CELERY, "-A", "config", "worker", "--loglevel", "INFO",
            "--hostname", hostname, "-Q", queues, "--concurrency", str(concurrency), "--pool", pool,
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        proc = CeleryProcess(argv, subprocess_env(**(env or {})), tmp_path / f"worker-{n}.log", " ready.")
        started.append(proc)
        return proc.start()

    def start_beat(*, env: dict[str, str] | None = None) -> CeleryProcess:
        n = next(counter)
        argv = [
            sys.executable, CELERY, "-A", "config", "beat", "--loglevel", "DEBUG",
            "--max-interval", "1", "--pidfile", "",
        ]  # fmt: skip
        proc = CeleryProcess(argv, subprocess_env(**(env or {})), tmp_path / f"beat-{n}.log", "beat: Starting")
        started.append(proc)
        return proc.start()

    start_worker.beat = start_beat  # type: ignore[attr-defined]
    yield start_worker
    for proc in reversed(started):
        proc.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for proc in started:
            print(f"==== {proc.log_path.name} ====\n{proc.log()[-20000:]}")


@pytest.fixture
def worker(celery_processes) -> CeleryProcess:
    """One real prefork worker (concurrency 2) serving the default queue."""
    return celery_processes()


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


# -- processes of a command ---------------------------------------------------------------------


def group_members(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes in process group ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(int(entry))
    return members


def processes_of_execution(execution_id: int) -> list[int]:
    """PIDs of live processes started for an execution (found by TASKHUB_EXECUTION_ID in their environment)."""
    return processes_with_env("TASKHUB_EXECUTION_ID", str(execution_id))


def finished(execution, timeout: float = 30):
    """Wait until ``execution`` is in a terminal status; return it refreshed."""

    def done():
        execution.refresh_from_db()
        return execution.is_terminal

    wait_for(done, timeout=timeout, what=f"execution {execution.pk} to finish")
    return execution
