"""The Redis backend's wire: URL options, connections whose every call (connecting
included) is bounded by one time budget, a pub/sub subscription, the time allowed while
campaigning, and Redis errors turned into one clear line.

redis-py's client retries and blocks without limit by default; a lease cannot afford
either, so lelect drives redis-py connections directly: one command, one budget.
"""

from __future__ import annotations

import logging
import os
import re
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis._parsers import _RESP3Parser
from redis._parsers.base import _parse_float, _parse_int
from redis._parsers.socket import SERVER_CLOSED_CONNECTION_ERROR, SocketBuffer
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    BusyLoadingError,
    InvalidResponse,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.utils import SENTINEL

from lelect.backends.base import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HISTORY,
    DEFAULT_TTL,
    WakePipe,
    server_text,
    shut_down_socket,
    unreachable,
)
from lelect.backends.redis.scripts import Script
from lelect.backends.urls import BackendURL, parse_port
from lelect.durations import format_duration
from lelect.errors import BackendUnavailable, UsageError

log = logging.getLogger("lelect.redis")

DEFAULT_PORT = 6379
DEFAULT_PREFIX = "lelect"

# No glob characters (elections() matches keys with SCAN) and no braces (the hash tag).
_PREFIX = re.compile(r"[A-Za-z0-9._:/-]{1,100}")
_TLS_OPTIONS = {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}


#: What a reply may hold. lelect's own replies are small (a history of at most 10000
#: entries is the biggest); anything beyond these is a broken or hostile server.
MAX_LINE = 1 << 20  # a status, error or integer line
MAX_BULK = 16 << 20  # one bulk string
MAX_ARRAY = 1 << 20  # elements of one array, set, map or push frame (all of one reply too)
MAX_DEPTH = 16  # aggregates within aggregates
MAX_REPLY = 64 << 20  # all the bytes of one reply

#: RESP types that announce a length: bulk strings ($ ! =) and aggregates (* ~ % > |).
_BULKS = b"$!="
_AGGREGATES = b"*~%>|"


class _CappedBuffer(SocketBuffer):
    """redis-py's socket buffer with an overall deadline for the reply being read (each
    recv gets what is left of it, not a fresh socket timeout) and size caps, so a server
    that streams an endless line or announces a huge bulk string is cut off in time."""

    deadline: float | None = None

    def _read_from_socket(self, length=None, timeout=SENTINEL, raise_on_timeout=True):
        wanted = 1 if length is None else length
        while True:
            left = None if self.deadline is None else self.deadline - time.monotonic()
            if left is not None and left <= 0:
                if not raise_on_timeout:
                    return False
                raise redis.TimeoutError("no whole answer in time")
            step = timeout
            if left is not None:
                step = left if timeout is SENTINEL or timeout is None else min(timeout, left)
            before = self.unread_bytes()
            if not super()._read_from_socket(None, step, raise_on_timeout):
                return False
            if self.get_pos() + self.unread_bytes() > MAX_REPLY:
                raise InvalidResponse(f"a reply longer than {MAX_REPLY >> 20} MiB")
            wanted -= self.unread_bytes() - before
            if wanted <= 0:
                return True

    def readline(self, timeout=SENTINEL) -> bytes:
        buf = self._live_buffer()
        data = buf.readline(MAX_LINE + 2)
        while not data.endswith(b"\r\n"):
            if len(data) > MAX_LINE:
                raise InvalidResponse(f"a reply line longer than {MAX_LINE >> 20} MiB")
            self._read_from_socket(timeout=timeout)
            data += buf.readline(MAX_LINE + 2 - len(data))
        line = data[:-2]
        kind, size = line[:1], line[1:]
        if kind and kind in _BULKS + _AGGREGATES and not (kind in b"$*" and size == b"-1"):
            if not (size.isdigit() and len(size) < 12):
                raise InvalidResponse(f"not a Redis reply: {line[:40]!r}")
            if int(size) > (MAX_BULK if kind in _BULKS else MAX_ARRAY):
                what = "bulk string" if kind in _BULKS else "aggregate"
                raise InvalidResponse(f"a reply with a {what} of {int(size)} (too big)")
        return line


#: What the parser returns for a push frame read where a push was asked for.
PUSHED = object()


