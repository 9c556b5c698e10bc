"""lelect's own client of PostgreSQL's frontend/backend protocol (v3), standard library
only: the backend's connections and the keeper's hand-back both speak through it.

What it speaks: a start-up message, TLS when asked (SSLRequest, then ``ssl`` as
libpq's sslmode says), password authentication (SCRAM-SHA-256, md5, cleartext, or none
for trust; only what ``require_auth`` allows, as libpq), the simple Query protocol with
its answers converted by type OID, and asynchronous notifications (LISTEN/NOTIFY),
collected whenever they arrive. Every read has a deadline (monotonic) and a size cap; a
server's ErrorResponse becomes a :class:`ServerError` carrying its SQLSTATE, and a
server's text is made printable and short before anybody shows it.

``ssl`` is imported only when TLS is used, and never ``hashlib`` or ``hmac``: SCRAM's
PBKDF2 and HMAC and md5's digest run on Python's own SHA-256 and MD5 (OpenSSL's
libcrypto, which hashlib maps, is megabytes a waiting candidate need not carry).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections import namedtuple

from lelect.backends.hashes import md5, sha256

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only
if TYPE_CHECKING:
    from typing import Any

PROTOCOL_3_0 = 196608
SSL_REQUEST = 80877103
#: The longest message a server may send (a row; lelect's rows are small records).
MAX_MESSAGE = 16 << 20
#: The most a query's rows may take together, and the most notifications kept unread.
MAX_RESULT = 64 << 20
MAX_PENDING = 10_000
#: What one poll of an idle connection reads before it looks at what it read.
POLL_READ = 1 << 18
#: SCRAM iteration counts accepted: RFC 7677's minimum, and a bound that a server cannot
#: use to keep the client hashing (PostgreSQL's default is 4096).
MIN_ITERATIONS = 4096
MAX_ITERATIONS = 10_000_000
#: libpq's require_auth methods, and what each authentication request code is.
AUTH_METHODS = {"password", "md5", "gss", "sspi", "scram-sha-256", "none"}
_METHOD_OF_CODE = {3: "password", 5: "md5", 7: "gss", 9: "sspi", 10: "scram-sha-256"}


# -- errors ---------------------------------------------------------------------------------


class Error(Exception):
    """Anything that went wrong talking to PostgreSQL."""

    sqlstate: str | None = None


class OperationalError(Error):
    """The connection could not be made, broke, or was refused before a query ran."""


class ProtocolError(OperationalError):
    """The other side does not speak PostgreSQL's protocol as it must (or too much of it)."""


class Timeout(OperationalError):
    """No answer within the deadline; the connection must not be used again."""


class ServerError(Error):
    """A server's ErrorResponse: ``sqlstate``, ``severity`` and its message (printable)."""

    def __init__(self, message: str, sqlstate: str | None = None, severity: str = "ERROR"
                 ) -> None:  # fmt: skip
        super().__init__(message)
        self.sqlstate = sqlstate
        self.severity = severity


class InsufficientPrivilege(ServerError):
    SQLSTATE = "42501"


class ReadOnlySqlTransaction(ServerError):
    SQLSTATE = "25006"


class QueryCanceled(ServerError):
    SQLSTATE = "57014"


class LockNotAvailable(ServerError):
    SQLSTATE = "55P03"


class UndefinedTable(ServerError):
    SQLSTATE = "42P01"


class InvalidSchemaName(ServerError):
    SQLSTATE = "3F000"


class SerializationFailure(ServerError):
    SQLSTATE = "40001"


class DeadlockDetected(ServerError):
    SQLSTATE = "40P01"


_BY_SQLSTATE = {cls.SQLSTATE: cls for cls in (
    InsufficientPrivilege, ReadOnlySqlTransaction, QueryCanceled, UndefinedTable,
    InvalidSchemaName, SerializationFailure, DeadlockDetected, LockNotAvailable)}  # fmt: skip


def server_error(payload: bytes) -> ServerError:
    """An ErrorResponse's fields as the exception of its SQLSTATE."""
    fields: dict[str, str] = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = printable(part[1:].decode("utf-8", "replace"), 300)
    sqlstate = fields.get("C")
    severity = fields.get("V") or fields.get("S") or "ERROR"
    cls = _BY_SQLSTATE.get(sqlstate or "", ServerError)
    return cls(f"{severity}: {fields.get('M', 'unknown error')}", sqlstate, severity)


