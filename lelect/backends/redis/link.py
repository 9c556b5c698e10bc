"""The Redis backend's wire: URL options, connections whose every call (connecting
included) is bounded by one time budget, a pub/sub subscription, the time allowed while
campaigning, and Redis errors turned into one clear line.

redis-py's client retries and blocks without limit by default; a lease cannot afford
either, so lelect drives redis-py connections directly: one command, one budget.
"""

from __future__ import annotations

import os
import re
import select
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from redis._parsers import _RESP2Parser
from redis._parsers.socket import SocketBuffer
from redis.exceptions import (
    AuthenticationError,
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
    server_text,
    unreachable,
)
from lelect.backends.redis.scripts import Script
from lelect.backends.urls import BackendURL, parse_port
from lelect.durations import format_duration
from lelect.errors import BackendUnavailable, UsageError

DEFAULT_PORT = 6379
DEFAULT_PREFIX = "lelect"

# No glob characters (elections() matches keys with SCAN) and no braces (the hash tag).
_PREFIX = re.compile(r"[A-Za-z0-9._:/-]{1,100}")
_TLS_OPTIONS = {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}


#: What a reply may hold. lelect's own replies are small (a history of at most 10000
#: entries is the biggest); anything beyond these is a broken or hostile server.
MAX_LINE = 1 << 20  # a status, error or integer line
MAX_BULK = 16 << 20  # one bulk string
MAX_ARRAY = 1 << 20  # elements of one array
MAX_DEPTH = 16  # arrays within arrays
MAX_REPLY = 64 << 20  # all the bytes of one reply


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
        if kind in (b"$", b"*") and size != b"-1":
            if not (size.isdigit() and len(size) < 12):
                raise InvalidResponse(f"not a Redis reply: {line[:40]!r}")
            if int(size) > (MAX_BULK if kind == b"$" else MAX_ARRAY):
                what = "bulk string" if kind == b"$" else "array"
                raise InvalidResponse(f"a reply with a {what} of {int(size)} (too big)")
        return line


class _CappedParser(_RESP2Parser):
    """RESP2 with :class:`_CappedBuffer` and a bound on nesting (deep arrays would
    otherwise end in a RecursionError)."""

    _depth = 0

    def on_connect(self, connection) -> None:
        super().on_connect(connection)
        buffer = _CappedBuffer(self._sock, self.socket_read_size, connection.socket_timeout)
        self._buffer = buffer

    def _read_response(self, disable_decoding=False, timeout=SENTINEL):
        if self._depth >= MAX_DEPTH:
            raise InvalidResponse(f"a reply nested deeper than {MAX_DEPTH} arrays")
        self._depth += 1
        try:
            return super()._read_response(disable_decoding=disable_decoding, timeout=timeout)
        except ValueError as exc:  # a malformed integer ("not a Redis reply")
            raise InvalidResponse(f"not a Redis reply: {exc}") from None
        finally:
            self._depth -= 1


class _Bounded:
    """A redis-py connection whose whole connect (TCP, TLS, then AUTH, CLIENT SETNAME and
    SELECT, one answer each) ends by one deadline, not one socket timeout per step, and
    whose every reply is read by :class:`_CappedParser` within a deadline: the call's
    (``reply_deadline``, set by :func:`timed_call`), the connect's, or else one socket
    timeout from the start of the reply."""

    connect_deadline: float | None = None
    reply_deadline: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["parser_class"] = _CappedParser
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]

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
            # RESP2: pub/sub messages are plain replies (RESP3 hands them to push handlers).
            "protocol": 2,
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
    """Connections to one Redis server; each call gets a budget that bounds connecting,
    sending and waiting for the answer."""

    #: One command connection per candidate; a call made while it is busy (a heartbeat
    #: during a renew) gets a connection of its own for that call only.
    _MAX_IDLE = 1
    #: Grows whenever the link starts talking to another server (a failover).
    epoch = 0

    def __init__(self, options: RedisOptions) -> None:
        self.options = options
        self._idle: list[redis.Connection] = []
        self._lock = threading.Lock()

    def new_connection(self) -> redis.Connection:
        return self.options.connection_class(**self.options.connection_kwargs)

    def open(self, budget: float) -> redis.Connection:
        """A connection for one call or a subscription, made within ``budget`` (it may
        be connected later, within what is left of it)."""
        return self.new_connection()

    def call(self, budget: float, *args: Any) -> Any:
        end = time.monotonic() + budget
        conn = self._take()
        if conn is None:
            conn = self.open(budget)
        try:
            reply = timed_call(conn, max(end - time.monotonic(), 0.001), *args)
        except ResponseError as exc:
            if self.failed(exc):
                conn.disconnect()
            else:
                self._give_back(conn)  # the server answered; the connection is fine
            raise
        except BaseException as exc:
            conn.disconnect()
            self.failed(exc)
            raise
        self._give_back(conn)
        return reply

    def failed(self, exc: BaseException) -> bool:
        """Hear of a call's failure; True when the server may not be the one to talk to
        any more (its connection should go)."""
        return False

    def _take(self) -> redis.Connection | None:
        """An idle connection the server has not closed, or None."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or not _closed_by_server(conn):
                return conn
            conn.disconnect()  # a restarted server: connect afresh rather than fail

    def run(self, script: Script, keys: list[str], args: list[Any], budget: float) -> Any:
        end = time.monotonic() + budget
        try:
            return self.call(budget, "EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            remaining = max(end - time.monotonic(), 0.001)
            return self.call(remaining, "EVAL", script.text, len(keys), *keys, *args)

    def _give_back(self, conn: redis.Connection) -> None:
        with self._lock:
            if len(self._idle) < self._MAX_IDLE:
                self._idle.append(conn)
                return
        conn.disconnect()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.disconnect()


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

    def call(self, budget: float, *args: Any) -> Any:
        end = time.monotonic() + budget
        if self.master is None or time.monotonic() - self._confirmed >= self.CONFIRM_EVERY:
            fresh = self._locate(end)
            if fresh is not None:
                self._give_back(fresh)
        return super().call(max(end - time.monotonic(), 0.001), *args)

    def _give_back(self, conn: redis.Connection) -> None:
        if (conn.host, conn.port) != self.master:  # type: ignore[attr-defined]
            conn.disconnect()  # a call that began before the master changed
            return
        super()._give_back(conn)

    def failed(self, exc: BaseException) -> bool:
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, ReadOnlyError)):
            self._forget()
            return True
        return False

    def _forget(self) -> None:
        """Ask the sentinels (and check ROLE) before the next call."""
        with self._lock:
            self.master, self._confirmed = None, float("-inf")
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.disconnect()

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
                idle, self._idle = self._idle, []
                self.master, self._confirmed = named, time.monotonic()
                self.epoch += 1
            for old in idle:
                old.disconnect()
            return conn
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


def timed_call(conn: redis.Connection, budget: float, *args: Any) -> Any:
    """Send one command and read its answer within ``budget`` seconds, connecting first
    if needed. A frozen or partitioned server makes this raise TimeoutError in time."""
    end = time.monotonic() + budget
    connect(conn, budget)
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
    """One pub/sub connection. After ``ensure`` (re)subscribed, a message may have been
    missed: callers look at the keys again after every ``ensure``."""

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
