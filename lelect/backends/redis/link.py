"""The Redis backend's wire: URL options, connections whose every call (connecting
included) is bounded by one time budget, a pub/sub subscription, the time allowed while
campaigning, and Redis errors turned into one clear line.

lelect speaks RESP itself (``resp``: the same capped parser as the keeper's hand-back),
with no client library: a lease can afford neither a library's retries nor its
unbounded waits, and a waiting candidate should not carry a client's memory. Each
connection is one socket (TCP, unix or TLS; ``ssl`` is imported only for TLS), connected
and spoken to within one deadline per call.
"""

from __future__ import annotations

import os
import re
import select
import threading
import time
from collections import deque

from lelect.backends.base import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_HISTORY,
    DEFAULT_TTL,
    WakePipe,
    server_text,
    shut_down_socket,
    unreachable,
)
from lelect.backends.logs import Logger
from lelect.backends.redis import resp
from lelect.backends.redis.resp import PUSHED
from lelect.backends.redis.scripts import Script
from lelect.backends.urls import BackendURL, parse_port
from lelect.durations import format_duration
from lelect.errors import BackendUnavailable, UsageError
from lelect.frozen import Record

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only
if TYPE_CHECKING:
    from typing import Any

#: lelect's Redis logger (``logging`` imported only when there is something to log).
log = Logger("lelect.redis")


DEFAULT_PORT = 6379
DEFAULT_PREFIX = "lelect"

