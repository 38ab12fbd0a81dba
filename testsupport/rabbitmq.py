"""A throw-away RabbitMQ node on spare ports, for tests that restart the broker.

The machine's own RabbitMQ serves other suites and must never be restarted
by a test: this node has its own name, ports and data folder (under the
given directory), and is stopped by whoever started it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from testsupport.servers import spare_port
from testsupport.waiting import wait_for

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the script itself, not the wrapper that switches user


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class RabbitMQServer:
    """A RabbitMQ node whose data (durable queues, persistent messages) outlives a restart."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = spare_port()
        self.dist_port = spare_port()
        self.name = f"taskhub-test-{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        d = self.directory
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "node.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),  # none there: the defaults
        }

    def start(self) -> RabbitMQServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "enabled_plugins").write_text("[].\n")
        server = SERVER if os.path.exists(SERVER) else shutil.which("rabbitmq-server") or "rabbitmq-server"
        log = open(self.directory / "server.log", "ab")
        # A session of its own: stopping it reaches the Erlang VM the script starts.
        self.proc = subprocess.Popen(
            [server], env=self._env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        wait_for(self._ready, timeout=60, interval=0.2, what=f"RabbitMQ node {self.name}")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"rabbitmq-server exited with {self.proc.returncode}; see {self.directory}/server.log")
        return _listening(self.port) and "completed with" in (self.directory / "server.log").read_text(errors="replace")

    def stop(self) -> None:
        """Orderly shutdown (SIGTERM): durable queues and persistent messages are kept for the next start."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass
        wait_for(lambda: not _listening(self.port), timeout=30, what="RabbitMQ to stop listening")

    def restart(self) -> None:
        self.stop()
        # The log of the first start says "completed with" too: start on a fresh one.
        (self.directory / "server.log").rename(self.directory / f"server-{self.proc.pid}.log")
        self.start()