class _CappedParser(_RESP3Parser):
    """RESP2 and RESP3 with :class:`_CappedBuffer`, a bound on nesting (deep aggregates
    would otherwise end in a RecursionError) and on the elements of one reply.

    Push frames (``>``, RESP3's pub/sub messages) are never part of a reply: each goes
    to :attr:`on_push` (the link's router) as it is read; a read that asked for a push
    (``push_request``: nothing else was awaited) returns :data:`PUSHED` after one, a
    read for a command's answer reads on to that answer."""

    on_push: Callable[[list[Any]], None] | None = None
    _elements = 0

    def on_connect(self, connection) -> None:
        super().on_connect(connection)
        buffer = _CappedBuffer(self._sock, self.socket_read_size, connection.socket_timeout)
        self._buffer = buffer

    def _read_response(self, disable_decoding=False, push_request=False, timeout=SENTINEL):
        while True:
            self._elements = 0
            pushed, value = self._value(0, disable_decoding, timeout)
            if not pushed:
                return value
            if self.on_push is not None:
                self.on_push(value)
            self._buffer.purge()  # a flood of pushes is not one reply's bytes
            if push_request:
                return PUSHED

    def _value(self, depth: int, disable_decoding: bool, timeout: Any) -> tuple[bool, Any]:
        """(is it a push frame, the value) of the next frame, ``depth`` aggregates in."""
        raw = self._buffer.readline(timeout=timeout)
        if not raw:
            raise redis.ConnectionError(SERVER_CLOSED_CONNECTION_ERROR)
        byte, rest = raw[:1], raw[1:]
        if byte in (b"-", b"!"):
            if byte == b"!":
                rest = self._buffer.read(_parse_int(rest, raw), timeout=timeout)
            error = self.parse_error(rest.decode("utf-8", errors="replace"))
            if isinstance(error, redis.ConnectionError):
                raise error
            return False, error
        if byte == b"+":
            value: Any = rest
        elif byte == b"_":
            return False, None
        elif byte in (b":", b"("):
            return False, _parse_int(rest, raw)
        elif byte == b",":
            return False, _parse_float(rest, raw)
        elif byte == b"#":
            return False, rest == b"t"
        elif byte in (b"$", b"="):
            size = _parse_int(rest, raw)
            if size < 0:
                return False, None
            value = self._buffer.read(size, timeout=timeout)
            if byte == b"=":
                value = value[4:]  # "txt:" or "mkd:"
        elif byte in (b"*", b"~", b"%", b">"):
            count = _parse_int(rest, raw)
            if count < 0:
                return False, None
            if byte == b">" and depth:
                raise InvalidResponse("not a Redis reply: a push frame inside a reply")
            if depth >= MAX_DEPTH:
                raise InvalidResponse(f"a reply nested deeper than {MAX_DEPTH} aggregates")
            self._elements += count * (2 if byte == b"%" else 1)
            if self._elements > MAX_ARRAY:
                raise InvalidResponse(f"a reply of more than {MAX_ARRAY} elements")
            if byte == b"%":
                entries = {}
                for _ in range(count):
                    key = self._value(depth + 1, disable_decoding, timeout)[1]
                    if isinstance(key, (list, dict)):
                        raise InvalidResponse("not a Redis reply: an aggregate as a map key")
                    entries[key] = self._value(depth + 1, disable_decoding, timeout)[1]
                return False, entries
            items = [self._value(depth + 1, disable_decoding, timeout)[1] for _ in range(count)]
            return byte == b">", items
        else:  # attributes (|) included: lelect never asks for them
            raise InvalidResponse(f"not a Redis reply: {raw[:40]!r}")
        if disable_decoding is False:
            value = self.encoder.decode(value)
        return False, value


class _Bounded:
    """A redis-py connection whose whole connect (TCP, TLS, then AUTH, HELLO and SELECT,
    one answer each) ends by one deadline, not one socket timeout per step, and whose
    every reply is read by :class:`_CappedParser` within a deadline: the call's
    (``reply_deadline``, set by :func:`timed_call`), the connect's, or else one socket
    timeout from the start of the reply.

    With ``resp3`` (connections to the server, not to a sentinel) it asks for RESP3
    (``HELLO 3``), so that one connection carries commands and pub/sub alike; a server
    that does not know HELLO (Redis before 6) is spoken to in RESP2 (``protocol`` says
    which one is spoken once connected)."""

    connect_deadline: float | None = None
    reply_deadline: float | None = None

    def __init__(self, *args: Any, resp3: bool = False, **kwargs: Any) -> None:
        kwargs["parser_class"] = _CappedParser
        kwargs["protocol"] = 2  # until HELLO 3 is answered: see on_connect_check_health
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self.resp3 = resp3

    def on_connect_check_health(self, check_health: bool = True) -> None:
        if not self.resp3:
            super().on_connect_check_health(check_health=False)  # type: ignore[misc]
            return
        me: Any = self
        me.protocol = 2
        self._parser.on_connect(self)  # type: ignore[attr-defined]
        if me.username or me.password:
            # AUTH on its own, never inside HELLO: a server without HELLO (Redis 5)
            # repeats an unknown command's arguments in its error.
            self._auth(me.username, me.password)
        name = ["SETNAME", me.client_name] if me.client_name else []
        me.send_command("HELLO", 3, *name, check_health=False)
        try:
            me.read_response()
        except ResponseError as exc:
            lowered = str(exc).lower()
            if "unknown command" not in lowered and "noproto" not in lowered:
                raise
            if me.client_name:
                me.send_command("CLIENT", "SETNAME", me.client_name, check_health=False)
                me.read_response()
        else:
            me.protocol = 3
        if me.db:
            me.send_command("SELECT", me.db, check_health=False)
            if str(me.read_response()) != "OK":
                raise redis.ConnectionError("Invalid Database")

    def _auth(self, username: str | None, password: str | None) -> None:
        me: Any = self
        me.send_command("AUTH", *([username] if username else []), password or "",
                        check_health=False)
        try:
            reply = me.read_response()
        except AuthenticationWrongNumberOfArgsError:  # Redis 5: no users
            me.send_command("AUTH", password or "", check_health=False)
            reply = me.read_response()
        if str(reply) != "OK":
            raise AuthenticationError("Invalid Username or Password")

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        deadline = self.connect_deadline
        if deadline is not None and "timeout" not in kwargs:
            kwargs["timeout"] = max(deadline - time.monotonic(), 0.001)
        if deadline is None:
            deadline = self.reply_deadline
        if deadline is None:
            deadline = time.monotonic() + (self.socket_timeout or DEFAULT_CONNECT_TIMEOUT)  # type: ignore[attr-defined]
        buffer = getattr(self._parser, "_buffer", None)  # type: ignore[attr-defined]
        if isinstance(buffer, _CappedBuffer):
            buffer.deadline = deadline
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        finally:
            if isinstance(buffer, _CappedBuffer):
                buffer.deadline = None


class TCPConnection(_Bounded, redis.Connection):
    pass


class TLSConnection(_Bounded, redis.SSLConnection):
    pass


class UnixConnection(_Bounded, redis.UnixDomainSocketConnection):
    pass


