"""Small hostile servers on loopback: a listening socket on port 0 and a thread per
connection that runs a script (answer garbage, announce a huge frame, stream a line
that never ends). They stand in for a broken or malicious Redis, ZooKeeper, etcd or
PostgreSQL server; the real servers' fixtures cover everything else."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest

Script = Callable[[socket.socket, threading.Event], None]


class HostileServer:
    """Accepts connections on 127.0.0.1 and runs ``script(conn, stopped)`` for each."""

    def __init__(self, script: Script) -> None:
        self._script = script
        self.stopped = threading.Event()
        self.connections = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.port = self._sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            self._script(conn, self.stopped)
        except OSError:
            pass  # the client hung up: what a client under attack should do
        finally:
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self._accepter.join(5)
        self._sock.close()
        for thread in self._threads:
            thread.join(5)


def read_some(conn: socket.socket, timeout: float = 5.0) -> bytes:
    """Whatever the client sends first (a handshake or a command)."""
    conn.settimeout(timeout)
    return conn.recv(65536)


def stream_forever(conn: socket.socket, stopped: threading.Event, head: bytes,
                   filler: bytes = b"A" * 65536, limit: float = 60.0) -> None:
    """Send ``head`` and then ``filler`` without end (until the client hangs up, the test
    ends, or ``limit`` seconds pass)."""
    conn.sendall(head)
    end = time.monotonic() + limit
    conn.settimeout(1.0)
    while not stopped.is_set() and time.monotonic() < end:
        try:
            conn.sendall(filler)
        except TimeoutError:
            continue


def send_and_hold(conn: socket.socket, stopped: threading.Event, data: bytes) -> None:
    """Send ``data`` and keep the connection open until the client hangs up."""
    conn.sendall(data)
    conn.settimeout(0.2)
    while not stopped.is_set():
        try:
            if not conn.recv(65536):
                return
        except TimeoutError:
            continue


def answering(data: bytes) -> Script:
    """A script that waits for the client's first bytes, answers ``data`` and holds on."""
    def script(conn: socket.socket, stopped: threading.Event) -> None:
        read_some(conn)
        send_and_hold(conn, stopped, data)

    return script


@pytest.fixture
def hostile_server():
    """``hostile_server(script) -> HostileServer``; all are closed after the test."""
    made: list[HostileServer] = []

    def make(script: Script) -> HostileServer:
        server = HostileServer(script)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()
