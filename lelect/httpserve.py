"""The one small HTTP server lelect runs: ``lelect exporter`` (/metrics, /leader/NAME,
/healthz) and ``campaign --status-listen`` (GET /: 200 while leading, 503 while not).

Standard library, a thread per connection, with the rules a probe endpoint needs on a
network: a request must arrive whole within ``read_timeout`` (a slow-loris client is
cut off, however slowly it trickles bytes), at most ``max_connections`` are open at
once (more are closed at once, without a thread), one request per connection, GET
and HEAD only. It listens on loopback unless told otherwise.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import ThreadingMixIn
from typing import Any

from lelect.errors import UsageError

DEFAULT_HOST = "127.0.0.1"
READ_TIMEOUT = 5.0
MAX_CONNECTIONS = 64


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, record: object) -> Response:
        return cls(status, (json.dumps(record) + "\n").encode())

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, (text + "\n").encode(), "text/plain; charset=utf-8")


#: ``route(path)`` -> the response (``path`` without the query string).
Route = Callable[[str], Response]


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[::1]:9464`` for IPv6; ``:9464`` is loopback) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if (not sep or not (port.isascii() and port.isdigit()) or len(port) > 5
            or not 0 < int(port) < 65536):
        raise UsageError(f"{text!r}: use ADDR:PORT, e.g. 127.0.0.1:9464 or [::1]:9464")
    return host.strip("[]") or DEFAULT_HOST, int(port)


class _Handler(BaseHTTPRequestHandler):
    server: ProbeServer
    server_version = "lelect"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # The whole request within read_timeout: cut the connection at the deadline,
        # whatever pace the client sends at (a per-read timeout would not).
        self._cutoff = threading.Timer(self.server.read_timeout, self._cut)
        self._cutoff.daemon = True
        self._cutoff.start()
        self.connection.settimeout(self.server.read_timeout)

    def _cut(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def finish(self) -> None:
        self._cutoff.cancel()
        try:
            super().finish()
        except OSError:
            pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._answer(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(head=True)

    def _answer(self, head: bool) -> None:
        self._cutoff.cancel()  # the request is in; answering has its own socket timeout
        path = self.path.split("?", 1)[0]
        try:
            response = self.server.route(path)
        except Exception as exc:  # noqa: BLE001 - a probe answers, it does not die
            response = Response.json(500, {"error": f"{type(exc).__name__}: {exc}"})
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # probes come every few seconds: no access log


class ProbeServer(ThreadingMixIn, HTTPServer):
    """Serve ``route`` on ``host:port`` from a background thread (:meth:`start`)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, host: str, port: int, route: Route, *,
                 read_timeout: float = READ_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.route = route
        self.read_timeout = read_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        self._thread = threading.Thread(target=self.serve_forever, name="lelect-http",
                                        daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> ProbeServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away (or sent garbage) is not worth a traceback

    # -- the connection cap -------------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: closed at once, no thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
