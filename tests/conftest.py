"""Shared fixtures: personas, tasks, and real Celery worker / beat processes.

Worker and beat processes are real ``celery`` subprocesses (testsupport)
pointed at the test database pytest-django created (through DATABASE_URL in
their environment) and at the broker the suite runs against
(CELERY_BROKER_URL). Tests that use them must commit what the worker must
see: mark them ``django_db(transaction=True)``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.db import connection

from config import local_files
from taskhub.models import Task
from testsupport import ROOT, brokers, prepare_var_dir, waiting
from testsupport.databases import url_of
from testsupport.processes import BEAT_READY, WORKER_READY, CeleryProcess, beat_argv, worker_argv
from testsupport.proctable import group_members, processes_of_execution

__all__ = ["ROOT", "group_members", "processes_of_execution"]  # for the test modules that import them from here


def pytest_configure(config):
    # Settings never write files; make the secret key, SQLite file and broker
    # folders of this run's TASKHUB_VAR_DIR as `make run` does, before any test.
    prepare_var_dir()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_newgateway(gateway) -> None:
    """Give each pytest-xdist process a Redis database of its own, before it reads its settings.

    Its workers must not take the other process's run messages, nor its
    purge drop them. (pytest-django gives each its own test database.)
    """
    url = os.environ.get("CELERY_BROKER_URL", "")
    if url.startswith(("redis://", "rediss://")):
        gateway.remote_exec(
            f"import os; os.environ['CELERY_BROKER_URL'] = {brokers.redis_db_for(url, gateway.id)!r}"
        ).waitclose()


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker) -> None:
    """Under pytest-xdist, number each process's executions from a range of its own.

    Tests find a command's processes by the execution id in their
    environment; another process's execution with the same id must not match.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and connection.vendor == "postgresql":
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            start = (int(worker[2:]) + 1) * 1_000_000_000
            cursor.execute("SELECT setval(pg_get_serial_sequence('executions_taskexecution', 'id'), %s)", [start])


@pytest.fixture(
    params=[
        pytest.param("server", id="server"),
        pytest.param("embedded", id="embedded", marks=pytest.mark.embedded),
    ]
)
def both_stacks(request) -> str:
    """Run the test in both passes of `make test`: on PostgreSQL + Redis, and on the embedded default.

    Use it with ``@pytest.mark.usefixtures("both_stacks")``. A process serves
    one stack (settings are read once), so each pass runs one of the two.
    """
    return request.param


def pytest_collection_modifyitems(config, items):
    # Tests marked `embedded` (also through both_stacks) run only in the
    # embedded pass of `make test` (no DATABASE_URL / CELERY_BROKER_URL), and
    # the rest only outside it.
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
        return waiting.wait_for(condition, timeout=timeout, interval=interval, what=what or repr(condition))
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
def as_operator(client, operator):
    """The test client, signed in as the operator."""
    client.force_login(operator)
    return client


@pytest.fixture
def as_viewer(client, viewer):
    """The test client, signed in as the viewer."""
    client.force_login(viewer)
    return client


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
    return url_of(connection.settings_dict)


def async_commit_database_url() -> str:
    """The test database's URL with the connection option the README shows: commits that do not wait for their flush."""
    return database_url_for_subprocess() + "?options=-c%20synchronous_commit%3Doff"


def purge_broker() -> None:
    """Drop messages left in the test broker by earlier tests."""
    if settings.BROKER_SCHEME in {"redis", "rediss"}:
        import redis

        redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    elif settings.BROKER_SCHEME in brokers.AMQP_SCHEMES:
        brokers.purge_amqp(settings.CELERY_BROKER_URL)
    elif settings.BROKER_SCHEME == "filesystem":
        for path in local_files.broker_folders():
            shutil.rmtree(path, ignore_errors=True)
            local_files.make_private_dir(path)


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


def _started(proc: CeleryProcess, timeout: float = 60) -> CeleryProcess:
    try:
        return proc.start(timeout=timeout)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{proc.log()[-20000:]}")


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
        argv = worker_argv(hostname=hostname, queues=queues, pool=pool, concurrency=concurrency)
        proc = CeleryProcess(
            argv, env=subprocess_env(**(env or {})), log_path=tmp_path / f"worker-{n}.log", ready=WORKER_READY
        )
        started.append(proc)
        return _started(proc)

    def start_beat(*, env: dict[str, str] | None = None) -> CeleryProcess:
        n = next(counter)
        argv = beat_argv(loglevel="DEBUG", max_interval=1)
        proc = CeleryProcess(
            argv, env=subprocess_env(**(env or {})), log_path=tmp_path / f"beat-{n}.log", ready=BEAT_READY
        )
        started.append(proc)
        return _started(proc)

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


# -- executions -------------------------------------------------------------------------------


def finished(execution, timeout: float = 30):
    """Wait until ``execution`` is in a terminal status; return it refreshed."""

    def done():
        execution.refresh_from_db()
        return execution.is_terminal

    wait_for(done, timeout=timeout, what=f"execution {execution.pk} to finish")
    return execution
