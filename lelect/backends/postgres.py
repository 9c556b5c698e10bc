"""PostgreSQL backend: ``postgresql://[user[:pw]@]host[:port][,host2…]/dbname`` (also
``postgres://``); lelect's options ``schema`` (default ``lelect``), ``ttl``,
``connect_timeout`` and ``history``; every other query option goes to libpq as it is
(``sslmode``, ``sslrootcert``, ``application_name``, ``target_session_attrs``, …). A
password may come from ``PGPASSWORD`` or ``~/.pgpass``, as with psql.

A leadership is a row in ``<schema>.lease`` acquired, renewed and released by single
guarded statements (``_postgres_sql``): acquired only if absent or expired, renewed and
released only ``WHERE token = ours``, expiry by the server's ``clock_timestamp()``. The
leader counts its lease from the moment it sent the statement. Terms come from
``<schema>.term``, a counter per election that is never deleted. No session advisory
locks: a partitioned session keeps them until TCP keepalive reaps it, long after its
client gave up.

Waiters never poll: they LISTEN on the election's channel before their first attempt,
and otherwise sleep until the lease's server-side expiry.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from lelect.backends import _postgres_sql as sql
from lelect.backends._pg_link import (
    PostgresOptions,
    Session,
    is_transient,
    pg_errors,
    psycopg,
)
from lelect.backends.base import (
    EXITED,
    MAX_ARRIVALS,
    MIN_ATTEMPT,
    Backend,
    Candidate,
    HandBack,
    Heartbeat,
    HistoryEntry,
    LeaderInfo,
    Leadership,
    Members,
    busy,
    connect_budget,
    lease_drift,
    only_changes,
    timed_out,
)
from lelect.backends.records import decode_member, encode_member
from lelect.errors import ConfigError
from lelect.names import validate_election

if TYPE_CHECKING:
    from lelect.backends.urls import BackendURL

log = logging.getLogger("lelect.postgres")

#: The schema is not there (yet): nothing was ever written with it.
_NO_SCHEMA = (pg_errors.UndefinedTable, pg_errors.InvalidSchemaName)
#: libpq settings the keeper's own wire client cannot honour: no hand-back then.
_KEEPER_CANNOT = {"channel_binding": "require", "gssencmode": "require",
                  "sslnegotiation": "direct"}  # fmt: skip


class PostgresLeadership(Leadership):
    """A PostgreSQL leadership: one thread renews the lease every ttl/3 (each statement
    bounded by the time left) and, in between, listens for resign requests on the same
    connection."""

    def __init__(self, backend: PostgresBackend, election: str, candidate: Candidate,
                 term: int, token: str, lease_deadline: float, ttl: float,
                 session: Session) -> None:  # fmt: skip
        super().__init__(backend, election, candidate, term, token, lease_deadline)
        self.ttl = ttl
        self.session = session
        self.stopped = threading.Event()
        self.channel = sql.channel(backend.options.schema, election)
        #: How the keeper reaches the server that granted this leadership.
        self.wire = _wire_params(session.connection)
        self._backend = backend
        self._wake_r, self._wake_w = socket.socketpair()

    def start(self, granted_at: float) -> None:
        """Start renewing; ``granted_at`` is when the winning statement was sent."""
        threading.Thread(target=self._keep_lease, args=(granted_at,),
                         name=f"lelect-pg-renew:{self.election}", daemon=True).start()

    def stop(self) -> None:
        """No more renews; wake the renew thread so it lets go of the connection."""
        self.stopped.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _keep_lease(self, granted_at: float) -> None:
        options = self._backend.options
        interval = self._backend.renew_interval(self.ttl)
        retry_delay = min(interval / 4, 0.25)
        next_renew = granted_at + interval
        last_error = ""
        renew = self._backend.render(sql.RENEW, election=self.election, token=self.token,
                                     ttl=self.ttl)  # fmt: skip
        while not self.stopped.is_set():
            pause = next_renew - time.monotonic()
            if pause > 0:
                try:
                    self._heard(self.session.wait(pause, wake=self._wake_r))
                except psycopg.Error:
                    pass  # the next renew reconnects
                continue
            deadline = self.lease_deadline or 0.0
            left = deadline - time.monotonic()
            if left <= 0:
                self._lost(f"the lease expired with no successful renew{last_error}")
                return
            t_send = time.monotonic()
            try:
                rows = self.session.run(renew, budget=min(left, interval))
            except psycopg.Error as exc:
                last_error = f" (last error: {options.unavailable(exc, min(left, interval))})"
                next_renew = min(time.monotonic() + retry_delay, deadline)
                continue
            if self.stopped.is_set():
                return
            if not rows:
                self._lost("the lease row no longer holds our token (expired or taken)")
                return
            last_error = ""
            self.set_deadline(t_send + self.ttl - lease_drift(self.ttl))
            if rows[0][0]:
                self.mark_resign_requested()
            next_renew = t_send + interval

    def _heard(self, notes: list[psycopg.Notify]) -> None:
        for note in notes:
            if note.channel == self.channel and note.payload == f"resign {self.term}":
                self.mark_resign_requested()

    def _lost(self, reason: str) -> None:
        if not self.stopped.is_set():
            self.mark_lost(reason)

    def close(self) -> None:
        self.session.close()
        for sock in (self._wake_r, self._wake_w):
            sock.close()


class PostgresBackend(Backend):
    """Elections in one PostgreSQL database, under one schema."""

    scheme = "postgresql"
    lease_based = True
    #: Writers create the schema on first use; readers (``create=False``) never do.
    creates_state = True

    def __init__(self, url: BackendURL, create: bool = True) -> None:
        super().__init__(url)
        self.scheme = url.scheme
        self.options = PostgresOptions.from_url(url)
        self.default_ttl = self.options.ttl
        self.connect_timeout = self.options.connect_timeout
        self.history_limit = self.options.history
        self.create = create
        self._command = Session(self.options)  # for everything but campaigns and observers
        self._schema_ready = False

    def render(self, statement: str, **values: object) -> str:
        return sql.render(statement, self.options.schema, **values)

    # -- the schema ---------------------------------------------------------------------

    def _ensure_schema(self, session: Session, budget: float) -> None:
        """Check the schema's version, creating the schema on first use. Raises psycopg
        errors for the caller's retry, ConfigError for what only a person can fix."""
        if self._schema_ready:
            return
        try:
            version = session.run(self.render(sql.SCHEMA_VERSION_OF), budget)[0][0]
        except _NO_SCHEMA:
            version = None
        except pg_errors.InsufficientPrivilege as exc:
            raise self.options.refused(exc) from None
        if version is None:  # not there, or a creation that was cut short
            version = self._create_schema(session, budget)
        if version > sql.SCHEMA_VERSION:
            raise ConfigError(
                f"schema {self.options.schema!r} at {self.options.where} is version {version},"
                f" newer than this lelect knows ({sql.SCHEMA_VERSION}): upgrade lelect"
            )
        self._schema_ready = True

    def _create_schema(self, session: Session, budget: float) -> int:
        end = time.monotonic() + budget
        name = self.options.schema
        try:
            (exists,), = session.run(sql.render(sql.SCHEMA_EXISTS, name, name=name), budget)
            # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema
            # exists: only ask for it when the schema is missing.
            statement = sql.CREATE_TABLES if exists else sql.CREATE_SCHEMA + sql.CREATE_TABLES
            rows = session.run(self.render(statement, name=name, version=sql.SCHEMA_VERSION),
                               max(end - time.monotonic(), 0.001))  # fmt: skip
        except pg_errors.InsufficientPrivilege as exc:
            raise self.options.refused(exc) from None
        log.info("lelect: created schema %r version %d", self.options.schema, sql.SCHEMA_VERSION)
        return int(rows[0][0])

    # -- leadership -------------------------------------------------------------------

    def campaign(
        self,
        election: str,
        candidate: Candidate,
        *,
        timeout: float | None = None,
        no_wait: bool = False,
        ttl: float | None = None,
        on_wait: Callable[[LeaderInfo | None], None] | None = None,
    ) -> Leadership:
        validate_election(election)
        ttl = self.default_ttl if ttl is None else ttl
        token = secrets.token_hex(16)
        channel = sql.channel(self.options.schema, election)
        acquire = self.render(
            sql.ACQUIRE, election=election, token=token, node_id=candidate.node_id,
            host=candidate.host, pid=candidate.pid, ttl=ttl, history=self.history_limit,
            channel=channel, vanished_reason=sql.VANISHED_REASON,
        )  # fmt: skip
        give_up = None if timeout is None else time.monotonic() + timeout
        retry = _Retry(self.options, give_up, timeout)
        session = Session(self.options)
        waiting = False
        try:
            while True:
                try:
                    self._ensure_schema(session, retry.budget())
                    if not no_wait:  # before the first attempt: no release goes unheard
                        session.listen(channel, retry.budget())
                    t_send = time.monotonic()
                    term, holder_token, holder_node, holder_term, left_s, _ = session.run(
                        acquire, retry.budget())[0]  # fmt: skip
                    if term is None and holder_token == token:
                        # An earlier attempt won but its answer was lost: renew what is ours.
                        t_send = time.monotonic()
                        if session.run(self.render(sql.RENEW, election=election, token=token,
                                                   ttl=ttl), retry.budget()):  # fmt: skip
                            term = holder_term
                except psycopg.Error as exc:
                    retry.failed(exc)
                    continue
                retry.succeeded()
                if term is not None:
                    deadline = t_send + ttl - lease_drift(ttl)
                    leadership = PostgresLeadership(self, election, candidate, int(term), token,
                                                    deadline, ttl, session)  # fmt: skip
                    session = None  # the leadership's now
                    if deadline <= time.monotonic():  # answered after the lease ran out
                        leadership.release()
                        session = Session(self.options)
                        continue
                    leadership.start(granted_at=t_send)
                    return leadership
                holder = None
                if holder_node is not None and holder_term is not None:
                    holder = LeaderInfo(node_id=holder_node, term=int(holder_term))
                if no_wait:
                    raise busy(election, holder)
                if give_up is not None and time.monotonic() >= give_up:
                    raise timed_out(election, timeout)
                if not waiting:
                    waiting = True
                    if on_wait is not None:
                        on_wait(holder)
                try:
                    self._wait_for_release(session, channel, left_s, give_up)
                except psycopg.Error as exc:
                    retry.failed(exc)
        finally:
            if session is not None:
                session.close()

    @staticmethod
    def _wait_for_release(session: Session, channel: str, left_s: float | None,
                          give_up: float | None) -> None:  # fmt: skip
        """Sleep until a release is announced, the lease expires by the server's clock,
        or ``give_up``. Without a holder to wait for (a winner that committed after our
        statement began), look again at once."""
        if left_s is None or left_s <= 0:
            return
        wake = time.monotonic() + left_s + 0.001
        end = wake if give_up is None else min(wake, give_up)
        while (left := end - time.monotonic()) > 0:
            for note in session.wait(left):
                if note.channel == channel and note.payload.startswith("released "):
                    return

    def resign(self, leadership: Leadership) -> None:
        session = self._command
        if isinstance(leadership, PostgresLeadership):
            leadership.stop()
            session = leadership.session
        # Past the lease's deadline a release frees nothing (the lease is over anyway),
        # and a lost leadership is most likely not ours any more: wait no longer than
        # the lease lasts, but 1s at least, to close the history entry.
        budget = self.connect_timeout
        deadline = leadership.lease_deadline
        if leadership.lost.is_set():
            budget = min(budget, 1.0)
        elif deadline is not None:
            budget = min(budget, max(deadline - time.monotonic(), 1.0))
        try:
            session.run(self._release_sql(leadership, forget=False), budget)
        except psycopg.Error as exc:
            # Not fatal: the lease expires by itself.
            log.warning(
                "lelect: could not release %r (%s); it frees itself when the lease runs out",
                leadership.election, self.options.unavailable(exc, budget),
            )  # fmt: skip
        finally:
            if isinstance(leadership, PostgresLeadership):
                leadership.close()

    def _release_sql(self, leadership: Leadership, forget: bool) -> str:
        return sql.release_statement(
            self.options.schema, election=leadership.election, token=leadership.token,
            term=leadership.term, node_id=leadership.node_id, outcome=leadership.outcome,
            exit_status=leadership.exit_status, reason=leadership.reason,
            slot=leadership.slot, forget=forget,
        )  # fmt: skip

    def hand_back(self, leadership: Leadership) -> HandBack | None:
        if not isinstance(leadership, PostgresLeadership) or leadership.wire is None:
            return None
        return HandBack(
            module="lelect.backends._handback_postgres",
            params={
                **leadership.wire,
                "schema": self.options.schema,
                "election": leadership.election,
                "token": leadership.token,
                "term": leadership.term,
                "node_id": leadership.node_id,
            },
        )

    def leader(self, election: str) -> LeaderInfo | None:
        validate_election(election)
        try:
            return self._leader(self._command, election, self.connect_timeout)[0]
        except psycopg.Error as exc:
            raise self.options.unavailable(exc) from None

    def _leader(self, session: Session, election: str, budget: float
                ) -> tuple[LeaderInfo | None, float | None]:  # fmt: skip
        """The leader and the seconds its lease has left by the server's clock."""
        try:
            rows = session.run(self.render(sql.LEADER, election=election), budget)
        except _NO_SCHEMA:
            return None, None
        if not rows:
            return None, None
        node_id, term, since, host, pid, left_s = rows[0]
        info = LeaderInfo(node_id=node_id, term=int(term or 0), since=since, host=host, pid=pid)
        return info, left_s

    def observe(self, election: str, stop: threading.Event | None = None
                ) -> Iterator[LeaderInfo | None]:  # fmt: skip
        validate_election(election)
        stop = stop or threading.Event()
        session = Session(self.options)
        channel = sql.channel(self.options.schema, election)
        retry = _Retry(self.options, None, None)

        def looks() -> Iterator[LeaderInfo | None]:
            while not stop.is_set():
                try:
                    session.listen(channel, retry.budget())
                    current, left_s = self._leader(session, election, retry.budget())
                except psycopg.Error as exc:
                    retry.failed(exc)
                    continue
                retry.succeeded()
                yield current
                # Wake on an announcement, when the lease would expire, or to check ``stop``.
                wake = time.monotonic() + (left_s + 0.001 if left_s is not None else 3600.0)
                while not stop.is_set() and (now := time.monotonic()) < wake:
                    try:
                        if session.wait(min(wake - now, 0.25)):
                            break
                    except psycopg.Error:
                        break

        try:
            yield from only_changes(looks())
        finally:
            session.close()

    def request_resign(self, election: str, term: int | None = None) -> bool:
        validate_election(election)
        statement = self.render(sql.REQUEST_RESIGN, election=election,
                                term=None if term is None else int(term),
                                channel=sql.channel(self.options.schema, election))  # fmt: skip
        rows = self._write(statement, create=False)
        return bool(rows)

    # -- heartbeats ---------------------------------------------------------------------

    def publish(self, heartbeat: Heartbeat, ttl: float) -> None:
        validate_election(heartbeat.election)
        record = encode_member(heartbeat, (), forget_after=ttl).decode("utf-8")
        self._write(self.render(sql.PUBLISH, election=heartbeat.election,
                                node_id=heartbeat.node_id, record=record, forget_after=ttl,
                                max_arrivals=MAX_ARRIVALS))  # fmt: skip

    def remove_member(self, election: str, node_id: str) -> None:
        validate_election(election)
        self._write(self.render(sql.REMOVE_MEMBER, election=election, node_id=node_id),
                    create=False)

    def members(self, election: str) -> Members:
        validate_election(election)
        rows = self._read(self.render(sql.MEMBERS, election=election))
        if rows is None:
            return Members(election=election, now=self.now())
        records = tuple(
            decode_member(node_id, record, arrivals or ())
            for _, node_id, record, arrivals in rows
            if node_id is not None
        )
        return Members(election=election, now=rows[0][0], records=records)

    def elections(self) -> list[str]:
        rows = self._read(self.render(sql.ELECTIONS))
        return [name for (name,) in rows or ()]

    # -- operations ---------------------------------------------------------------------

    def history(self, election: str, limit: int | None = None) -> list[HistoryEntry]:
        validate_election(election)
        rows = self._read(self.render(sql.HISTORY, election=election, limit=limit))
        return [
            HistoryEntry(election=election, term=int(term), node_id=node_id, host=host, pid=pid,
                         started=started, ended=ended, outcome=outcome,
                         exit_status=exit_status, slot=slot, reason=reason)
            for term, node_id, host, pid, started, ended, outcome, exit_status, slot, reason
            in rows or ()
        ]  # fmt: skip

    def slot_done(self, election: str, slot: str) -> HistoryEntry | None:
        validate_election(election)
        rows = self._read(self.render(sql.SLOT_DONE, election=election, slot=slot))
        if not rows:
            return None
        term, node_id, host, pid, started, ended, exit_status = rows[0]
        return HistoryEntry(election=election, term=int(term), node_id=node_id, host=host,
                            pid=pid, started=started, ended=ended, outcome=EXITED,
                            exit_status=exit_status, slot=slot)  # fmt: skip

    def now(self) -> float:
        try:
            return float(self._command.run(sql.NOW, self.connect_timeout)[0][0])
        except psycopg.Error as exc:
            raise self.options.unavailable(exc) from None

    def close(self) -> None:
        self._command.close()
        for leadership in list(self.leaderships):
            if isinstance(leadership, PostgresLeadership) and not leadership.released:
                leadership.stop()

    # -- helpers ------------------------------------------------------------------------

    def _read(self, statement: str) -> list[tuple] | None:
        """Rows of a read, or None when the schema does not exist (nothing was written)."""
        try:
            return self._command.run(statement, self.connect_timeout)
        except _NO_SCHEMA:
            return None
        except psycopg.Error as exc:
            raise self.options.unavailable(exc) from None

    def _write(self, statement: str, create: bool = True) -> list[tuple]:
        """Rows of a write; the schema is created first if ``create`` (else a missing
        schema means there is nothing to change: no rows)."""
        try:
            if create:
                self._ensure_schema(self._command, self.connect_timeout)
            return self._command.run(statement, self.connect_timeout)
        except _NO_SCHEMA:
            if create:
                raise
            return []
        except pg_errors.InsufficientPrivilege as exc:
            raise self.options.refused(exc) from None
        except psycopg.Error as exc:
            raise self.options.unavailable(exc) from None


