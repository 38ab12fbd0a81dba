"""Local receivers of what TaskHub sends out: an SMTP server (aiosmtpd) and an HTTP endpoint for webhooks.

Both run in a thread of the calling process on a spare port and keep what
they received, so a test can start workers that deliver to them and then
look at what arrived.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from testsupport.servers import spare_port


class SmtpServer:
    """An SMTP server that accepts every message and keeps it."""

    def __init__(self) -> None:
        self.port = spare_port()
        self.messages: list[Message] = []
        self._controller = None

    def start(self) -> SmtpServer:
        from aiosmtpd.controller import Controller

        server = self

        class Handler:
            async def handle_DATA(self, smtp_server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
                message = message_from_bytes(envelope.original_content or envelope.content)
                message["X-Envelope-To"] = ", ".join(envelope.rcpt_tos)
                server.messages.append(message)
                return "250 Message accepted for delivery"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def env(self) -> dict[str, str]:
        """The mail settings that send to this server."""
        return {"EMAIL_HOST": "127.0.0.1", "EMAIL_PORT": str(self.port), "DEFAULT_FROM_EMAIL": "taskhub@example.com"}


@dataclass
class Received:
    path: str
    headers: Message  # looked up by name in any case, as HTTP headers are
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """An HTTP server that answers POSTs with the next status of ``statuses`` (the last one repeats) and keeps them."""

    statuses: Iterable[int] = (200,)
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.statuses = list(self.statuses)
        self.port = spare_port()
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _next_status(self) -> int:
        with self._lock:
            index = min(len(self.received), len(self.statuses) - 1)
            return self.statuses[index]

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's hook name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = receiver._next_status()
                with receiver._lock:
                    receiver.received.append(Received(self.path, self.headers, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the test looks at `received`

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
