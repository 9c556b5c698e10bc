"""The keeper's hand-back on MySQL/MariaDB: after lelect died and the job's whole process
group is gone, release the leadership by its token with the backend's own guarded
release text, over a minimal client of MySQL's wire protocol.

Standard library only (the keeper runs ``python -S -I``; PyMySQL is not importable
there): the v10 handshake, ``mysql_native_password`` and ``caching_sha2_password``
(its fast path: the server has the password cached since lelect's own login; a full
authentication needs TLS or RSA, which this client does not speak, and then the lease
runs out instead), and one COM_QUERY with several statements. No TLS: a leadership
whose connection used TLS gets no hand-back (the backend gives none). Everything is
bounded by ``budget``; a server's packets are capped in size and its text made
printable before it is shown.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import time

from lelect.backends.mysql.sql import (
    SESSION_SETUP,
    release_statement,
    with_timeout,
)
from lelect.backends.words import HAND_BACK_REASON

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only
if TYPE_CHECKING:
    from typing import Any

#: Share of the budget left for the release statement itself (server-side timeout).
STATEMENT_SHARE = 0.9
#: The longest packet the hand-back reads (its answers are a row or two).
MAX_PACKET = 1 << 20

# Capability flags.
LONG_PASSWORD, FOUND_ROWS, CONNECT_WITH_DB, PROTOCOL_41 = 1, 2, 8, 512
TRANSACTIONS, SECURE_CONNECTION, MULTI_STATEMENTS, MULTI_RESULTS = 8192, 32768, 1 << 16, 1 << 17
PLUGIN_AUTH = 1 << 19
CLIENT_FLAGS = (LONG_PASSWORD | FOUND_ROWS | CONNECT_WITH_DB | PROTOCOL_41 | TRANSACTIONS
                | SECURE_CONNECTION | MULTI_STATEMENTS | MULTI_RESULTS | PLUGIN_AUTH)
MORE_RESULTS = 0x0008
UTF8MB4 = 45
NATIVE, CACHING_SHA2 = "mysql_native_password", "caching_sha2_password"


class WireError(Exception):
    """The server refused us or the conversation broke."""


def hand_back(params: dict[str, Any], budget: float, exit_status: int | None) -> str:
    """Release the leadership in ``params`` (from ``MySQLBackend.hand_back``) within
    ``budget`` seconds: "released", or "not ours" when its lease had already expired or
    been taken (then only our own still-running history entry is closed)."""
    deadline = time.monotonic() + budget
    statement = release_statement(
        params["prefix"], election=params["election"], token=params["token"],
        term=int(params["term"]), node_id=params["node_id"], outcome="lost",
        exit_status=exit_status, reason=HAND_BACK_REASON, slot=None, forget=True,
    )  # fmt: skip
    wire = Wire.connect(params, deadline)
    try:
        left = deadline - time.monotonic()
        text = SESSION_SETUP + ";\n" + with_timeout(
            statement, max(left * STATEMENT_SHARE, 0.001), bool(params.get("mariadb", True)))
        rows = wire.query(text)
    finally:
        wire.close()
    return "released" if rows and rows[-1] and rows[-1][0] == "1" else "not ours"


def scramble_native(password: bytes, salt: bytes) -> bytes:
    """mysql_native_password: SHA1(pw) XOR SHA1(salt + SHA1(SHA1(pw)))."""
    if not password:
        return b""
    stage1 = hashlib.sha1(password).digest()
    stage2 = hashlib.sha1(stage1).digest()
    mixed = hashlib.sha1(salt[:20] + stage2).digest()
    return bytes(a ^ b for a, b in zip(stage1, mixed))


def scramble_caching_sha2(password: bytes, salt: bytes) -> bytes:
    """caching_sha2_password's fast path: SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + salt)."""
    if not password:
        return b""
    p1 = hashlib.sha256(password).digest()
    p2 = hashlib.sha256(p1).digest()
    p3 = hashlib.sha256(p2 + salt[:20]).digest()
    return bytes(a ^ b for a, b in zip(p1, p3))


def _scramble(plugin: str, password: bytes, salt: bytes) -> bytes:
    if plugin == NATIVE:
        return scramble_native(password, salt)
    if plugin == CACHING_SHA2:
        return scramble_caching_sha2(password, salt)
    raise WireError(f"the server asks for authentication by {_shown(plugin.encode())},"
                    " which the hand-back does not speak")


