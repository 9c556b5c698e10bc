"""The PostgreSQL backend's wire: URL options, a session whose every statement is bounded
by a time budget, LISTEN/NOTIFY waits, and PostgreSQL errors turned into one clear line.

psycopg waits for an answer without limit, and libpq's connect_timeout is whole seconds
(at least 2). A lease can afford neither, so each statement runs under a server-side
``statement_timeout`` of its budget (a statement stuck behind a lock is cancelled by the
server) and a watchdog that shuts the socket down when the budget is spent (a frozen or
partitioned server cannot hold the caller); connecting is bounded the same way.
"""

from __future__ import annotations

import math
import os
import re
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from lelect.backends.base import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TTL, server_text, unreachable
from lelect.backends.postgres.sql import DEFAULT_SCHEMA, SCHEMA_NAME, with_timeout
from lelect.backends.records import DEFAULT_HISTORY
from lelect.backends.urls import BackendURL
from lelect.errors import BackendUnavailable, ConfigError, LelectError, UsageError

try:
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
except ImportError:  # pragma: no cover - tested by running lelect without psycopg
    raise UsageError(
        "postgresql:// needs psycopg 3: pip install 'lelect[postgres]'"
        " (or pip install 'psycopg[binary]')"
    ) from None

DEFAULT_PORT = 5432
#: lelect's own URL options; every other query option goes to libpq as it is.
LELECT_OPTIONS = {"schema", "ttl", "connect_timeout", "history"}
#: Share of a statement's budget the server may spend before it cancels the statement
#: itself (the rest is for the answer to arrive before the watchdog cuts the socket).
SERVER_SHARE = 0.9


class StatementTimeout(psycopg.OperationalError):
    """No answer within the budget: the watchdog shut the connection down."""