@dataclass(frozen=True)
class RedisOptions:
    """What a redis://, rediss://, unix:// or redis[s]+sentinel:// URL asks for."""

    where: str  # host:port or socket path, for messages (never the password)
    connection_class: type
    connection_kwargs: dict[str, Any] = field(repr=False)
    prefix: str = DEFAULT_PREFIX
    ttl: float = DEFAULT_TTL
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    history_limit: int = DEFAULT_HISTORY
    #: The delayed-restart rule (``?restart_guard=off`` accepts the risk): see ACQUIRE.
    restart_guard: bool = True
    #: ``redis+sentinel://``: where to ask for the master (None: the URL names the server).
    sentinel: SentinelOptions | None = None

    @property
    def tls(self) -> bool:
        return issubclass(self.connection_class, redis.SSLConnection)

    @classmethod
    def from_url(cls, url: BackendURL) -> RedisOptions:
        scheme = url.scheme
        allowed = {"prefix", "ttl", "connect_timeout", "history", "restart_guard"}
        if scheme in TLS_SCHEMES:
            allowed |= _TLS_OPTIONS
        if scheme == "unix":
            allowed |= {"db", "password"}
        if scheme in SENTINEL_SCHEMES:
            allowed |= _SENTINEL_OPTIONS
        if scheme not in TLS_SCHEMES and _TLS_OPTIONS & set(url.query):
            tls_form = "rediss+sentinel://" if scheme in SENTINEL_SCHEMES else "rediss://"
            raise UsageError(
                f"option {sorted(_TLS_OPTIONS & set(url.query))[0]!r} needs a {tls_form} URL"
                " (TLS)"
            )
        url.check_options(allowed)

        prefix = url.option("prefix", DEFAULT_PREFIX) or ""
        if not _PREFIX.fullmatch(prefix):
            raise UsageError(
                f"invalid prefix {prefix!r} in {scheme}:// URL: use 1-100 characters from"
                " A-Z a-z 0-9 . _ : / -"
            )
        settings = {
            "prefix": prefix,
            "ttl": url.duration("ttl", DEFAULT_TTL),
            "connect_timeout": url.duration("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
            "history_limit": url.integer("history", DEFAULT_HISTORY),
            "restart_guard": _on_off(url, "restart_guard"),
        }
        kwargs: dict[str, Any] = {
            "username": url.username,
            "password": url.password if url.password is not None else url.option("password"),
            "decode_responses": True,
            # Node ids from argv may hold undecodable bytes (surrogate escapes), and keys
            # under the prefix may hold bytes another writer put there: round-trip them
            # rather than fail with a UnicodeError.
            "encoding_errors": "surrogateescape",
            # RESP3 where the server speaks it: one connection for commands and pub/sub.
            "resp3": True,
            "client_name": "lelect",
            "driver_info": None,  # no CLIENT SETINFO: two round trips less per connect
        }
        if scheme == "unix":
            if url.hosts or not url.path or url.path == "/":
                raise UsageError(
                    f"malformed unix:// URL {url.masked!r}: expected unix:///path/to/redis.sock"
                )
            kwargs["path"] = url.path
            kwargs["db"] = _db_number(url.option("db", "0") or "0", url)
            return cls(url.path, UnixConnection, kwargs, **settings)

        connection_class = TCPConnection
        if scheme in TLS_SCHEMES:
            # One set of TLS options for the server and, with Sentinel, the sentinels.
            kwargs.update(_tls_kwargs(url))
            connection_class = TLSConnection
        if scheme in SENTINEL_SCHEMES:
            sentinel, db = SentinelOptions.from_url(url, kwargs, connection_class)
            kwargs["db"] = db
            where = f"master {sentinel.master_name!r} (sentinels {sentinel.where})"
            return cls(where, connection_class, kwargs, **settings, sentinel=sentinel)
        if len(url.hosts) > 1:
            sentinel_scheme = "rediss+sentinel" if scheme == "rediss" else "redis+sentinel"
            raise UsageError(
                f"{scheme}:// takes one host, got {len(url.hosts)} in {url.masked!r}"
                f" (Redis Cluster is not supported; for Sentinel use {sentinel_scheme}://)"
            )
        host, port = url.hosts[0] if url.hosts else ("localhost", None)
        port = port or DEFAULT_PORT
        kwargs.update(host=host, port=port, db=_db_number(url.path.strip("/") or "0", url))
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return cls(where, connection_class, kwargs, **settings)

    def unavailable(self, exc: RedisError, within: float | None = None,
                    context: str = "") -> BackendUnavailable:
        """One line saying what went wrong with Redis and what to do about it; ``within``
        is the time bound that applied (default: connect_timeout)."""
        where = self.where
        within = self.connect_timeout if within is None else within
        # Errors inside scripts end in "script: <sha>, on @user_script:<line>."
        text = server_text(str(exc).split(" script: ")[0]).strip().rstrip(".")
        if isinstance(exc, AuthenticationError):
            if "required" in text.lower():
                message = (
                    f"redis at {where} requires a password: put it in the URL"
                    " (redis://:PASSWORD@host:port/db or redis://USER:PASSWORD@…)"
                )
            else:
                message = (
                    f"redis at {where} refused the credentials ({text}): check the user and"
                    " password in the URL"
                )
        elif isinstance(exc, (AuthorizationError, NoPermissionError)) or (
            "can't run this command" in text  # an ACL refusal inside a script
        ):
            message = f"the redis user may not run what lelect needs at {where}: {text}"
        elif isinstance(exc, BusyLoadingError):
            message = f"redis at {where} is still loading its data set (LOADING): try again shortly"
        elif isinstance(exc, ReadOnlyError) and self.sentinel is not None:
            message = (f"redis at {where} is a read-only replica (READONLY): the sentinels"
                       " have not settled on a master yet; try again shortly")
        elif isinstance(exc, ReadOnlyError):
            message = (
                f"redis at {where} is a read-only replica (READONLY): point the URL at the primary"
            )
        elif isinstance(exc, redis.TimeoutError) and self.tls:
            return unreachable("redis", where, within, "no answer (TLS handshake or command):"
                               " is that port serving TLS (tls-port)?")
        elif isinstance(exc, redis.TimeoutError):
            return unreachable("redis", where, within, "connected, but no answer")
        elif isinstance(exc, NoMaster) and self.tls and _is_tls(exc):
            return unreachable("redis", where, within, f"TLS failed: {_short(text)}")
        elif isinstance(exc, NoMaster):
            hint = ""
            if not self.tls and _closed_at_once(text):
                hint = "; are the sentinels TLS ports (tls-port)? Then use rediss+sentinel://"
            return unreachable("redis", where, within, _short(text) + hint)
        elif isinstance(exc, redis.ConnectionError) and self.tls and _no_client_cert(text):
            hint = ("the server may require a client certificate: give ssl_certfile= and"
                    " ssl_keyfile=" if "ssl_certfile" not in self.connection_kwargs
                    else "does the server accept this client certificate (its CA)?")
            return unreachable("redis", where, within, f"TLS failed: {_short(text)}; {hint}")
        elif isinstance(exc, redis.ConnectionError) and _is_tls(exc):
            return unreachable("redis", where, within, f"TLS failed: {_short(text)}")
        elif isinstance(exc, redis.ConnectionError):
            if "refused" in text.lower():
                return unreachable("redis", where, within,
                                   "connection refused (is redis running there?)")
            if not self.tls and _closed_at_once(text):
                tls_form = "rediss+sentinel://" if self.sentinel is not None else "rediss://"
                return unreachable("redis", where, within, f"{_short(text)}; is that a TLS port"
                                   f" (tls-port)? Then use {tls_form}")
            return unreachable("redis", where, within, _short(text))
        elif text.startswith("WRONGTYPE"):
            what = (
                text.removeprefix("WRONGTYPE ")
                if text.startswith("WRONGTYPE key ")
                else (f"a key {context or 'under the prefix'} holds the wrong type of value")
            )
            message = f"{what}: lelect did not write it; delete it or use another ?prefix="
        else:
            message = f"redis at {where} failed: {_short(text)}"
        return BackendUnavailable(message)


def _db_number(text: str, url: BackendURL) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5):  # "²".isdigit()
        raise UsageError(
            f"malformed {url.scheme}:// URL: the database must be a number (like /0),"
            f" got {text[:20]!r}"
        )
    return int(text)


