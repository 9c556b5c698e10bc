"""The PostgreSQL backend's link: URL options (libpq's, as far as lelect's own client
speaks them), a session whose every statement is bounded by a time budget,
LISTEN/NOTIFY waits, and PostgreSQL errors turned into one clear line.

The client is lelect's own (``wire``, standard library only). Each statement runs under
a server-side ``statement_timeout`` of its budget (a statement stuck behind a lock is
cancelled by the server) and every read from the socket has the budget's deadline (a
frozen or partitioned server cannot hold the caller: the connection is dropped);
connecting is bounded the same way.
"""

from __future__ import annotations

import os
import re
import select
import socket
import threading
import time

from lelect.backends.addresses import lookup_name
from lelect.backends.base import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TTL,
    cancel_wakeup,
    server_text,
    unreachable,
    wait_slice,
)
from lelect.backends.postgres import wire
from lelect.backends.postgres.sql import DEFAULT_SCHEMA, SCHEMA_NAME, SESSION_SETUP, with_timeout
from lelect.backends.postgres.wire import Notify, Wire
from lelect.backends.records import DEFAULT_HISTORY
from lelect.backends.turns import Busy, Turns
from lelect.backends.urls import BackendURL, unquote
from lelect.errors import BackendUnavailable, ConfigError, LelectError, UsageError
from lelect.frozen import Record

TYPE_CHECKING = False  # not typing's: annotations only
if TYPE_CHECKING:
    from typing import Any

DEFAULT_PORT = 5432
#: lelect's own URL options; the others are libpq's.
LELECT_OPTIONS = {"schema", "ttl", "connect_timeout", "history"}
#: Share of a statement's budget the server may spend before it cancels the statement
#: itself (the rest is for the answer to arrive before the client gives up on it).
SERVER_SHARE = 0.9

