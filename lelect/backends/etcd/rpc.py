"""etcd's gRPC API over one HTTP/2 connection per member, standard library only.

:class:`GrpcGateway` is a :class:`~lelect.backends.etcd.gateway.Gateway` (the same
verbs, the same dicts, the same errors, the same failover over endpoints) that speaks
gRPC as etcdctl does: unary calls, the lease keep-alive and watches are streams of one
connection (:mod:`lelect.backends.etcd.h2`), so a candidate holds one connection to its
server where the JSON gateway needed one per open watch as well. Plain TCP: HTTP/2 with
prior knowledge; TLS: ALPN "h2". Messages: :mod:`lelect.backends.etcd.proto`.
"""

from __future__ import annotations

import os
import select
import threading
import time

from lelect.backends.etcd import h2, proto
from lelect.backends.etcd.gateway import (
    MAX_BODY,
    Endpoint,
    Garbled,
    Gateway,
    GatewayError,
    TLSFiles,
    TxnResult,
    WatchStream,
    _Closed,
    _Down,
    _printable,
    _TokenRejected,
    decoded,
    raise_status,
)

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only
if TYPE_CHECKING:
    from typing import Any

#: Gateway path -> (gRPC method, request schema, answer schema).
METHODS = {
    "kv/range": ("/etcdserverpb.KV/Range", "RangeRequest", "RangeResponse"),
    "kv/put": ("/etcdserverpb.KV/Put", "PutRequest", "PutResponse"),
    "kv/deleterange": ("/etcdserverpb.KV/DeleteRange", "DeleteRangeRequest", "DeleteRangeResponse"),
    "kv/txn": ("/etcdserverpb.KV/Txn", "TxnRequest", "TxnResponse"),
    "lease/grant": ("/etcdserverpb.Lease/LeaseGrant", "LeaseGrantRequest", "LeaseGrantResponse"),
    "lease/revoke": ("/etcdserverpb.Lease/LeaseRevoke", "LeaseRevokeRequest",
                     "LeaseRevokeResponse"),
    # A stream: one request (ending our side), one answer, then the server's status.
    "lease/keepalive": ("/etcdserverpb.Lease/LeaseKeepAlive", "LeaseKeepAliveRequest",
                        "LeaseKeepAliveResponse"),
    "auth/authenticate": ("/etcdserverpb.Auth/Authenticate", "AuthenticateRequest",
                          "AuthenticateResponse"),
}
WATCH = "/etcdserverpb.Watch/Watch"
#: gRPC statuses an HTTP status means (gRPC's "HTTP to gRPC status code mapping").
_HTTP_TRANSIENT = frozenset({429, 502, 503, 504})


def message(payload: bytes) -> bytes:
    """One gRPC message: uncompressed, 4-byte length, payload."""
    return b"\0" + len(payload).to_bytes(4, "big") + payload


def txn_request(compare: list[dict[str, Any]], success: list[dict[str, Any]],
                failure: list[dict[str, Any]] | None = None) -> bytes:
    """A ``kv/txn`` request, encoded (once, for a txn sent again and again)."""
    return proto.encode("TxnRequest", {"compare": compare, "success": success,
                                       "failure": failure or []})


def take_message(stream: h2.Stream) -> bytes | None:
    """The next whole gRPC message of ``stream`` (its connection's lock held), or None."""
    data = stream.data
    if len(data) < 5:
        return None
    if data[0] != 0:
        raise Garbled("a compressed gRPC message (none was asked for)")
    length = int.from_bytes(data[1:5], "big")
    if length > MAX_BODY:
        raise Garbled(f"a gRPC message longer than {MAX_BODY >> 20} MiB")
    if len(data) < 5 + length:
        return None
    payload = bytes(data[5:5 + length])
    del data[:5 + length]
    return payload


def _percent_decoded(text: str) -> str:
    if "%" not in text:
        return text
    raw, out, i = text.encode("latin-1"), bytearray(), 0
    while i < len(raw):
        if raw[i] == 0x25 and i + 2 < len(raw) and all(
                c in b"0123456789abcdefABCDEF" for c in raw[i + 1:i + 3]):
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "replace")


def check_status(stream: h2.Stream, endpoint: Endpoint) -> None:
    """Raise what the answer's HTTP status and gRPC status (trailers, or the headers of
    a trailers-only answer) say when they are not OK; nothing when OK."""
    headers = dict(stream.headers or ())
    status = headers.get(":status", "")
    if status != "200":
        if status.isdigit() and int(status) in _HTTP_TRANSIENT:
            raise _Down(f"HTTP {status}")
        raise GatewayError("server", f"{endpoint}: HTTP {_printable(status, 20)}: "
                                     "not an etcd gRPC answer")
    fields = dict(stream.trailers) if stream.trailers is not None else headers
    code = fields.get("grpc-status")
    if code is None:
        raise Garbled("the answer ended without a gRPC status")
    if not (code.isascii() and code.isdigit() and len(code) <= 3):
        raise Garbled(f"grpc-status {_printable(code, 20)!r}")
    if code != "0":
        text = _percent_decoded(fields.get("grpc-message", ""))
        raise_status(int(code), _printable(text, 300) or f"gRPC status {code}")


