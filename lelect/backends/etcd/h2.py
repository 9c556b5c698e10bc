"""HTTP/2 (RFC 9113) and HPACK (RFC 7541) for gRPC calls to etcd, standard library only.

What a gRPC client needs and no more: one :class:`Connection` per server carries every
call as a stream of its own (unary calls, the lease keep-alive, the watch), so an etcd
candidate holds one connection.

- Frames: DATA, HEADERS + CONTINUATION, SETTINGS (push off; the server's acknowledged),
  PING (acknowledged), GOAWAY, RST_STREAM, WINDOW_UPDATE (flow control both ways: the
  server's windows are respected on send; ours are given back as the I/O thread takes
  data off the socket, and a stream's unread data is capped).
- HPACK: requests use literals without indexing and no Huffman; answers are decoded in
  full (static and dynamic table, size updates, Huffman).

One thread per connection owns the socket (it alone reads and writes it: TLS objects are
not safe to read and write from two threads at once). It sleeps in ``select`` on the
socket and a wake pipe (no periodic wake-ups), reads frames and hands them to their
streams, and writes what callers queued. Callers wait on their stream with their own
deadline, so a frozen server cannot keep anyone past theirs; :meth:`Connection.close`
wakes every waiter.

Everything a server sends is bounded: frame size, header list size, a stream's unread
data, the dynamic table. A violation is :class:`Garbled` (the connection ends).
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable

from lelect.backends.etcd.gateway import MAX_BODY, MAX_HEAD, Garbled, _Closed, _describe

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
NO_ERROR = 0x0  # error codes (RST_STREAM, GOAWAY)
REFUSED_STREAM = 0x7
CANCEL = 0x8
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS, \
    SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = range(1, 7)

#: The largest frame we accept (we never raise SETTINGS_MAX_FRAME_SIZE from its default).
MAX_FRAME = 1 << 14
#: Our receive windows (per stream and for the connection).
WINDOW = 1 << 20
#: A stream's data received and not yet read by its caller.
MAX_UNREAD = MAX_BODY
#: The HPACK dynamic table size we allow the server (the default).
TABLE_SIZE = 4096
MAX_WINDOW = (1 << 31) - 1

_FRAME_HEAD = struct.Struct(">IBI")  # length (24 bits) and type; flags; stream


# -- HPACK ------------------------------------------------------------------------------------

STATIC_TABLE: tuple[tuple[str, str], ...] = (
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"), (":status", "200"),
    (":status", "204"), (":status", "206"), (":status", "304"), (":status", "400"),
    (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""),
    ("accept", ""), ("access-control-allow-origin", ""), ("age", ""), ("allow", ""),
    ("authorization", ""), ("cache-control", ""), ("content-disposition", ""),
    ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""),
    ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""),
    ("max-forwards", ""), ("proxy-authenticate", ""), ("proxy-authorization", ""),
    ("range", ""), ("referer", ""), ("refresh", ""), ("retry-after", ""), ("server", ""),
    ("set-cookie", ""), ("strict-transport-security", ""), ("transfer-encoding", ""),
    ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
)

#: RFC 7541 Appendix B: the Huffman code's length in bits for each symbol 0-255 and EOS
#: (one base-32 digit each). The code is canonical (codes of one length are consecutive,
#: in symbol order, after every shorter code), so the lengths define it.
_HUFFMAN_LENGTHS = (
    "dnsssssssoussussssssssusssssssss6aacd68baa8b8666555666666678f6ca"
    "d67777777777777777777777878djde6f56565666577666567655677777fbeds"
    "kmkkmmmnmnnnnnonoomnonnnnlmnmnnomlkmmnnlnmmolmnnllmlnmnnkmmmnmmn"
    "qqkjmnmpqqqrrqopjlqrrqrollqqsrrrkoklmllnmmppooqnqrqqrrrrrsrrrrrq"
    "u"
)
_huffman_decode_table: dict[tuple[int, int], int] | None = None


def _huffman_table() -> dict[tuple[int, int], int]:
    """(length, code) -> symbol, built on first use (most answers carry no Huffman)."""
    global _huffman_decode_table
    if _huffman_decode_table is None:
        lengths = [int(c, 32) for c in _HUFFMAN_LENGTHS]
        table: dict[tuple[int, int], int] = {}
        code, previous = -1, min(lengths)
        for symbol in sorted(range(257), key=lambda s: (lengths[s], s)):
            code = (code + 1) << (lengths[symbol] - previous)
            previous = lengths[symbol]
            table[(previous, code)] = symbol
        _huffman_decode_table = table
    return _huffman_decode_table


def huffman_decode(data: bytes) -> bytes:
    table = _huffman_table()
    out = bytearray()
    code = length = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code = (code << 1) | ((byte >> shift) & 1)
            length += 1
            symbol = table.get((length, code))
            if symbol is not None:
                if symbol == 256:
                    raise Garbled("HPACK: EOS in a Huffman string")
                out.append(symbol)
                code = length = 0
            elif length > 30:
                raise Garbled("HPACK: not a Huffman code")
    # Padding: fewer than 8 bits, all ones (a prefix of EOS).
    if length > 7 or code != (1 << length) - 1:
        raise Garbled("HPACK: bad Huffman padding")
    return bytes(out)


def encode_int(value: int, prefix: int, first: int = 0) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_headers(fields: list[tuple[str, str]]) -> bytes:
    """A header block: every field a literal without indexing, new name, no Huffman."""
    out = bytearray()
    for name, value in fields:
        raw_name, raw_value = name.encode("latin-1"), value.encode("latin-1")
        out += b"\x00" + encode_int(len(raw_name), 7) + raw_name
        out += encode_int(len(raw_value), 7) + raw_value
    return bytes(out)


class Decoder:
    """An HPACK decoder (one per connection: the dynamic table lives across blocks)."""

    def __init__(self, max_table: int = TABLE_SIZE) -> None:
        self.max_allowed = max_table  # what we announced
        self.max_size = max_table  # what the encoder set
        self.size = 0
        self.dynamic: list[tuple[str, str]] = []  # newest first

    def _add(self, name: str, value: str) -> None:
        entry = len(name) + len(value) + 32
        self.dynamic.insert(0, (name, value))
        self.size += entry
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size and self.dynamic:
            name, value = self.dynamic.pop()
            self.size -= len(name) + len(value) + 32

    def _entry(self, index: int) -> tuple[str, str]:
        if 1 <= index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        index -= len(STATIC_TABLE) + 1
        if 0 <= index < len(self.dynamic):
            return self.dynamic[index]
        raise Garbled(f"HPACK: no table entry {index + len(STATIC_TABLE) + 1}")

    def decode(self, block: bytes, max_list: int = MAX_HEAD) -> list[tuple[str, str]]:
        fields: list[tuple[str, str]] = []
        pos, total, end = 0, 0, len(block)

        def integer(prefix: int) -> int:
            nonlocal pos
            value = block[pos] & ((1 << prefix) - 1)
            pos += 1
            if value < (1 << prefix) - 1:
                return value
            shift = 0
            while True:
                if pos >= end or shift > 28:
                    raise Garbled("HPACK: bad integer")
                byte = block[pos]
                pos += 1
                value += (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    return value

        def string() -> str:
            nonlocal pos
            if pos >= end:
                raise Garbled("HPACK: truncated string")
            huffman = block[pos] & 0x80
            length = integer(7)
            if length > end - pos:
                raise Garbled("HPACK: string longer than its block")
            raw = block[pos:pos + length]
            pos += length
            return (huffman_decode(raw) if huffman else raw).decode("latin-1")

        may_resize = True
        while pos < end:
            byte = block[pos]
            if byte & 0x80:  # indexed field
                index = integer(7)
                if index == 0:
                    raise Garbled("HPACK: index 0")
                name, value = self._entry(index)
            elif byte & 0xE0 == 0x20:  # dynamic table size update
                if not may_resize:
                    raise Garbled("HPACK: table size update after a field")
                size = integer(5)
                if size > self.max_allowed:
                    raise Garbled(f"HPACK: table size {size} above {self.max_allowed}")
                self.max_size = size
                self._evict()
                continue
            else:
                indexing = byte & 0xC0 == 0x40
                index = integer(6 if indexing else 4)
                name = self._entry(index)[0] if index else string()
                value = string()
                if indexing:
                    self._add(name, value)
            may_resize = False
            total += len(name) + len(value) + 32
            if total > max_list:
                raise Garbled(f"header list longer than {max_list >> 10} KiB")
            fields.append((name, value))
        return fields


# -- the connection -----------------------------------------------------------------------------


class StreamError(_Closed):
    """A stream ended without a full answer (reset, connection lost, GOAWAY)."""

    code = 0  # the HTTP/2 error code of a reset


class Stream:
    """One request/answer exchange. The I/O thread fills it; one caller reads it."""

    def __init__(self, connection: Connection, stream_id: int, window: int) -> None:
        self.connection = connection
        self.id = stream_id
        self.send_window = window
        self.headers: list[tuple[str, str]] | None = None
        self.trailers: list[tuple[str, str]] | None = None
        self.data = bytearray()
        self.ended = False  # the server ended its side
        self.error: StreamError | None = None
        self.changed = threading.Condition(connection.lock)
        #: Made readable whenever something arrives (for a select on it and other fds).
        self.notify: Callable[[], None] | None = None

    def _wake(self) -> None:
        self.changed.notify_all()
        if self.notify is not None:
            self.notify()

    def wait(self, ready: Callable[[], bool], deadline: float) -> bool:
        """Wait (holding the connection's lock) until ``ready()`` or the stream ended or
        failed; False when the deadline passed first."""
        with self.changed:
            while not (ready() or self.ended or self.error is not None):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
            return True

    def send_data(self, payload: bytes, end: bool, deadline: float) -> None:
        self.connection.send_data(self, payload, end, deadline)

    def reset(self) -> None:
        """Cancel the stream (the caller gave up on it)."""
        self.connection.reset(self)


class Connection:
    """One HTTP/2 connection over a connected socket (TLS: with ALPN "h2" agreed)."""

    def __init__(self, sock: socket.socket, authority: str, scheme: str, name: str = "") -> None:
        self.sock = sock
        self.authority = authority
        self.scheme = scheme
        self.lock = threading.Lock()
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.send_window = 65535  # the connection's, from the server
        self.initial_window = 65535  # each new stream's, from the server's SETTINGS
        self.max_send_frame = MAX_FRAME
        self.window_changed = threading.Condition(self.lock)
        self.decoder = Decoder()
        self.closed: str | None = None  # why, once closed
        self.goaway = False  # no new streams
        self.last_read = time.monotonic()
        self._out = bytearray()
        self._in = bytearray()
        self._header_block: tuple[int, int, bytearray] | None = None  # stream, flags, block
        self._unacked = 0  # connection window consumed and not given back
        self._settings_seen = False
        self._io = threading.Lock()  # held for each (non-blocking) send and recv
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)
        sock.setblocking(False)
        self._queue(PREFACE + _frame(SETTINGS, 0, 0, struct.pack(
            ">HIHIHI", SETTINGS_ENABLE_PUSH, 0, SETTINGS_INITIAL_WINDOW_SIZE, WINDOW,
            SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEAD))
            + _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", WINDOW - 65535)))
        self._thread = threading.Thread(target=self._run, name=f"lelect-h2:{name or authority}",
                                        daemon=True)
        self._thread.start()

    # -- callers ----------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Open and taking new streams."""
        return self.closed is None and not self.goaway and self.next_id <= MAX_WINDOW

    def open(self, headers: list[tuple[str, str]], payload: bytes | None,
             deadline: float) -> Stream:
        """A new stream: ``headers`` (after the pseudo-headers of a POST to the path in
        ``headers[0]``), then ``payload`` ending our side (None: more data comes)."""
        path = headers[0][1]
        block = encode_headers([(":method", "POST"), (":scheme", self.scheme),
                                (":path", path), (":authority", self.authority),
                                *headers[1:]])
        with self.lock:
            if self.closed is not None:
                raise StreamError(self.closed)
            if self.goaway or self.next_id > MAX_WINDOW:
                raise StreamError("the server is closing the connection (GOAWAY)")
            stream = Stream(self, self.next_id, self.initial_window)
            self.next_id += 2
            self.streams[stream.id] = stream
            # Frames of one header block must not be split by others: queued at once.
            chunks = [block[i:i + self.max_send_frame]
                      for i in range(0, len(block), self.max_send_frame)] or [b""]
            frames = bytearray()
            for i, chunk in enumerate(chunks):
                flags = END_HEADERS if i == len(chunks) - 1 else 0
                if i == 0 and payload == b"":
                    flags |= END_STREAM
                frames += _frame(HEADERS if i == 0 else CONTINUATION, flags, stream.id, chunk)
            if payload and len(payload) <= min(self.send_window, stream.send_window,
                                               self.max_send_frame):
                # A small request (all of lelect's): its headers and data in one send.
                self.send_window -= len(payload)
                stream.send_window -= len(payload)
                frames += _frame(DATA, END_STREAM, stream.id, payload)
                payload = b""
            self._queue(bytes(frames), locked=True)
        if payload:
            self.send_data(stream, payload, True, deadline)
        return stream

    def send_data(self, stream: Stream, payload: bytes, end: bool, deadline: float) -> None:
        """DATA frames within the server's windows (waiting for them until ``deadline``)."""
        view = memoryview(payload)
        with self.lock:
            while True:
                if self.closed is not None:
                    raise StreamError(self.closed)
                if stream.error is not None:
                    raise StreamError(str(stream.error))
                if stream.ended and stream.id not in self.streams:
                    return  # answered in full and reset with NO_ERROR: the rest is unwanted
                room = min(self.send_window, stream.send_window, self.max_send_frame, len(view))
                if room > 0 or (len(view) == 0):
                    chunk = view[:room]
                    view = view[room:]
                    self.send_window -= room
                    stream.send_window -= room
                    last = len(view) == 0
                    self._queue(_frame(DATA, END_STREAM if (end and last) else 0, stream.id,
                                       bytes(chunk)), locked=True)
                    if last:
                        return
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the server's flow-control window stayed shut")
                self.window_changed.wait(left)

    def reset(self, stream: Stream) -> None:
        with self.lock:
            if self.streams.pop(stream.id, None) is not None and self.closed is None \
                    and not stream.ended:
                self._queue(_frame(RST_STREAM, 0, stream.id, struct.pack(">I", CANCEL)),
                            locked=True)

    def done(self, stream: Stream) -> None:
        """Forget a stream whose answer was read in full (or abandon it: reset)."""
        if stream.ended:
            with self.lock:
                self.streams.pop(stream.id, None)
        else:
            self.reset(stream)

    def consumed(self, stream: Stream, count: int) -> None:
        """The caller took ``count`` bytes of ``stream``'s data: give its window back."""
        if count <= 0 or stream.ended:
            return
        with self.lock:
            if self.closed is None and stream.id in self.streams:
                self._queue(_frame(WINDOW_UPDATE, 0, stream.id, struct.pack(">I", count)),
                            locked=True)

    def idle(self) -> bool:
        with self.lock:
            return not self.streams

    def close(self, reason: str = "connection closed") -> None:
        """Close the connection; every waiter on one of its streams wakes (StreamError)."""
        with self.lock:
            if self.closed is None:
                self._fail(reason)
            self._poke()

    # -- the I/O thread -----------------------------------------------------------------------

    def _queue(self, data: bytes, locked: bool = False) -> None:
        """Send ``data`` after what is queued: at once from this thread when nothing is
        queued (a non-blocking send; no wake-up of the I/O thread), else by the I/O thread."""
        if not locked:
            with self.lock:
                self._queue(data, locked=True)
            return
        if not self._out and self.closed is None:
            try:
                with self._io:  # never a TLS read and write at once
                    sent = self.sock.send(data)
            except OSError:  # would block, or broken: the I/O thread finds out which
                sent = 0
            data = data[sent:]
            if not data:
                return
        self._out += data
        self._poke()

    def _poke(self) -> None:
        """Wake the I/O thread (the lock held: its pipe is closed under the lock)."""
        if self._wake_write < 0:
            return
        try:
            os.write(self._wake_write, b"x")
        except OSError:  # full: readable already
            pass

    def _run(self) -> None:
        sock = self.sock
        try:
            while True:
                with self.lock:
                    if self.closed is not None:
                        break
                    writing = bool(self._out)
                readable, writable, _ = select.select(
                    [sock, self._wake_read], [sock] if writing else [], [])
                if self._wake_read in readable:
                    os.read(self._wake_read, 4096)
                if sock in readable:
                    self._receive()
                if sock in writable:
                    self._flush()
        except Garbled as exc:
            with self.lock:
                self._fail(f"not an etcd gRPC answer: {exc}")
        except (OSError, ValueError) as exc:
            with self.lock:
                self._fail(_describe(exc))
        except StreamError as exc:
            with self.lock:
                self._fail(str(exc))
        finally:
            with self.lock:
                self._fail("connection closed")
                os.close(self._wake_read)
                os.close(self._wake_write)
                self._wake_read = self._wake_write = -1
            try:
                sock.close()
            except OSError:
                pass

    def _receive(self) -> None:
        while True:
            try:
                with self._io:
                    data = self.sock.recv(65536)
                    pending = getattr(self.sock, "pending", None)  # TLS: decrypted, unread
                    more = pending is not None and pending() > 0
            except OSError as exc:
                if _not_ready(exc):
                    return
                raise
            if not data:
                raise StreamError("the server closed the connection")
            self.last_read = time.monotonic()
            self._in += data
            self._frames()
            if not more:
                return

    def _flush(self) -> None:
        with self.lock:
            out = bytes(self._out[:1 << 16])
        if not out:
            return
        try:
            with self._io:
                sent = self.sock.send(out)
        except OSError as exc:
            if _not_ready(exc):
                return
            raise
        with self.lock:
            del self._out[:sent]

    def _frames(self) -> None:
        buffer = self._in
        while len(buffer) >= 9:
            head, flags, stream_id = _FRAME_HEAD.unpack_from(buffer)
            length, kind, stream_id = head >> 8, head & 0xFF, stream_id & 0x7FFFFFFF
            if not self._settings_seen and kind != SETTINGS:
                raise Garbled(f"not an HTTP/2 server (it began with {bytes(buffer[:12])!r})")
            if length > MAX_FRAME:
                raise Garbled(f"a frame of {length} bytes (at most {MAX_FRAME})")
            if len(buffer) < 9 + length:
                return
            payload = bytes(buffer[9:9 + length])
            del buffer[:9 + length]
            with self.lock:
                self._frame(kind, flags, stream_id, payload)

    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        """Handle one frame (the lock held)."""
        if self._header_block is not None and kind != CONTINUATION:
            raise Garbled("a header block interrupted by another frame")
        if kind == SETTINGS:
            self._settings(flags, stream_id, payload)
        elif kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind in (HEADERS, CONTINUATION):
            self._headers(kind, flags, stream_id, payload)
        elif kind == PING:
            if len(payload) != 8 or stream_id:
                raise Garbled("a malformed PING")
            if not flags & ACK:
                self._queue(_frame(PING, ACK, 0, payload), locked=True)
        elif kind == WINDOW_UPDATE:
            if len(payload) != 4:
                raise Garbled("a malformed WINDOW_UPDATE")
            increment = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
            if stream_id == 0:
                self.send_window += increment
                if increment == 0 or self.send_window > MAX_WINDOW:
                    raise Garbled("a bad connection WINDOW_UPDATE")
            elif stream_id in self.streams:
                stream = self.streams[stream_id]
                stream.send_window += increment
                if increment == 0 or stream.send_window > MAX_WINDOW:
                    self._stream_failed(stream, "a bad stream WINDOW_UPDATE")
            self.window_changed.notify_all()
        elif kind == RST_STREAM:
            if len(payload) != 4 or stream_id == 0:
                raise Garbled("a malformed RST_STREAM")
            stream = self.streams.pop(stream_id, None)
            if stream is not None:
                code = struct.unpack(">I", payload)[0]
                if code == NO_ERROR and stream.ended:
                    # RFC 9113 8.1: the whole answer came, and the server needs no more
                    # of the request (grpc-go, when its handler ends before it read our
                    # END_STREAM). The answer stands; nothing more is sent on the stream.
                    stream._wake()
                else:
                    self._stream_failed(
                        stream, f"the server reset the stream (HTTP/2 error {code})", code=code)
        elif kind == GOAWAY:
            if len(payload) < 8 or stream_id:
                raise Garbled("a malformed GOAWAY")
            last, code = struct.unpack_from(">II", payload)
            last &= 0x7FFFFFFF
            self.goaway = True
            detail = payload[8:72].decode("utf-8", "replace")
            reason = f"the server is going away (GOAWAY, HTTP/2 error {code}" + (
                f": {detail})" if detail else ")")
            for sid, stream in list(self.streams.items()):
                if sid > last:
                    del self.streams[sid]
                    self._stream_failed(stream, reason, code=REFUSED_STREAM)  # never processed: safe again
            if code != 0:
                self._fail(reason)
        elif kind == PUSH_PROMISE:
            raise Garbled("a PUSH_PROMISE (push was turned off)")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 says.

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise Garbled("SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise Garbled("a SETTINGS acknowledgement with a payload")
            return
        if len(payload) % 6:
            raise Garbled("a malformed SETTINGS frame")
        self._settings_seen = True
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == SETTINGS_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise Garbled("an initial window above 2^31-1")
                delta = value - self.initial_window
                self.initial_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                self.window_changed.notify_all()
            elif key == SETTINGS_MAX_FRAME_SIZE:
                if not MAX_FRAME <= value <= (1 << 24) - 1:
                    raise Garbled(f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
                self.max_send_frame = value
        self._queue(_frame(SETTINGS, ACK, 0, b""), locked=True)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise Garbled("DATA on stream 0")
        body = _unpad(flags, payload)
        # The connection's window is given back at once (a stream's unread data is
        # capped below); the stream's as its caller reads (``consumed``).
        self._unacked += len(payload)
        if self._unacked >= WINDOW // 2:
            self._queue(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self._unacked)), locked=True)
            self._unacked = 0
        stream = self.streams.get(stream_id)
        if stream is None:
            return  # a stream we reset or finished
        if stream.headers is None or stream.ended:
            self._stream_failed(stream, "DATA before the answer's headers or after its end")
            return
        stream.data += body
        if len(stream.data) > MAX_UNREAD:
            self._stream_failed(stream, f"more than {MAX_UNREAD >> 20} MiB unread")
            return
        if len(payload) > len(body):  # padding counts against the window too
            self._queue(_frame(WINDOW_UPDATE, 0, stream_id,
                               struct.pack(">I", len(payload) - len(body))), locked=True)
        if flags & END_STREAM:
            stream.ended = True
        stream._wake()

    def _headers(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == CONTINUATION:
            if self._header_block is None or self._header_block[0] != stream_id:
                raise Garbled("a CONTINUATION frame out of place")
            sid, first_flags, block = self._header_block
            block += payload
        else:
            if stream_id == 0:
                raise Garbled("HEADERS on stream 0")
            payload = _unpad(flags, payload)
            if flags & PRIORITY_FLAG:
                payload = payload[5:]
            sid, first_flags, block = stream_id, flags, bytearray(payload)
        if len(block) > MAX_HEAD:
            raise Garbled(f"a header block longer than {MAX_HEAD >> 10} KiB")
        if not flags & END_HEADERS:
            self._header_block = (sid, first_flags, block)
            return
        self._header_block = None
        fields = self.decoder.decode(bytes(block))  # always: the table must stay in step
        stream = self.streams.get(sid)
        if stream is None:
            return
        if stream.ended:
            self._stream_failed(stream, "headers after the stream ended")
        elif stream.headers is None:
            stream.headers = fields
        elif stream.trailers is None:
            stream.trailers = fields
            if not first_flags & END_STREAM:
                self._stream_failed(stream, "trailers that do not end the stream")
                return
        else:
            self._stream_failed(stream, "a third header block")
            return
        if first_flags & END_STREAM:
            stream.ended = True
        stream._wake()

    def _stream_failed(self, stream: Stream, reason: str, code: int = 1) -> None:
        if stream.error is None:
            stream.error = StreamError(reason)
            stream.error.code = code
        if self.streams.pop(stream.id, None) is not None and self.closed is None:
            self._queue(_frame(RST_STREAM, 0, stream.id, struct.pack(">I", code)), locked=True)
        stream._wake()

    def _fail(self, reason: str) -> None:
        """Close (the lock held): every stream fails with ``reason``."""
        if self.closed is not None:
            return
        self.closed = reason
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            if stream.error is None:
                stream.error = StreamError(reason)
            stream._wake()
        self.window_changed.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return _FRAME_HEAD.pack((len(payload) << 8) | kind, flags, stream_id) + payload


def _unpad(flags: int, payload: bytes) -> bytes:
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise Garbled("bad frame padding")
    return payload[1:len(payload) - payload[0]]


def _not_ready(exc: OSError) -> bool:
    """The non-blocking socket (plain or TLS) cannot go on now: try again once ready."""
    if isinstance(exc, (BlockingIOError, InterruptedError)):
        return True
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(exc, (ssl.SSLWantReadError, ssl.SSLWantWriteError))