# No glob characters (elections() matches keys with SCAN) and no braces (the hash tag).
_PREFIX = re.compile(r"[A-Za-z0-9._:/-]{1,100}")
_TLS_OPTIONS = {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile"}


# -- errors ---------------------------------------------------------------------------------


class RedisError(Exception):
    """Talking to Redis failed (the backend turns it into one line: see
    :meth:`RedisOptions.unavailable`)."""


class RedisConnectionError(RedisError):
    """No connection, or it broke: transient (unless it is TLS's fault)."""


class RedisTimeoutError(RedisError):
    """No (whole) answer in time."""


class AuthenticationError(RedisConnectionError):
    """The server wants other credentials (NOAUTH, WRONGPASS...)."""


class BusyLoadingError(RedisConnectionError):
    """LOADING: the server is still reading its data set."""


class InvalidResponse(RedisError):
    """Not a Redis reply (a broken or hostile server)."""


class ResponseError(RedisError):
    """Redis answered with an error; the connection stays usable."""


class NoScriptError(ResponseError):
    """NOSCRIPT: the server does not have the script (EVAL it)."""


class ReadOnlyError(ResponseError):
    """READONLY: a replica."""


class NoPermissionError(ResponseError):
    """NOPERM: the ACL user may not run it."""


class WrongNumberOfArgsForAuth(ResponseError):
    """AUTH with a user to a server without users (Redis 5)."""


#: Error codes and the class of their error; the code is taken off the message (the
#: texts users see were redis-py's, which did the same). "ERR" messages are matched
#: whole.
_ERRORS: dict[str, type[RedisError]] = {
    "ERR": ResponseError, "WRONGPASS": AuthenticationError, "NOAUTH": AuthenticationError,
    "LOADING": BusyLoadingError, "NOSCRIPT": NoScriptError, "READONLY": ReadOnlyError,
    "NOPERM": NoPermissionError, "OOM": ResponseError, "EXECABORT": ResponseError,
    "MASTERDOWN": ResponseError, "CLUSTERDOWN": ResponseError, "CROSSSLOT": ResponseError,
    "TRYAGAIN": ResponseError, "MOVED": ResponseError, "ASK": ResponseError,
}
_ERR_MESSAGES: dict[str, type[RedisError]] = {
    "max number of clients reached": RedisConnectionError,
    "invalid password": AuthenticationError,
    "wrong number of arguments for 'auth' command": WrongNumberOfArgsForAuth,
    "wrong number of arguments for 'AUTH' command": WrongNumberOfArgsForAuth,
    "AUTH <password> called without any password configured for the default user. Are you"
    " sure your configuration is correct?": AuthenticationError,
    "Client sent AUTH, but no password is set": AuthenticationError,
}


def parse_error(text: str) -> RedisError:
    """The exception of an error reply."""
    code = text.split(" ")[0]
    kind = _ERRORS.get(code)
    if kind is None:
        return ResponseError(text)
    text = text[len(code) + 1:]
    if code == "ERR":
        kind = _ERR_MESSAGES.get(text, ResponseError)
    return kind(text)


# -- connections ----------------------------------------------------------------------------


class _LinkWire(resp.Wire):
    make_error = staticmethod(parse_error)


class Connection:
    """One connection to a Redis server (or a sentinel) whose whole connect (TCP, TLS,
    then AUTH, HELLO and SELECT, one answer each) ends by one deadline, and whose every
    reply is read by the capped parser within a deadline.

    With ``resp3`` (connections to the server, not to a sentinel) it asks for RESP3
    (``HELLO 3``), so that one connection carries commands and pub/sub alike; a server
    that does not know HELLO (Redis before 6) is spoken to in RESP2 (``protocol`` says
    which one is spoken once connected). Errors are :class:`RedisError`; any but an
    error reply disconnects."""

    def __init__(self, *, host: str | None = None, port: int | None = None,
                 path: str | None = None, username: str | None = None,
                 password: str | None = None, db: int = 0, client_name: str | None = None,
                 resp3: bool = False, tls: bool = False, ssl_ca_certs: str | None = None,
                 ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> None:
        self.host, self.port, self.path = host, port, path
        self.username, self.password, self.db = username, password, db
        self.client_name, self.resp3 = client_name, resp3
        self.tls = ({"ca_certs": ssl_ca_certs, "certfile": ssl_certfile,
                     "keyfile": ssl_keyfile} if tls else None)
        self.protocol = 2
        #: Where a push frame read goes (the link's router).
        self.on_push: Any = None
        self._wire: _LinkWire | None = None

    @property
    def _sock(self) -> Any:
        wire = self._wire
        return None if wire is None else wire.sock

    @property
    def where(self) -> str:
        if self.path is not None:
            return self.path
        return f"{self.host}:{self.port}"

    def connect(self, budget: float) -> None:
        """Connect (if not connected) and shake hands within ``budget``."""
        if self._wire is not None:
            return
        deadline = time.monotonic() + max(budget, 0.001)
        address = {"path": self.path} if self.path is not None else {
            "host": self.host, "port": self.port}
        try:
            self._wire = _LinkWire.open(address, self.tls, deadline)  # type: ignore[assignment]
        except TimeoutError:
            raise RedisTimeoutError("Timeout connecting to server") from None
        except OSError as exc:
            raise RedisConnectionError(_connect_error(self.where, exc)) from None
        self.protocol = 2
        try:
            self._handshake(deadline)
        except BaseException:
            self.disconnect()
            raise

    def _handshake(self, deadline: float) -> None:
        if self.username or self.password:
            # AUTH on its own, never inside HELLO: a server without HELLO (Redis 5)
            # repeats an unknown command's arguments in its error.
            self._auth(deadline)
        name = ["SETNAME", self.client_name] if self.client_name else []
        if self.resp3:
            try:
                self._ask(deadline, "HELLO", 3, *name)
            except ResponseError as exc:
                lowered = str(exc).lower()
                if "unknown command" not in lowered and "noproto" not in lowered:
                    raise
            else:
                self.protocol = 3
                name = []
        if name:
            self._ask(deadline, "CLIENT", *name)
        if self.db and str(self._ask(deadline, "SELECT", self.db)) != "OK":
            raise RedisConnectionError("Invalid Database")

    def _auth(self, deadline: float) -> None:
        password = self.password or ""
        try:
            reply = self._ask(deadline, "AUTH", *([self.username] if self.username else []),
                              password)
        except WrongNumberOfArgsForAuth:  # Redis 5: no users
            reply = self._ask(deadline, "AUTH", password)
        if str(reply) != "OK":
            raise AuthenticationError("Invalid Username or Password")

    def _ask(self, deadline: float, *command: Any) -> Any:
        self.send(command, deadline=deadline)
        return self.read(deadline)

    def send(self, *commands: tuple[Any, ...], deadline: float) -> None:
        """Send ``commands`` (a pipeline) by ``deadline``."""
        wire = self._connected()
        try:
            wire.send(*commands, deadline=deadline)
        except TimeoutError:
            self.disconnect()
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            self.disconnect()
            errno, text = exc.args[:2] if len(exc.args) >= 2 else ("UNKNOWN", exc)
            raise RedisConnectionError(f"Error {errno} while writing to socket. {text}.") from None
        except BaseException:
            self.disconnect()
            raise

    def can_read(self, timeout: float = 0.0) -> bool:
        """Is something to read (within ``timeout``)? A closed connection raises."""
        wire = self._connected()
        try:
            return wire.can_read(timeout)
        except BaseException as exc:
            self.disconnect()
            raise self._read_error(exc) from None

    def read(self, deadline: float, push_request: bool = False) -> Any:
        """The next reply by ``deadline`` (see :meth:`resp.Wire.read`); an error reply is
        raised (and only a connection-level one disconnects)."""
        wire = self._connected()
        try:
            reply = wire.read(deadline, push_request, self.on_push)
        except BaseException as exc:
            self.disconnect()
            raise self._read_error(exc) from None
        if isinstance(reply, RedisError):
            if isinstance(reply, RedisConnectionError):
                self.disconnect()
            raise reply
        return reply

    def _read_error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, resp.InvalidResponse):
            return InvalidResponse(str(exc))
        if isinstance(exc, resp.Closed):
            return RedisConnectionError(str(exc))
        if isinstance(exc, TimeoutError):
            return RedisTimeoutError(f"Timeout reading from {self.where}")
        if isinstance(exc, OSError):
            return RedisConnectionError(f"Error while reading from {self.where} : {exc.args}")
        return exc

    def _connected(self) -> _LinkWire:
        wire = self._wire
        if wire is None:
            raise RedisConnectionError("not connected")
        return wire

    def disconnect(self) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            try:
                wire.sock.shutdown(2)  # socket.SHUT_RDWR
            except OSError:
                pass
            wire.close()


def _connect_error(where: str, exc: OSError) -> str:
    """As redis-py said it (the messages users know): ``Error 111 connecting to
    host:port. Connection refused.``"""
    if not exc.args:
        return f"Error connecting to {where}."
    if len(exc.args) == 1:
        return f"Error {exc.args[0]} connecting to {where}."
    return f"Error {exc.args[0]} connecting to {where}. {exc.args[1]}."


class RedisOptions(Record):
    """What a redis://, rediss://, unix:// or redis[s]+sentinel:// URL asks for."""

    where: str  # host:port or socket path, for messages (never the password)
    #: :class:`Connection`'s arguments (the master's, with Sentinel).
    _unshown = ("connection_kwargs",)
    connection_kwargs: dict[str, Any]
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
        return bool(self.connection_kwargs.get("tls"))

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
        settings: dict[str, Any] = {
            "prefix": prefix,
            "ttl": url.duration("ttl", DEFAULT_TTL),
            "connect_timeout": url.duration("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
            "history_limit": url.integer("history", DEFAULT_HISTORY),
            "restart_guard": _on_off(url, "restart_guard"),
        }
        kwargs: dict[str, Any] = {
            "username": url.username,
            "password": url.password if url.password is not None else url.option("password"),
            # RESP3 where the server speaks it: one connection for commands and pub/sub.
            "resp3": True,
            "client_name": "lelect",
        }
        if scheme == "unix":
            if url.hosts or not url.path or url.path == "/":
                raise UsageError(
                    f"malformed unix:// URL {url.masked!r}: expected unix:///path/to/redis.sock"
                )
            kwargs["path"] = url.path
            kwargs["db"] = _db_number(url.option("db", "0") or "0", url)
            return cls(url.path, kwargs, **settings)

        if scheme in TLS_SCHEMES:
            # One set of TLS options for the server and, with Sentinel, the sentinels.
            kwargs.update(_tls_kwargs(url))
        if scheme in SENTINEL_SCHEMES:
            sentinel, db = SentinelOptions.from_url(url, kwargs)
            kwargs["db"] = db
            where = f"master {sentinel.master_name!r} (sentinels {sentinel.where})"
            return cls(where, kwargs, **settings, sentinel=sentinel)
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
        return cls(where, kwargs, **settings)

    def unavailable(self, exc: BaseException, within: float | None = None,
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
        elif isinstance(exc, NoPermissionError) or (
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
        elif isinstance(exc, RedisTimeoutError) and self.tls:
            return unreachable("redis", where, within, "no answer (TLS handshake or command):"
                               " is that port serving TLS (tls-port)?")
        elif isinstance(exc, RedisTimeoutError):
            return unreachable("redis", where, within, "connected, but no answer")
        elif isinstance(exc, NoMaster) and self.tls and _is_tls(exc):
            return unreachable("redis", where, within, f"TLS failed: {_short(text)}")
        elif isinstance(exc, NoMaster):
            hint = ""
            if not self.tls and _closed_at_once(text):
                hint = "; are the sentinels TLS ports (tls-port)? Then use rediss+sentinel://"
            return unreachable("redis", where, within, _short(text) + hint)
        elif isinstance(exc, RedisConnectionError) and self.tls and _no_client_cert(text):
            hint = ("the server may require a client certificate: give ssl_certfile= and"
                    " ssl_keyfile=" if "ssl_certfile" not in self.connection_kwargs
                    else "does the server accept this client certificate (its CA)?")
            return unreachable("redis", where, within, f"TLS failed: {_short(text)}; {hint}")
        elif isinstance(exc, RedisConnectionError) and _is_tls(exc):
            return unreachable("redis", where, within, f"TLS failed: {_short(text)}")
        elif isinstance(exc, RedisConnectionError):
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


class SentinelOptions(Record):
    """Where a ``redis+sentinel://`` URL says to ask for the master."""

    master_name: str
    sentinels: tuple[tuple[str, int], ...]
    #: For connections to a sentinel (its own credentials: ``?sentinel_password=``; the
    #: master's TLS options).
    _unshown = ("connection_kwargs",)
    connection_kwargs: dict[str, Any]

    @property
    def where(self) -> str:
        return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinels)

    @classmethod
    def from_url(cls, url: BackendURL, master_kwargs: dict[str, Any]
                 ) -> tuple[SentinelOptions, int]:
        """The sentinels, the master's name and the database number of
        ``redis[s]+sentinel://[user:pw@]s1[:26379],s2…/MASTER[/DB]``; sentinels are
        reached as the master is (TLS options in ``master_kwargs``)."""
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
            if key in ("client_name", "tls") or key.startswith("ssl_")
        }
        kwargs.update(username=url.option("sentinel_username"),
                      password=url.option("sentinel_password"))
        return cls(name, sentinels, kwargs), _db_number(db_text or "0", url)


class NoMaster(RedisConnectionError):
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
        self._conn: Connection | None = None
        #: Grows whenever the connection is dropped or replaced: subscriptions made on an
        #: older one are gone.
        self.generation = 0
        self._subscriptions: set[Subscription] = set()
        self._told_resp2 = False

    def new_connection(self) -> Connection:
        return Connection(**self.options.connection_kwargs)

    def open(self, budget: float) -> Connection:
        """A connection to the server, made within ``budget`` (it may be connected
        later, within what is left of it)."""
        return self.new_connection()

    def _fresh(self, end: float) -> Connection | None:
        """Before a call: a connection to use instead of the one held (a new master)."""
        return None

    def call(self, budget: float, *args: Any) -> Any:
        end = time.monotonic() + budget
        fresh = self._fresh(end)
        with self._using(end, fresh) as conn:
            return self._timed(conn, end, args)

    def _timed(self, conn: Connection, end: float, *commands: tuple[Any, ...]) -> Any:
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

    def _using(self, end: float, fresh: Connection | None = None) -> _Turn:
        return _Turn(self, end, fresh)

    def _ready(self, end: float, fresh: Connection | None) -> Connection:
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

    def _current(self, conn: Connection) -> bool:
        """Is ``conn`` to the server to talk to (a master may have moved)?"""
        return True

    def _install(self, conn: Connection) -> None:
        old, self._conn = self._conn, conn
        if old is not conn:
            self.generation += 1
            if old is not None:
                old.disconnect()
                self._wake_all()
            conn.on_push = self._route
            if conn._sock is not None and not _speaks_resp3(conn) and not self._told_resp2:
                self._told_resp2 = True
                log.info("lelect: redis at %s does not speak RESP3 (Redis 6 or later):"
                         " pub/sub takes a second connection", self.options.where)

    def _drop(self, conn: Connection) -> None:
        conn.disconnect()
        if self._conn is conn:
            self._conn = None
            self.generation += 1
            self._wake_all()

    def _pump(self, conn: Connection) -> None:
        """Read every push already arriving (called holding ``_io``); anything else
        unread means the server closed the connection or broke the protocol."""
        while conn.can_read(timeout=0):
            if not _speaks_resp3(conn):
                raise RedisConnectionError("the server closed the connection")
            reply = conn.read(time.monotonic() + self.options.connect_timeout,
                              push_request=True)
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

    def __init__(self, link: RedisLink, end: float, fresh: Connection | None) -> None:
        self.link, self.end, self.fresh = link, end, fresh

    def __enter__(self) -> Connection:
        if not self.link._io.acquire(timeout=max(self.end - time.monotonic(), 0.0)):
            if self.fresh is not None:
                self.fresh.disconnect()
            raise RedisTimeoutError("no answer in time (the connection was busy)")
        try:
            return self.link._ready(self.end, self.fresh)
        except BaseException:
            self.link._release_io()
            raise

    def __exit__(self, *exc_info: Any) -> None:
        self.link._release_io()


def _speaks_resp3(conn: Connection) -> bool:
    return conn.protocol == 3


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
        self._sentinel_conns: dict[tuple[str, int], Connection] = {}

    def new_connection(self) -> Connection:
        master = self.master
        if master is None:
            raise NoMaster(f"no master known for {self.sentinel.master_name!r}")
        return self._connection_to(master)

    def _connection_to(self, address: tuple[str, int]) -> Connection:
        kwargs = dict(self.options.connection_kwargs, host=address[0], port=address[1])
        return Connection(**kwargs)

    def open(self, budget: float) -> Connection:
        fresh = self._locate(time.monotonic() + budget)
        return fresh if fresh is not None else self.new_connection()

    def _fresh(self, end: float) -> Connection | None:
        if self.master is None or time.monotonic() - self._confirmed >= self.CONFIRM_EVERY:
            return self._locate(end)
        return None

    def _current(self, conn: Connection) -> bool:
        return (conn.host, conn.port) == self.master

    def failed(self, exc: BaseException) -> bool:
        if isinstance(exc, (RedisConnectionError, RedisTimeoutError, ReadOnlyError)):
            self._forget()
            return True
        return False

    def _forget(self) -> None:
        """Ask the sentinels (and check ROLE) before the next call (the failed call
        drops the connection)."""
        with self._lock:
            self.master, self._confirmed = None, float("-inf")

    def _locate(self, end: float) -> Connection | None:
        """Make sure the master is known and a sentinel's word on it is fresh; returns a
        connection to a master just checked with ROLE, if one was made."""
        if not self._locating.acquire(timeout=max(end - time.monotonic(), 0.0)):
            raise RedisTimeoutError("no answer in time (looking for the master)")
        try:
            if self.master is not None and time.monotonic() - self._confirmed < self.CONFIRM_EVERY:
                return None
            return self._ask_sentinels(end)
        finally:
            self._locating.release()

    def _ask_sentinels(self, end: float) -> Connection | None:
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
            except (RedisConnectionError, RedisTimeoutError, ReadOnlyError,
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
            conn = Connection(host=address[0], port=address[1],
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

    def _checked_master(self, address: tuple[str, int], budget: float) -> Connection:
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


def _closed_by_server(conn: Connection) -> bool:
    """An idle connection has nothing to read unless the server closed it (or wrote
    something it should not have): either way it must not be used."""
    try:
        return bool(conn.can_read(timeout=0))
    except (RedisError, OSError):
        return True


def timed_call(conn: Connection, budget: float, *args: Any,
               before: tuple[tuple[Any, ...], ...] = ()) -> Any:
    """Send one command (after the commands ``before`` it, which answer with pushes) and
    read its answer within ``budget`` seconds, connecting first if needed. A frozen or
    partitioned server makes this raise TimeoutError in time."""
    end = time.monotonic() + budget
    connect(conn, budget)
    conn.send(*before, args, deadline=end)
    if not conn.can_read(timeout=max(end - time.monotonic(), 0.0)):
        raise RedisTimeoutError(f"no answer within {format_duration(budget)}")
    return conn.read(end)


def connect(conn: Connection, budget: float) -> None:
    """Connect (if not connected) within ``budget``: one deadline bounds the TCP
    connect, the TLS handshake and all of the handshake's answers."""
    conn.connect(max(budget, 0.001))


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
            raise RedisConnectionError("not subscribed")
        end = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            if self._messages:
                return self._messages.popleft()
            if self._generation != link.generation:
                self._generation = None
                raise RedisConnectionError("the connection to redis was lost")
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
                raise RedisConnectionError(f"the connection to redis was lost: {exc}") from None
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
                    conn.send(("UNSUBSCRIBE", *gone),
                              deadline=time.monotonic() + link.options.connect_timeout)
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
        self._conn: Connection | None = None
        self._epoch = 0

    def ensure(self, budget: float) -> None:
        if self._conn is not None:
            return
        end = time.monotonic() + budget
        conn = self._link.open(budget)
        epoch = self._link.epoch
        try:
            connect(conn, max(end - time.monotonic(), 0.001))
            conn.send(("SUBSCRIBE", *self.channels), deadline=end)
            # Wait for every confirmation: only then would a message published after our
            # next command reach us.
            for _ in self.channels:
                if not conn.can_read(timeout=max(end - time.monotonic(), 0.0)):
                    raise RedisTimeoutError(f"no answer within {format_duration(budget)}")
                conn.read(end)
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
            raise RedisConnectionError("not subscribed")
        if self._epoch != self._link.epoch:  # the master moved: subscribe there
            self.close()
            raise RedisConnectionError("the master changed")
        try:
            if wake is not None and not conn.can_read(timeout=0):  # nothing buffered
                sock = conn._sock
                if sock is None:
                    raise RedisConnectionError("not connected")
                readable, _, _ = select.select([sock, wake], [], [], max(timeout, 0.0))
                if sock not in readable:
                    return None
                timeout = 0.0
            if not conn.can_read(timeout=max(timeout, 0.0)):
                return None
            reply = conn.read(time.monotonic() + self._link.options.connect_timeout)
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
    if isinstance(exc, AuthenticationError):
        return False
    if isinstance(exc, (BusyLoadingError, ReadOnlyError)):
        return True
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError)) and not _is_tls(exc)


def _tls_kwargs(url: BackendURL) -> dict[str, Any]:
    """The TLS settings for a rediss:// or rediss+sentinel:// URL: its files
    (checked now), the certificate always verified, its host name too."""
    kwargs: dict[str, Any] = {}
    for name in sorted(_TLS_OPTIONS & set(url.query)):
        path = url.query[name]
        if not os.path.isfile(path):
            raise UsageError(f"{name}={path!r} in {url.scheme}:// URL: no such file")
        kwargs[name] = path
    _check_tls_files(url.scheme, kwargs.get("ssl_ca_certs"), kwargs.get("ssl_certfile"),
                     kwargs.get("ssl_keyfile"))
    kwargs["tls"] = True  # the certificate always verified, its host name too
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
    # Connection errors read "Error 111 connecting to host:port. Connection refused."
    return server_text(text)


def _on_off(url: BackendURL, name: str, default: bool = True) -> bool:
    text = url.option(name)
    if text is None:
        return default
    if text not in ("on", "off"):
        raise UsageError(f"invalid {name} option {text!r} in {url.scheme}:// URL: use on or off")
    return text == "on"