class GrpcGateway(Gateway):
    """Calls to one etcd cluster over gRPC: one HTTP/2 connection, to the member that
    answered last (another is opened only while failing over, and the old one closes
    once no stream uses it)."""

    def __init__(self, endpoints: list[Endpoint] | tuple[Endpoint, ...], *,
                 tls: TLSFiles | None = None, username: str | None = None,
                 password: str | None = None, token: str | None = None) -> None:
        super().__init__(endpoints, tls=tls, username=username, password=password, token=token)
        if self._ssl is not None:
            self._ssl.set_alpn_protocols(["h2"])
        self._connections: dict[Endpoint, h2.Connection] = {}
        self._draining: list[h2.Connection] = []
        self._opening = threading.Lock()
        self._closed = False

    def call(self, path: str, body: dict[str, Any], budget: float) -> dict[str, Any]:
        return self.post(path, proto.encode(METHODS[path][1], body), budget)

    def post_txn(self, request: bytes, budget: float) -> TxnResult:
        return decoded(TxnResult.from_json, self.post("kv/txn", request, budget))

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]] | None = None, *, budget: float) -> TxnResult:
        return self.post_txn(txn_request(compare, success, failure), budget)

    # -- connections ------------------------------------------------------------------------

    def _connection(self, endpoint: Endpoint, deadline: float) -> tuple[h2.Connection, bool]:
        """The connection to ``endpoint`` (opened if there is none usable), and whether
        it is new."""
        with self._lock:
            connection = self._connections.get(endpoint)
        if connection is not None and connection.usable:
            return connection, False
        if not self._opening.acquire(timeout=max(deadline - time.monotonic(), 0.001)):
            raise _Down("timed out")
        try:
            with self._lock:
                if self._closed:
                    raise _Down("the client is closed")
                connection = self._connections.get(endpoint)
            if connection is not None and connection.usable:
                return connection, False
            sock = self._open_socket(endpoint, deadline - time.monotonic())
            if self._ssl is not None and sock.selected_alpn_protocol() != "h2":  # type: ignore[attr-defined]
                sock.close()
                raise _Down("the server does not offer HTTP/2 over TLS (ALPN h2)")
            connection = h2.Connection(sock, str(endpoint), "https" if self._ssl else "http")
            with self._lock:
                old = self._connections.get(endpoint)
                self._connections[endpoint] = connection
                if old is not None and old.closed is None:
                    # Going away (GOAWAY): the streams it still carries end by themselves,
                    # then the server closes it; close() closes it if it is still open.
                    self._draining = [c for c in self._draining if c.closed is None] + [old]
            return connection, True
        finally:
            self._opening.release()

    def _settle(self, endpoint: Endpoint) -> None:
        """``endpoint`` answered: close the connections to others that no stream uses."""
        with self._lock:
            others = [(e, c) for e, c in self._connections.items() if e != endpoint]
        for other, connection in others:
            if connection.idle():
                with self._lock:
                    if self._connections.get(other) is connection:
                        del self._connections[other]
                connection.close("another member answers")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._connections = list(self._connections.values()), {}
            connections += self._draining
            self._draining = []
        for connection in connections:
            connection.close()
        super().close()

    # -- unary calls ------------------------------------------------------------------------

    def _post(self, endpoint: Endpoint, path: str, payload: bytes, headers: dict[str, str],
              deadline: float) -> dict[str, Any]:
        method, _, answer = METHODS[path]
        for _attempt in (1, 2):
            connection, fresh = self._connection(endpoint, deadline)
            stream = None
            started = time.monotonic()
            try:
                stream = connection.open(self._metadata(method, headers, deadline),
                                         message(payload), deadline)
                if not stream.wait(lambda: False, deadline):
                    if connection.last_read < started:
                        # Not a byte since the call began: the member may be gone without
                        # a word (frozen, cut off); the next call opens a fresh connection.
                        # One that is only slow keeps it (and the other calls on it).
                        connection.close("timed out")
                    raise _Down("timed out")
                payloads = self._answer(connection, stream, endpoint)
            except h2.StreamError as exc:
                if exc.code == h2.REFUSED_STREAM or (
                        not fresh and (stream is None or stream.headers is None) and exc.code == 0):
                    # Refused (never processed: GOAWAY, REFUSED_STREAM), or the server had
                    # dropped the idle connection: once more, on a fresh connection.
                    continue
                raise _Down(f"connection lost ({exc})") from None
            except Garbled as exc:
                connection.close(str(exc))
                raise GatewayError("server", f"{endpoint}: not an etcd answer ({exc})") from None
            except TimeoutError as exc:
                connection.close("timed out")
                raise _Down(str(exc)) from None
            finally:
                if stream is not None:
                    connection.done(stream)
            if len(payloads) != 1:
                raise GatewayError("server", f"{endpoint}: {len(payloads)} gRPC answers to one call")
            try:
                result = proto.decode(answer, payloads[0])
            except Garbled as exc:
                raise GatewayError("server", f"{endpoint}: not an etcd answer ({exc})") from None
            self._settle(endpoint)
            return result
        raise _Down("connection lost")

    def _answer(self, connection: h2.Connection, stream: h2.Stream,
                endpoint: Endpoint) -> list[bytes]:
        """The messages of an ended stream, once its status is OK."""
        with connection.lock:
            error = stream.error
            if error is None:
                payloads = []
                while (payload := take_message(stream)) is not None:
                    payloads.append(payload)
                if stream.data:
                    raise Garbled("a gRPC message cut short")
        if error is not None:
            raise error
        check_status(stream, endpoint)
        return payloads

    def _metadata(self, method: str, headers: dict[str, str],
                  deadline: float) -> list[tuple[str, str]]:
        timeout = max(int((deadline - time.monotonic()) * 1000), 1)
        return [(":path", method), ("content-type", "application/grpc"), ("te", "trailers"),
                ("grpc-timeout", f"{timeout}m"), *headers.items()]

    # -- authentication -------------------------------------------------------------------

    def _headers(self, deadline: float) -> dict[str, str]:
        """gRPC metadata: the auth token (Authenticate first if there is none yet) when
        the URL names a user."""
        if self.username is None:
            return {}
        token = self._auth_token(deadline, lambda: proto.encode(
            "AuthenticateRequest", {"name": self.username, "password": self._password}), {})
        return {"token": token} if token else {}

    # -- watches ----------------------------------------------------------------------------

    def watch(self, key: str, *, range_end: str | None = None, start_revision: int | None = None,
              budget: float, also: tuple[str, ...] = ()) -> WatchStream:
        """Open a watch on ``key`` (or ``[key, range_end)``), and on each key of ``also``,
        from ``start_revision``, on one stream; returns once etcd confirmed every one of
        them, within ``budget``."""
        requests = []
        for watched, end in ((key, range_end), *((extra, None) for extra in also)):
            request: dict[str, Any] = {"key": watched.encode("utf-8")}
            if end is not None:
                request["range_end"] = end.encode("utf-8")
            if start_revision is not None:
                request["start_revision"] = start_revision
            requests.append(message(proto.encode("WatchRequest", {"create_request": request})))
        deadline = time.monotonic() + budget
        headers = self._headers(deadline)

        def attempt(endpoint: Endpoint, by: float) -> WatchStream:
            connection, _ = self._connection(endpoint, by)
            stream = GrpcWatchStream(connection, endpoint,
                                     self._metadata(WATCH, headers, by)[:3] + list(headers.items()),
                                     requests, by)
            self._settle(endpoint)
            return stream

        try:
            return self._each_endpoint(deadline, attempt)
        except _TokenRejected as exc:
            with self._lock:
                self._token = None
            raise GatewayError("unreachable", f"{exc}: try again") from None