#: The Sentinel schemes, plain and TLS (to the sentinels and to the master alike).
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
TLS_SCHEMES = ("rediss", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
_SENTINEL_OPTIONS = {"sentinel_username", "sentinel_password"}
_MASTER_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")


@dataclass(frozen=True)
class SentinelOptions:
    """Where a ``redis+sentinel://`` URL says to ask for the master."""

    master_name: str
    sentinels: tuple[tuple[str, int], ...]
    #: For connections to a sentinel (its own credentials: ``?sentinel_password=``; the
    #: master's TLS options).
    connection_kwargs: dict[str, Any] = field(repr=False)
    connection_class: type = field(repr=False)

    @property
    def where(self) -> str:
        return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)

    @classmethod
    def from_url(cls, url: BackendURL, master_kwargs: dict[str, Any], connection_class: type
                 ) -> tuple[SentinelOptions, int]:
        """The sentinels, the master's name and the database number of
        ``redis[s]+sentinel://[user:pw@]s1[:26379],s2…/MASTER[/DB]``; sentinels are
        reached as the master is (``connection_class``, TLS options in ``master_kwargs``)."""
        name, _, db_text = url.path.strip("/").partition("/")
        if not _MASTER_NAME.fullmatch(name) or "/" in db_text:
            raise UsageError(
                f"malformed {url.scheme}:// URL {url.masked!r}: expected"
                f" {url.scheme}://SENTINEL[:PORT],…/MASTER[/DB] (the master's name as the"
                " sentinels know it: 1-100 of A-Z a-z 0-9 . _ -)"
            )
        if not url.hosts:
            raise UsageError(f"malformed {url.scheme}:// URL {url.masked!r}: name at least one"
                             " sentinel (host:port)")
        sentinels = tuple((host, port or DEFAULT_SENTINEL_PORT) for host, port in url.hosts)
        kwargs = {
            key: value for key, value in master_kwargs.items()
            if key in ("decode_responses", "encoding_errors", "protocol", "client_name",
                       "driver_info") or key.startswith("ssl_")
        }
        kwargs.update(username=url.option("sentinel_username"),
                      password=url.option("sentinel_password"))
        return cls(name, sentinels, kwargs, connection_class), _db_number(db_text or "0", url)


class NoMaster(redis.ConnectionError):
    """No sentinel named a master that answers as one (yet): transient, as a failover is."""


