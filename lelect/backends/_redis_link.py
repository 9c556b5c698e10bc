"""The Redis backend's wire: URL options, connections whose every call (connecting
included) is bounded by one time budget, a pub/sub subscription, the time allowed while
campaigning, and Redis errors turned into one clear line.

redis-py's client retries and blocks without limit by default; a lease cannot afford
either, so lelect drives redis-py connections directly: one command, one budget.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

from lelect.backends._redis_scripts import Script
from lelect.backends.base import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HISTORY,
    DEFAULT_TTL,
    connect_budget,
    unreachable,
)
from lelect.backends.urls import BackendURL
from lelect.durations import format_duration
from lelect.errors import BackendUnavailable, UsageError

DEFAULT_PORT = 6379
DEFAULT_PREFIX = "lelect"

# No glob characters (elections() matches keys with SCAN) and no braces (the hash tag).
_PREFIX = re.compile(r"[A-Za-z0-9._:/-]{1,100}")
_TLS_OPTIONS = {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}


class _Bounded:
    """A redis-py connection whose whole connect (TCP, TLS, then AUTH, CLIENT SETNAME and
    SELECT, one answer each) ends by one deadline, not one socket timeout per step."""

    connect_deadline: float | None = None

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        if self.connect_deadline is not None and "timeout" not in kwargs:
            kwargs["timeout"] = max(self.connect_deadline - time.monotonic(), 0.001)
        return super().read_response(*args, **kwargs)  # type: ignore[misc]


class TCPConnection(_Bounded, redis.Connection):
    pass


class TLSConnection(_Bounded, redis.SSLConnection):
    pass


class UnixConnection(_Bounded, redis.UnixDomainSocketConnection):
    pass


@dataclass(frozen=True)
class RedisOptions:
    """What a redis://, rediss:// or unix:// URL asks for."""

    where: str  # host:port or socket path, for messages (never the password)
    connection_class: type
    connection_kwargs: dict[str, Any] = field(repr=False)
    prefix: str = DEFAULT_PREFIX
    ttl: float = DEFAULT_TTL
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    history_limit: int = DEFAULT_HISTORY

    @property
    def tls(self) -> bool:
        return issubclass(self.connection_class, redis.SSLConnection)

    @classmethod
    def from_url(cls, url: BackendURL) -> RedisOptions:
        scheme = url.scheme
        allowed = {"prefix", "ttl", "connect_timeout", "history"}
        if scheme == "rediss":
            allowed |= _TLS_OPTIONS
        if scheme == "unix":
            allowed |= {"db", "password"}
        if scheme != "rediss" and _TLS_OPTIONS & set(url.query):
            raise UsageError(
                f"option {sorted(_TLS_OPTIONS & set(url.query))[0]!r} needs a rediss:// URL (TLS)"
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

        if len(url.hosts) > 1:
            raise UsageError(
                f"{scheme}:// takes one host, got {len(url.hosts)} in {url.masked!r}"
                " (Redis Cluster and Sentinel are not supported)"
            )
        host, port = url.hosts[0] if url.hosts else ("localhost", None)
        port = port or DEFAULT_PORT
        kwargs.update(host=host, port=port, db=_db_number(url.path.strip("/") or "0", url))
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if scheme == "redis":
            return cls(where, TCPConnection, kwargs, **settings)

        for name in sorted(_TLS_OPTIONS & set(url.query)):
            path = url.query[name]
            if not os.path.isfile(path):
                raise UsageError(f"{name}={path!r} in rediss:// URL: no such file")
            kwargs[name] = path
        _check_tls_files(kwargs.get("ssl_ca_certs"), kwargs.get("ssl_certfile"),
                         kwargs.get("ssl_keyfile"))
        kwargs.update(ssl_cert_reqs="required", ssl_check_hostname=True)
        return cls(where, TLSConnection, kwargs, **settings)

    def unavailable(self, exc: RedisError, within: float | None = None,
                    context: str = "") -> BackendUnavailable:
        """One line saying what went wrong with Redis and what to do about it; ``within``
        is the time bound that applied (default: connect_timeout)."""
        where = self.where
        within = self.connect_timeout if within is None else within
        # Errors inside scripts end in "script: <sha>, on @user_script:<line>."
        text = str(exc).split(" script: ")[0].strip().rstrip(".")
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
        elif isinstance(exc, ReadOnlyError):
            message = (
                f"redis at {where} is a read-only replica (READONLY): point the URL at the primary"
            )
        elif isinstance(exc, redis.TimeoutError) and self.tls:
            return unreachable("redis", where, within, "no answer (TLS handshake or command):"
                               " is that port serving TLS (tls-port)?")
        elif isinstance(exc, redis.TimeoutError):
            return unreachable("redis", where, within, "connected, but no answer")
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
                return unreachable("redis", where, within, f"{_short(text)}; is that a TLS port"
                                   " (tls-port)? Then use rediss://")
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
    if not (text.isascii() and text.isdigit()):  # "²".isdigit(), but int("²") fails
        raise UsageError(
            f"malformed {url.scheme}:// URL {url.masked!r}: the database must be a number"
            f" (like /0), got {text!r}"
        )
    return int(text)


class Link:
    """Connections to one Redis server; each call gets a budget that bounds connecting,
    sending and waiting for the answer."""

    _MAX_IDLE = 4

    def __init__(self, options: RedisOptions) -> None:
        self.options = options
        self._idle: list[redis.Connection] = []
        self._lock = threading.Lock()

    def new_connection(self) -> redis.Connection:
        return self.options.connection_class(**self.options.connection_kwargs)

    def call(self, budget: float, *args: Any) -> Any:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self.new_connection()
        elif _closed_by_server(conn):
            conn.disconnect()  # a restarted server: connect afresh rather than fail
        try:
            reply = timed_call(conn, budget, *args)
        except ResponseError:
            self._give_back(conn)  # the server answered; the connection is fine
            raise
        except BaseException:
            conn.disconnect()
            raise
        self._give_back(conn)
        return reply

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
    return conn.read_response()


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

    def __init__(self, link: Link, channels: list[str]) -> None:
        self._link = link
        self.channels = channels
        self._conn: redis.Connection | None = None

    def ensure(self, budget: float) -> None:
        if self._conn is not None:
            return
        end = time.monotonic() + budget
        conn = self._link.new_connection()
        try:
            connect(conn, budget)
            conn.send_command("SUBSCRIBE", *self.channels)
            # Wait for every confirmation: only then would a message published after our
            # next command reach us.
            for _ in self.channels:
                if not conn.can_read(timeout=max(end - time.monotonic(), 0.0)):
                    raise redis.TimeoutError(f"no answer within {format_duration(budget)}")
                conn.read_response()
        except BaseException:
            conn.disconnect()
            raise
        self._conn = conn

    def next_message(self, timeout: float) -> tuple[str, str] | None:
        """The next (channel, data) published, or None after ``timeout`` seconds."""
        conn = self._conn
        if conn is None:
            raise redis.ConnectionError("not subscribed")
        try:
            if not conn.can_read(timeout=max(timeout, 0.0)):
                return None
            reply = conn.read_response()
        except BaseException:
            self.close()
            raise
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == "message":
            return str(reply[1]), str(reply[2])
        return None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()


class Contact:
    """How long calls to Redis may take while campaigning or observing.

    Until the first answer, every connection and call together get
    :func:`connect_budget` (connect_timeout, or the timeout if shorter), and any failure
    is final: a refused connection fails at once. After it, a streak of transient
    failures (a restart, a failover, a LOADING server) is borne, with back-off, for
    another such budget counted from the start of the call that failed first.
    """

    def __init__(self, options: RedisOptions, timeout: float | None) -> None:
        self._options = options
        started = time.monotonic()
        self.give_up = None if timeout is None else started + timeout
        self._bound = connect_budget(options.connect_timeout, timeout)
        self._until: float | None = started + self._bound  # None: healthy, no limit set
        self._contacted = False
        self._delay = 0.05

    def _fresh_bound(self, now: float) -> float:
        left = None if self.give_up is None else self.give_up - now
        return connect_budget(self._options.connect_timeout, left)

    def budget(self) -> float:
        """Time allowed for the next call."""
        now = time.monotonic()
        if self._until is None:
            return self._fresh_bound(now)
        return max(self._until - now, 0.001)

    def out_of_time(self) -> bool:
        """The campaign's timeout ran out (``timeout=0``: after the first attempt)."""
        return self.give_up is not None and time.monotonic() >= self.give_up

    def succeeded(self) -> None:
        self._contacted = True
        self._until = None
        self._delay = 0.05

    def failed(self, exc: RedisError, started: float) -> None:
        """A call that began at ``started`` failed: sleep before the next try, or raise
        BackendUnavailable (stating the bound) when that is final or out of time."""
        if not self._contacted or not is_transient(exc):
            raise self._options.unavailable(exc, self._bound) from None
        if self._until is None:  # a streak begins
            self._bound = self._fresh_bound(started)
            self._until = started + self._bound
        now = time.monotonic()
        if now >= self._until:
            raise self._options.unavailable(exc, self._bound) from None
        time.sleep(min(self._delay, self._until - now))
        self._delay = min(self._delay * 2, 0.5)


def is_transient(exc: RedisError) -> bool:
    """Errors that may pass on their own (a restart, a failover, a loading server)."""
    if isinstance(exc, (AuthenticationError, AuthorizationError)):
        return False
    if isinstance(exc, (BusyLoadingError, ReadOnlyError)):
        return True
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError)) and not _is_tls(exc)


def _check_tls_files(ca: str | None, cert: str | None, key: str | None) -> None:
    """The TLS files of a rediss:// URL are checked when it is parsed (status 2), as
    etcd's are: a garbage CA file is no unreachable server."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, ValueError) as exc:
            raise UsageError(f"ssl_ca_certs={ca!r} in rediss:// URL: no CA certificate in it"
                             f" (PEM expected): {exc}") from None
    if key and not cert:
        raise UsageError("ssl_keyfile= in rediss:// URL needs ssl_certfile= (the certificate)")
    if cert:
        try:
            context.load_cert_chain(cert, key)
        except (ssl.SSLError, ValueError) as exc:
            if key:
                raise UsageError(f"ssl_certfile={cert!r} and ssl_keyfile={key!r} in rediss://"
                                 f" URL are not a certificate and its key: {exc}") from None
            raise UsageError(f"ssl_certfile={cert!r} in rediss:// URL holds no private key:"
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
    return " ".join(text.split())