class GrpcWatchStream(WatchStream):
    """One watch stream (several watches on it) on a shared connection: :meth:`next` as
    the gateway's; closing it cancels the stream, not the connection."""

    def __init__(self, connection: h2.Connection, endpoint: Endpoint,
                 metadata: list[tuple[str, str]], requests: list[bytes], deadline: float) -> None:
        self._h2 = connection
        self.endpoint = endpoint
        self._pipe: tuple[int, ...] = os.pipe()
        os.set_blocking(self._pipe[1], False)
        self._stream: h2.Stream | None = None

        def send() -> None:
            self._stream = connection.open(metadata, None, deadline)
            with connection.lock:
                self._stream.notify = self._notify
            self._stream.send_data(b"".join(requests), False, deadline)

        self._begin(send, len(requests), deadline, what="watch: ")

    def next(self, timeout: float, wake: Any = None) -> list[Any] | None:
        try:
            return super().next(timeout, wake)
        except (_TokenRejected, _Down) as exc:  # the server ended the watch with a status
            self.close()
            raise GatewayError("unreachable", f"watch on {self.endpoint} ended: {exc}") from None

    def _notify(self) -> None:  # by the I/O thread, its lock held
        try:
            os.write(self._pipe[1], b"x")
        except OSError:
            pass

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            with self._h2.lock:
                stream.notify = None
            self._h2.done(stream)
        pipe, self._pipe = self._pipe, ()
        for fd in pipe:
            os.close(fd)

    def _next_result(self, deadline: float, wake: Any = None) -> dict[str, Any] | None:
        stream = self._stream
        if stream is None:
            raise _Closed("the watch was closed")
        while True:
            with self._h2.lock:
                payload = take_message(stream)
                ended, error = stream.ended, stream.error
            if payload is not None:
                self._h2.consumed(stream, 5 + len(payload))
                return proto.decode("WatchResponse", payload)
            if error is not None:
                raise error
            if ended:
                check_status(stream, self.endpoint)
                raise _Closed("the server ended the watch")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            fds = [self._pipe[0]] + ([wake] if wake is not None else [])
            readable, _, _ = select.select(fds, [], [], left)
            if self._pipe[0] in readable:
                os.read(self._pipe[0], 4096)
            elif readable:
                return None  # woken