class RedisLink:
    """The connection to one Redis server; each call gets a budget that bounds waiting
    for the connection, connecting, sending and waiting for the answer.

    A candidate holds one connection: its calls take turns on it (a heartbeat during a
    renew waits for the renew's answer, within its own budget), and its subscriptions
    share it too, RESP3 letting pushes (``>`` frames) come between the answers: a push
    read while an answer is awaited goes to the subscriptions' queues. A server without
    RESP3 (Redis before 6) gives each subscription a connection of its own, as RESP2
    must (one log line says so).
    """

    #: Grows whenever the link starts talking to another server (a failover).
    epoch = 0

    def __init__(self, options: RedisOptions) -> None:
        self.options = options
        self._lock = threading.Lock()
        #: Held by whoever sends on or reads from the connection.
        self._io = threading.Lock()
        self._conn: redis.Connection | None = None
        #: Grows whenever the connection is dropped or replaced: subscriptions made on an
        #: older one are gone.
        self.generation = 0
        self._subscriptions: set[Subscription] = set()
        self._told_resp2 = False

    def new_connection(self) -> redis.Connection:
        return self.options.connection_class(**self.options.connection_kwargs)

    def open(self, budget: float) -> redis.Connection:
        """A connection to the server, made within ``budget`` (it may be connected
        later, within what is left of it)."""
        return self.new_connection()

    def _fresh(self, end: float) -> redis.Connection | None:
        """Before a call: a connection to use instead of the one held (a new master)."""
        return None

    def call(self, budget: float, *args: Any) -> Any:
        end = time.monotonic() + budget
        fresh = self._fresh(end)
        with self._using(end, fresh) as conn:
            return self._timed(conn, end, args)

    def _timed(self, conn: redis.Connection, end: float, *commands: tuple[Any, ...]) -> Any:
        """Send ``commands`` and read one answer (the last command's: the ones before
        answer with pushes) by ``end``; a failure drops the connection unless the server
        answered with an error that leaves it usable."""
        try:
            return timed_call(conn, max(end - time.monotonic(), 0.001), *commands[-1],
                              before=commands[:-1])
        except ResponseError as exc:
            if self.failed(exc):
                self._drop(conn)
            raise
        except BaseException as exc:
            self._drop(conn)
            self.failed(exc)
            raise

    def _using(self, end: float, fresh: redis.Connection | None = None) -> _Turn:
        return _Turn(self, end, fresh)

    def _ready(self, end: float, fresh: redis.Connection | None) -> redis.Connection:
        """The connection, connected (within ``end``), with no push left unread; called
        holding ``_io``."""
        if fresh is not None:
            self._install(fresh)
        conn = self._conn
        if conn is not None and not self._current(conn):
            self._drop(conn)  # to a master of before a failover
            conn = None
        if conn is not None:
            try:
                self._pump(conn)
            except (RedisError, OSError):
                # A restarted server, or bytes nobody asked for: connect afresh.
                self._drop(conn)
                conn = None
        if conn is None:
            conn = self.open(max(end - time.monotonic(), 0.001))
            try:
                connect(conn, max(end - time.monotonic(), 0.001))
            except BaseException as exc:
                conn.disconnect()
                self.failed(exc)
                raise
            self._install(conn)
        return conn

    def _current(self, conn: redis.Connection) -> bool:
        """Is ``conn`` to the server to talk to (a master may have moved)?"""
        return True

    def _install(self, conn: redis.Connection) -> None:
        old, self._conn = self._conn, conn
        if old is not conn:
            self.generation += 1
            if old is not None:
                old.disconnect()
                self._wake_all()
            conn._parser.on_push = self._route  # type: ignore[attr-defined]
            if (conn._sock is not None and not _speaks_resp3(conn)  # type: ignore[attr-defined]
                    and not self._told_resp2):
                self._told_resp2 = True
                log.info("lelect: redis at %s does not speak RESP3 (Redis 6 or later):"
                         " pub/sub takes a second connection", self.options.where)

    def _drop(self, conn: redis.Connection) -> None:
        conn.disconnect()
        if self._conn is conn:
            self._conn = None
            self.generation += 1
            self._wake_all()

    def _pump(self, conn: redis.Connection) -> None:
        """Read every push already arriving (called holding ``_io``); anything else
        unread means the server closed the connection or broke the protocol."""
        while conn.can_read(timeout=0):
            if not _speaks_resp3(conn):
                raise redis.ConnectionError("the server closed the connection")
            conn.reply_deadline = time.monotonic() + (  # type: ignore[attr-defined]
                conn.socket_timeout or self.options.connect_timeout)  # type: ignore[attr-defined]
            try:
                reply = conn.read_response(push_request=True)
            finally:
                conn.reply_deadline = None  # type: ignore[attr-defined]
            if reply is not PUSHED:
                raise InvalidResponse("an answer to nothing asked")

    def _route(self, push: list[Any]) -> None:
        """A push frame read from the connection: a message goes to the subscriptions of
        its channel; confirmations and anything else are dropped."""
        if len(push) == 3 and push[0] == "message" and isinstance(push[1], str):
            for subscription in list(self._subscriptions):
                if push[1] in subscription.channels:
                    subscription.deliver(push[1], str(push[2]))

    def _wake_all(self) -> None:
        for subscription in list(self._subscriptions):
            subscription.wake()

    def _release_io(self) -> None:
        self._io.release()
        for subscription in list(self._subscriptions):
            if subscription.waits_for_turn:
                subscription.wake()

    def failed(self, exc: BaseException) -> bool:
        """Hear of a call's failure; True when the server may not be the one to talk to
        any more (its connection should go)."""
        return False

    def run(self, script: Script, keys: list[str], args: list[Any], budget: float) -> Any:
        end = time.monotonic() + budget
        try:
            return self.call(budget, "EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            remaining = max(end - time.monotonic(), 0.001)
            return self.call(remaining, "EVAL", script.text, len(keys), *keys, *args)

    def close(self) -> None:
        if not self._io.acquire(blocking=False):
            # A call still waits on it (a frozen server): end its wait (the call fails
            # as on a closed connection and drops it).
            shut_down_socket(self._conn)
            return
        try:
            conn = self._conn
            if conn is not None:
                self._drop(conn)
        finally:
            self._release_io()


class _Turn:
    """``with link._using(end) as conn``: the link's connection, ready, held by this
    thread until the block ends (waiting for it counts against ``end``)."""

    def __init__(self, link: RedisLink, end: float, fresh: redis.Connection | None) -> None:
        self.link, self.end, self.fresh = link, end, fresh

    def __enter__(self) -> redis.Connection:
        if not self.link._io.acquire(timeout=max(self.end - time.monotonic(), 0.0)):
            if self.fresh is not None:
                self.fresh.disconnect()
            raise redis.TimeoutError("no answer in time (the connection was busy)")
        try:
            return self.link._ready(self.end, self.fresh)
        except BaseException:
            self.link._release_io()
            raise

    def __exit__(self, *exc_info: Any) -> None:
        self.link._release_io()


def _speaks_resp3(conn: redis.Connection) -> bool:
    return conn.protocol in (3, "3")  # type: ignore[attr-defined]


class SentinelLink(RedisLink):
    """Connections to the master a set of Redis Sentinels name, followed across a
    failover.

    The master is found by asking the sentinels in turn (``SENTINEL
    get-master-addr-by-name``), each within its share of the call's budget, and checked
    with ``ROLE`` before it is used. It is looked for again after a connection error, a
    time-out or READONLY, and confirmed with a sentinel before any call once
    :data:`CONFIRM_EVERY` has passed: after ``SENTINEL FAILOVER`` the old master stays a
    master until Sentinel demotes it (seconds later), so its connections alone would
    not tell. When no sentinel answers, a known master is used on (a sentinel outage
    must not stop elections); an unknown one is a transient error (:class:`NoMaster`).
    """

    #: How old a sentinel's word about the master may be before a call asks again.
    CONFIRM_EVERY = 1.0

    def __init__(self, options: RedisOptions) -> None:
        super().__init__(options)
        assert options.sentinel is not None
        self.sentinel = options.sentinel
        self.master: tuple[str, int] | None = None
        self._confirmed = float("-inf")
        self._locating = threading.Lock()
        self._sentinel_conns: dict[tuple[str, int], redis.Connection] = {}

    def new_connection(self) -> redis.Connection:
        master = self.master
        if master is None:
            raise NoMaster(f"no master known for {self.sentinel.master_name!r}")
        return self._connection_to(master)

    def _connection_to(self, address: tuple[str, int]) -> redis.Connection:
        kwargs = dict(self.options.connection_kwargs, host=address[0], port=address[1])
        return self.options.connection_class(**kwargs)

    def open(self, budget: float) -> redis.Connection:
        fresh = self._locate(time.monotonic() + budget)
        return fresh if fresh is not None else self.new_connection()

    def _fresh(self, end: float) -> redis.Connection | None:
        if self.master is None or time.monotonic() - self._confirmed >= self.CONFIRM_EVERY:
            return self._locate(end)
        return None

    def _current(self, conn: redis.Connection) -> bool:
        return (conn.host, conn.port) == self.master  # type: ignore[attr-defined]

    def failed(self, exc: BaseException) -> bool:
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, ReadOnlyError)):
            self._forget()
            return True
        return False

    def _forget(self) -> None:
        """Ask the sentinels (and check ROLE) before the next call (the failed call
        drops the connection)."""
        with self._lock:
            self.master, self._confirmed = None, float("-inf")

    def _locate(self, end: float) -> redis.Connection | None:
        """Make sure the master is known and a sentinel's word on it is fresh; returns a
        connection to a master just checked with ROLE, if one was made."""
        if not self._locating.acquire(timeout=max(end - time.monotonic(), 0.0)):
            raise redis.TimeoutError("no answer in time (looking for the master)")
        try:
            if self.master is not None and time.monotonic() - self._confirmed < self.CONFIRM_EVERY:
                return None
            return self._ask_sentinels(end)
        finally:
            self._locating.release()

    def _ask_sentinels(self, end: float) -> redis.Connection | None:
        known = self.master
        if known is not None:
            # Leave the call itself half of its budget.
            end = time.monotonic() + (end - time.monotonic()) / 2
        problems: list[str] = []
        sentinels = self.sentinel.sentinels
        for index, address in enumerate(sentinels):
            share = (end - time.monotonic()) / (len(sentinels) - index)
            if share <= 0:
                break
            step_end = time.monotonic() + share
            try:
                named = self._ask(address, share)
            except RedisError as exc:  # down, refusing us, or not speaking Sentinel
                problems.append(f"sentinel {_address(address)}: {_short(str(exc))}")
                continue
            if named is None:
                problems.append(f"sentinel {_address(address)} knows no master"
                                f" {self.sentinel.master_name!r}")
                continue
            if named == known:
                self._confirmed = time.monotonic()
                return None
            try:
                conn = self._checked_master(named, max(step_end - time.monotonic(), 0.001))
            except (redis.ConnectionError, redis.TimeoutError, ReadOnlyError,
                    InvalidResponse) as exc:
                problems.append(f"{_address(named)}, named by sentinel {_address(address)}:"
                                f" {_short(str(exc))}")
                continue
            with self._lock:
                self.master, self._confirmed = named, time.monotonic()
                self.epoch += 1
            return conn  # the caller puts it in place of the old master's
        if known is not None and self.master == known:
            # No sentinel could tell: carry on with the master we know.
            self._confirmed = time.monotonic()
            return None
        raise NoMaster(f"no sentinel named a master {self.sentinel.master_name!r} that"
                       f" answers as one ({'; '.join(problems) or 'out of time'})")

    def _ask(self, address: tuple[str, int], budget: float) -> tuple[str, int] | None:
        """The master ``address``'s sentinel names, or None if it knows none."""
        conn = self._sentinel_conns.pop(address, None)
        if conn is None or _closed_by_server(conn):
            if conn is not None:
                conn.disconnect()
            conn = self.sentinel.connection_class(host=address[0], port=address[1],
                                                  **self.sentinel.connection_kwargs)
        try:
            reply = timed_call(conn, budget, "SENTINEL", "get-master-addr-by-name",
                               self.sentinel.master_name)
        except BaseException:
            conn.disconnect()
            raise
        self._sentinel_conns[address] = conn
        if reply is None:
            return None
        if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], str)
                and 0 < len(reply[0]) <= 255 and parse_port(str(reply[1])) is not None):
            raise InvalidResponse(f"not a master address: {str(reply)[:60]!r}")
        return reply[0], int(reply[1])

    def _checked_master(self, address: tuple[str, int], budget: float) -> redis.Connection:
        """A connection to ``address`` after ROLE said it is a master."""
        conn = self._connection_to(address)
        try:
            role = timed_call(conn, budget, "ROLE")
            if not (isinstance(role, list) and role and role[0] == "master"):
                shown = role[0] if isinstance(role, list) and role else role
                raise ReadOnlyError(f"it is not a master (ROLE says {str(shown)[:20]!r})")
        except BaseException:
            conn.disconnect()
            raise
        return conn

    def close(self) -> None:
        super().close()
        conns, self._sentinel_conns = self._sentinel_conns, {}
        for conn in conns.values():
            conn.disconnect()