class Notify(namedtuple("Notify", "channel payload pid")):
    """An asynchronous notification (NOTIFY channel, payload) from server process ``pid``
    (``channel`` and ``payload`` are str, ``pid`` an int)."""

    __slots__ = ()


# -- one connection ------------------------------------------------------------------------


class Wire:
    """One connection speaking the frontend/backend protocol. Every read and write is
    bounded by ``deadline`` (monotonic; callers set it per call) and every message by
    ``max_message``. ``params`` is how this connection was made (one host), what a
    keeper needs to make it again."""

    def __init__(self, sock: socket.socket, deadline: float, params: dict[str, Any],
                 max_message: int = MAX_MESSAGE) -> None:  # fmt: skip
        self.sock = sock
        self.deadline = deadline
        self.params = params
        self.max_message = max_message
        self.tls = False
        self.broken = False
        #: The session settings of lelect's first statement were applied (PgSession).
        self.configured = False
        #: ParameterStatus values the server reported (in_hot_standby, server_version, …).
        self.status: dict[str, str] = {}
        self.notifies: list[Notify] = []
        self._buffer = bytearray()

    @classmethod
    def connect(cls, params: dict[str, Any], deadline: float,
                max_message: int = MAX_MESSAGE) -> Wire:  # fmt: skip
        """Connect to the one server ``params`` names (``host``: a name or a socket
        directory; ``hostaddr``: its address, if known) and start a session."""
        mode = params.get("sslmode") or "prefer"
        unix = (params.get("host") or "").startswith("/") and not params.get("hostaddr")
        if unix or mode == "disable":
            tries = [False]
        elif params.get("tls") is not None:  # the keeper: as the leadership's connection
            tries = [bool(params["tls"])]
        elif mode == "allow":
            tries = [False, True]
        elif mode == "prefer":
            tries = [True, False]
        else:
            tries = [True]
        optional = mode in ("allow", "prefer") and params.get("tls") is None
        for number, tls in enumerate(tries):
            last = number == len(tries) - 1
            wire = cls(open_socket(params, deadline), deadline, params, max_message)
            try:
                if tls:
                    wire._start_tls(params, optional=optional)
                wire._startup(params)
                return wire
            except ServerError:
                wire.close()
                # allow: a refused plain session tries TLS; prefer: a refused TLS one, plain.
                if last or (tls and not wire.tls):
                    raise
            except TlsFailed:
                wire.close()
                if last or mode != "prefer":  # prefer: a failed handshake goes plain
                    raise
            except BaseException:
                wire.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    # -- framing ------------------------------------------------------------------------

    def fileno(self) -> int:
        return self.sock.fileno()

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.broken = True
            raise Timeout("no answer in time")
        return left

    def _send(self, data: bytes) -> None:
        try:
            self.sock.settimeout(self._left())
            self.sock.sendall(data)
        except TimeoutError:
            self.broken = True
            raise Timeout("no answer in time") from None
        except OSError as exc:
            self.broken = True
            raise OperationalError(f"the connection broke: {exc}") from None

    def _fill(self, block: bool = True) -> bool:
        """Read what the server sent (waiting up to the deadline if ``block``); False if
        nothing was there (only when not blocking)."""
        try:
            if block:
                self.sock.settimeout(self._left())
            else:
                self.sock.settimeout(0.0)
            chunk = self.sock.recv(65536)
        except TimeoutError:
            if not block:
                return False
            self.broken = True
            raise Timeout("no answer in time") from None
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if not block and type(exc).__name__ == "SSLWantReadError":
                return False
            self.broken = True
            raise OperationalError(f"the connection broke: {exc}") from None
        if not chunk:
            self.broken = True
            raise OperationalError("the server closed the connection")
        self._buffer += chunk
        return True

    def _complete(self) -> tuple[bytes, bytes] | None:
        """The next message in the buffer, if it has arrived whole."""
        if len(self._buffer) < 5:
            return None
        kind, length = struct.unpack_from("!cI", self._buffer)
        if not 4 <= length <= self.max_message:
            self.broken = True
            raise ProtocolError(f"not a PostgreSQL answer: a message of {length} bytes")
        if len(self._buffer) < length + 1:
            return None
        body = bytes(self._buffer[5 : length + 1])
        del self._buffer[: length + 1]
        return kind, body

    def _message(self) -> tuple[bytes, bytes]:
        """The next message other than a notification, notice or parameter status."""
        while True:
            message = self._complete()
            if message is None:
                self._fill()
                continue
            if not self._aside(*message):
                return message

    def _aside(self, kind: bytes, body: bytes) -> bool:
        """Take in what may come at any time; True if ``kind`` was one of those."""
        if kind == b"A":
            if len(self.notifies) >= MAX_PENDING:
                self.broken = True
                raise ProtocolError(f"more than {MAX_PENDING} notifications unread: a flood")
            try:
                (pid,) = struct.unpack_from("!i", body)
                channel, payload, _ = body[4:].split(b"\0", 2)
            except (struct.error, ValueError):
                self.broken = True
                raise ProtocolError("not a PostgreSQL answer: a garbled notification") from None
            self.notifies.append(Notify(channel.decode("utf-8", "replace"),
                                        payload.decode("utf-8", "replace"), pid))  # fmt: skip
            return True
        if kind == b"S":
            name, value, *_ = body.split(b"\0") + [b"", b""]
            self.status[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
            return True
        return kind == b"N"  # a NoticeResponse: nobody reads them

    def _send_message(self, kind: bytes, body: bytes) -> None:
        self._send(kind + struct.pack("!I", len(body) + 4) + body)

    def poll(self) -> None:
        """Take in what has arrived without waiting (notifications; an error the server
        sent before closing, such as a terminated backend's, is raised)."""
        ended: Error | None = None
        try:
            while self._fill(block=False):
                if len(self._buffer) > POLL_READ:
                    break  # parse before reading on: a flood is caught by its count
        except Error as exc:
            ended = exc
        while (message := self._complete()) is not None:
            if not self._aside(*message):
                self.broken = True
                kind, body = message
                if kind == b"E":
                    raise server_error(body)
                raise ProtocolError(f"not a PostgreSQL answer: message {kind!r} out of turn")
        if ended is not None:
            raise ended

    def _buffer_pending(self) -> bool:
        return bool(self._buffer) or bool(self.tls and self.sock.pending())  # type: ignore[attr-defined]

    def readable_now(self) -> bool:
        """Something is already read (or decrypted) and waits to be looked at: a select()
        on the socket would not see it."""
        return bool(self.notifies) or self._buffer_pending()

    # -- start-up -----------------------------------------------------------------------

    def _start_tls(self, params: dict[str, Any], optional: bool) -> bool:
        self._send(struct.pack("!II", 8, SSL_REQUEST))
        while len(self._buffer) < 1:
            self._fill()
        answer = bytes(self._buffer[:1])
        del self._buffer[:1]
        if answer == b"N":
            if optional:
                return False
            raise TlsFailed("the server does not accept TLS connections (sslmode="
                            f"{params.get('sslmode') or 'prefer'})")
        if answer != b"S" or self._buffer:
            self.broken = True
            raise ProtocolError(f"not a PostgreSQL answer to SSLRequest: {shown(answer)}")
        import ssl

        context = tls_context(params)
        host = params.get("host") or ""
        server_hostname = host if params.get("sslsni", True) not in (False, "0") and _is_name(host) else None
        if context.check_hostname:
            server_hostname = host
        try:
            self.sock.settimeout(self._left())
            self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        except TimeoutError:
            self.broken = True
            raise Timeout("no answer in time (TLS handshake)") from None
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self.broken = True
            raise TlsFailed(f"SSL error: {exc}") from None
        self.tls = True
        return True

    def _startup(self, params: dict[str, Any]) -> None:
        user = params.get("user") or ""
        fields = {
            "user": user,
            "database": params.get("dbname") or user,
            "application_name": params.get("application_name") or "lelect",
            "client_encoding": "UTF8",
        }
        if params.get("options"):
            fields["options"] = params["options"]
        body = struct.pack("!I", PROTOCOL_3_0)
        for name, value in fields.items():
            body += name.encode() + b"\0" + str(value).encode("utf-8", "surrogateescape") + b"\0"
        body += b"\0"
        self._send(struct.pack("!I", len(body) + 4) + body)
        allowed = allowed_methods(params.get("require_auth"))
        scram: Scram | None = None
        used = "none"
        while True:
            kind, payload = self._message()
            if kind == b"E":
                self.broken = True
                raise server_error(payload)
            if kind == b"Z":
                return
            if kind != b"R":
                continue  # BackendKeyData
            if len(payload) < 4:
                raise ProtocolError("not a PostgreSQL answer: a short authentication request")
            (code,) = struct.unpack("!I", payload[:4])
            data = payload[4:]
            if code == 0:  # AuthenticationOk: parameters and ReadyForQuery follow
                if used not in allowed:
                    raise AuthRefused(f"the server let us in by {used!r}, which require_auth"
                                      " does not allow")
                if used == "scram-sha-256" and (scram is None or not scram.verified):
                    raise AuthRefused("the server ended SCRAM without proving it knows the"
                                      " password")
                continue
            method = _METHOD_OF_CODE.get(code)
            if method is not None and method not in allowed:
                # As libpq: refuse before sending anything (a cleartext password above all).
                raise AuthRefused(f"the server asks for {method!r} authentication, which"
                                  " require_auth does not allow")
            if method is not None:
                used = method
            if code in (7, 9):
                raise AuthRefused(f"the server asks for {method!r} authentication, which"
                                  " lelect's PostgreSQL client does not support")
            password = params.get("password")
            if password is None:
                password = params["password"] = find_password(params)
            if password is None:
                raise AuthRefused("fe_sendauth: no password supplied")
            if code == 3:  # cleartext
                self._send_message(b"p", password.encode("utf-8") + b"\0")
            elif code == 5:  # md5, salted
                inner = md5((password + user).encode("utf-8")).hexdigest()
                outer = md5(inner.encode() + data[:4]).hexdigest()
                self._send_message(b"p", b"md5" + outer.encode() + b"\0")
            elif code == 10:  # SASL: the mechanisms offered
                mechanisms = data.split(b"\0")
                if b"SCRAM-SHA-256" not in mechanisms:
                    raise AuthRefused(f"no SASL mechanism this client knows: {shown(data)}")
                scram = Scram(password, self.deadline)
                first = scram.client_first()
                self._send_message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
            elif code == 11 and scram is not None:  # SASL continue
                self._send_message(b"p", scram.client_final(data))
            elif code == 12 and scram is not None:  # SASL final
                scram.verify_server(data)
            else:
                raise AuthRefused(f"unsupported authentication request {code}")

    # -- queries ------------------------------------------------------------------------

    def query(self, text: str) -> list[tuple]:
        """Run ``text`` (simple Query: one or more statements); the rows of its last
        statement, each value converted by its column's type."""
        self.send_query(text)
        return self.result()

    def send_query(self, text: str) -> None:
        """Send ``text`` (simple Query); :meth:`result` reads its answer."""
        if self.broken:
            raise OperationalError("the connection is broken")
        self._send_message(b"Q", text.encode("utf-8", "surrogateescape") + b"\0")

    def result(self) -> list[tuple]:
        """The answer to the query sent: the rows of its last statement."""
        columns: list[int] | None = None
        current: list[tuple] | None = None
        last: list[tuple] = []
        error: ServerError | None = None
        size = 0
        while True:
            kind, payload = self._message()
            if kind == b"T":
                columns = _row_description(payload)
                current = []
            elif kind == b"D":
                size += len(payload)
                if size > MAX_RESULT:
                    self.broken = True
                    raise ProtocolError(f"an answer of more than {MAX_RESULT} bytes")
                if columns is None or current is None:
                    self.broken = True
                    raise ProtocolError("not a PostgreSQL answer: a row without a description")
                current.append(_data_row(payload, columns))
            elif kind in (b"C", b"I"):
                last, current, columns = current or [], None, None
            elif kind == b"E":
                error = error or server_error(payload)
                current = columns = None
                if error.severity in ("FATAL", "PANIC"):  # the server closes the connection
                    self.broken = True
                    raise error
            elif kind == b"Z":
                if error is not None:
                    raise error
                return last
            else:
                self.broken = True
                raise ProtocolError(f"not a PostgreSQL answer: message {kind!r} to a query")

    def close(self) -> None:
        self.broken = True
        try:
            self.sock.settimeout(0.05)
            self.sock.sendall(b"X\0\0\0\x04")  # Terminate
        except (OSError, ValueError):
            pass
        self.sock.close()


class TlsFailed(OperationalError):
    """TLS could not be set up as sslmode asks."""


class AuthRefused(OperationalError):
    """Authentication cannot go on: no password, a method require_auth forbids, a server
    that does not prove itself."""


def allowed_methods(require_auth: str | None) -> set[str]:
    """The authentication methods libpq's ``require_auth`` allows (all when unset):
    a list of methods, or of methods each prefixed with ``!`` (all but those)."""
    if not require_auth:
        return set(AUTH_METHODS)
    names = [name.strip() for name in require_auth.split(",")]
    negated = [name[1:] for name in names if name.startswith("!")]
    if negated and len(negated) != len(names) or not set(negated or names) <= AUTH_METHODS:
        raise AuthRefused(f"require_auth={require_auth!r} is not one this client understands")
    return AUTH_METHODS - set(negated) if negated else set(names)


# -- the answers' values ----------------------------------------------------------------------


def _row_description(payload: bytes) -> list[int]:
    """The type OID of each column."""
    try:
        (count,) = struct.unpack_from("!H", payload)
        offset, oids = 2, []
        for _ in range(count):
            end = payload.index(b"\0", offset)
            (oid,) = struct.unpack_from("!I", payload, end + 7)
            oids.append(oid)
            offset = end + 19
        if offset != len(payload):
            raise ValueError
    except (struct.error, ValueError):
        raise ProtocolError("not a PostgreSQL answer: a garbled row description") from None
    return oids


def _data_row(payload: bytes, columns: list[int]) -> tuple:
    try:
        (count,) = struct.unpack_from("!H", payload)
        if count != len(columns):
            raise ValueError
        values: list[Any] = []
        offset = 2
        for oid in columns:
            (length,) = struct.unpack_from("!i", payload, offset)
            offset += 4
            if length < 0:
                values.append(None)
                continue
            raw = payload[offset : offset + length]
            if len(raw) != length:
                raise ValueError
            values.append(decode(oid, raw))
            offset += length
        if offset != len(payload):
            raise ValueError
    except (struct.error, ValueError, OverflowError, UnicodeDecodeError):
        raise ProtocolError("not a PostgreSQL answer: a garbled data row") from None
    return tuple(values)


_INTEGERS = {20, 21, 23, 26}  # int8, int2, int4, oid
_FLOATS = {700, 701}  # float4, float8
#: Array type OID -> its element's type OID (one-dimensional arrays of these).
_ARRAYS = {1000: 16, 1005: 21, 1007: 23, 1016: 20, 1021: 700, 1022: 701, 1009: 25,
           1015: 1043, 1003: 19, 1231: 1700}  # fmt: skip


def decode(oid: int, raw: bytes) -> Any:
    """A value in PostgreSQL's text format as the Python type psycopg would give."""
    if oid in _INTEGERS:
        return int(raw)
    if oid in _FLOATS:
        return float(raw)
    if oid == 16:
        return raw == b"t"
    if oid == 17:  # bytea, hex format (the default since 9.0)
        if not raw.startswith(b"\\x"):
            raise ValueError("bytea not in hex format")
        return bytes.fromhex(raw[2:].decode("ascii"))
    if oid == 1700:
        from decimal import Decimal

        return Decimal(raw.decode("ascii"))
    if oid in (1184, 1114):  # timestamptz, timestamp (ISO DateStyle)
        from datetime import datetime

        text = raw.decode("ascii")
        return datetime.fromisoformat(text + ":00" if text[-3:-2] in ("+", "-") else text)
    if oid in (114, 3802):
        import json

        return json.loads(raw)
    if oid in _ARRAYS:
        element = _ARRAYS[oid]
        return [None if item is None else decode(element, item) for item in _array(raw)]
    return raw.decode("utf-8")


def _array(raw: bytes) -> list[bytes | None]:
    """The items of a one-dimensional array literal: {1,2,NULL} or {"a b","c\\"d"}."""
    if raw[:1] != b"{" or raw[-1:] != b"}":
        raise ValueError("not an array")
    body = raw[1:-1]
    items: list[bytes | None] = []
    index = 0
    while index < len(body):
        if body[index : index + 1] == b'"':
            item = bytearray()
            index += 1
            while body[index : index + 1] != b'"':
                if body[index : index + 1] == b"\\":
                    index += 1
                if index >= len(body):
                    raise ValueError("unterminated array item")
                item += body[index : index + 1]
                index += 1
            items.append(bytes(item))
            index += 1
        else:
            end = body.find(b",", index)
            end = len(body) if end < 0 else end
            word = body[index:end]
            if word[:1] == b"{":
                raise ValueError("a nested array")
            items.append(None if word == b"NULL" else word)
            index = end
        if index < len(body):
            if body[index : index + 1] != b",":
                raise ValueError("garbled array")
            index += 1
    return items


# -- SCRAM ------------------------------------------------------------------------------------


class Scram:
    """SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL speaks it: no channel binding, the
    user name taken from the start-up message, the password prepared with SASLprep."""

    def __init__(self, password: str, deadline: float | None = None) -> None:
        import base64

        self._password = saslprep(password)
        self._deadline = deadline
        self._nonce = base64.b64encode(os.urandom(18)).decode()
        self._first_bare = f"n=,r={self._nonce}"
        self._auth_message = b""
        self._salted = b""
        self.verified = False

    def client_first(self) -> bytes:
        return ("n,," + self._first_bare).encode()

    def client_final(self, server_first: bytes) -> bytes:
        import base64

        try:
            fields = dict(part.split("=", 1) for part in server_first.decode().split(","))
            nonce, salt, rounds = fields["r"], base64.b64decode(fields["s"]), fields["i"]
        except (ValueError, KeyError):  # binascii.Error and UnicodeError are ValueErrors
            raise AuthRefused(f"not a SCRAM server-first message: {shown(server_first)}") from None
        if not (rounds.isascii() and rounds.isdigit() and len(rounds) <= 10
                and MIN_ITERATIONS <= int(rounds) <= MAX_ITERATIONS):
            raise AuthRefused(f"SCRAM iteration count {shown(rounds.encode())} refused: the"
                              f" client takes {MIN_ITERATIONS} to {MAX_ITERATIONS}")
        count = int(rounds)
        if not nonce.startswith(self._nonce):
            raise AuthRefused("the server's SCRAM nonce does not extend ours")
        self._check_time(salt, count)
        self._salted = pbkdf2_sha256(self._password, salt, count)
        client_key = _hmac(self._salted, b"Client Key")
        without_proof = f"c={base64.b64encode(b'n,,').decode()},r={nonce}"
        self._auth_message = f"{self._first_bare},{server_first.decode()},{without_proof}".encode()
        signature = _hmac(sha256(client_key).digest(), self._auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def _check_time(self, salt: bytes, rounds: int) -> None:
        """Refuse to start hashing that cannot end within the budget: a hash cannot be
        interrupted, so time a small one and extrapolate."""
        sample = MIN_ITERATIONS
        if self._deadline is None or rounds <= 4 * sample:  # a few milliseconds at most
            return
        started = time.monotonic()
        pbkdf2_sha256(self._password, salt, sample)
        needed = (time.monotonic() - started) * rounds / sample
        left = self._deadline - time.monotonic()
        if needed > left:
            raise AuthRefused(f"SCRAM with {rounds} iterations would take about {needed:.1f}s;"
                              f" {max(left, 0.0):.1f}s of the budget are left")

    def verify_server(self, server_final: bytes) -> None:
        import base64
        from _operator import _compare_digest  # hmac.compare_digest, without OpenSSL

        try:
            fields = dict(part.split("=", 1) for part in server_final.decode().split(","))
            signature = base64.b64decode(fields.get("v", ""))
        except ValueError:
            raise AuthRefused(f"not a SCRAM server-final message: {shown(server_final)}") from None
        expected = _hmac(_hmac(self._salted, b"Server Key"), self._auth_message)
        if not self._salted or not _compare_digest(signature, expected):
            raise AuthRefused("the server's SCRAM signature is wrong: not the server we know")
        self.verified = True


def saslprep(password: str) -> bytes:
    """The password as PostgreSQL's SCRAM uses it (``pg_saslprep``): SASLprep (RFC 4013:
    map, NFKC, prohibit, bidi) when that succeeds, else the password's raw bytes, which
    is what both libpq and the server do with a password that is not valid UTF-8 or
    holds prohibited characters. As PostgreSQL, the prohibited, unassigned and bidi
    checks look at the mapped characters, and an empty result counts as prohibited."""
    raw = password.encode("utf-8", "surrogateescape")
    if password.isascii():
        return raw
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes from argv: not UTF-8
        return raw
    import stringprep  # RFC 3454's tables (Unicode 3.2), as PostgreSQL's own
    import unicodedata

    mapped = "".join(" " if stringprep.in_table_c12(c) else c
                     for c in password if not stringprep.in_table_b1(c))
    if not mapped:
        return raw
    for c in mapped:
        if (stringprep.in_table_c12(c) or stringprep.in_table_c21_c22(c)
                or stringprep.in_table_c3(c) or stringprep.in_table_c4(c)
                or stringprep.in_table_c5(c) or stringprep.in_table_c6(c)
                or stringprep.in_table_c7(c) or stringprep.in_table_c8(c)
                or stringprep.in_table_c9(c) or stringprep.in_table_a1(c)):
            return raw
    if any(stringprep.in_table_d1(c) for c in mapped) and (
            any(stringprep.in_table_d2(c) for c in mapped)
            or not stringprep.in_table_d1(mapped[0]) or not stringprep.in_table_d1(mapped[-1])):
        return raw
    return unicodedata.normalize("NFKC", mapped).encode("utf-8")


# Hashing with Python's own SHA-256 and MD5 (lelect.backends.hashes). When hashlib is
# already loaded (by something else), its faster PBKDF2 is used.

_INNER_PAD = bytes(x ^ 0x36 for x in range(256))
_OUTER_PAD = bytes(x ^ 0x5C for x in range(256))


def _hmac_pads(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA-256's inner and outer hashes with ``key`` taken in (RFC 2104)."""
    key = (sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
    return sha256(key.translate(_INNER_PAD)), sha256(key.translate(_OUTER_PAD))


def _hmac(key: bytes, message: bytes) -> bytes:
    inner, outer = _hmac_pads(key)
    inner.update(message)
    outer.update(inner.digest())
    return outer.digest()


def pbkdf2_sha256(password: bytes, salt: bytes, rounds: int) -> bytes:
    """PBKDF2-HMAC-SHA-256 (RFC 8018), one 32-byte block: SCRAM's SaltedPassword."""
    import sys

    hashlib = sys.modules.get("hashlib")
    if hashlib is not None:
        return hashlib.pbkdf2_hmac("sha256", password, salt, rounds)  # type: ignore[no-any-return]
    inner, outer = _hmac_pads(password)

    def prf(message: bytes) -> bytes:
        one, two = inner.copy(), outer.copy()
        one.update(message)
        two.update(one.digest())
        return two.digest()  # type: ignore[no-any-return]

    block = prf(salt + b"\0\0\0\1")
    result = int.from_bytes(block, "big")
    for _ in range(rounds - 1):
        block = prf(block)
        result ^= int.from_bytes(block, "big")
    return result.to_bytes(32, "big")


# -- passwords from ~/.pgpass -------------------------------------------------------------------


def find_password(params: dict[str, Any]) -> str | None:
    """The password of the first matching line of the password file (``passfile``,
    default ``~/.pgpass``), with libpq's rules: ``host:port:database:user:password``,
    ``*`` matches anything, ``\\`` escapes ``:`` and ``\\``, ``#`` starts a comment; the
    default socket directory matches ``localhost``; a file that others may read or
    write is ignored with a warning."""
    path = params.get("passfile") or os.path.join(os.path.expanduser("~"), ".pgpass")
    try:
        import stat

        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            import logging

            logging.getLogger("lelect.postgres").warning(
                "lelect: password file %r has group or world access; permissions should be"
                " u=rw (0600) or less: not used", path)  # fmt: skip
            return None
        with open(path, encoding="utf-8", errors="surrogateescape") as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    host = params.get("host") or params.get("hostaddr") or ""
    if not host or host == default_socket_dir():
        host = "localhost"
    wanted = [host, str(params.get("port") or 5432), params.get("dbname") or "",
              params.get("user") or ""]  # fmt: skip
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        fields = _pgpass_fields(line)
        if len(fields) < 5:
            continue
        if all(field in ("*", want) for field, want in zip(fields[:4], wanted)):
            return fields[4]
    return None


def _pgpass_fields(line: str) -> list[str]:
    """A line's fields: the first four split at unescaped ``:``, the rest the password."""
    fields, field, index = [], [], 0
    while index < len(line):
        char = line[index]
        if char == "\\" and index + 1 < len(line):
            field.append(line[index + 1])
            index += 2
            continue
        if char == ":" and len(fields) < 4:
            fields.append("".join(field))
            field = []
        else:
            field.append(char)
        index += 1
    fields.append("".join(field))
    return fields


def default_socket_dir() -> str:
    """Where libpq looks for the server's socket when no host is named."""
    return "/var/run/postgresql" if os.path.isdir("/var/run/postgresql") else "/tmp"


# -- sockets and TLS ----------------------------------------------------------------------------


def open_socket(params: dict[str, Any], deadline: float) -> socket.socket:
    """A connected socket to the one server ``params`` names: its socket directory, or
    ``hostaddr`` (an address), or ``host`` when that is an address."""
    host = params.get("host") or default_socket_dir()
    port = int(params.get("port") or 5432)
    left = deadline - time.monotonic()
    if left <= 0:
        raise Timeout("no time left to connect")
    address = params.get("hostaddr")
    if host.startswith("/") and not address:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = os.path.join(host, f".s.PGSQL.{port}")
    else:
        address = address or host
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _keepalives(sock, params)
        target = (address, port)
    sock.settimeout(left)
    try:
        sock.connect(target)
    except TimeoutError:
        sock.close()
        raise Timeout("timeout expired") from None
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise OperationalError(f"{reason.lower() if reason else exc}") from None
    return sock


def _keepalives(sock: socket.socket, params: dict[str, Any]) -> None:
    if str(params.get("keepalives", "1")) == "0":
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, option in (("keepalives_idle", "TCP_KEEPIDLE"),
                         ("keepalives_interval", "TCP_KEEPINTVL"),
                         ("keepalives_count", "TCP_KEEPCNT"),
                         ("tcp_user_timeout", "TCP_USER_TIMEOUT")):  # fmt: skip
        value = params.get(name)
        if value not in (None, "") and hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), int(value))


_TLS_VERSIONS = {"TLSv1": "TLSv1", "TLSv1.1": "TLSv1_1", "TLSv1.2": "TLSv1_2",
                 "TLSv1.3": "TLSv1_3"}  # fmt: skip


def tls_context(params: dict[str, Any]) -> Any:
    """Verification as libpq's sslmode says: verify-full checks the chain and the host
    name, verify-ca the chain; require checks the chain only when a root certificate is
    there (named, or ~/.postgresql/root.crt); allow/prefer check nothing."""
    import ssl

    mode = params.get("sslmode") or "prefer"
    home = os.path.join(os.path.expanduser("~"), ".postgresql")
    root = params.get("sslrootcert")
    if root is None and mode != "verify-full" and mode != "verify-ca":
        default_root = os.path.join(home, "root.crt")
        root = default_root if mode == "require" and os.path.exists(default_root) else None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    if mode in ("verify-full", "verify-ca") or (mode == "require" and root):
        context.verify_mode = ssl.CERT_REQUIRED
        if root == "system":
            context.load_default_certs()
        else:
            context.load_verify_locations(root or os.path.join(home, "root.crt"))
        context.check_hostname = mode == "verify-full"
    else:
        context.verify_mode = ssl.CERT_NONE
    for name, attribute in (("ssl_min_protocol_version", "minimum_version"),
                            ("ssl_max_protocol_version", "maximum_version")):  # fmt: skip
        if params.get(name):
            setattr(context, attribute, getattr(ssl.TLSVersion, _TLS_VERSIONS[params[name]]))
    if params.get("sslcertmode") != "disable":
        cert = params.get("sslcert") or os.path.join(home, "postgresql.crt")
        key = params.get("sslkey") or os.path.join(home, "postgresql.key")
        if os.path.exists(cert):
            context.load_cert_chain(cert, key if os.path.exists(key) else None,
                                    password=params.get("sslpassword") or None)  # fmt: skip
    return context


def _is_name(host: str) -> bool:
    """SNI carries host names, not addresses."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return bool(host) and not host.startswith("/")
    return False


def printable(text: str, limit: int) -> str:
    """A server's text on one line: control characters escaped, at most ``limit`` long."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit * 4])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(data: bytes, limit: int = 80) -> str:
    return repr(printable(data.decode("utf-8", "replace"), limit))
