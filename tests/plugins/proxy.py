"""A loopback TCP proxy that can stop forwarding (a partition: connections stay open,
nothing arrives) and start again. Used for partition tests of network backends, and
(``tap``) to see what clients send a real server."""

from __future__ import annotations

import heapq
import itertools
import selectors
import socket
import threading
import time
from collections.abc import Callable

import pytest


class PartitionProxy:
    def __init__(self, target_host: str, target_port: int,
                 tap: Callable[[int, bytes], None] | None = None) -> None:
        self.target = (target_host, target_port)
        #: Told (in the proxy's thread) what each client connection sends, before it is
        #: forwarded: (the connection's number, the bytes).
        self.tap = tap
        self._numbers = itertools.count()
        self._client_number: dict[socket.socket, int] = {}
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._blocked = threading.Event()
        self._unblocked = threading.Event()
        self._unblocked.set()
        self._stop = threading.Event()
        self._cut = threading.Event()
        self._delay = 0.0
        self._clients: set[socket.socket] = set()
        self._due: list[tuple[float, int, socket.socket, bytes]] = []  # a heap
        self._sent = 0
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._pending: dict[socket.socket, bytearray] = {}
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="partition-proxy", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def block(self, cut: bool = False) -> None:
        """Stop forwarding in both directions; connections stay open, bytes are held.
        With ``cut``, the open connections are closed instead: a client has to connect
        again, and its new connection is accepted but hears nothing."""
        if cut:
            self._cut.set()
        self._blocked.set()
        self._wake_w.send(b"x")

    def slow(self, delay: float, cut: bool = True) -> None:
        """Forward what clients send only ``delay`` seconds after it arrives (a server
        that answers, but late); with ``cut``, close the open connections first."""
        if cut:
            self._cut.set()
        self._delay = delay
        self._wake_w.send(b"x")

    def unblock(self) -> None:
        self._blocked.clear()
        self._wake_w.send(b"x")

    def close(self) -> None:
        self._stop.set()
        self._wake_w.send(b"x")
        self._thread.join(5)
        for sock in list(self._pairs):
            sock.close()
        self._listener.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._send_due()
            wait = 0.5 if not self._due else max(0.0, min(0.5, self._due[0][0] - time.monotonic()))
            for key, _ in self._selector.select(timeout=wait):
                sock = key.fileobj
                if sock is self._wake_r:
                    self._wake_r.recv(4096)
                    self._rearm()
                elif sock is self._listener:
                    self._accept()
                else:
                    self._forward(sock)

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._pairs[client] = upstream
        self._pairs[upstream] = client
        self._clients.add(client)
        self._client_number[client] = next(self._numbers)
        if not self._blocked.is_set():
            self._selector.register(client, selectors.EVENT_READ)
            self._selector.register(upstream, selectors.EVENT_READ)

    def _rearm(self) -> None:
        if self._cut.is_set():
            self._cut.clear()
            for sock in list(self._pairs):
                if sock in self._pairs:  # not dropped already as the other end of a pair
                    self._drop(sock)
        blocked = self._blocked.is_set()
        for sock in list(self._pairs):
            registered = sock in self._selector.get_map()
            if blocked and registered:
                self._selector.unregister(sock)
            elif not blocked and not registered:
                self._selector.register(sock, selectors.EVENT_READ)

    def _forward(self, sock: socket.socket) -> None:
        peer = self._pairs.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        if self.tap is not None and sock in self._clients:
            self.tap(self._client_number[sock], data)
        if self._delay > 0 and sock in self._clients:
            self._sent += 1
            heapq.heappush(self._due, (time.monotonic() + self._delay, self._sent, peer, data))
            return
        self._send(sock, peer, data)

    def _send(self, sock: socket.socket, peer: socket.socket, data: bytes) -> None:
        try:
            peer.setblocking(True)
            peer.sendall(data)
            peer.setblocking(False)
        except OSError:
            self._drop(sock)

    def _send_due(self) -> None:
        now = time.monotonic()
        while self._due and self._due[0][0] <= now:
            _, _, peer, data = heapq.heappop(self._due)
            if peer in self._pairs:
                self._send(self._pairs[peer], peer, data)

    def _drop(self, sock: socket.socket) -> None:
        peer = self._pairs.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._pairs.pop(s, None)
            self._clients.discard(s)
            self._client_number.pop(s, None)
            if s in self._selector.get_map():
                self._selector.unregister(s)
            s.close()


class Wiretap:
    """A proxy's ``tap`` that cuts what each client connection sends into the protocol's
    packets (a ``header`` of fixed length, whose :meth:`size` is the body's) and keeps
    what :meth:`read` makes of each, in order."""

    header = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read: list[object] = []
        self._buffers: dict[int, bytearray] = {}
        self._packets: dict[int, int] = {}

    def size(self, header: bytes) -> int:
        raise NotImplementedError

    def read(self, number: int, header: bytes, body: bytes) -> object | None:
        """What the connection's packet ``number`` (0: its first) says; None: nothing."""
        raise NotImplementedError

    def __call__(self, connection: int, data: bytes) -> None:
        buffer = self._buffers.setdefault(connection, bytearray())
        buffer += data
        while len(buffer) >= self.header:
            header = bytes(buffer[:self.header])
            end = self.header + self.size(header)
            if len(buffer) < end:
                return
            body = bytes(buffer[self.header:end])
            del buffer[:end]
            number = self._packets.get(connection, 0)
            self._packets[connection] = number + 1
            item = self.read(number, header, body)
            if item is not None:
                with self._lock:
                    self._read.append(item)

    def mark(self) -> int:
        with self._lock:
            return len(self._read)

    def since(self, mark: int = 0) -> list:
        with self._lock:
            return self._read[mark:]


@pytest.fixture
def partition_proxy():
    """Factory: ``partition_proxy(host, port[, tap])`` -> PartitionProxy, closed after the
    test."""
    proxies: list[PartitionProxy] = []

    def make(host: str, port: int, tap: Callable[[int, bytes], None] | None = None
             ) -> PartitionProxy:
        proxy = PartitionProxy(host, port, tap)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