def _address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _closed_by_server(conn: redis.Connection) -> bool:
    """An idle connection has nothing to read unless the server closed it (or wrote
    something it should not have): either way it must not be used."""
    try:
        return bool(conn.can_read(timeout=0))
    except (RedisError, OSError):
        return True


def timed_call(conn: redis.Connection, budget: float, *args: Any,
               before: tuple[tuple[Any, ...], ...] = ()) -> Any:
    """Send one command (after the commands ``before`` it, which answer with pushes) and
    read its answer within ``budget`` seconds, connecting first if needed. A frozen or
    partitioned server makes this raise TimeoutError in time."""
    end = time.monotonic() + budget
    connect(conn, budget)
    if before:
        conn.send_packed_command(conn.pack_commands([*before, args]))
    else:
        conn.send_command(*args)
    if not conn.can_read(timeout=max(end - time.monotonic(), 0.0)):
        raise redis.TimeoutError(f"no answer within {format_duration(budget)}")
    conn.reply_deadline = end
    try:
        return conn.read_response()
    finally:
        conn.reply_deadline = None


def connect(conn: redis.Connection, budget: float) -> None:
    """Connect (if not connected) within ``budget``: the socket timeouts bound the TCP
    connect and the TLS handshake, the deadline bounds all of the handshake's answers."""
    budget = max(budget, 0.001)
    conn.socket_connect_timeout = conn.socket_timeout = budget
    conn.connect_deadline = time.monotonic() + budget
    try:
        conn.connect()
    finally:
        conn.connect_deadline = None


