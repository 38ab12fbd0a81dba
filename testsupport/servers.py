"""Throw-away redis-server and PostgreSQL servers on spare ports, for tests that kill or restart them.

Fault-injection tests must never disturb the shared servers other suites use:
each server here lives in its own temporary directory, on a port picked at
run time, and is stopped by whoever started it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from testsupport.waiting import wait_for


def spare_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class RedisServer:
    """A redis-server that keeps nothing on disk, like the brokers TaskHub runs against."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or spare_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.directory),
        ]  # fmt: skip
        log = open(self.directory / "redis.log", "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(lambda: self._ping(), timeout=15, what=f"redis-server on port {self.port}")
        return self

    def _ping(self) -> bool:
        import redis

        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """Stop at once, as a crash would: everything it held is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def queued(self) -> int:
        """Messages waiting in the broker's lists (all queues, all priorities)."""
        import redis

        client = redis.Redis(port=self.port)
        return sum(client.llen(key) for key in client.keys("*") if client.type(key) == b"list")


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if not path:
        raise RuntimeError(f"PostgreSQL's {name} not found")
    return path


class PostgresCluster:
    """A PostgreSQL cluster initialised into a new temporary directory, trust auth on localhost."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="taskhub-pg-"))
        self.data = self.directory / "data"
        self.port = spare_port()
        self.proc: subprocess.Popen[bytes] | None = None
        # PostgreSQL refuses to run as root: run it as the postgres user then
        # (in a directory of its own directly under the temp dir, which it can reach).
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres"
            entry = pwd.getpwnam(self.user)
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, argv: list[str]) -> None:
        subprocess.run(argv, check=True, capture_output=True, user=self.user, cwd=self.directory)

    def init(self) -> PostgresCluster:
        self._run([_postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync"])
        return self.start()

    def start(self) -> PostgresCluster:
        argv = [
            _postgres_bin("postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.directory),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        log = open(self.directory / "postgres.log", "ab")
        self.proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, user=self.user, cwd=self.directory, start_new_session=True
        )
        log.close()
        wait_for(self._ready, timeout=30, what=f"PostgreSQL on port {self.port}")
        return self

    def _ready(self) -> bool:
        import psycopg

        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {self.proc.returncode}; see {self.directory / 'postgres.log'}")
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=1):
                return True
        except psycopg.Error:
            return False

    def stop(self) -> None:
        """Fast shutdown: clients are disconnected, the server goes away until started again."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            wait_for(lambda: not _accepts_connections(self.port), timeout=10, what="PostgreSQL to stop listening")

    def remove(self) -> None:
        """Stop the server and delete its files."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
