"""A small client of etcd's v3 JSON gateway, standard library only.

Every etcd since 3.4 serves the gRPC gateway on its client port: ``POST /v3/kv/txn``,
``/v3/lease/grant`` … with JSON bodies (keys and values base64, int64s as strings).
This module speaks exactly that, because the one maintained Python client of it
(etcd3gw) cannot bound a call by a time budget of its own, opens watches with no timeout
at all and cannot tell a dead watch from a quiet one, and has neither authentication nor
more than one endpoint. Being standard library only, it also serves the job's keeper
(``handback``), which must not import a client library.

- :meth:`Gateway.call`: one unary call within ``budget`` seconds, over every endpoint in
  turn (the one that answered last first); a member that refuses or is silent is skipped.
- :class:`WatchStream`: one watch (one HTTP request whose answer never ends), read line
  by line with a timeout.

HTTP/1.1 is spoken by hand (:class:`_Connection`, a few dozen lines): every read has a
deadline on a socket this module owns, so a quiet watch read leaves it usable (a timeout
inside ``http.client``'s buffered reader would not), and the keeper's hand-back imports
neither ``http.client`` nor, without TLS, ``ssl``.
"""

from __future__ import annotations

import base64
import json
import re
import select
import socket
import sys
import threading
import time
from collections.abc import Callable

from lelect.backends.addresses import lookup_name
from lelect.frozen import Record

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only
if TYPE_CHECKING:
    import ssl
    from typing import Any, NoReturn, TypeVar

    T = TypeVar("T")

#: gRPC status codes that mean "this member cannot answer now; another one may".
TRANSIENT_CODES = frozenset({1, 4, 8, 10, 14})  # canceled, deadline, exhausted, aborted, unavailable
UNAUTHENTICATED = 16
PERMISSION_DENIED = 7
FAILED_PRECONDITION = 9  # e.g. "authentication is not enabled"
#: Idle connections kept for reuse: one (a candidate's calls rarely overlap; one that
#: does opens a connection of its own and closes it after), so a candidate holds its
#: watch's connection and this one, not one per thread that ever made a call.
MAX_IDLE = 1
#: What an answer may hold; beyond that the server is broken or hostile. etcd's own
#: limit on a request is 1.5 MiB, and lelect's answers are a few records.
MAX_HEAD = 64 * 1024  # status line and header fields (and a chunked body's trailer)
MAX_BODY = 64 << 20  # one answer's body
MAX_WATCH_LINE = 16 << 20  # one JSON line of a watch
MAX_JSON_DEPTH = 32  # arrays and objects within each other


def b64(data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str | bytes | None) -> bytes:
    """A bytes field of an answer: base64 from the JSON gateway; bytes already from gRPC
    (``proto`` decodes them so)."""
    if isinstance(text, bytes):
        return text
    return base64.b64decode(text or "")


def prefix_end(prefix: str) -> str:
    """The range end that makes ``[prefix, end)`` every key starting with ``prefix``
    (etcd's ``WithPrefix``); our prefixes are ASCII and never end in 0x7f."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class Endpoint(Record):
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class TLSFiles(Record):
    """``etcds://``: the CA to verify the server against (None: the system's), and a
    client certificate and key (both or neither)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def context(self) -> ssl.SSLContext:
        import ssl

        context = ssl.create_default_context(cafile=self.ca)
        if self.cert:
            context.load_cert_chain(self.cert, self.key)
        return context


class GatewayError(Exception):
    """A call that failed. ``kind``: "unreachable" (no endpoint answered: refused, silent,
    cut), "auth" (credentials refused), "denied" (no permission), "tls" (the server's
    certificate failed verification), "compacted" (a watch started below the compacted
    revision), "server" (answered with another error). ``code`` is the gRPC status code
    when a server answered; ``refused`` is True when every endpoint refused at once."""

    def __init__(self, kind: str, message: str, *, code: int | None = None,
                 refused: bool = False, compact_revision: int | None = None) -> None:
        message = _printable(message, 400)  # it may carry what a hostile server sent
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code
        self.refused = refused
        self.compact_revision = compact_revision

    @property
    def transient(self) -> bool:
        """Worth trying again soon: nobody answered, or the member could not."""
        return self.kind == "unreachable" or (self.kind == "server" and self.code in TRANSIENT_CODES)