def _wire_params(conn: psycopg.Connection | None) -> dict[str, object] | None:
    """How the keeper's own client reaches the server this connection reached, with the
    password libpq used (from the URL, PGPASSWORD or ~/.pgpass); None if it cannot."""
    if conn is None or conn.closed:
        return None
    settings = {
        option.keyword.decode(): option.val.decode() if option.val is not None else None
        for option in conn.pgconn.info
    }
    try:
        used_gssapi: bool | None = conn.pgconn.used_gssapi
    except psycopg.NotSupportedError:  # libpq before 16 cannot tell
        used_gssapi = None
    if not keeper_can_follow(settings, used_gssapi):
        return None
    info = conn.info
    return {
        "host": info.host,
        "hostaddr": info.hostaddr or None,
        "port": info.port,
        "user": info.user,
        "password": info.password or None,
        "dbname": info.dbname,
        "tls": bool(conn.pgconn.ssl_in_use),
        "sslmode": settings.get("sslmode") or "prefer",
        "sslrootcert": settings.get("sslrootcert"),
        "sslcert": settings.get("sslcert"),
        "sslkey": settings.get("sslkey"),
        "sslsni": settings.get("sslsni") != "0",
        "require_auth": settings.get("require_auth") or None,
    }


def keeper_can_follow(settings: dict[str, str | None], used_gssapi: bool | None) -> bool:
    """Whether the keeper's own client may reconnect the way this connection did: not
    when libpq was told to need what it lacks (channel binding, GSS encryption, direct
    TLS, a key passphrase), nor when this connection is GSS-encrypted or authenticated
    (the hand-back would fall back to a plain connection). ``used_gssapi`` is None when
    libpq cannot say; then a Kerberos credential cache that libpq's default
    ``gssencmode=prefer`` would use counts as GSS."""
    if any(settings.get(name) == refused for name, refused in _KEEPER_CANNOT.items()):
        return False
    if settings.get("sslpassword"):
        return False
    if used_gssapi is not None:
        return not used_gssapi
    if settings.get("gssencmode") == "disable":
        return True
    return "KRB5CCNAME" not in os.environ and not os.path.exists(f"/tmp/krb5cc_{os.getuid()}")


