"""The MySQL backend's wire: URL options, a PyMySQL session whose every call is bounded
by a time budget, and MySQL's errors turned into one clear line.

Every call is bounded three ways: the server gives up on it by itself
(``max_statement_time`` on MariaDB, ``max_execution_time`` for MySQL's reads,
``innodb_lock_wait_timeout`` on both), PyMySQL's socket read/write timeouts are set to
what is left of the budget, and a watchdog shuts the socket down when the budget is
spent (a server that dribbles bytes cannot hold the caller). Connecting is bounded the
same way. Whatever a server sends, the caller gets :class:`LinkError`, never PyMySQL's
parser's own exceptions.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from contextlib import nullcontext

from lelect.backends import defer_imports
from lelect.backends.base import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TTL,
    Cancel,
    server_text,
    shut_down_socket,
    unreachable,
)
from lelect.backends.mysql.sql import DEFAULT_PREFIX, PREFIX, SESSION_SETUP, with_timeout
from lelect.backends.records import DEFAULT_HISTORY
from lelect.backends.turns import SETTLE, Busy, Turns
from lelect.backends.urls import BackendURL
from lelect.errors import BackendUnavailable, ConfigError, LelectError, UsageError
from lelect.frozen import Record

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only

if TYPE_CHECKING:
    import ssl


def _import_pymysql() -> None:
    """Import PyMySQL without OpenSSL when nothing here has loaded it yet.

    PyMySQL imports ``ssl`` (for TLS) and ``hashlib`` (for password scrambles) when it
    is imported; both load OpenSSL's libraries, about 7 MB of every waiting candidate's
    memory, which a URL without TLS never needs. So:

    - ``ssl`` is deferred (:func:`lelect.backends.defer_imports`): PyMySQL binds it, and it
      loads when TLS is first used; so is ``traceback`` (~2 ms of every start, with its
      ``tokenize`` and ``textwrap``), which PyMySQL uses only to keep the traceback of a
      connection that failed;
    - while PyMySQL is imported (and only in a process with no other thread, which could
      import it meanwhile), ``_hashlib`` reads as missing, so PyMySQL's ``hashlib`` is
      CPython's own hashes (sha1, sha256, sha512: all PyMySQL uses); that ``hashlib`` is
      then taken out of ``sys.modules``, so whoever imports ``hashlib`` later gets
      OpenSSL's as usual.
    """
    defer_imports("ssl", "traceback")
    loaded = set(sys.modules)
    blocked = "hashlib" not in loaded and "_hashlib" not in loaded and threading.active_count() == 1
    try:
        if blocked:
            sys.modules["_hashlib"] = None  # type: ignore[assignment]
        import pymysql  # noqa: F401
        import pymysql.connections  # noqa: F401
    finally:
        if blocked:
            if sys.modules.get("_hashlib", False) is None:
                del sys.modules["_hashlib"]
            sys.modules.pop("hashlib", None)


try:
    _import_pymysql()
    import pymysql
    from pymysql.constants import CLIENT
except ImportError:  # pragma: no cover - tested by running lelect without PyMySQL
    raise UsageError("mysql:// needs PyMySQL: pip install 'lelect[mysql]' (or pip install PyMySQL)"
                     ) from None

#: PyMySQL takes ``ssl_disabled`` (1.2 and later speak TLS by default when it is not set)
_SSL_DISABLED = "ssl_disabled" in pymysql.connections.Connection.__init__.__code__.co_varnames
DEFAULT_PORT = 3306
OPTIONS = {"ttl", "connect_timeout", "history", "prefix", "ssl_mode", "ssl_ca", "ssl_cert",
           "ssl_key"}
SSL_MODES = ("disabled", "required", "verify_ca", "verify_identity")
#: Share of a call's budget the server may spend before it gives up by itself (the rest
#: is for the answer to arrive before the watchdog cuts the socket).
SERVER_SHARE = 0.9

# MySQL's error numbers lelect tells apart.
ACCESS_DENIED = {1044, 1045, 1698}  # to the database; bad user/password; socket-only user
PRIVILEGE = {1142, 1143, 1227, 1370}  # table, column, SUPER-like, routine
NO_TABLE = 1146
UNKNOWN_DATABASE = 1049
READ_ONLY = {1290, 1792, 1836}
TLS_FAILED = 2026
TIMED_OUT = {1205, 1969, 3024, 1317, 1028}  # lock wait, max_statement_time, max_execution_time, interrupted
TRANSIENT = TIMED_OUT | {1040, 1053, 1077, 1152, 1158, 1159, 1160, 1161, 1213, 1927, 2002, 2003,
                         2006, 2013, 2055}


class LinkError(Exception):
    """A call failed: ``code`` is MySQL's error number when the server gave one."""

    def __init__(self, text: str, code: int | None = None, timed_out: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.timed_out = timed_out

    @property
    def transient(self) -> bool:
        if self.timed_out:
            return True
        if self.code is None:
            return True  # a lost connection, a garbled answer: try again within the bound
        return self.code in TRANSIENT

    @property
    def no_table(self) -> bool:
        return self.code == NO_TABLE


class MySQLOptions(Record):
    """What a mysql:// URL asks for."""

    _unshown = ("password",)

    where: str
    host: str
    port: int
    database: str
    user: str | None
    password: str | None
    prefix: str = DEFAULT_PREFIX
    ttl: float = DEFAULT_TTL
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    history: int = DEFAULT_HISTORY
    ssl_mode: str = "disabled"
    ssl_ca: str | None = None
    ssl_cert: str | None = None
    ssl_key: str | None = None

    @classmethod
    def from_url(cls, url: BackendURL) -> MySQLOptions:
        url.check_options(OPTIONS)
        if len(url.hosts) != 1:
            raise UsageError(f"{url.scheme}:// takes one host: {url.scheme}://USER:PW@HOST:3306/DATABASE")
        host, port = url.hosts[0]
        database = url.path.strip("/")
        if not database or "/" in database or len(database) > 64:
            raise UsageError(f"{url.scheme}:// URL {url.masked!r} names no database: use"
                             f" {url.scheme}://USER:PW@HOST:3306/DATABASE")
        prefix = url.option("prefix", DEFAULT_PREFIX) or ""
        if not PREFIX.fullmatch(prefix):
            raise UsageError(f"invalid prefix {prefix[:40]!r} in {url.scheme}:// URL: use 1-32"
                             " characters from a-z 0-9 _, starting with a letter")
        ssl_mode = (url.option("ssl_mode", None) or "").lower().replace("-", "_")
        if ssl_mode and ssl_mode not in SSL_MODES:
            raise UsageError(f"invalid ssl_mode {ssl_mode[:20]!r} in {url.scheme}:// URL: use one"
                             f" of {', '.join(SSL_MODES)}")
        ssl_ca = url.option("ssl_ca")
        if not ssl_mode:
            ssl_mode = "verify_identity" if ssl_ca else "disabled"
        if ssl_mode.startswith("verify") and not ssl_ca:
            raise UsageError(f"ssl_mode={ssl_mode} needs ssl_ca=PATH (the CA that signed the"
                             " server's certificate)")
        shown = f"[{host}]" if ":" in host else host
        return cls(
            where=f"{shown}:{port or DEFAULT_PORT}",
            host=host,
            port=port or DEFAULT_PORT,
            database=database,
            user=url.username,
            password=url.password,
            prefix=prefix,
            ttl=url.duration("ttl", DEFAULT_TTL),
            connect_timeout=url.duration("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
            history=url.integer("history", DEFAULT_HISTORY),
            ssl_mode=ssl_mode,
            ssl_ca=ssl_ca,
            ssl_cert=url.option("ssl_cert"),
            ssl_key=url.option("ssl_key"),
        )

    @property
    def tls(self) -> bool:
        return self.ssl_mode != "disabled"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            if self.ssl_mode.startswith("verify"):
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(self.ssl_ca)
                context.check_hostname = self.ssl_mode == "verify_identity"
            if self.ssl_cert:
                context.load_cert_chain(self.ssl_cert, self.ssl_key)
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"cannot load the TLS files of the mysql:// URL: {exc}") from None
        return context

    # -- one line for every way MySQL can fail ----------------------------------------------

    def unavailable(self, exc: BaseException, within: float | None = None) -> LelectError:
        """What went wrong, in one line (never the password)."""
        bound = self.connect_timeout if within is None else within
        if not isinstance(exc, LinkError):
            return unreachable("MySQL", self.where, bound, server_text(str(exc)) or type(exc).__name__)
        code, text = exc.code, exc.text
        if exc.timed_out:
            return unreachable("MySQL", self.where, bound, "no answer in time")
        if code in ACCESS_DENIED:
            return BackendUnavailable(
                f"MySQL at {self.where}: access denied for user {self.role} to database"
                f" {self.database!r}: check the user, password and grants ({text})"
            )
        if code in PRIVILEGE:
            return self.refused(exc)
        if code == UNKNOWN_DATABASE:
            return BackendUnavailable(f"MySQL at {self.where}: database {self.database!r} does"
                                      " not exist (CREATE DATABASE it, see docs/mysql.md)")
        if code in READ_ONLY:
            return BackendUnavailable(f"MySQL at {self.where} is read-only: point the URL at"
                                      f" the primary ({text})")
        if code == TLS_FAILED:
            return BackendUnavailable(f"TLS with MySQL at {self.where} failed: {text}")
        if code in (1205, 1969, 3024, 1317, 1028):
            return unreachable("MySQL", self.where, bound,
                               "the statement did not finish in time (a lock held elsewhere?)")
        if code in (2003, 2002) and "refused" in text.lower():
            return unreachable("MySQL", self.where, bound,
                               "connection refused (is MySQL running there?)")
        if code is not None and code < 2000:
            return BackendUnavailable(f"MySQL at {self.where} failed: {text} [{code}]")
        return unreachable("MySQL", self.where, bound, text)

    def refused(self, exc: LinkError) -> ConfigError:
        return ConfigError(
            f"user {self.role} lacks a privilege lelect needs at {self.where}: {exc.text}"
            f" (GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON {self.database}.* TO ...;"
            " see docs/mysql.md)"
        )

    @property
    def role(self) -> str:
        return repr(self.user) if self.user else "(none given)"


def _link_error(exc: BaseException) -> LinkError:
    """Any failure of PyMySQL or of the parsing of a server's bytes, as one LinkError."""
    if isinstance(exc, LinkError):
        return exc
    if isinstance(exc, pymysql.err.Error) and len(exc.args) >= 2 and isinstance(exc.args[0], int):
        code, message = exc.args[0], exc.args[1]
        text = server_text(str(message)) or type(exc).__name__
        if code == 2003 and "refused" in text.lower():
            return LinkError("connection refused", code)
        if "ssl is required" in text.lower():
            return LinkError("the server does not offer TLS, which the URL's ssl_mode requires",
                             TLS_FAILED)
        if code == 2003 and ("timed out" in text.lower() or "timeout" in text.lower()):
            return LinkError("no answer in time", code, timed_out=True)
        return LinkError(text, code)
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return LinkError("no answer in time", timed_out=True)
    if isinstance(exc, ConnectionRefusedError):
        return LinkError("connection refused", 2003)
    # No TLS without _ssl, and then no SSLError either (ssl may be a deferred stand-in).
    if "_ssl" in sys.modules and isinstance(exc, sys.modules["ssl"].SSLError):
        return LinkError(server_text(str(exc)), TLS_FAILED)
    text = server_text(str(exc)) or type(exc).__name__
    if isinstance(exc, OSError):
        return LinkError(text, 2013)
    return LinkError(f"not a MySQL answer ({type(exc).__name__}: {text})")


class _Watchdog:
    """Shuts a connection's socket down when a call's budget is spent or ``cancel`` is
    set, so the call returns with an error instead of waiting."""

    def __init__(self, sock: socket.socket | None, budget: float,
                 cancel: threading.Event | None = None) -> None:  # fmt: skip
        self._sock = sock
        self._done = threading.Event()
        self._cancel = cancel
        self._finished = False
        self.fired = False
        self._thread = threading.Thread(target=self._run, args=(budget,), daemon=True,
                                        name="lelect-mysql-watchdog")
        self._thread.start()

    def _run(self, budget: float) -> None:
        end = time.monotonic() + max(budget, 0.0)
        cancel = self._cancel
        # A Cancel wakes this thread itself; a plain Event is looked at every 50 ms.
        wakes = isinstance(cancel, Cancel)
        with cancel.waking(self._done.set) if wakes else nullcontext():
            while not self._finished:
                left = end - time.monotonic()
                if left <= 0 or (cancel is not None and cancel.is_set()):
                    break
                self._done.wait(min(left, 0.05) if cancel is not None and not wakes else left)
            else:
                return
        self.fired = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        self._finished = True
        self._done.set()


#: The most a server may send in one packet, and in answer to one call (lelect's answers
#: are a few rows): a hostile server cannot make lelect buffer without end.
MAX_PACKET = 1 << 20
MAX_ANSWER = 16 << 20


class _Capped(pymysql.connections.Connection):
    """PyMySQL's connection with a cap on what it reads (per packet, per call)."""

    lelect_read = 0

    def _read_bytes(self, num_bytes: int) -> bytes:
        self.lelect_read += num_bytes
        if num_bytes > MAX_PACKET or self.lelect_read > MAX_ANSWER:
            self._force_close()
            raise LinkError(f"not a MySQL answer: {num_bytes} bytes in a packet, or more than"
                            f" {MAX_ANSWER >> 20} MiB in all")
        return super()._read_bytes(num_bytes)


def open_connection(options: MySQLOptions, budget: float) -> pymysql.connections.Connection:
    """A new autocommit connection within ``budget`` seconds (refused: at once)."""
    lock = threading.Lock()
    box: dict[str, object] = {}
    budget = max(budget, 0.001)
    context = options.ssl_context()  # a missing file is the URL's fault: UsageError
    # Without TLS asked for, none: PyMySQL 1.2 would otherwise build a TLS context (the
    # system's CA store) for every connection and speak TLS to a server that offers it.
    no_tls = {"ssl_disabled": True} if context is None and _SSL_DISABLED else {}

    def attempt() -> None:
        conn = None
        try:
            conn = _Capped(
                host=options.host, port=options.port, user=options.user or "",
                password=options.password or "", database=options.database,
                charset="utf8mb4", collation="utf8mb4_bin", autocommit=True,
                connect_timeout=budget, read_timeout=budget, write_timeout=budget,
                client_flag=CLIENT.MULTI_STATEMENTS | CLIENT.FOUND_ROWS,
                init_command=SESSION_SETUP, ssl=context, local_infile=False,
                program_name="lelect", **no_tls,
            )  # fmt: skip
            if options.tls and type(conn._sock).__name__ != "SSLSocket":
                conn.close()
                conn = None
                raise LinkError("the server does not offer TLS, which the URL's ssl_mode"
                                " requires", TLS_FAILED)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = _link_error(exc)
        with lock:
            if box.get("abandoned"):
                if conn is not None:
                    conn.close()
            elif conn is not None:
                box["conn"] = conn

    thread = threading.Thread(target=attempt, name="lelect-mysql-connect", daemon=True)
    thread.start()
    thread.join(budget)
    with lock:
        if "conn" in box:
            return box["conn"]  # type: ignore[return-value]
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        box["abandoned"] = True
    raise LinkError("no answer in time", timed_out=True)


class MySQLSession:
    """One connection, made when first needed, used by one call at a time.

    A waiting candidate's long call (``GET_LOCK``'s wait, :meth:`run_long`) shares it
    with everything else the process sends: a long call lets every caller that waits for
    the connection go first, and a caller that comes while one runs waits for its end
    on top of its own budget (both bounded)."""

    def __init__(self, options: MySQLOptions) -> None:
        self.options = options
        self._conn: pymysql.connections.Connection | None = None
        self._lock = threading.RLock()
        self.mariadb = True
        #: Grows with every new connection: a lock taken with ``GET_LOCK`` is held only
        #: while the generation it was taken in lasts.
        self.generation = 0
        self._turns = Turns(self._lock)

    @property
    def connection(self) -> pymysql.connections.Connection | None:
        return self._conn

    def run(self, sql: str, budget: float, cancel: threading.Event | None = None,
            server_limit: bool = True) -> list[tuple]:  # fmt: skip
        """Run ``sql`` (one or more statements) within ``budget`` seconds (plus what is
        left of a long call holding the connection); the rows of the last result that
        had any. Raises LinkError (``timed_out`` when out of time)."""
        try:
            with self._turns.short(budget) as end:
                return self._run(sql, end, cancel, server_limit)
        except Busy as exc:
            raise LinkError(str(exc), timed_out=True) from None

    def run_long(self, sql: str, budget: float, cancel: threading.Event | None = None,
                 settle: float = SETTLE) -> list[tuple]:  # fmt: skip
        """Run ``sql``, which may take ``budget`` seconds (a wait on the server), once
        every caller waiting for the connection has gone first (:class:`Turns`). Getting
        the connection is bounded by the connect timeout."""
        try:
            with self._turns.long(budget, self.options.connect_timeout, settle):
                return self._run(sql, time.monotonic() + budget, cancel, server_limit=True)
        except Busy as exc:
            raise LinkError(str(exc), timed_out=True) from None

    def _run(self, sql: str, end: float, cancel: threading.Event | None,
             server_limit: bool) -> list[tuple]:  # fmt: skip
        # Connecting is bounded by the connect timeout, not by a long wait's budget (a
        # server gone during a wait in line must not hold its candidate for both).
        conn = self._connect(min(max(end - time.monotonic(), 0.0), self.options.connect_timeout))
        left = end - time.monotonic()
        if left <= 0:
            raise LinkError("no time left after connecting", timed_out=True)
        if server_limit:
            sql = with_timeout(sql, left * SERVER_SHARE, self.mariadb)
        return self._execute(conn, sql, left, cancel)

    def _execute(self, conn, sql: str, budget: float, cancel: threading.Event | None) -> list[tuple]:
        conn._read_timeout = conn._write_timeout = max(budget, 0.001)
        conn.lelect_read = 0
        watchdog = _Watchdog(conn._sock, budget, cancel)
        rows: list[tuple] = []
        try:
            cursor = conn.cursor()
            cursor.execute(sql)
            while True:
                if cursor.description:
                    rows = list(cursor.fetchall())
                if not cursor.nextset():
                    break
        except BaseException as exc:
            watchdog.cancel()
            # A statement that failed inside a transaction leaves it open: drop the
            # connection, which rolls it back.
            self.drop()
            if watchdog.fired:
                raise LinkError("no answer in time", timed_out=True) from None
            raise _link_error(exc) from None
        watchdog.cancel()
        if watchdog.fired:  # answered just as the budget ran out; the socket is gone
            self.drop()
        return rows

    def _connect(self, budget: float):
        if self._conn is not None and not self._usable(self._conn):
            self.drop()
        if self._conn is None:
            conn = open_connection(self.options, budget)
            self.mariadb = "mariadb" in str(conn.server_version).lower()
            self._conn = conn
            self.generation += 1
        return self._conn

    @staticmethod
    def _usable(conn) -> bool:
        """An idle connection has nothing to say; anything readable (EOF, an error
        packet before a shutdown) means it must not be used."""
        sock = conn._sock
        if sock is None:
            return False
        try:
            import select

            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def drop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn._force_close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def close(self) -> None:
        """Close unless another thread's call holds the connection (a silent server)."""
        if not self._lock.acquire(timeout=0.05):
            shut_down_socket(self._conn)
            return
        try:
            if self._conn is not None:
                try:
                    self._conn._sock.settimeout(0.2)
                    self._conn.close()  # COM_QUIT: the server frees its locks at once
                except Exception:  # noqa: BLE001
                    pass
                self._conn = None
        finally:
            self._lock.release()


def wire_params(session: MySQLSession) -> dict[str, object] | None:
    """How the keeper's own client reaches the server this session reached (None: it
    cannot; TLS is not spoken by the keeper's client)."""
    options = session.options
    if options.tls:
        return None
    conn = session.connection
    address = None
    if conn is not None and conn._sock is not None:
        try:
            address = conn._sock.getpeername()[0]
        except OSError:
            address = None
    return {"host": address or options.host, "port": options.port, "user": options.user or "",
            "password": options.password or "", "database": options.database,
            "prefix": options.prefix, "mariadb": session.mariadb}