#: libpq's connection options lelect's client speaks, each with the values it takes
#: (None: any) and the environment variable that gives its default, as libpq's.
SPOKEN: dict[str, tuple[tuple[str, ...] | None, str | None]] = {
    "host": (None, "PGHOST"),
    "hostaddr": (None, "PGHOSTADDR"),
    "port": (None, "PGPORT"),
    "dbname": (None, "PGDATABASE"),
    "user": (None, "PGUSER"),
    "password": (None, "PGPASSWORD"),
    "passfile": (None, "PGPASSFILE"),
    "require_auth": (None, "PGREQUIREAUTH"),
    "channel_binding": (("disable", "prefer", "require"), "PGCHANNELBINDING"),
    "client_encoding": (None, "PGCLIENTENCODING"),
    "options": (None, "PGOPTIONS"),
    "application_name": (None, "PGAPPNAME"),
    "fallback_application_name": (None, None),
    "keepalives": (("0", "1"), None),
    "keepalives_idle": (None, None),
    "keepalives_interval": (None, None),
    "keepalives_count": (None, None),
    "tcp_user_timeout": (None, None),
    "gssencmode": (("disable", "prefer", "require"), "PGGSSENCMODE"),
    "sslmode": (("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
                "PGSSLMODE"),
    "sslnegotiation": (("postgres", "direct"), "PGSSLNEGOTIATION"),
    "sslcompression": (("0", "1"), "PGSSLCOMPRESSION"),
    "sslcert": (None, "PGSSLCERT"),
    "sslkey": (None, "PGSSLKEY"),
    "sslpassword": (None, None),
    "sslcertmode": (("disable", "allow", "require"), "PGSSLCERTMODE"),
    "sslrootcert": (None, "PGSSLROOTCERT"),
    "sslsni": (("0", "1"), "PGSSLSNI"),
    "ssl_min_protocol_version": (("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
                                 "PGSSLMINPROTOCOLVERSION"),
    "ssl_max_protocol_version": (("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
                                 "PGSSLMAXPROTOCOLVERSION"),
    "target_session_attrs": (("any", "read-write", "read-only", "primary", "standby",
                              "prefer-standby"), "PGTARGETSESSIONATTRS"),
    "load_balance_hosts": (("disable", "random"), "PGLOADBALANCEHOSTS"),
}  # fmt: skip
#: libpq options (and values) lelect's client does not implement: refused, never ignored.
#: None: any value given.
NOT_SPOKEN: dict[str, tuple[set[str] | None, str | None]] = {
    "service": (None, "PGSERVICE"),
    "krbsrvname": (None, "PGKRBSRVNAME"),
    "gsslib": (None, "PGGSSLIB"),
    "gssdelegation": ({"1"}, "PGGSSDELEGATION"),
    "replication": (None, None),
    "requirepeer": (None, "PGREQUIREPEER"),
    "sslcrl": (None, "PGSSLCRL"),
    "sslcrldir": (None, "PGSSLCRLDIR"),
    "gssencmode": ({"require"}, "PGGSSENCMODE"),
    "sslnegotiation": ({"direct"}, "PGSSLNEGOTIATION"),
    "channel_binding": ({"require"}, "PGCHANNELBINDING"),
    "sslcertmode": ({"require"}, "PGSSLCERTMODE"),
}  # fmt: skip
_INTEGER_OPTIONS = {"keepalives_idle", "keepalives_interval", "keepalives_count",
                    "tcp_user_timeout"}  # fmt: skip


class StatementTimeout(wire.Timeout):
    """No answer within the budget: the connection was dropped."""


class PostgresOptions(Record):
    """What a postgresql:// URL asks for."""

    _unshown = ("settings",)

    where: str  # host:port list (or socket directory), for messages
    settings: dict[str, str]  # libpq-style keywords; may hold a password
    schema: str = DEFAULT_SCHEMA
    ttl: float = DEFAULT_TTL
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    history: int = DEFAULT_HISTORY
    user: str | None = None
    database: str | None = None

    @classmethod
    def from_url(cls, url: BackendURL, environ: dict[str, str] | None = None) -> PostgresOptions:
        environ = os.environ if environ is None else environ  # type: ignore[assignment]
        schema = url.option("schema", DEFAULT_SCHEMA) or ""
        if not SCHEMA_NAME.fullmatch(schema):
            raise UsageError(
                f"invalid schema {schema!r} in {url.scheme}:// URL: use a lower-case name of"
                " 1-63 characters from a-z 0-9 _ (not starting with a digit)"
            )
        ttl = url.duration("ttl", DEFAULT_TTL)
        default_timeout = DEFAULT_CONNECT_TIMEOUT
        if (env_timeout := environ.get("PGCONNECT_TIMEOUT", "")).isdigit() and int(env_timeout) > 0:
            default_timeout = float(max(2, int(env_timeout)))  # libpq's rule: 2s at least
        connect_timeout = url.duration("connect_timeout", default_timeout)
        history = url.integer("history", DEFAULT_HISTORY)

        given: dict[str, str] = {}
        hosts = [unquote(host) for host, _ in url.hosts]
        if hosts:
            given["host"] = ",".join(hosts)
            ports = [str(port) if port else "" for _, port in url.hosts]
            if any(ports):
                given["port"] = ",".join(ports)
        if url.path.strip("/"):
            given["dbname"] = unquote(url.path.lstrip("/"))
        if url.username:
            given["user"] = url.username
        if url.password is not None:
            given["password"] = url.password
        for name, value in url.query.items():
            if name not in LELECT_OPTIONS:
                given[name] = value
        settings = _settings(url, given, environ)
        hosts = settings["host"].split(",")
        ports = settings["port"].split(",")
        hosts = [host or wire.default_socket_dir() for host in hosts]
        where = ",".join(
            host if host.startswith("/")
            else f"{f'[{host}]' if ':' in host else host}:{port or DEFAULT_PORT}"
            for host, port in zip(hosts, ports if len(ports) > 1 else ports * len(hosts))
        )
        return cls(
            where=where,
            settings=settings,
            schema=schema,
            ttl=ttl,
            connect_timeout=connect_timeout,
            history=history,
            user=settings.get("user"),
            database=settings.get("dbname"),
        )

    def targets(self) -> list[dict[str, Any]]:
        """One connection's parameters per host, in the order to try them."""
        settings = self.settings
        hosts = settings["host"].split(",")
        ports = settings["port"].split(",")
        addresses = settings.get("hostaddr", "").split(",") if settings.get("hostaddr") else []
        ports = ports if len(ports) > 1 else ports * len(hosts)
        common = {name: value for name, value in settings.items()
                  if name not in ("host", "port", "hostaddr")}  # fmt: skip
        targets = [
            {**common, "host": host or wire.default_socket_dir(),
             "port": int(port or DEFAULT_PORT),
             "hostaddr": (addresses[index] or None) if addresses else None}
            for index, (host, port) in enumerate(zip(hosts, ports))
        ]  # fmt: skip
        if settings.get("load_balance_hosts") == "random":
            import random

            random.shuffle(targets)
        return targets

    # -- one line for every way PostgreSQL can fail ----------------------------------------

    def unavailable(self, exc: BaseException, within: float | None = None) -> LelectError:
        """What went wrong, in one line (never the password). ``within``: the budget that
        applied, for "cannot reach" messages."""
        text = _first_line(exc)
        lower = text.lower()
        sqlstate = getattr(exc, "sqlstate", None)
        bound = self.connect_timeout if within is None else within
        if "invalid" in lower and ("value" in lower or "option" in lower):
            return UsageError(f"bad option in the PostgreSQL URL: {text}")
        if isinstance(exc, wire.ProtocolError):
            return BackendUnavailable(f"PostgreSQL at {self.where} failed: {text}")
        if isinstance(exc, StatementTimeout):
            return unreachable("PostgreSQL", self.where, bound, "no answer in time")
        if isinstance(exc, wire.InsufficientPrivilege):
            return self.refused(exc)
        if isinstance(exc, wire.ReadOnlySqlTransaction):
            return BackendUnavailable(
                f"PostgreSQL at {self.where} is a read-only standby: point the URL at the"
                " primary (or add target_session_attrs=read-write)"
            )
        if isinstance(exc, wire.QueryCanceled):
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
        if isinstance(exc, wire.Timeout) or "timeout expired" in lower:
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
        return repr(self.user) if self.user else "(the default user)"



def _settings(url: BackendURL, given: dict[str, str], environ: Any) -> dict[str, str]:
    """The URL's libpq options, completed from the PG* environment as libpq does and
    checked: an option libpq does not know, a bad value or one lelect's client does not
    implement is refused (status 2) with one line naming it."""

    def refuse(detail: str) -> UsageError:
        return UsageError(f"bad option in {url.scheme}:// URL {url.masked!r}: {detail}"
                          f" (lelect's own: {', '.join(sorted(LELECT_OPTIONS))}; the rest"
                          " are libpq's)")  # fmt: skip

    for name in given:
        if name not in SPOKEN and name not in NOT_SPOKEN:
            raise refuse(f'invalid connection option "{name}"')
    settings = dict(given)
    for name, (_, variable) in SPOKEN.items():
        if name not in settings and variable and environ.get(variable):
            settings[name] = environ[variable]
    for name, (values, variable) in NOT_SPOKEN.items():
        value = given.get(name, environ.get(variable, "") if variable else "")
        if value and (values is None or value in values):
            source = f"{variable}={value}" if name not in given else f"{name}={value}"
            raise UsageError(f"{source}: lelect's PostgreSQL client does not support"
                             f" {name!r}{' = ' + value if values else ''}; leave it out"
                             " (see docs/backends.md, PostgreSQL)")  # fmt: skip
    for name, (values, _) in SPOKEN.items():
        value = settings.get(name)
        if value is not None and values is not None and value not in values:
            raise refuse(f'invalid {name} value: "{value}"')
        if value and name in _INTEGER_OPTIONS and not value.lstrip("-").isdigit():
            raise refuse(f'invalid integer value "{value}" for connection option "{name}"')
    encoding = settings.get("client_encoding", "UTF8")
    if encoding.replace("-", "").upper() not in ("UTF8", "AUTO"):
        raise UsageError(f"client_encoding={encoding}: lelect's PostgreSQL client speaks UTF8"
                         " only; leave it out")  # fmt: skip
    if settings.get("require_auth"):
        try:
            wire.allowed_methods(settings["require_auth"])
        except wire.Error as exc:
            raise refuse(str(exc)) from None
    settings.setdefault("host", "")
    settings.setdefault("port", "")
    hosts = settings["host"].split(",")
    ports = settings["port"].split(",")
    if len(ports) not in (1, len(hosts)):
        raise refuse(f"could not match {len(ports)} port numbers to {len(hosts)} hosts")
    if any(port and not (port.isdigit() and 0 < int(port) < 65536) for port in ports):
        raise refuse(f'invalid port number: "{settings["port"]}"')
    if settings.get("hostaddr") and len(settings["hostaddr"].split(",")) != len(hosts):
        raise refuse(f"could not match {len(settings['hostaddr'].split(','))} host addresses"
                     f" to {len(hosts)} hosts")  # fmt: skip
    if not settings.get("user"):
        import pwd

        try:
            settings["user"] = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            raise UsageError("no PostgreSQL user name: put one in the URL"
                             " (postgresql://USER@host/db) or PGUSER") from None
    settings.setdefault("dbname", settings["user"])
    settings["application_name"] = (settings.get("application_name")
                                    or settings.get("fallback_application_name") or "lelect")
    return settings


def is_transient(exc: BaseException) -> bool:
    """Errors that may pass on their own: a restart, a terminated backend, a cancelled or
    timed-out statement, a lost connection, too many connections. Never bad credentials,
    TLS or privileges."""
    if isinstance(exc, (wire.InsufficientPrivilege, wire.ReadOnlySqlTransaction,
                        wire.UndefinedTable, wire.InvalidSchemaName, wire.AuthRefused,
                        wire.TlsFailed)):  # fmt: skip
        return False
    lower = _first_line(exc).lower()
    if "authentication" in lower or "password" in lower or "does not exist" in lower:
        return False
    if "invalid" in lower and ("value" in lower or "option" in lower):
        return False
    if "ssl" in lower or "certificate" in lower:
        return False
    if isinstance(exc, wire.ServerError):
        # Connection exceptions, rollbacks, resources, the operator, the system.
        return (exc.sqlstate or "")[:2] in {"08", "40", "53", "54", "55", "57", "58"}
    return isinstance(exc, wire.OperationalError)


#: What a server's error starts with (its severity; where is said elsewhere in our line).
_PREFIXES = re.compile(r"^((FATAL|ERROR|PANIC): +)?")


def _first_line(exc: BaseException) -> str:
    """The reason in an error, printable and short: a server chooses its bytes."""
    text = str(exc).strip().split("\n")[0]
    return server_text(_PREFIXES.sub("", text)) or type(exc).__name__



def open_connection(options: PostgresOptions, budget: float) -> Wire:
    """A new session within ``budget`` seconds (refused: at once): the hosts in order
    (each address a name resolves to), the first that takes us and whose session fits
    ``target_session_attrs``; each host gets a share of what is left, so one silent host
    does not use up the time of the rest."""
    deadline = time.monotonic() + budget
    wanted = options.settings.get("target_session_attrs", "any")
    passes = ["standby", "any"] if wanted == "prefer-standby" else [wanted]
    first: BaseException | None = None
    targets = options.targets()
    for number, attrs in enumerate(passes):
        for index, target in enumerate(targets):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            share = left / (len(targets) * (len(passes) - number) - index)
            try:
                conn = _connect_host(target, min(deadline, time.monotonic() + share))
            except wire.Error as exc:
                first = first or exc
                continue
            try:
                misfit = _misfit(conn, attrs)
            except wire.Error as exc:
                conn.close()
                first = first or exc
                continue
            if misfit is None:
                conn.deadline = deadline
                return conn
            conn.close()
            first = first or wire.OperationalError(misfit)
    if first is None or isinstance(first, wire.Timeout):
        raise StatementTimeout("connecting took longer than the budget")
    raise first


def _connect_host(target: dict[str, Any], deadline: float) -> Wire:
    """A session with one host: each of its addresses in turn."""
    if target.get("hostaddr") or target["host"].startswith("/"):
        return Wire.connect(target, deadline)
    first: wire.Error | None = None
    for address in _addresses(target["host"], target["port"], deadline):
        try:
            return Wire.connect({**target, "hostaddr": address}, deadline)
        except (wire.OperationalError, wire.Timeout) as exc:
            if isinstance(exc, (wire.AuthRefused, wire.TlsFailed)):
                raise
            first = first or exc
    raise first or wire.OperationalError(f"could not translate host name {target['host']!r}")


def _addresses(host: str, port: int, deadline: float) -> list[str]:
    """The addresses of ``host``, looked up within the deadline (a name look-up itself
    has no timeout: it runs in a thread of its own, left behind if it is slow)."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return [host]
    except OSError:
        pass
    box: dict[str, Any] = {}

    def look_up() -> None:
        try:
            box["found"] = socket.getaddrinfo(lookup_name(host), port, type=socket.SOCK_STREAM)
        except OSError as exc:
            box["error"] = exc

    thread = threading.Thread(target=look_up, name="lelect-pg-resolve", daemon=True)
    thread.start()
    thread.join(max(deadline - time.monotonic(), 0.0))
    if "found" in box:
        return list(dict.fromkeys(info[4][0] for info in box["found"]))
    if "error" in box:
        raise wire.OperationalError(f"could not translate host name {host!r} to address:"
                                    f" {box['error']}")  # fmt: skip
    raise wire.Timeout("timeout expired")


def _misfit(conn: Wire, wanted: str) -> str | None:
    """Why this session does not fit ``target_session_attrs`` (None: it fits), from what
    the server reported at start-up (PostgreSQL 14+) or else by asking, as libpq."""
    if wanted == "any":
        return None
    if wanted in ("read-write", "read-only"):
        hot, read_only = conn.status.get("in_hot_standby"), conn.status.get(
            "default_transaction_read_only")
        if hot is None or read_only is None:
            is_read_only = conn.query("SHOW transaction_read_only")[0][0] == "on"
        else:
            is_read_only = hot == "on" or read_only == "on"
        if is_read_only == (wanted == "read-only"):
            return None
        return "session is read-only" if is_read_only else "session is not read-only"
    hot = conn.status.get("in_hot_standby")
    standby = (conn.query("SELECT pg_catalog.pg_is_in_recovery()")[0][0] if hot is None
               else hot == "on")  # fmt: skip
    if standby == (wanted == "standby"):
        return None
    return "server is in hot standby mode" if standby else "server is not in hot standby mode"


class PgSession:
    """One connection, made when first needed, used by one call at a time; it LISTENs
    again to its channels whenever it reconnects (callers look again after an error).

    A waiting candidate's long call (its wait for the election's lock, :meth:`run_long`)
    shares it with everything else the process sends (:class:`~lelect.backends.turns.Turns`)."""

    def __init__(self, options: PostgresOptions) -> None:
        self.options = options
        self._conn: Wire | None = None
        self._lock = threading.RLock()
        self._turns = Turns(self._lock)
        #: Grows whenever the connection goes (the next one is another session): a
        #: session-level advisory lock is held only while the connection that took it lasts.
        self.generation = 0
        self._channels: list[str] = []
        self._unlistened: list[str] = []  # UNLISTENed with the next statement
        self._leaving: list[str] = []  # to be taken off _channels under the lock
        self._pending: list[Notify] = []

    @property
    def connection(self) -> Wire | None:
        return self._conn

    def server_major(self) -> int:
        """The server's major version, as it reported it (0 before a connection)."""
        conn = self._conn
        version = conn.status.get("server_version", "") if conn is not None else ""
        major = version.split(".", 1)[0]
        return int(major) if major.isdigit() and len(major) <= 4 else 0

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
        statement. Raises wire errors (StatementTimeout when out of time)."""
        try:
            with self._turns.short(budget) as end:
                conn, text, left = self._prepare(sql, end)
                rows = self._execute(conn, text, left)
                self._unlistened.clear()
                return rows
        except Busy as exc:
            raise StatementTimeout(str(exc)) from None

    def run_long(self, sql: str, budget: float, cancel: threading.Event | None = None
                 ) -> list[tuple]:  # fmt: skip
        """Run ``sql``, which may take ``budget`` seconds (a wait on the server), once
        every caller waiting for the connection has gone first; no rows if ``cancel`` was
        set meanwhile (the connection is then dropped: the server ends the wait). Getting
        the connection is bounded by the connect timeout."""
        try:
            with self._turns.long(budget, self.options.connect_timeout):
                conn, text, left = self._prepare(sql, time.monotonic() + budget)
                with cancel_wakeup(cancel) as woken:
                    rows = self._execute(conn, text, left, waiting=(cancel, woken))
                self._unlistened.clear()
                return rows
        except Busy as exc:
            raise StatementTimeout(str(exc)) from None

    @staticmethod
    def _answered(conn: Wire, left: float, cancel: threading.Event | None,
                  woken: Any) -> bool:  # fmt: skip
        """Wait for the answer to start arriving (True), or for ``cancel`` (False); the
        read itself keeps the connection's deadline."""
        end = time.monotonic() + left
        fds = [conn.fileno()] + ([woken.fileno()] if woken is not None else [])
        while not conn.readable_now():
            if cancel is not None and cancel.is_set():
                return False
            wait = wait_slice(end - time.monotonic(), cancel)
            if wait is None or wait <= 0:
                return True  # out of time: the read raises Timeout
            readable, _, _ = select.select(fds, [], [], wait)
            if woken is not None and woken.fileno() in readable:
                return False
            if conn.fileno() in readable:
                return True
        return True

    def _prepare(self, sql: str, end: float) -> tuple[Wire, str, float]:
        """Connected (within ``end``), the text to send (UNLISTENs left to do, and the
        statement under its server-side time limit) and the time left; called holding
        the connection."""
        self._take_leaving()
        conn = self._connect(max(end - time.monotonic(), 0.0))
        left = end - time.monotonic()
        if left <= 0:
            raise StatementTimeout("no time left after connecting")
        unlisten = "".join(f'UNLISTEN "{channel}";\n' for channel in self._unlistened)
        setup = "" if conn.configured else SESSION_SETUP
        return conn, setup + unlisten + with_timeout(sql, left * SERVER_SHARE), left

    def _execute(self, conn: Wire, sql: str, budget: float,
                 waiting: tuple[threading.Event | None, Any] | None = None
                 ) -> list[tuple]:  # fmt: skip
        """The rows of ``sql`` within ``budget``. ``waiting`` (a cancel and what wakes a
        select when it is set) for a long wait: a cancel drops the connection (the server
        ends the wait) and returns no rows."""
        conn.deadline = time.monotonic() + budget
        try:
            if waiting is None:
                rows = conn.query(sql)
            else:
                conn.send_query(sql)
                if not self._answered(conn, budget, *waiting):
                    self.drop()
                    return []
                rows = conn.result()
            if sql.startswith(SESSION_SETUP):
                conn.configured = True  # committed with the statement
        except wire.Timeout as exc:
            self.drop()
            raise StatementTimeout(f"no answer within {budget:.3f}s") from exc
        except wire.Error:
            if conn.broken:
                self.drop()
            raise
        finally:
            self._take_notifies(conn)
        return rows

    def _take_notifies(self, conn: Wire) -> None:
        if conn.notifies:
            self._pending.extend(conn.notifies)
            conn.notifies.clear()
            del self._pending[: -wire.MAX_PENDING]  # the oldest go first: a flood

    def _connect(self, budget: float) -> Wire:
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

    def _stale(self, conn: Wire) -> bool:
        """An idle connection has nothing to say but notifications; anything else (EOF, a
        FATAL from a terminated backend or a shutdown) means it must not be used."""
        if conn.broken:
            return True
        try:
            conn.poll()
        except wire.Error:
            return True
        finally:
            self._take_notifies(conn)
        return conn.broken

    def wait(self, timeout: float, wake: Any = None) -> list[Notify]:
        """Notifications on our channels, waiting up to ``timeout`` seconds for the first
        (or until ``wake``, anything with a fileno(), is readable). Raises wire errors if
        the connection fails."""
        with self._lock:
            conn = self._conn
            if conn is not None:
                self._poll(conn)  # received meanwhile
            if self._pending:
                pending, self._pending = self._pending, []
                return pending
        fds: list[int] = [wake.fileno()] if wake is not None else []
        if conn is not None and not conn.broken:
            fds.append(conn.fileno())
        fds = [fd for fd in fds if fd >= 0]  # closed meanwhile (a release, a drop)
        if not fds:
            time.sleep(max(timeout, 0.0))
            return []
        try:
            readable, _, _ = select.select(fds, [], [], max(timeout, 0.0))
        except (OSError, ValueError):  # a descriptor closed meanwhile: look again
            return []
        if wake is not None and wake.fileno() in readable:
            return []
        if not readable or conn is None:
            return []
        with self._lock:
            if conn is not self._conn:
                return []
            self._poll(conn)
            pending, self._pending = self._pending, []
            return pending

    def _poll(self, conn: Wire) -> None:
        try:
            conn.poll()
        except wire.Error:
            self._take_notifies(conn)
            self.drop()
            raise
        self._take_notifies(conn)

    def drop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            self._unlistened.clear()  # a new connection listens to _channels only
            if conn is not None:
                self.generation += 1  # its advisory locks go with it
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close unless another thread's call holds the connection: closing must never
        wait for a call that may take up to its whole budget (a silent server)."""
        if not self._lock.acquire(timeout=0.05):
            return
        try:
            self.drop()
        finally:
            self._lock.release()