class Wire:
    """One connection speaking the client/server protocol, every read and write bounded
    by ``deadline`` (monotonic)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self._buffer = b""
        self.seq = 0

    @classmethod
    def connect(cls, params: dict[str, Any], deadline: float) -> Wire:
        sock = _open_socket(params, deadline)
        wire = cls(sock, deadline)
        try:
            wire._handshake(params)
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

    def _read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self.sock.settimeout(self._left())
            chunk = self.sock.recv(65536)
            if not chunk:
                raise WireError("the server closed the connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def packet(self) -> bytes:
        header = self._read(4)
        length = header[0] | header[1] << 8 | header[2] << 16
        if length > MAX_PACKET:
            raise WireError(f"not a MySQL answer: a packet of {length} bytes")
        self.seq = (header[3] + 1) & 0xFF
        return self._read(length)

    def send(self, payload: bytes) -> None:
        header = struct.pack("<I", len(payload))[:3] + bytes([self.seq])
        self.seq = (self.seq + 1) & 0xFF
        self.sock.settimeout(self._left())
        self.sock.sendall(header + payload)

    # -- start-up -----------------------------------------------------------------------

    def _handshake(self, params: dict[str, Any]) -> None:
        greeting = self.packet()
        if greeting[:1] == b"\xff":
            raise WireError(_error_text(greeting))
        try:
            plugin, salt, capabilities = _parse_greeting(greeting)
        except (IndexError, struct.error, ValueError):
            raise WireError("not a MySQL server: a garbled greeting") from None
        if not capabilities & PROTOCOL_41:
            raise WireError("not a MySQL server this client speaks (no protocol 4.1)")
        password = str(params.get("password") or "").encode("utf-8")
        if plugin not in (NATIVE, CACHING_SHA2):
            plugin = NATIVE  # the server switches us to what it wants
        auth = _scramble(plugin, password, salt)
        user = str(params.get("user") or "").encode("utf-8")
        database = str(params.get("database") or "").encode("utf-8")
        response = (struct.pack("<IIB", CLIENT_FLAGS, MAX_PACKET, UTF8MB4) + b"\0" * 23
                    + user + b"\0" + bytes([len(auth)]) + auth + database + b"\0"
                    + plugin.encode() + b"\0")
        self.send(response)
        for _ in range(4):  # at most: switch, more data, OK
            answer = self.packet()
            kind = answer[:1]
            if kind == b"\x00":
                return
            if kind == b"\xff":
                raise WireError(_error_text(answer))
            if kind == b"\xfe":  # auth switch: plugin name, new salt
                name, _, data = answer[1:].partition(b"\0")
                plugin = name.decode("ascii", "replace")
                salt = data.rstrip(b"\0")
                self.send(_scramble(plugin, password, salt))
            elif kind == b"\x01" and plugin == CACHING_SHA2:
                if answer[1:2] == b"\x03":  # fast authentication: OK follows
                    continue
                raise WireError("caching_sha2_password wants a full authentication (the"
                                " server's cache lacks the password); the hand-back speaks"
                                " neither TLS nor RSA")
            else:
                raise WireError("not a MySQL answer during authentication")
        raise WireError("authentication did not end")

    # -- queries ------------------------------------------------------------------------

    def query(self, text: str) -> list[list[str | None]]:
        """Run ``text`` (COM_QUERY, several statements); the rows of the last result that
        had any, as text."""
        self.seq = 0
        self.send(b"\x03" + text.encode("utf-8"))
        last: list[list[str | None]] = []
        while True:
            first = self.packet()
            kind = first[:1]
            if kind == b"\xff":
                raise WireError(_error_text(first))
            if kind == b"\x00":
                status = _ok_status(first)
            else:
                rows, status = self._result_set(first)
                if rows:
                    last = rows
            if not status & MORE_RESULTS:
                return last

    def _result_set(self, first: bytes) -> tuple[list[list[str | None]], int]:
        try:
            columns, _ = _lenenc(first, 0)
        except (IndexError, ValueError):
            raise WireError("not a MySQL answer: a garbled result") from None
        if not 0 < columns < 4096:
            raise WireError(f"not a MySQL answer: {columns} columns")
        for _ in range(columns):
            self.packet()  # column definitions: not needed
        end = self.packet()
        if end[:1] != b"\xfe":
            raise WireError("not a MySQL answer: no end of the column definitions")
        rows: list[list[str | None]] = []
        while True:
            row = self.packet()
            if row[:1] == b"\xff":
                raise WireError(_error_text(row))
            if row[:1] == b"\xfe" and len(row) < 9:
                status = struct.unpack("<H", row[3:5])[0] if len(row) >= 5 else 0
                return rows, status
            if len(rows) >= 1000:
                raise WireError("not a MySQL answer: too many rows")
            rows.append(_row(row, columns))

    def close(self) -> None:
        try:
            self.seq = 0
            self.sock.settimeout(0.05)
            self.sock.sendall(b"\x01\x00\x00\x00\x01")  # COM_QUIT
        except OSError:
            pass
        self.sock.close()


def _parse_greeting(data: bytes) -> tuple[str, bytes, int]:
    """The v10 greeting: (auth plugin name, 20-byte salt, capability flags)."""
    if data[0] != 10:
        raise ValueError("protocol")
    end = data.index(b"\0", 1)
    offset = end + 1 + 4  # server version, connection id
    salt = data[offset : offset + 8]
    offset += 9
    capabilities = struct.unpack("<H", data[offset : offset + 2])[0]
    offset += 2 + 1 + 2  # capabilities (low), charset, status
    capabilities |= struct.unpack("<H", data[offset : offset + 2])[0] << 16
    offset += 2
    salt_length = data[offset]
    offset += 1 + 10
    if capabilities & SECURE_CONNECTION:
        more = max(13, salt_length - 8)
        salt += data[offset : offset + more].rstrip(b"\0")
        offset += more
    plugin = ""
    if capabilities & PLUGIN_AUTH and offset < len(data):
        plugin = data[offset:].split(b"\0", 1)[0].decode("ascii", "replace")
    if len(salt) < 20:
        raise ValueError("salt")
    return plugin, salt[:20], capabilities


def _lenenc(data: bytes, offset: int) -> tuple[int | None, int]:
    """A length-encoded integer at ``offset``: (value or None for NULL, next offset)."""
    first = data[offset]
    if first < 0xFB:
        return first, offset + 1
    if first == 0xFB:
        return None, offset + 1
    size = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
    if size is None:
        raise ValueError("lenenc")
    raw = data[offset + 1 : offset + 1 + size]
    if len(raw) != size:
        raise ValueError("short")
    return int.from_bytes(raw, "little"), offset + 1 + size


def _row(data: bytes, columns: int) -> list[str | None]:
    values: list[str | None] = []
    offset = 0
    try:
        for _ in range(columns):
            length, offset = _lenenc(data, offset)
            if length is None:
                values.append(None)
                continue
            if offset + length > len(data):
                raise ValueError("short")
            values.append(data[offset : offset + length].decode("utf-8", "replace"))
            offset += length
    except (IndexError, ValueError):
        raise WireError("not a MySQL answer: a garbled row") from None
    return values


def _ok_status(data: bytes) -> int:
    try:
        _, offset = _lenenc(data, 1)
        _, offset = _lenenc(data, offset)
        return struct.unpack("<H", data[offset : offset + 2])[0]
    except (IndexError, ValueError, struct.error):
        raise WireError("not a MySQL answer: a garbled OK") from None


def _error_text(data: bytes) -> str:
    """An ERR packet as 'message [code]', printable and short."""
    code = struct.unpack("<H", data[1:3])[0] if len(data) >= 3 else 0
    message = data[3:]
    if message[:1] == b"#":
        message = message[6:]
    return f"{_printable(message.decode('utf-8', 'replace'), 300)} [{code}]"


def _printable(text: str, limit: int) -> str:
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit * 4])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shown(data: bytes, limit: int = 80) -> str:
    return repr(_printable(data.decode("utf-8", "replace"), limit))


def _open_socket(params: dict[str, Any], deadline: float) -> socket.socket:
    """Connect to the address the leadership's connection reached (no name look-up,
    which no timeout bounds)."""
    address = str(params.get("host") or "127.0.0.1")
    port = int(params.get("port") or 3306)
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the hand-back's budget ran out")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(left)
    try:
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return sock