class Subscription:
    """A subscription to ``channels``. After ``ensure`` (re)subscribed, a message may have
    been missed: callers look at the keys again after every ``ensure``.

    On a RESP3 server it lives on the link's one connection (messages reach it through
    :meth:`RedisLink._route`, whichever thread read them); on an older server it has a
    connection of its own (:class:`_OwnConnection`)."""

    #: Messages kept for a reader that does not come (a flood of them): the oldest go
    #: first; a waiter that lost its wake-up still looks again when the lease would end.
    MAX_QUEUED = 1000

    def __init__(self, link: RedisLink, channels: list[str]) -> None:
        self._link = link
        self.channels = frozenset(channels)
        self._order = list(channels)
        self._messages: deque[tuple[str, str]] = deque(maxlen=self.MAX_QUEUED)
        self._pipe: WakePipe | None = None
        self._generation: int | None = None  # the link's, when subscribed on it
        self._own: _OwnConnection | None = None
        #: Set while waiting for another thread's turn on the connection (its end wakes us).
        self.waits_for_turn = False

    def ensure(self, budget: float) -> None:
        if self._own is not None:
            self._own.ensure(budget)
            return
        link = self._link
        if self._generation is not None and self._generation == link.generation:
            return
        end = time.monotonic() + budget
        if self._pipe is None:
            self._pipe = WakePipe()
        link._subscriptions.add(self)
        try:
            with link._using(end) as conn:
                if not _speaks_resp3(conn):
                    link._subscriptions.discard(self)
                    self._own = _OwnConnection(link, self._order)
                else:
                    # The PING's answer comes after every confirmation: from then on, a
                    # message published reaches us.
                    link._timed(conn, end, ("SUBSCRIBE", *self._order), ("PING",))
                    self._generation = link.generation
        except BaseException:
            link._subscriptions.discard(self)
            raise
        if self._own is not None:
            self._own.ensure(max(end - time.monotonic(), 0.001))

    def deliver(self, channel: str, data: str) -> None:
        """A message read from the link's connection (by any thread)."""
        self._messages.append((channel, data))
        self.wake()

    def wake(self) -> None:
        pipe = self._pipe
        if pipe is not None:
            pipe.wake()

    def next_message(self, timeout: float | None, wake: Any = None) -> tuple[str, str] | None:
        """The next (channel, data) published, or None after ``timeout`` seconds or once
        ``wake`` (anything with a fileno(), for select) is readable."""
        if self._own is not None:
            return self._own.next_message(timeout, wake)
        link, pipe = self._link, self._pipe
        if pipe is None:
            raise redis.ConnectionError("not subscribed")
        end = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            if self._messages:
                return self._messages.popleft()
            if self._generation != link.generation:
                self._generation = None
                raise redis.ConnectionError("the connection to redis was lost")
            sock = None
            # Set before trying: a turn that ends after a failed try sees it and wakes us.
            self.waits_for_turn = True
            if link._io.acquire(blocking=False):
                self.waits_for_turn = False
                try:
                    conn = link._conn
                    if conn is None or self._generation != link.generation:
                        continue
                    try:
                        link._pump(conn)
                    except BaseException as exc:
                        link._drop(conn)
                        link.failed(exc)
                        raise
                    sock = conn._sock  # type: ignore[attr-defined]
                finally:
                    link._release_io()
                if self._messages:
                    continue
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                self.waits_for_turn = False
                return None
            watched = [pipe] + ([sock] if sock is not None else []) + (
                [wake] if wake is not None else [])
            try:
                readable, _, _ = select.select(watched, [], [], left)
            except (OSError, ValueError) as exc:  # a socket closed meanwhile
                raise redis.ConnectionError(f"the connection to redis was lost: {exc}") from None
            if pipe in readable:
                _drain(pipe)
            if wake is not None and wake in readable:
                self.waits_for_turn = False
                return self._messages.popleft() if self._messages else None

    def close(self) -> None:
        own, self._own = self._own, None
        if own is not None:
            own.close()
        link = self._link
        link._subscriptions.discard(self)
        generation, self._generation = self._generation, None
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            pipe.close()
        if generation is None or generation != link.generation:
            return
        others = set().union(*(s.channels for s in link._subscriptions))
        gone = [channel for channel in self._order if channel not in others]
        if not gone or not link._io.acquire(blocking=False):
            return  # busy (maybe hung): the server's messages on them are dropped when read
        try:
            conn = link._conn
            if conn is not None and generation == link.generation:
                try:
                    # Its confirmations are pushes, read (and dropped) with what comes next.
                    conn.send_command("UNSUBSCRIBE", *gone)
                except (RedisError, OSError):
                    link._drop(conn)
        finally:
            link._release_io()