@dataclass(frozen=True)
class PostgresOptions:
    """What a postgresql:// URL asks for."""

    where: str  # host:port list (or socket directory), for messages
    conninfo: str = field(repr=False)  # libpq's, without connect_timeout; may hold a password
    schema: str = DEFAULT_SCHEMA
    ttl: float = DEFAULT_TTL
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    history: int = DEFAULT_HISTORY
    user: str | None = None
    database: str | None = None

    @classmethod
    def from_url(cls, url: BackendURL) -> PostgresOptions:
        schema = url.option("schema", DEFAULT_SCHEMA) or ""
        if not SCHEMA_NAME.fullmatch(schema):
            raise UsageError(
                f"invalid schema {schema!r} in {url.scheme}:// URL: use a lower-case name of"
                " 1-63 characters from a-z 0-9 _ (not starting with a digit)"
            )
        ttl = url.duration("ttl", DEFAULT_TTL)
        connect_timeout = url.duration("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        history = url.integer("history", DEFAULT_HISTORY)

        params: dict[str, str] = {"fallback_application_name": "lelect"}
        hosts = [unquote(host) for host, _ in url.hosts]
        if hosts:
            params["host"] = ",".join(hosts)
            ports = [str(port) if port else "" for _, port in url.hosts]
            if any(ports):
                params["port"] = ",".join(ports)
        if url.path.strip("/"):
            params["dbname"] = url.path.lstrip("/")
        if url.username:
            params["user"] = url.username
        if url.password is not None:
            params["password"] = url.password
        for name, value in url.query.items():
            if name not in LELECT_OPTIONS:
                params[name] = value
        try:
            # libpq's own parser: refuses unknown options and malformed values.
            conninfo = make_conninfo("", **params)
            conninfo_to_dict(conninfo)
        except psycopg.ProgrammingError as exc:
            detail = " ".join(str(exc).split()).removeprefix("invalid connection option ")
            raise UsageError(
                f"bad option in {url.scheme}:// URL {url.masked!r}: {detail}"
                f" (lelect's own: {', '.join(sorted(LELECT_OPTIONS))}; the rest go to libpq)"
            ) from None
        where = ",".join(
            host if host.startswith("/")
            else f"{f'[{host}]' if ':' in host else host}:{port or DEFAULT_PORT}"
            for host, (_, port) in zip(hosts, url.hosts)
        ) or params.get("host", "localhost (libpq's default)")
        return cls(
            where=where,
            conninfo=conninfo,
            schema=schema,
            ttl=ttl,
            connect_timeout=connect_timeout,
            history=history,
            user=params.get("user"),
            database=params.get("dbname"),
        )

    # -- one line for every way PostgreSQL can fail ----------------------------------------

    def unavailable(self, exc: BaseException, within: float | None = None) -> LelectError:
        """What went wrong, in one line (never the password). ``within``: the budget that
        applied, for "cannot reach" messages."""
        text = _first_line(exc)
        lower = text.lower()
        sqlstate = getattr(exc, "sqlstate", None)
        bound = self.connect_timeout if within is None else within
        if "invalid" in lower and ("value" in lower or "option" in lower):
            # libpq checks some option values only when it connects (sslmode=bogus).
            return UsageError(f"bad option in the PostgreSQL URL: {text}")
        if isinstance(exc, StatementTimeout):
            return unreachable("PostgreSQL", self.where, bound, "no answer in time")
        if isinstance(exc, pg_errors.InsufficientPrivilege):
            return self.refused(exc)
        if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
            return BackendUnavailable(
                f"PostgreSQL at {self.where} is a read-only standby: point the URL at the"
                " primary (or add target_session_attrs=read-write)"
            )
        if isinstance(exc, pg_errors.QueryCanceled):
            return unreachable("PostgreSQL", self.where, bound,
                               "the statement did not finish in time (a lock held elsewhere?)")
        if "password authentication failed" in lower or "authentication failed" in lower:
            return BackendUnavailable(
                f"PostgreSQL at {self.where}: authentication failed for role {self.role}:"
                " check the user and password (URL, PGPASSWORD or ~/.pgpass)"
            )
        if "no password supplied" in lower or "password is required" in lower:
            return BackendUnavailable(
                f"PostgreSQL at {self.where} requires a password for role {self.role}: put"
                " it in the URL (postgresql://USER:PASSWORD@host/db), PGPASSWORD or ~/.pgpass"
            )
        if "does not exist" in lower and "database" in lower:
            return BackendUnavailable(f"PostgreSQL at {self.where}: {text}")
        if "connection refused" in lower:
            return unreachable("PostgreSQL", self.where, bound,
                               "connection refused (is PostgreSQL running there?)")
        if isinstance(exc, pg_errors.ConnectionTimeout) or "timeout expired" in lower:
            return unreachable("PostgreSQL", self.where, bound)
        if "ssl" in lower or "certificate" in lower:
            return BackendUnavailable(f"TLS with PostgreSQL at {self.where} failed: {text}")
        if sqlstate:
            return BackendUnavailable(f"PostgreSQL at {self.where} failed: {text} [{sqlstate}]")
        return unreachable("PostgreSQL", self.where, bound, text)

    def refused(self, exc: BaseException) -> ConfigError:
        """A privilege lelect needs is missing: name it, and the GRANT that gives it."""
        text = _first_line(exc)
        role = self.user or "ROLE"
        database = self.database or "DATABASE"
        schema = self.schema
        if "for database" in text:
            return ConfigError(
                f"cannot create schema {schema!r} at {self.where}: role {self.role} lacks the"
                f" CREATE privilege on database {database!r} (GRANT CREATE ON DATABASE"
                f" {database} TO {role}; or let the database owner run lelect once)"
            )
        if "for schema" in text:
            return ConfigError(
                f"role {self.role} lacks a privilege on schema {schema!r} at {self.where}:"
                f" {text} (GRANT USAGE ON SCHEMA {schema} TO {role}; CREATE too, to let"
                " lelect create its tables)"
            )
        return ConfigError(
            f"role {self.role} lacks a privilege lelect needs at {self.where}: {text} (see"
            " the GRANTs in docs/backends.md, PostgreSQL, Least privilege)"
        )

    @property
    def role(self) -> str:
        return repr(self.user) if self.user else "(libpq's default user)"


def is_transient(exc: BaseException) -> bool:
    """Errors that may pass on their own: a restart, a terminated backend, a cancelled or
    timed-out statement, a lost connection. Never bad credentials, TLS or privileges."""
    if isinstance(exc, (pg_errors.InsufficientPrivilege, pg_errors.ReadOnlySqlTransaction,
                        pg_errors.UndefinedTable, pg_errors.InvalidSchemaName)):
        return False
    lower = _first_line(exc).lower()
    if "authentication" in lower or "password" in lower or "does not exist" in lower:
        return False
    if "invalid" in lower and ("value" in lower or "option" in lower):
        return False
    if "ssl" in lower or "certificate" in lower:
        return False
    return isinstance(exc, (psycopg.OperationalError, pg_errors.QueryCanceled,
                            pg_errors.SerializationFailure, pg_errors.DeadlockDetected,
                            psycopg.InterfaceError))


#: What psycopg and libpq put before the reason (where is said elsewhere in our line):
#: 'connection failed: connection to server at "h" (ip), port p failed: FATAL:  …'
_PREFIXES = re.compile(
    r"^(connection failed: |connection is bad: )?"
    r"(connection to server (at|on) .*? failed: )?((FATAL|ERROR): +)?"
)


def _first_line(exc: BaseException) -> str:
    """The reason in an error, printable and short: a server chooses its bytes."""
    text = str(exc).strip().split("\n")[0]
    return server_text(_PREFIXES.sub("", text)) or type(exc).__name__


class _Watchdog:
    """Shuts a connection's socket down when a call's budget is spent, so the call
    returns with an error instead of waiting for a server that will not answer."""

    def __init__(self, conn: psycopg.Connection, budget: float) -> None:
        self._fd = conn.fileno()
        self._lock = threading.Lock()
        self._done = False
        self.fired = False
        self._timer = threading.Timer(max(budget, 0.0), self._cut)
        self._timer.daemon = True
        self._timer.start()

    def _cut(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            try:
                sock = socket.socket(fileno=os.dup(self._fd))
            except OSError:
                return
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            finally:
                sock.close()

    def cancel(self) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()


def open_connection(options: PostgresOptions, budget: float) -> psycopg.Connection:
    """A new autocommit connection within ``budget`` seconds (refused: at once)."""
    lock = threading.Lock()
    box: dict[str, object] = {}
    # libpq counts whole seconds, at least 2; the join below holds the real bound.
    libpq_timeout = max(2, math.ceil(budget))

    def attempt() -> None:
        try:
            conn = psycopg.Connection.connect(
                options.conninfo, autocommit=True, prepare_threshold=None,
                connect_timeout=libpq_timeout,
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            conn, box["error"] = None, exc
        with lock:
            if box.get("abandoned"):
                if conn is not None:
                    conn.close()
            elif conn is not None:
                box["conn"] = conn

    thread = threading.Thread(target=attempt, name="lelect-pg-connect", daemon=True)
    thread.start()
    thread.join(max(budget, 0.0))
    with lock:
        if "conn" in box:
            return box["conn"]  # type: ignore[return-value]
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        box["abandoned"] = True  # the attempt closes what it gets, if it ever does
    raise StatementTimeout("connecting took longer than the budget")


class PgSession:
    """One connection, made when first needed, used by one call at a time; it LISTENs
    again to its channels whenever it reconnects (callers look again after an error)."""

    def __init__(self, options: PostgresOptions) -> None:
        self.options = options
        self._conn: psycopg.Connection | None = None
        self._lock = threading.RLock()
        self._channels: list[str] = []
        self._unlistened: list[str] = []  # UNLISTENed with the next statement
        self._leaving: list[str] = []  # to be taken off _channels under the lock
        self._pending: list[psycopg.Notify] = []

    @property
    def connection(self) -> psycopg.Connection | None:
        return self._conn

    def listen(self, channel: str, budget: float) -> None:
        """LISTEN to ``channel`` (now, and after every reconnect)."""
        with self._lock:
            self._take_leaving()
            if channel in self._channels and self._conn is not None:
                return
            if channel not in self._channels:
                self._channels.append(channel)
            if self._conn is not None:
                self._execute(self._conn, f'LISTEN "{channel}"', budget)
            else:
                self._connect(budget)

    def unlisten(self, channel: str) -> None:
        """Stop listening to ``channel``: with the next statement (no round trip now, and
        no waiting for another thread's call, which may be connecting for a while)."""
        self._leaving.append(channel)  # atomic: taken in by the next call under the lock
        if self._lock.acquire(timeout=0):
            try:
                self._take_leaving()
            finally:
                self._lock.release()

    def _take_leaving(self) -> None:
        while self._leaving:
            channel = self._leaving.pop()
            if channel in self._channels:
                self._channels.remove(channel)
                if self._conn is not None:
                    self._unlistened.append(channel)
            self._pending = [note for note in self._pending if note.channel != channel]

    def run(self, sql: str, budget: float) -> list[tuple]:
        """Run ``sql`` (one query string) within ``budget`` seconds; the rows of its last
        statement. Raises psycopg errors (StatementTimeout when out of time)."""
        end = time.monotonic() + budget
        # Another thread's call (a heartbeat) counts against this one's budget too.
        if not self._lock.acquire(timeout=max(budget, 0.0)):
            raise StatementTimeout("the connection stayed busy with another call")
        try:
            self._take_leaving()
            conn = self._connect(max(end - time.monotonic(), 0.0))
            left = end - time.monotonic()
            if left <= 0:
                raise StatementTimeout("no time left after connecting")
            unlisten = "".join(f'UNLISTEN "{channel}";\n' for channel in self._unlistened)
            rows = self._execute(conn, unlisten + with_timeout(sql, left * SERVER_SHARE), left)
            self._unlistened.clear()
            return rows
        finally:
            self._lock.release()

    def _execute(self, conn: psycopg.Connection, sql: str, budget: float) -> list[tuple]:
        watchdog = _Watchdog(conn, budget)
        try:
            cursor = psycopg.ClientCursor(conn)
            cursor.execute(sql)
            while cursor.nextset():
                pass
            rows = cursor.fetchall() if cursor.description else []
        except psycopg.Error as exc:
            watchdog.cancel()
            if watchdog.fired or conn.broken or conn.closed:
                self.drop()
                if watchdog.fired:
                    raise StatementTimeout(f"no answer within {budget:.3f}s") from exc
            raise
        watchdog.cancel()
        if watchdog.fired:  # answered just as the budget ran out; the socket is gone
            self.drop()
        return rows

    def _connect(self, budget: float) -> psycopg.Connection:
        if self._conn is not None and self._stale(self._conn):
            self.drop()
        if self._conn is None:
            end = time.monotonic() + budget
            conn = open_connection(self.options, budget)
            try:
                for channel in self._channels:
                    self._execute(conn, f'LISTEN "{channel}"', max(end - time.monotonic(), 0.001))
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _stale(self, conn: psycopg.Connection) -> bool:
        """An idle connection has nothing to say but notifications; anything else (EOF, a
        FATAL from a terminated backend or a shutdown) means it must not be used."""
        if conn.closed or conn.broken:
            return True
        try:
            readable, _, _ = select.select([conn.fileno()], [], [], 0)
            if readable:
                self._pending.extend(conn.notifies(timeout=0))
        except (psycopg.Error, OSError, ValueError):
            return True
        return conn.closed or conn.broken

    def wait(self, timeout: float, wake: Any = None) -> list[psycopg.Notify]:
        """Notifications on our channels, waiting up to ``timeout`` seconds for the first
        (or until ``wake``, anything with a fileno(), is readable). Raises psycopg errors
        if the connection fails."""
        with self._lock:
            conn = self._conn
            if conn is not None:
                try:
                    self._pending.extend(conn.notifies(timeout=0))  # received meanwhile
                except psycopg.Error:
                    self.drop()
                    raise
            if self._pending:
                pending, self._pending = self._pending, []
                return pending
        fds: list[int] = [wake.fileno()] if wake is not None else []
        if conn is not None and not conn.closed:
            fds.append(conn.fileno())
        fds = [fd for fd in fds if fd >= 0]  # closed meanwhile (a release, a drop)
        if not fds:
            time.sleep(max(timeout, 0.0))
            return []
        readable, _, _ = select.select(fds, [], [], max(timeout, 0.0))
        if wake is not None and wake.fileno() in readable:
            return []
        if not readable or conn is None:
            return []
        with self._lock:
            if conn is not self._conn:
                return []
            try:
                got = list(conn.notifies(timeout=0))
            except psycopg.Error:
                self.drop()
                raise
            if conn.closed or conn.broken:
                self.drop()
                raise psycopg.OperationalError("the server closed the connection")
            return got

    def drop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            self._unlistened.clear()  # a new connection listens to _channels only
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    def close(self) -> None:
        """Close unless another thread's call holds the connection: closing must never
        wait for a call that may take up to its whole budget (a silent server)."""
        if not self._lock.acquire(timeout=0.05):
            return
        try:
            self.drop()
        finally:
            self._lock.release()