class Garbled(ValueError):
    """The server's answer is not what an etcd gateway sends (a broken or hostile
    server): the endpoint is treated as one that did not answer."""


def loads(data: bytes) -> Any:
    """JSON from a server, refused (:class:`Garbled`) when it is not JSON or nests
    deeper than :data:`MAX_JSON_DEPTH` (checked before parsing: ``[[[…`` would end in
    a RecursionError inside the parser)."""
    brackets = _JSON_STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    for _ in range(MAX_JSON_DEPTH):
        if not brackets:
            break
        brackets = brackets.replace(b"[]", b"").replace(b"{}", b"")
    else:
        if brackets:
            raise Garbled(f"JSON nested deeper than {MAX_JSON_DEPTH}")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise Garbled(f"not JSON: {_shown(data)}") from None


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _shown(data: bytes, limit: int = 60) -> str:
    """A server's bytes, quoted, printable and short, for a message."""
    return repr(_printable(data[: limit * 4].decode("utf-8", "replace"), limit))


def _printable(text: str, limit: int) -> str:
    """``text`` on one line, control characters escaped, at most ``limit`` characters."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit * 4])
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Down(Exception):
    """This endpoint did not answer (or answered "unavailable"): try the next one."""

    def __init__(self, reason: str, refused: bool = False, tls: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.refused = refused
        self.tls = tls


class _TokenRejected(Exception):
    """The auth token expired (etcd forgets simple tokens): authenticate again."""


class Gateway:
    """Calls to one etcd cluster through its members' gateways. Thread-safe: idle
    connections are pooled, one call uses one connection."""

    def __init__(self, endpoints: list[Endpoint] | tuple[Endpoint, ...], *,
                 tls: TLSFiles | None = None, username: str | None = None,
                 password: str | None = None, token: str | None = None) -> None:
        if not endpoints:
            raise ValueError("no endpoints")
        self.endpoints = tuple(endpoints)
        self.username = username
        self._password = password or ""
        self._ssl = tls.context() if tls is not None else None
        self._lock = threading.Lock()
        self._idle: list[_Connection] = []
        self._preferred = 0
        self._token = token  # from an earlier authenticate (the keeper's hand-back)

    @property
    def token(self) -> str | None:
        """The auth token in use (None: not authenticated yet)."""
        with self._lock:
            return self._token

    @property
    def where(self) -> str:
        return ",".join(str(endpoint) for endpoint in self.endpoints)

    # -- unary calls ------------------------------------------------------------------

    def call(self, path: str, body: dict[str, Any], budget: float) -> dict[str, Any]:
        """POST ``body`` to ``/v3/PATH`` and return the answer, within ``budget`` seconds
        in all (every endpoint tried; the auth token renewed once if etcd forgot it)."""
        return self.post(path, encode(body), budget)

    def post(self, path: str, payload: bytes, budget: float) -> dict[str, Any]:
        """:meth:`call` with the body encoded already (:func:`encode`)."""
        deadline = time.monotonic() + budget
        for last_try in (False, True):
            headers = self._headers(deadline)
            try:
                return self._each_endpoint(
                    deadline, lambda endpoint, by, headers=headers: self._post(
                        endpoint, path, payload, headers, by))
            except _TokenRejected as exc:
                with self._lock:
                    self._token = None
                if last_try:
                    raise GatewayError("auth", str(exc), code=UNAUTHENTICATED) from None
        raise AssertionError("unreachable")

    def _each_endpoint(self, deadline: float, attempt: Callable[[Endpoint, float], T]) -> T:
        """``attempt(endpoint, by)`` on each endpoint in turn, the one that answered last
        first, until one answers by the (monotonic) time ``by``: each gets a fair share of
        the time left, so a silent member cannot use up the budget of the others."""
        reasons: list[str] = []
        refusals = 0
        count = len(self.endpoints)
        with self._lock:
            start = self._preferred
        for step in range(count):
            index = (start + step) % count
            endpoint = self.endpoints[index]
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                result = attempt(endpoint, time.monotonic() + left / (count - step))
            except _Down as down:
                reasons.append(f"{endpoint}: {down.reason}")
                refusals += down.refused
                if down.tls:
                    raise GatewayError("tls", "; ".join(reasons)) from None
                continue
            with self._lock:
                self._preferred = index
            return result
        raise GatewayError("unreachable", "; ".join(reasons) or "no time left to try",
                           refused=refusals == count)

    def _post(self, endpoint: Endpoint, path: str, payload: bytes, headers: dict[str, str],
              deadline: float) -> dict[str, Any]:
        reused = self._take_idle(endpoint)
        for connection in ([reused] if reused else []) + [None]:
            fresh = connection is None
            if connection is None:
                connection = _Connection(self._open_socket(endpoint, deadline - time.monotonic()),
                                         endpoint)
            try:
                connection.send(path, payload, headers, deadline)
                status, fields = connection.read_head(deadline)
                data = connection.read_body(fields, deadline)
            except (BrokenPipeError, ConnectionResetError, _Closed) as exc:
                connection.close()
                if fresh:
                    raise _Down(f"connection lost ({_describe(exc)})") from None
                continue  # the server had closed the idle connection: open a new one
            except (OSError, ValueError) as exc:
                connection.close()
                # A refused client certificate shows only now (TLS 1.3 sends the alert late).
                raise _Down(_describe(exc), tls=_is_tls_error(exc)) from None
            if fields.get("connection", "").lower() == "close":
                connection.close()
            else:
                self._give_back(endpoint, connection)
            return _answer(status, data, endpoint)
        raise AssertionError("unreachable")

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]] | None = None, *, budget: float) -> TxnResult:
        """One transaction: if every ``compare`` holds, ``success`` ops, else ``failure``."""
        return self.post_txn(txn_request(compare, success, failure), budget)

    def post_txn(self, request: bytes, budget: float) -> TxnResult:
        """One transaction made by :func:`txn_request` (once, for a txn sent again and again)."""
        return decoded(TxnResult.from_json, self.post("kv/txn", request, budget))

    def range(self, key: str, *, budget: float, **options: Any) -> RangeResult:
        """One range read (options as :func:`get` takes them)."""
        return decoded(RangeResult.from_json,
                       self.call("kv/range", range_request(key, **options), budget))

    # -- connections ------------------------------------------------------------------

    def _open_socket(self, endpoint: Endpoint, within: float) -> socket.socket:
        """A connected (TLS: verified) socket to ``endpoint``, or :class:`_Down`."""
        if within <= 0:
            raise _Down("no time left to connect")
        try:
            sock = socket.create_connection((lookup_name(endpoint.host), endpoint.port),
                                            timeout=within)
        except ConnectionRefusedError:
            raise _Down("connection refused", refused=True) from None
        except OSError as exc:
            raise _Down(_describe(exc)) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl is None:
            return sock
        try:
            return self._ssl.wrap_socket(sock, server_hostname=endpoint.host)
        except OSError as exc:
            sock.close()
            detail = getattr(exc, "verify_message", None)
            raise _Down(f"TLS: {detail}" if detail else f"TLS handshake failed: {_describe(exc)}",
                        tls=_is_tls_error(exc)) from None

    def _take_idle(self, endpoint: Endpoint) -> _Connection | None:
        with self._lock:
            for i, connection in enumerate(self._idle):
                if connection.endpoint == endpoint:
                    del self._idle[i]
                    return connection
        return None

    def _give_back(self, endpoint: Endpoint, connection: _Connection) -> None:
        with self._lock:
            self._idle.append(connection)
            surplus = self._idle[:-MAX_IDLE]
            del self._idle[:-MAX_IDLE]
        for old in surplus:
            old.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    # -- authentication ---------------------------------------------------------------

    def _headers(self, deadline: float) -> dict[str, str]:
        """Request headers, with a token (``POST /v3/auth/authenticate`` first if there
        is none yet) when the URL names a user."""
        headers = {"Content-Type": "application/json"}
        if self.username is None:
            return headers
        token = self._auth_token(deadline, lambda: json.dumps(
            {"name": self.username, "password": self._password}).encode(), headers)
        if token:
            headers["Authorization"] = token
        return headers

    def _auth_token(self, deadline: float, request: Callable[[], bytes],
                    headers: dict[str, str]) -> str:
        """The auth token, from ``Authenticate`` (``request()`` its encoded body) if there
        is none yet; "" when the cluster has authentication off."""
        with self._lock:
            token = self._token
        if token is None:
            body = request()
            try:
                answer = self._each_endpoint(deadline, lambda endpoint, by: self._post(
                    endpoint, "auth/authenticate", body, dict(headers), by))
                token = str(answer.get("token") or "")
            except GatewayError as exc:
                if exc.code != FAILED_PRECONDITION:
                    raise
                token = ""  # authentication is not enabled: etcdctl goes on without a token
            with self._lock:
                self._token = token
        return token

    # -- watches ----------------------------------------------------------------------

    def watch(self, key: str, *, range_end: str | None = None, start_revision: int | None = None,
              budget: float, also: tuple[str, ...] = ()) -> WatchStream:
        """Open a watch on ``key`` (or ``[key, range_end)``), and on each key of ``also``,
        from ``start_revision``, on one stream (one connection); returns once etcd
        confirmed every one of them, within ``budget``."""
        requests = []
        for watched, end in ((key, range_end), *((extra, None) for extra in also)):
            request: dict[str, Any] = {"key": b64(watched)}
            if end is not None:
                request["range_end"] = b64(end)
            if start_revision is not None:
                request["start_revision"] = str(start_revision)
            requests.append({"create_request": request})
        deadline = time.monotonic() + budget
        headers = self._headers(deadline)
        try:
            return self._each_endpoint(deadline, lambda endpoint, by: WatchStream(
                _Connection(self._open_socket(endpoint, by - time.monotonic()), endpoint),
                requests, headers, by))
        except _TokenRejected as exc:
            with self._lock:
                self._token = None
            raise GatewayError("unreachable", f"{exc}: try again") from None


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def txn_request(compare: list[dict[str, Any]], success: list[dict[str, Any]],
                failure: list[dict[str, Any]] | None = None) -> bytes:
    """The body of a ``kv/txn`` call."""
    return encode({"compare": compare, "success": success, "failure": failure or []})


def decoded(decode: Callable[[Any], T], answer: Any) -> T:
    """``decode(answer)``, or GatewayError("server") when the answer does not have the
    shape and types an etcd answer has (a broken or hostile server)."""
    try:
        return decode(answer)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        raise GatewayError("server", "not an etcd answer (unexpected fields or types)") from None


def lease_id(answer: dict[str, Any]) -> int:
    """The ID of a ``lease/grant`` answer."""
    return decoded(lambda raw: int(raw["ID"]), answer)


def _answer(status: int, data: bytes, endpoint: Endpoint | None = None) -> dict[str, Any]:
    """A gateway answer, or the error it carries (``{"error", "code", "message"}``)."""
    try:
        answer = loads(data or b"{}")
    except Garbled as exc:
        where = f"{endpoint}: " if endpoint else ""
        raise GatewayError("server", f"{where}HTTP {status}: not an etcd answer ({exc})") from None
    if status == 200 and isinstance(answer, dict):
        return answer
    code = answer.get("code") if isinstance(answer, dict) else None
    code = code if isinstance(code, int) else None
    message = str(answer.get("error") or answer.get("message")) if isinstance(answer, dict) else ""
    raise_status(code, (message or f"HTTP {status}")[:300])


def raise_status(code: int | None, message: str) -> NoReturn:
    """The error a gRPC status ``code`` (not OK) with ``message`` is, raised: the token
    was forgotten (:class:`_TokenRejected`), the member cannot answer now (:class:`_Down`),
    or a :class:`GatewayError` of its kind."""
    if code == UNAUTHENTICATED and "token" in message:
        raise _TokenRejected(message)
    if code in TRANSIENT_CODES:
        raise _Down(message)
    if code == UNAUTHENTICATED or any(
            sign in message for sign in ("authentication failed", "user name is empty")):
        raise GatewayError("auth", message, code=code)
    if code == PERMISSION_DENIED:
        raise GatewayError("denied", message, code=code)
    raise GatewayError("server", message, code=code)


class WatchEvent(Record):
    kind: str  # "PUT" | "DELETE"
    key: str
    value: bytes
    create_revision: int
    mod_revision: int

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> WatchEvent:
        kv = raw.get("kv") or {}
        return cls(
            kind=raw.get("type", "PUT"),
            key=unb64(kv.get("key")).decode("utf-8", "replace"),
            value=unb64(kv.get("value")),
            create_revision=int(kv.get("create_revision", 0)),
            mod_revision=int(kv.get("mod_revision", 0)),
        )


class _Closed(Exception):
    """The server closed the connection (or ended the body) before answering in full."""


class _Connection:
    """One HTTP/1.1 connection to a member's gateway, spoken by hand: a POST with a JSON
    body; an answer with a Content-Length or a chunked body. Every read has a deadline
    on a socket of our own, so a quiet read (a watch with no news) leaves it usable, as
    a timeout inside ``http.client``'s buffered reader would not."""

    def __init__(self, sock: socket.socket, endpoint: Endpoint) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self._buffer = b""  # received, not yet decoded
        self._chunk_left = 0  # payload bytes still due in the current chunk
        self._crlf_due = False  # the CRLF that ends a chunk's payload

    def send(self, path: str, payload: bytes, headers: dict[str, str], deadline: float) -> None:
        head = [f"POST /v3/{path} HTTP/1.1", f"Host: {self.endpoint}",
                f"Content-Length: {len(payload)}", *(f"{k}: {v}" for k, v in headers.items())]
        self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload)

    def recv(self, deadline: float, wake: Any = None) -> bool:
        """Read what has arrived; False when the deadline passed first, or ``wake``
        (anything with a fileno()) became readable while nothing had arrived."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        pending = getattr(self.sock, "pending", None)  # TLS: bytes decrypted already
        if wake is not None and not (pending is not None and pending()):
            readable, _, _ = select.select([self.sock, wake], [], [], left)
            if self.sock not in readable:
                return False
            left = max(deadline - time.monotonic(), 0.001)
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            raise _Closed("the server closed the connection")
        self._buffer += data
        return True

    def _need(self, deadline: float) -> None:
        if not self.recv(deadline):
            raise TimeoutError("no answer in time")

    def read_head(self, deadline: float) -> tuple[int, dict[str, str]]:
        """The status and the header fields (names in lower case)."""
        while b"\r\n\r\n" not in self._buffer[: MAX_HEAD + 4]:
            if len(self._buffer) > MAX_HEAD:
                raise Garbled(f"HTTP head longer than {MAX_HEAD >> 10} KiB")
            self._need(deadline)
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if not (len(status) >= 2 and status[0] in ("HTTP/1.1", "HTTP/1.0")
                and len(status[1]) == 3 and status[1].isdigit() and status[1].isascii()):
            raise Garbled(f"not an HTTP answer: {_shown(head)}")
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        self._chunk_left, self._crlf_due = 0, False
        return int(status[1]), fields

    def read_body(self, fields: dict[str, str], deadline: float) -> bytes:
        """The whole body of an answer (and its trailer, if chunked)."""
        if fields.get("transfer-encoding", "").lower() != "chunked":
            text = fields.get("content-length", "0")
            if not (text.isascii() and text.isdigit() and int(text) <= MAX_BODY):
                raise Garbled(f"Content-Length {_shown(text.encode('latin-1'))} refused")
            length = int(text)
            while len(self._buffer) < length:
                self._need(deadline)
            body, self._buffer = self._buffer[:length], self._buffer[length:]
            return body
        body = b""
        while True:
            payload, ended = self.decode_chunks()
            body += payload
            if len(body) > MAX_BODY:
                raise Garbled(f"a body longer than {MAX_BODY >> 20} MiB")
            if ended:
                break
            self._need(deadline)
        # The trailer (gRPC's): header lines up to an empty line.
        while not self._buffer.startswith(b"\r\n") and b"\r\n\r\n" not in self._buffer:
            if len(self._buffer) > MAX_HEAD:
                raise Garbled(f"a trailer longer than {MAX_HEAD >> 10} KiB")
            self._need(deadline)
        end = 2 if self._buffer.startswith(b"\r\n") else self._buffer.index(b"\r\n\r\n") + 4
        self._buffer = self._buffer[end:]
        return body

    def decode_chunks(self) -> tuple[bytes, bool]:
        """The chunked body bytes that have arrived, and whether the last chunk came."""
        payload = b""
        while True:
            if self._crlf_due:
                if len(self._buffer) < 2:
                    return payload, False
                self._buffer, self._crlf_due = self._buffer[2:], False
            if self._chunk_left == 0:
                size_line, sep, rest = self._buffer.partition(b"\r\n")
                if not sep:
                    if len(self._buffer) > 1024:
                        raise Garbled("a chunk size line without end")
                    return payload, False
                digits = size_line.split(b";")[0].strip()
                if not (0 < len(digits) <= 8 and all(c in b"0123456789abcdefABCDEF" for c in digits)):
                    raise Garbled(f"not a chunk size: {_shown(size_line)}")
                size = int(digits, 16)
                self._buffer = rest
                if size == 0:
                    return payload, True
                self._chunk_left = size
            taken = self._buffer[: self._chunk_left]
            self._buffer = self._buffer[len(taken):]
            payload += taken
            self._chunk_left -= len(taken)
            if self._chunk_left > 0:
                return payload, False
            self._crlf_due = True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class WatchStream:
    """An open watch (one request whose chunked answer never ends, one JSON object a
    line): :meth:`next` returns the events of the next answer, or None when nothing
    arrived within its timeout; a watch that ended raises GatewayError."""

    def __init__(self, connection: _Connection, requests: list[dict[str, Any]],
                 headers: dict[str, str], deadline: float) -> None:
        self._connection = connection
        self.endpoint = connection.endpoint
        self._payload = b""  # body bytes, not yet a whole line
        self._lines: list[bytes] = []
        # The gateway hands each JSON object of the body to the stream in turn (and
        # keeps the stream open after the body ends): several watches, one connection.
        payload = b"".join(json.dumps(body, separators=(",", ":")).encode("utf-8")
                           for body in requests)

        def send() -> None:
            connection.send("watch", payload, headers, deadline)
            status, fields = connection.read_head(deadline)
            if status != 200:
                _answer(status, connection.read_body(fields, deadline))
                raise _Down(f"HTTP {status}")

        self._begin(send, len(requests), deadline)

    def _begin(self, send: Callable[[], None], count: int, deadline: float,
               what: str = "") -> None:
        """Send the watch requests (``send``) and read the answers saying each of the
        ``count`` watches was created: the stream's :attr:`revision`. Anything else
        closes the stream and raises _Down (``what`` before the reason)."""
        try:
            send()
            created = [self._next_result(deadline) for _ in range(count)]
        except (OSError, ValueError, _Closed) as exc:
            self.close()
            raise _Down(what + _describe(exc)) from None
        except BaseException:
            self.close()
            raise
        if not all(result is not None and result.get("created") for result in created):
            self.close()
            raise _Down("no answer to the watch request in time")
        try:
            #: The store revision etcd reported last on this watch.
            self.revision = int(created[-1].get("header", {}).get("revision", 0))
        except (AttributeError, TypeError, ValueError):
            self.close()
            raise _Down("not an etcd answer to the watch request") from None

    def next(self, timeout: float, wake: Any = None) -> list[WatchEvent] | None:
        """The events of the next answer ([] for a progress note), or None if nothing
        came within ``timeout`` or ``wake`` (anything with a fileno()) became readable.
        Raises GatewayError when the watch ended."""
        try:
            result = self._next_result(time.monotonic() + timeout, wake)
        except (OSError, ValueError, _Closed) as exc:
            self.close()
            raise GatewayError("unreachable",
                               f"watch on {self.endpoint} ended: {_describe(exc)}") from None
        if result is None:
            return None
        try:
            if result.get("canceled"):
                compacted = int(result.get("compact_revision") or 0)
                reason = str(result.get("cancel_reason", ""))[:200]
            else:
                compacted, reason = 0, None
            revision = result.get("header", {}).get("revision")
            events = [WatchEvent.from_json(raw) for raw in result.get("events") or ()]
        except (AttributeError, TypeError, ValueError):
            self.close()
            raise GatewayError("unreachable",
                               f"watch on {self.endpoint} ended: not an etcd answer") from None
        if reason is not None:
            self.close()
            if compacted:
                raise GatewayError("compacted", f"watch revision compacted (at {compacted})",
                                   compact_revision=compacted)
            raise GatewayError("unreachable", f"watch canceled: {reason}")
        if revision:
            self.revision = int(revision)
        return events

    def close(self) -> None:
        self._connection.close()

    def _next_result(self, deadline: float, wake: Any = None) -> dict[str, Any] | None:
        while True:
            payload, ended = self._connection.decode_chunks()
            *whole, self._payload = (self._payload + payload).split(b"\n")
            if len(self._payload) > MAX_WATCH_LINE:
                raise Garbled(f"a watch line longer than {MAX_WATCH_LINE >> 20} MiB")
            self._lines.extend(line for line in whole if line.strip())
            if self._lines:
                message = loads(self._lines.pop(0))
                if not isinstance(message, dict):
                    raise Garbled(f"not a watch answer: {type(message).__name__}")
                if "error" in message:
                    error = message["error"]
                    detail = error.get("message", error) if isinstance(error, dict) else error
                    raise _Closed(f"watch error: {_printable(str(detail), 200)}")
                result = message.get("result", {})
                if not isinstance(result, dict):
                    raise Garbled(f"not a watch answer: result is {type(result).__name__}")
                return result
            if ended:
                raise _Closed("the server ended the watch")
            if not self._connection.recv(deadline, wake):
                return None


def _is_tls_error(exc: BaseException) -> bool:
    """An SSL error (ssl is imported only where TLS is used: it costs the keeper time)."""
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(exc, ssl.SSLError)


def _describe(exc: BaseException) -> str:
    if _is_tls_error(exc):
        return f"TLS: {exc.reason or exc}".replace("_", " ").lower().replace("tls: ", "TLS: ")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = str(exc) or type(exc).__name__
    return text


# -- the pieces of a transaction, as the gateway spells them --------------------------------


class KeyValue(Record):
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> KeyValue:
        return cls(
            key=unb64(raw.get("key")).decode("utf-8", "replace"),
            value=unb64(raw.get("value")),
            create_revision=int(raw.get("create_revision", 0)),
            mod_revision=int(raw.get("mod_revision", 0)),
            lease=int(raw.get("lease", 0)),
        )


class RangeResult(Record):
    revision: int  # the store revision the range was read at
    kvs: tuple[KeyValue, ...]
    count: int

    @classmethod
    def from_json(cls, raw: dict[str, Any], revision: int | None = None) -> RangeResult:
        kvs = tuple(KeyValue.from_json(kv) for kv in raw.get("kvs", ()))
        if revision is None:
            revision = int(raw.get("header", {}).get("revision", 0))
        return cls(revision, kvs, int(raw.get("count", len(kvs))))

    @property
    def first(self) -> KeyValue | None:
        return self.kvs[0] if self.kvs else None


class TxnResult(Record):
    succeeded: bool
    revision: int  # the store revision after the txn (its own, if it wrote)
    ranges: tuple[RangeResult | None, ...]  # one per op; None for writes

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TxnResult:
        revision = int(raw.get("header", {}).get("revision", 0))
        ranges = tuple(
            RangeResult.from_json(r["response_range"], revision) if "response_range" in r else None
            for r in raw.get("responses", ())
        )
        return cls(bool(raw.get("succeeded", False)), revision, ranges)


def created_at(key: str, revision: int) -> dict[str, Any]:
    """Compare: ``key`` was created at ``revision`` (0: it does not exist). With a
    range end, every key in ``[key, range_end)`` must be."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}