def _drain(pipe: WakePipe) -> None:
    try:
        os.read(pipe.fileno(), 4096)
    except OSError:
        pass


class _OwnConnection:
    """A subscription's own pub/sub connection (RESP2: a subscribed connection takes no
    other command), for a server without RESP3."""

    def __init__(self, link: RedisLink, channels: list[str]) -> None:
        self._link = link
        self.channels = channels
        self._conn: redis.Connection | None = None
        self._epoch = 0

    def ensure(self, budget: float) -> None:
        if self._conn is not None:
            return
        end = time.monotonic() + budget
        conn = self._link.open(budget)
        epoch = self._link.epoch
        try:
            connect(conn, max(end - time.monotonic(), 0.001))
            conn.send_command("SUBSCRIBE", *self.channels)
            # Wait for every confirmation: only then would a message published after our
            # next command reach us.
            for _ in self.channels:
                if not conn.can_read(timeout=max(end - time.monotonic(), 0.0)):
                    raise redis.TimeoutError(f"no answer within {format_duration(budget)}")
                conn.read_response()
        except BaseException as exc:
            conn.disconnect()
            self._link.failed(exc)
            raise
        self._conn, self._epoch = conn, epoch

    def next_message(self, timeout: float, wake: Any = None) -> tuple[str, str] | None:
        """The next (channel, data) published, or None after ``timeout`` seconds or once
        ``wake`` (anything with a fileno(), for select) is readable."""
        conn = self._conn
        if conn is None:
            raise redis.ConnectionError("not subscribed")
        if self._epoch != self._link.epoch:  # the master moved: subscribe there
            self.close()
            raise redis.ConnectionError("the master changed")
        try:
            if wake is not None and not conn.can_read(timeout=0):  # nothing buffered
                sock = conn._sock
                if sock is None:
                    raise redis.ConnectionError("not connected")
                readable, _, _ = select.select([sock, wake], [], [], max(timeout, 0.0))
                if sock not in readable:
                    return None
                timeout = 0.0
            if not conn.can_read(timeout=max(timeout, 0.0)):
                return None
            reply = conn.read_response()
        except BaseException as exc:
            self.close()
            self._link.failed(exc)
            raise
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == "message":
            return str(reply[1]), str(reply[2])
        return None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()


def is_transient(exc: RedisError) -> bool:
    """Errors that may pass on their own (a restart, a failover, a loading server)."""
    if isinstance(exc, (AuthenticationError, AuthorizationError)):
        return False
    if isinstance(exc, (BusyLoadingError, ReadOnlyError)):
        return True
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError)) and not _is_tls(exc)


def _tls_kwargs(url: BackendURL) -> dict[str, Any]:
    """redis-py's TLS settings for a rediss:// or rediss+sentinel:// URL: its files
    (checked now), the certificate always verified, its host name too."""
    kwargs: dict[str, Any] = {}
    for name in sorted(_TLS_OPTIONS & set(url.query)):
        path = url.query[name]
        if not os.path.isfile(path):
            raise UsageError(f"{name}={path!r} in {url.scheme}:// URL: no such file")
        kwargs[name] = path
    _check_tls_files(url.scheme, kwargs.get("ssl_ca_certs"), kwargs.get("ssl_certfile"),
                     kwargs.get("ssl_keyfile"))
    kwargs.update(ssl_cert_reqs="required", ssl_check_hostname=True)
    return kwargs


def _check_tls_files(scheme: str, ca: str | None, cert: str | None, key: str | None) -> None:
    """The TLS files of a rediss:// URL are checked when it is parsed (status 2), as
    etcd's are: a garbage CA file is no unreachable server."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, ValueError) as exc:
            raise UsageError(f"ssl_ca_certs={ca!r} in {scheme}:// URL: no CA certificate in it"
                             f" (PEM expected): {exc}") from None
    if key and not cert:
        raise UsageError(f"ssl_keyfile= in {scheme}:// URL needs ssl_certfile= (the certificate)")
    if cert:
        try:
            context.load_cert_chain(cert, key)
        except (ssl.SSLError, ValueError) as exc:
            if key:
                raise UsageError(f"ssl_certfile={cert!r} and ssl_keyfile={key!r} in {scheme}://"
                                 f" URL are not a certificate and its key: {exc}") from None
            raise UsageError(f"ssl_certfile={cert!r} in {scheme}:// URL holds no private key:"
                             " give ssl_keyfile= too") from None


def _no_client_cert(text: str) -> bool:
    """How a server that requires a client certificate ends a handshake without one."""
    lowered = text.lower()
    return ("eof occurred in violation of protocol" in lowered
            or "certificate required" in lowered or "unexpected eof" in lowered)


def _closed_at_once(text: str) -> bool:
    """A TLS port's answer to plain text: it closes the connection."""
    lowered = text.lower()
    return "reset by peer" in lowered or "closed by server" in lowered


def _is_tls(exc: BaseException) -> bool:
    text = str(exc)
    return "SSL" in text or "TLS" in text or "certificate" in text


def _short(text: str) -> str:
    # redis-py wraps errors as "Error 111 connecting to host:port. Connection refused."
    return server_text(text)


def _on_off(url: BackendURL, name: str, default: bool = True) -> bool:
    text = url.option(name)
    if text is None:
        return default
    if text not in ("on", "off"):
        raise UsageError(f"invalid {name} option {text!r} in {url.scheme}:// URL: use on or off")
    return text == "on"
