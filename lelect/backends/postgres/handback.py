"""The keeper's hand-back on PostgreSQL: after lelect died and the job's whole process
group is gone, release the leadership by its token with the backend's own guarded
release statement, over a minimal client of PostgreSQL's wire protocol (v3).

Standard library only (the keeper runs ``python -S -I``): a startup message, password
authentication (SCRAM-SHA-256, md5, cleartext, or none for trust; only what the URL's
``require_auth`` allows, as libpq), TLS when the leadership's connection used it
(SSLRequest, then ``ssl`` with the URL's sslmode), and one simple Query. Everything is
bounded by ``budget``: a server that cannot be reached in time changes nothing, and the
lease expires as it would have. A server's answers are capped in size, its SCRAM
iteration count in range, and its text made printable before it is shown.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct
import time
from typing import Any

from lelect.backends.postgres.sql import release_statement, with_timeout
from lelect.backends.records import HAND_BACK_REASON

PROTOCOL_3_0 = 196608
SSL_REQUEST = 80877103
#: Share of the budget left for the release statement itself (server-side timeout).
STATEMENT_SHARE = 0.9
#: The longest message a server may send the hand-back (its answers are a row or two).
MAX_MESSAGE = 1 << 20
#: SCRAM iteration counts the hand-back accepts: RFC 7677's minimum, and a bound that a
#: server cannot use to keep the keeper hashing (PostgreSQL's default is 4096).
MIN_ITERATIONS = 4096
MAX_ITERATIONS = 10_000_000
#: libpq's require_auth methods, and what each authentication request code is.
AUTH_METHODS = {"password", "md5", "gss", "sspi", "scram-sha-256", "none"}
_METHOD_OF_CODE = {3: "password", 5: "md5", 7: "gss", 9: "sspi", 10: "scram-sha-256"}


class WireError(Exception):
    """The server refused us or the conversation broke."""


def hand_back(params: dict[str, Any], budget: float, exit_status: int | None) -> str:
    """Release the leadership in ``params`` (from ``PostgresBackend.hand_back``) within
    ``budget`` seconds: "released", or "not ours" when its lease had already expired or
    been taken (then only our own still-running history entry is closed)."""
    deadline = time.monotonic() + budget
    statement = release_statement(
        params["schema"], election=params["election"], token=params["token"],
        term=int(params["term"]), node_id=params["node_id"], outcome="lost",
        exit_status=exit_status, reason=HAND_BACK_REASON, slot=None, forget=True,
    )  # fmt: skip
    wire = Wire.connect(params, deadline)
    try:
        left = deadline - time.monotonic()
        rows = wire.query(with_timeout(statement, max(left * STATEMENT_SHARE, 0.001)))
    finally:
        wire.close()
    released = rows and rows[-1][0] == "1"
    return "released" if released else "not ours"


class Wire:
    """One connection speaking the frontend/backend protocol, every read and write
    bounded by ``deadline`` (monotonic)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self._buffer = b""

    @classmethod
    def connect(cls, params: dict[str, Any], deadline: float) -> Wire:
        sock = _open_socket(params, deadline)
        wire = cls(sock, deadline)
        try:
            if params.get("tls") and sock.family != socket.AF_UNIX:
                wire._start_tls(params)
            wire._startup(params)
        except BaseException:
            wire.close()
            raise
        return wire

    # -- framing ------------------------------------------------------------------------

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the hand-back's budget ran out")
        return left

    def _send(self, data: bytes) -> None:
        self.sock.settimeout(self._left())
        self.sock.sendall(data)

    def _read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self.sock.settimeout(self._left())
            chunk = self.sock.recv(65536)
            if not chunk:
                raise WireError("the server closed the connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def _message(self) -> tuple[bytes, bytes]:
        """The next message: (type byte, body)."""
        kind, length = struct.unpack("!cI", self._read(5))
        if not 4 <= length <= MAX_MESSAGE:
            raise WireError(f"not a PostgreSQL answer: a message of {length} bytes")
        return kind, self._read(length - 4)

    def _send_message(self, kind: bytes, body: bytes) -> None:
        self._send(kind + struct.pack("!I", len(body) + 4) + body)

    # -- start-up -----------------------------------------------------------------------

    def _start_tls(self, params: dict[str, Any]) -> None:
        self._send(struct.pack("!II", 8, SSL_REQUEST))
        answer = self._read(1)
        if answer != b"S":
            raise WireError("the server refused TLS, which this leadership's connection used")
        context = _tls_context(params)
        host = params.get("host") or ""
        server_hostname = host if params.get("sslsni", True) and _is_name(host) else None
        if context.check_hostname:
            server_hostname = host
        self.sock.settimeout(self._left())
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)

    def _startup(self, params: dict[str, Any]) -> None:
        user = params.get("user") or ""
        fields = {
            "user": user,
            "database": params.get("dbname") or user,
            "application_name": "lelect-keeper",
            "client_encoding": "UTF8",
        }
        body = struct.pack("!I", PROTOCOL_3_0)
        for name, value in fields.items():
            body += name.encode() + b"\0" + value.encode("utf-8") + b"\0"
        body += b"\0"
        self._send(struct.pack("!I", len(body) + 4) + body)
        password = params.get("password")
        allowed = allowed_methods(params.get("require_auth"))
        scram: Scram | None = None
        used = "none"
        while True:
            kind, payload = self._message()
            if kind == b"E":
                raise WireError(_error_text(payload))
            if kind == b"Z":
                return
            if kind != b"R":
                continue  # ParameterStatus, BackendKeyData, NoticeResponse
            if len(payload) < 4:
                raise WireError("not a PostgreSQL answer: a short authentication request")
            (code,) = struct.unpack("!I", payload[:4])
            data = payload[4:]
            if code == 0:  # AuthenticationOk: parameters and ReadyForQuery follow
                if used not in allowed:
                    raise WireError(f"the server let us in by {used!r}, which require_auth"
                                    " does not allow")
                if used == "scram-sha-256" and (scram is None or not scram.verified):
                    raise WireError("the server ended SCRAM without proving it knows the password")
                continue
            method = _METHOD_OF_CODE.get(code)
            if method is not None and method not in allowed:
                # As libpq: refuse before sending anything (a cleartext password above all).
                raise WireError(f"the server asks for {method!r} authentication, which"
                                " require_auth does not allow")
            if method is not None:
                used = method
            if password is None:
                raise WireError("the server asks for a password and none is known")
            if code == 3:  # cleartext
                self._send_message(b"p", password.encode("utf-8") + b"\0")
            elif code == 5:  # md5, salted
                inner = hashlib.md5((password + user).encode("utf-8")).hexdigest()
                outer = hashlib.md5(inner.encode() + data[:4]).hexdigest()
                self._send_message(b"p", b"md5" + outer.encode() + b"\0")
            elif code == 10:  # SASL: the mechanisms offered
                mechanisms = data.split(b"\0")
                if b"SCRAM-SHA-256" not in mechanisms:
                    raise WireError(f"no SASL mechanism this client knows: {_shown(data)}")
                scram = Scram(password, self.deadline)
                first = scram.client_first()
                self._send_message(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
            elif code == 11 and scram is not None:  # SASL continue
                self._send_message(b"p", scram.client_final(data))
            elif code == 12 and scram is not None:  # SASL final
                scram.verify_server(data)
            else:
                raise WireError(f"unsupported authentication request {code}")

    # -- queries ------------------------------------------------------------------------

    def query(self, text: str) -> list[list[str | None]]:
        """Run ``text`` (simple Query); the rows of its last result, as text."""
        self._send_message(b"Q", text.encode("utf-8") + b"\0")
        rows: list[list[str | None]] = []
        error: str | None = None
        while True:
            kind, payload = self._message()
            if kind == b"T":
                rows = []
            elif kind == b"D":
                rows.append(_data_row(payload))
            elif kind == b"E":
                error = _error_text(payload)
            elif kind == b"Z":
                if error is not None:
                    raise WireError(error)
                return rows

    def close(self) -> None:
        try:
            self.sock.settimeout(0.05)
            self.sock.sendall(b"X\0\0\0\x04")  # Terminate
        except OSError:
            pass
        self.sock.close()


def allowed_methods(require_auth: str | None) -> set[str]:
    """The authentication methods libpq's ``require_auth`` allows (all when unset):
    a list of methods, or of methods each prefixed with ``!`` (all but those)."""
    if not require_auth:
        return set(AUTH_METHODS)
    names = [name.strip() for name in require_auth.split(",")]
    negated = [name[1:] for name in names if name.startswith("!")]
    if negated and len(negated) != len(names) or not set(negated or names) <= AUTH_METHODS:
        raise WireError(f"require_auth={require_auth!r} is not one this client understands")
    return AUTH_METHODS - set(negated) if negated else set(names)


class Scram:
    """SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL speaks it: no channel binding, the
    user name taken from the start-up message, the password prepared with SASLprep."""

    def __init__(self, password: str, deadline: float | None = None) -> None:
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
        try:
            fields = dict(part.split("=", 1) for part in server_first.decode().split(","))
            nonce, salt, rounds = fields["r"], base64.b64decode(fields["s"]), fields["i"]
        except (ValueError, KeyError):  # binascii.Error and UnicodeError are ValueErrors
            raise WireError(f"not a SCRAM server-first message: {_shown(server_first)}") from None
        if not (rounds.isascii() and rounds.isdigit() and len(rounds) <= 10
                and MIN_ITERATIONS <= int(rounds) <= MAX_ITERATIONS):
            raise WireError(f"SCRAM iteration count {_shown(rounds.encode())} refused: the"
                            f" hand-back takes {MIN_ITERATIONS} to {MAX_ITERATIONS}")
        rounds = int(rounds)
        if not nonce.startswith(self._nonce):
            raise WireError("the server's SCRAM nonce does not extend ours")
        self._check_time(salt, rounds)
        self._salted = hashlib.pbkdf2_hmac("sha256", self._password, salt, rounds)
        client_key = _hmac(self._salted, b"Client Key")
        without_proof = f"c={base64.b64encode(b'n,,').decode()},r={nonce}"
        self._auth_message = f"{self._first_bare},{server_first.decode()},{without_proof}".encode()
        signature = _hmac(hashlib.sha256(client_key).digest(), self._auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def _check_time(self, salt: bytes, rounds: int) -> None:
        """Refuse to start hashing that cannot end within the budget: a hash cannot be
        interrupted, so time a small one and extrapolate."""
        sample = MIN_ITERATIONS
        if self._deadline is None or rounds <= 4 * sample:  # a few milliseconds at most
            return
        started = time.monotonic()
        hashlib.pbkdf2_hmac("sha256", self._password, salt, sample)
        needed = (time.monotonic() - started) * rounds / sample
        left = self._deadline - time.monotonic()
        if needed > left:
            raise WireError(f"SCRAM with {rounds} iterations would take about {needed:.1f}s;"
                            f" {max(left, 0.0):.1f}s of the budget are left")

    def verify_server(self, server_final: bytes) -> None:
        try:
            fields = dict(part.split("=", 1) for part in server_final.decode().split(","))
            signature = base64.b64decode(fields.get("v", ""))
        except ValueError:
            raise WireError(f"not a SCRAM server-final message: {_shown(server_final)}") from None
        expected = _hmac(_hmac(self._salted, b"Server Key"), self._auth_message)
        if not self._salted or not hmac.compare_digest(signature, expected):
            raise WireError("the server's SCRAM signature is wrong: not the server we know")
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


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _open_socket(params: dict[str, Any], deadline: float) -> socket.socket:
    """Connect to where the leadership's connection went: its socket directory, or its
    resolved address (no name look-up, which no timeout bounds)."""
    host = params.get("host") or "/var/run/postgresql"
    port = int(params.get("port") or 5432)
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the hand-back's budget ran out")
    if host.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: Any = os.path.join(host, f".s.PGSQL.{port}")
    else:
        address = params.get("hostaddr") or host
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        target = (address, port)
    sock.settimeout(left)
    try:
        sock.connect(target)
    except BaseException:
        sock.close()
        raise
    return sock


def _tls_context(params: dict[str, Any]) -> ssl.SSLContext:
    """Verification as libpq's sslmode says: verify-full checks the chain and the host
    name, verify-ca the chain; require checks the chain only when a root certificate was
    named; allow/prefer check nothing."""
    mode = params.get("sslmode") or "prefer"
    root = params.get("sslrootcert")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    if mode in ("verify-full", "verify-ca") or (mode == "require" and root):
        context.verify_mode = ssl.CERT_REQUIRED
        if root == "system":
            context.load_default_certs()
        else:
            context.load_verify_locations(root or os.path.expanduser("~/.postgresql/root.crt"))
        context.check_hostname = mode == "verify-full"
    else:
        context.verify_mode = ssl.CERT_NONE
    cert, key = params.get("sslcert"), params.get("sslkey")
    if cert and os.path.exists(cert):
        context.load_cert_chain(cert, key if key and os.path.exists(key) else None)
    return context


def _is_name(host: str) -> bool:
    """SNI carries host names, not addresses."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return bool(host)
    return False


def _data_row(payload: bytes) -> list[str | None]:
    try:
        return _unpacked_row(payload)
    except struct.error:
        raise WireError("not a PostgreSQL answer: a short data row") from None


def _unpacked_row(payload: bytes) -> list[str | None]:
    (count,) = struct.unpack("!H", payload[:2])
    values: list[str | None] = []
    offset = 2
    for _ in range(count):
        (length,) = struct.unpack("!i", payload[offset : offset + 4])
        offset += 4
        if length < 0:
            values.append(None)
            continue
        values.append(payload[offset : offset + length].decode("utf-8", "replace"))
        offset += length
    return values


def _error_text(payload: bytes) -> str:
    """An ErrorResponse as 'SEVERITY: message [SQLSTATE]', printable and short."""
    fields: dict[str, str] = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = _printable(part[1:].decode("utf-8", "replace"), 300)
    return f"{fields.get('S', 'ERROR')}: {fields.get('M', 'unknown error')} [{fields.get('C', '?')}]"


def _printable(text: str, limit: int) -> str:
    """A server's text on one line: control characters escaped, at most ``limit`` long."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit * 4])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shown(data: bytes, limit: int = 80) -> str:
    return repr(_printable(data.decode("utf-8", "replace"), limit))