class _Retry:
    """Connection trouble while campaigning or observing: the first contact fails at once
    (within :func:`connect_budget`); later a streak of transient errors is borne for
    ``connect_timeout`` (or until ``give_up``)."""

    def __init__(self, options: PostgresOptions, give_up: float | None,
                 timeout: float | None) -> None:  # fmt: skip
        self._options = options
        self._give_up = give_up
        self._first = connect_budget(options.connect_timeout, timeout)
        self._contacted = False
        self._streak_start: float | None = None
        self._delay = 0.05

    def budget(self) -> float:
        """Time allowed for the next call: the connect budget before the first contact;
        then connect_timeout, the rest of a failure streak and of the campaign's
        timeout, whichever is shortest, but always one attempt's worth."""
        if not self._contacted:
            return self._first
        now = time.monotonic()
        limit = self._options.connect_timeout
        if self._streak_start is not None:
            limit = self._streak_start + self._options.connect_timeout - now
        if self._give_up is not None:
            limit = min(limit, self._give_up - now)
        return max(limit, min(MIN_ATTEMPT, self._options.connect_timeout))

    def succeeded(self) -> None:
        self._contacted = True
        self._streak_start = None
        self._delay = 0.05

    def failed(self, exc: BaseException) -> None:
        """Sleep before the next try, or raise the error's one line when out of time."""
        now = time.monotonic()
        if not self._contacted or not is_transient(exc):
            raise self._options.unavailable(exc, self._first) from None
        if self._streak_start is None:
            self._streak_start = now
        give_up = self._streak_start + self._options.connect_timeout
        if self._give_up is not None:
            give_up = min(give_up, self._give_up)
        if now >= give_up:
            raise self._options.unavailable(exc, self._options.connect_timeout) from None
        time.sleep(min(self._delay, max(give_up - now, 0.0)))
        self._delay = min(self._delay * 2, 0.5)