def none_created_before(prefix: str, revision: int) -> dict[str, Any]:
    """Compare: no key under ``prefix`` was created before ``revision`` (every key in
    the range was created after ``revision - 1``; etcd compares each key of a range)."""
    return {"key": b64(prefix), "range_end": b64(prefix_end(prefix)), "target": "CREATE",
            "result": "GREATER", "create_revision": str(revision - 1)}


def modified_at(key: str, revision: int) -> dict[str, Any]:
    """Compare: ``key`` was last written at ``revision``."""
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def put(key: str, value: str | bytes, lease: int | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def delete(key: str, range_end: str | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {"key": b64(key)}
    if range_end is not None:
        request["range_end"] = b64(range_end)
    return {"request_delete_range": request}


def get(key: str, *, prefix: bool = False, range_end: str | None = None,
        first_by: str | None = None, last_by: str | None = None, limit: int | None = None,
        keys_only: bool = False, count_only: bool = False,
        max_create_revision: int | None = None, serializable: bool = False) -> dict[str, Any]:
    """A range op: ``key`` (``prefix``: every key under it), sorted ascending by
    ``first_by`` or descending by ``last_by`` ("KEY", "CREATE", "MOD"). A txn whose every
    op is a ``serializable`` read is answered from the member's own store at once (no
    round through raft, no wait behind writes being committed); it may be behind the
    cluster: its revision says how far."""
    return {"request_range": range_request(
        key, prefix=prefix, range_end=range_end, first_by=first_by, last_by=last_by,
        limit=limit, keys_only=keys_only, count_only=count_only,
        max_create_revision=max_create_revision, serializable=serializable)}


def range_request(key: str, *, prefix: bool = False, range_end: str | None = None,
                  first_by: str | None = None, last_by: str | None = None,
                  limit: int | None = None, keys_only: bool = False, count_only: bool = False,
                  max_create_revision: int | None = None,
                  serializable: bool = False) -> dict[str, Any]:
    request: dict[str, Any] = {"key": b64(key)}
    if serializable:
        request["serializable"] = True
    if prefix:
        range_end = prefix_end(key)
    if range_end is not None:
        request["range_end"] = b64(range_end)
    if first_by or last_by:
        request["sort_target"] = first_by or last_by
        request["sort_order"] = "ASCEND" if first_by else "DESCEND"
    if limit is not None:
        request["limit"] = str(limit)
    if keys_only:
        request["keys_only"] = True
    if count_only:
        request["count_only"] = True
    if max_create_revision is not None:
        request["max_create_revision"] = str(max_create_revision)
    return request
