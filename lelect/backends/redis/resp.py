"""RESP2 and RESP3 over one socket, with the standard library only: lelect's connections
(``link``) and the keeper's hand-back (``handback``, which runs ``python -S -I`` and
must not import a client library) read replies with this one parser.

A :class:`Wire` is a connected socket (TCP, unix or TLS; ``ssl`` is imported only for
TLS), commands packed into it, and a capped parser reading from it: every read ends by
its deadline (each ``recv`` gets what is left of it, so a server dripping a byte at a
time cannot stretch a reply), and a reply longer, wider or deeper than the caps is
refused. Whatever a server sends, the wire raises an ``OSError`` (a socket's error,
:class:`TimeoutError`, or :class:`InvalidResponse`, "not a Redis reply") or returns a
value; an error reply is returned as a :class:`ReplyError` for the caller to raise.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from lelect.backends.addresses import lookup_name

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only
if TYPE_CHECKING:
    from typing import Any


class ReplyError(Exception):
    """Redis answered with an error (``-`` or ``!``)."""


class InvalidResponse(ConnectionError):
    """Not a Redis reply (a broken or hostile server): the connection is unusable."""


class Closed(ConnectionError):
    """The server closed the connection."""


#: What :meth:`Wire.read` returns after a push frame when a push was what it waited for.
PUSHED = object()

_NONBLOCKING = ("SSLWantReadError", "SSLWantWriteError")


class Wire:
    """One connection speaking RESP. ``decode``: strings come back as str (UTF-8 with
    surrogate escapes, so any bytes round-trip), else as bytes.

    The caps are class attributes: lelect's own replies are small (a history of at
    most 10000 entries is the biggest); anything beyond them is a broken or hostile
    server."""

    MAX_LINE = 1 << 20  # a status, error or integer line
    MAX_BULK = 16 << 20  # one bulk string
    MAX_ARRAY = 1 << 20  # elements of one aggregate (and of all of one reply)
    MAX_DEPTH = 16  # aggregates within aggregates
    MAX_REPLY = 64 << 20  # all the bytes of one reply

    #: The error replies are made into (``make_error(text)``): the link maps them to its
    #: exception classes.
    make_error: Callable[[str], Exception] = ReplyError

    def __init__(self, sock: socket.socket, decode: bool = True) -> None:
        self.sock = sock
        self.decode = decode
        self._buf = bytearray()
        self._pos = 0
        self._deadline = 0.0
        self._elements = 0

    @classmethod
    def open(cls, address: dict[str, Any], tls: dict[str, Any] | None, deadline: float,
             decode: bool = True) -> Wire:
        """Connect to ``address`` ({"path"} or {"host", "port"}) by ``deadline``; with
        ``tls`` ({"ca_certs", "certfile", "keyfile"}, any may be None) over TLS, the
        server's certificate and host name checked."""
        left = _left(deadline)
        if "path" in address:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(left)
                sock.connect(address["path"])
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((lookup_name(address["host"]), address["port"]),
                                            timeout=left)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if tls is not None:
            try:
                import ssl

                context = ssl.create_default_context(cafile=tls.get("ca_certs"))
                if tls.get("certfile"):
                    context.load_cert_chain(tls["certfile"], tls.get("keyfile"))
                sock.settimeout(_left(deadline))
                sock = context.wrap_socket(sock, server_hostname=address["host"])
            except BaseException:
                sock.close()
                raise
        return cls(sock, decode)

    # -- writing --------------------------------------------------------------------------

    def send(self, *commands: tuple[Any, ...], deadline: float) -> None:
        """Send ``commands`` at once (a pipeline) by ``deadline``."""
        packed = b"".join(pack(command) for command in commands)
        self.sock.settimeout(_left(deadline))
        self.sock.sendall(packed)

    # -- reading --------------------------------------------------------------------------

    def buffered(self) -> bool:
        return self._pos < len(self._buf)

    def can_read(self, timeout: float) -> bool:
        """Is there something to read (within ``timeout`` seconds)? Reads what has come
        into the buffer; a closed connection raises."""
        if self.buffered():
            return True
        return self._fill(max(timeout, 0.0), raise_on_timeout=False)

    def read(self, deadline: float, push_request: bool = False,
             on_push: Callable[[list[Any]], None] | None = None) -> Any:
        """The next reply, whole, by ``deadline``. Push frames (``>``, RESP3's pub/sub
        messages) are never part of a reply: each goes to ``on_push`` as it is read; with
        ``push_request`` (nothing else was awaited) :data:`PUSHED` is returned after one,
        else the read goes on to the reply."""
        self._deadline = deadline
        while True:
            self._compact()
            self._elements = 0
            pushed, value = self._value(0)
            if not pushed:
                return value
            if on_push is not None:
                on_push(value)
            if push_request:
                return PUSHED

    def reply(self, deadline: float) -> Any:
        """The next reply; an error reply is raised."""
        answer = self.read(deadline)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _value(self, depth: int) -> tuple[bool, Any]:
        """(is it a push frame, the value) of the next frame, ``depth`` aggregates in."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return False, self._text(rest)
        if kind == b"-":
            return False, self.make_error(rest.decode("utf-8", "replace"))
        if kind in (b":", b"("):
            return False, _integer(line, rest)
        if kind in (b"$", b"=", b"!"):
            size = _size(line, rest, self.MAX_BULK, "bulk string")
            if size < 0:
                return False, None
            data = self._exactly(size)
            if kind == b"!":
                return False, self.make_error(data.decode("utf-8", "replace"))
            return False, self._text(data[4:] if kind == b"=" else data)  # "txt:"
        if kind == b"_":
            return False, None
        if kind == b"#":
            if rest not in (b"t", b"f"):
                raise InvalidResponse(f"not a Redis reply: {line[:40]!r}")
            return False, rest == b"t"
        if kind == b",":
            try:
                return False, float(rest)
            except ValueError:
                raise InvalidResponse(f"not a Redis reply: {line[:40]!r}") from None
        if kind in (b"*", b"~", b"%", b">"):
            count = _size(line, rest, self.MAX_ARRAY, "aggregate")
            if count < 0:
                return False, None
            if kind == b">" and depth:
                raise InvalidResponse("not a Redis reply: a push frame inside a reply")
            if depth >= self.MAX_DEPTH:
                raise InvalidResponse("not a Redis reply: aggregates nested deeper than"
                                      f" {self.MAX_DEPTH}")
            self._elements += count * (2 if kind == b"%" else 1)
            if self._elements > self.MAX_ARRAY:
                raise InvalidResponse(f"not a Redis reply: more than {self.MAX_ARRAY} elements")
            if kind == b"%":
                entries = {}
                for _ in range(count):
                    key = self._value(depth + 1)[1]
                    if isinstance(key, (list, dict)):
                        raise InvalidResponse("not a Redis reply: an aggregate as a map key")
                    entries[key] = self._value(depth + 1)[1]
                return False, entries
            return kind == b">", [self._value(depth + 1)[1] for _ in range(count)]
        # Attributes (|) included: lelect never asks for them.
        raise InvalidResponse(f"not a Redis reply: {line[:40]!r}")

    def _text(self, data: bytes) -> Any:
        return data.decode("utf-8", "surrogateescape") if self.decode else bytes(data)

    def _line(self) -> bytes:
        buf, start = self._buf, self._pos
        scanned = start
        while True:
            end = buf.find(b"\r\n", scanned)
            if end >= 0:
                break
            if len(buf) - start > self.MAX_LINE:
                raise InvalidResponse("not a Redis reply: a line of more than"
                                      f" {self.MAX_LINE} bytes")
            scanned = max(len(buf) - 1, start)
            self._fill(None)
        if end - start > self.MAX_LINE:
            raise InvalidResponse(f"not a Redis reply: a line of more than {self.MAX_LINE} bytes")
        self._pos = end + 2
        return bytes(buf[start:end])

    def _exactly(self, size: int) -> bytes:
        """``size`` bytes and the CRLF after them."""
        while len(self._buf) - self._pos < size + 2:
            self._fill(None)
        start = self._pos
        if self._buf[start + size:start + size + 2] != b"\r\n":
            raise InvalidResponse("not a Redis reply: a bulk string of the wrong length")
        self._pos = start + size + 2
        return bytes(self._buf[start:start + size])

    def _compact(self) -> None:
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0

    def _fill(self, timeout: float | None, raise_on_timeout: bool = True) -> bool:
        """Receive more (waiting at most ``timeout``, else until the read's deadline)."""
        if timeout is None:
            timeout = self._deadline - time.monotonic()
            if timeout <= 0:
                raise TimeoutError("no whole answer in time")
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            if raise_on_timeout:
                raise TimeoutError("no whole answer in time") from None
            return False
        except OSError as exc:
            if type(exc).__name__ not in _NONBLOCKING:
                raise
            if raise_on_timeout:
                raise TimeoutError("no whole answer in time") from None
            return False
        if not chunk:
            raise Closed("Connection closed by server.")
        self._buf += chunk
        if len(self._buf) > self.MAX_REPLY:
            raise InvalidResponse(f"not a Redis reply: longer than {self.MAX_REPLY >> 20} MiB")
        return True


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("out of time")
    return left


def _integer(line: bytes, text: bytes) -> int:
    digits = text[1:] if text[:1] in (b"-", b"+") else text
    if not (digits.isdigit() and digits.isascii() and len(digits) <= 40):
        raise InvalidResponse(f"not a Redis reply: {line[:40]!r}")
    return int(text)


def _size(line: bytes, text: bytes, limit: int, what: str) -> int:
    """The length announced by a bulk or aggregate header: -1 (nil) or 0..``limit``."""
    if text == b"-1" and line[:1] in b"$*":
        return -1
    if not (text.isdigit() and text.isascii() and len(text) < 12):
        raise InvalidResponse(f"not a Redis reply: {line[:40]!r}")
    size = int(text)
    if size > limit:
        raise InvalidResponse(f"not a Redis reply: a {what} of {size} (too big)")
    return size


def pack(command: tuple[Any, ...]) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        if isinstance(arg, (bytes, bytearray, memoryview)):
            data = bytes(arg)
        elif isinstance(arg, (int, float)):
            data = repr(arg).encode()
        else:
            data = str(arg).encode("utf-8", "surrogateescape")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)
