"""PostgreSQL backend: ``postgresql://[user[:pw]@]host[:port][,host2…]/dbname`` (also
``postgres://``); lelect's options ``schema`` (default ``lelect``), ``ttl``,
``connect_timeout`` and ``history``; the other query options are libpq's, as far as
lelect's own client (``wire``) speaks them (``sslmode``, ``sslrootcert``,
``application_name``, ``target_session_attrs``, …). A password may come from
``PGPASSWORD`` or ``~/.pgpass``, as with psql.

A leadership is a row in ``<schema>.lease`` acquired, renewed and released by single
guarded statements (``sql``): acquired only if absent or expired, renewed and
released only ``WHERE token = ours``, expiry by the server's ``clock_timestamp()``. The
leader counts its lease from the moment it sent the statement. Terms come from
``<schema>.term``, a counter per election that is never deleted. The leadership is
never a session advisory lock: a partitioned session keeps one until TCP keepalive
reaps it, long after its client gave up (the doorbell below is one, and only wakes).

Waiters never poll and are never woken as a herd. The leader holds the election's
doorbell, a session advisory lock (:func:`~lelect.backends.postgres.sql.bell_key`),
and every waiter blocks in ``pg_advisory_lock`` on it, for at most what the lease has
left by the server's clock. A release frees the doorbell after the lease row is gone,
and the server grants it to exactly one waiter (the first in its lock queue), which
takes the lease and keeps the doorbell as the new leader. The doorbell is never the
leadership (a lock tied to a connection dies with a blip and cannot fence): the lease
row is. A waiter that gets the doorbell while the lease still stands (the leader's
connection dropped; a killed leader's keeper is about to hand back) LISTENs on the
election's channel, where every release is announced, until the lease's expiry; it
alone listens, besides the leader (resign requests) and observers. Waiters do not
LISTEN: up to PostgreSQL 18 every NOTIFY wakes every listening backend of the
database, and a line of 200 listeners made each handoff cost the server 30-70 ms of
CPU. The others look again when their wait reaches the lease's expiry (one read: a
leader that renewed is waited on again).

One connection per candidate: a campaign borrows the backend's command session (so
heartbeats, the lease's renews, resign requests and the release share it); a second
campaign running at the same time in the same process gets a session of its own. A
waiter's ``pg_advisory_lock`` holds that connection, so the wait is cut in pieces that
end just after the next heartbeat is due (:mod:`lelect.backends.turns`); between two
pieces whoever waits for the connection goes first.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

from lelect.backends.base import (
    EXITED,
    MAX_ARRIVALS,
    PARTING_BUDGET,
    Backend,
    Cancel,
    Candidate,
    Ending,
    HandBack,
    Heartbeat,
    HistoryEntry,
    LeaderInfo,
    Leadership,
    Members,
    WakePipe,
    busy,
    cancel_wakeup,
    check_cancel,
    check_note,
    check_note_key,
    only_changes,
    timed_out,
    wait_slice,
)
from lelect.backends.logs import Logger
from lelect.backends.postgres import sql, wire
from lelect.backends.postgres.link import PgSession, PostgresOptions, is_transient
from lelect.backends.records import VANISHED_REASON, decode_member, encode_member
from lelect.backends.sql_notes import SqlNotes
from lelect.backends.turns import BeatCadence, leader_idle, wait_for_turn
from lelect.errors import ConfigError
from lelect.lease import Attempts, GaveUp, Lease, Renewal, RetryPolicy
from lelect.names import validate_stored

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only

if TYPE_CHECKING:
    from lelect.backends.urls import BackendURL

log = Logger("lelect.postgres")

#: The schema is not there (yet): nothing was ever written with it.
_NO_SCHEMA = (wire.UndefinedTable, wire.InvalidSchemaName)


class PostgresLeadership(Leadership):
    """A PostgreSQL leadership: its lease is kept by :class:`lelect.lease.Lease` with the
    guarded RENEW statement as its renew verb; between renews the same thread listens for
    resign requests on the same connection."""

    def __init__(self, backend: PostgresBackend, election: str, candidate: Candidate,
                 term: int, token: str, sent: float, ttl: float,
                 session: PgSession, bell_in: int | None) -> None:  # fmt: skip
        self.ttl = ttl
        self.session = session
        self.stopped = threading.Event()
        self.channel = sql.channel(backend.options.schema, election)
        #: How the keeper reaches the server that granted this leadership.
        self.wire = _wire_params(session.connection)
        #: The election's doorbell, and the session generation whose connection holds it
        #: (None: it was not free when this leadership was won).
        self.bell = sql.bell_key(backend.options.schema, election)
        self.bell_in = bell_in
        self._backend = backend
        self._wake_r, self._wake_w = socket.socketpair()
        self._listening = False
        self._renew_sql = backend.render(sql.RENEW, election=election, token=token, ttl=ttl)
        if session.server_major() >= 14:
            self._renew_sql = backend.render(
                sql.LEADER_IDLE, ms=leader_idle(ttl) * 1000
            ) + self._renew_sql
        lease = Lease(sent, ttl, self._renew, idle=self._idle, name=f"pg:{election}",
                      describe=lambda exc: str(backend.options.unavailable(exc, ttl / 3)))
        super().__init__(backend, election, candidate, term, token, lease)

    def _renew(self, budget: float) -> Renewal:
        rows = self.session.run(self._renew_sql, budget=budget)
        if not rows:
            return Renewal(False, reason="the lease row no longer holds our token (expired or taken)")
        return Renewal(True, resign_requested=bool(rows[0][0]))

    def _idle(self, seconds: float, wake: threading.Event) -> None:
        if self.stopped.is_set() or wake.is_set():
            return
        try:
            if not self._listening:  # resign requests come on the election's channel
                self.session.listen(self.channel, min(seconds, self._backend.connect_timeout))
                self._listening = True
            self._heard(self.session.wait(seconds, wake=self._wake_r))
        except (wire.Error, OSError, ValueError):
            pass  # the next renew reconnects (or the leadership was released meanwhile)

    def stop(self) -> None:
        """No more renews; wake the lease's thread so it lets go of the connection."""
        self.stopped.set()
        if self.lease is not None:
            self.lease.stop()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _heard(self, notes: list[wire.Notify]) -> None:
        for note in notes:
            if note.channel == self.channel and note.payload == f"resign {self.term}":
                self.mark_resign_requested()

    @property
    def holds_bell(self) -> bool:
        """This leadership's connection still holds the doorbell (a reconnect lost it)."""
        return self.bell_in is not None and self.bell_in == self.session.generation

    def close(self) -> None:
        self._backend.give_back(self.session, self.channel)
        for sock in (self._wake_r, self._wake_w):
            sock.close()


class PostgresBackend(SqlNotes, Backend):
    """Elections in one PostgreSQL database, under one schema."""

    notes_sql = sql  # its GET_NOTE and DELETE_NOTE (SqlNotes)

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
        self.retry = RetryPolicy(self.options.connect_timeout)
        #: Everything but observers; lent to one campaign at a time (one connection).
        self._command = PgSession(self.options)
        self._lent = False
        self._lending = threading.Lock()
        #: The heartbeats' cadence: a waiter's pieces of pg_advisory_lock end as the next
        #: beat is due.
        self._beats = BeatCadence()
        self._schema_ready = False

    def render(self, statement: str, **values: object) -> str:
        return sql.render(statement, self.options.schema, **values)

    def _borrow(self) -> PgSession:
        """The command session for a campaign (and its leadership), unless another
        campaign has it: then a session of its own."""
        with self._lending:
            if not self._lent:
                self._lent = True
                return self._command
        return PgSession(self.options)

    def give_back(self, session: PgSession, *channels: str) -> None:
        """A campaign or leadership is done with ``session``: the command session stops
        listening on ``channels`` and is lent again; any other is closed."""
        if session is not self._command:
            session.close()
            return
        for channel in channels:
            session.unlisten(channel)
        with self._lending:
            self._lent = False

    # -- the schema ---------------------------------------------------------------------

    def _ensure_schema(self, session: PgSession, budget: float) -> None:
        """Check the schema's version, creating the schema on first use. Raises wire
        errors for the caller's retry, ConfigError for what only a person can fix."""
        if self._schema_ready:
            return
        try:
            version, complete = session.run(self.render(
                sql.SCHEMA_VERSION_OF, newest=f'"{self.options.schema}".note'), budget)[0]
        except _NO_SCHEMA:
            version, complete = None, False
        except wire.InsufficientPrivilege as exc:
            raise self.options.refused(exc) from None
        if version is None or not complete:  # not there, cut short, or made before notes
            version = self._create_schema(session, budget)
        if version > sql.SCHEMA_VERSION:
            raise ConfigError(
                f"schema {self.options.schema!r} at {self.options.where} is version {version},"
                f" newer than this lelect knows ({sql.SCHEMA_VERSION}): upgrade lelect"
            )
        self._schema_ready = True

    def _create_schema(self, session: PgSession, budget: float) -> int:
        end = time.monotonic() + budget
        name = self.options.schema
        try:
            (exists,), = session.run(sql.render(sql.SCHEMA_EXISTS, name, name=name), budget)
            # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema
            # exists: only ask for it when the schema is missing.
            statement = sql.CREATE_TABLES if exists else sql.CREATE_SCHEMA + sql.CREATE_TABLES
            rows = session.run(self.render(statement, name=name, version=sql.SCHEMA_VERSION),
                               max(end - time.monotonic(), 0.001))  # fmt: skip
        except wire.InsufficientPrivilege as exc:
            raise self.options.refused(exc) from None
        log.info("lelect: created schema %r version %d", self.options.schema, sql.SCHEMA_VERSION)
        return int(rows[0][0])

    # -- leadership -------------------------------------------------------------------

    def _campaign(
        self,
        election: str,
        candidate: Candidate,
        *,
        timeout: float | None,
        no_wait: bool,
        ttl: float | None,
        on_wait: Callable[[LeaderInfo | None], None] | None,
        cancel: threading.Event | None = None,
    ) -> Leadership:
        validate_stored(election)
        ttl = self.default_ttl if ttl is None else ttl
        # secrets.token_hex(16), without secrets' hmac and hashlib (OpenSSL's libcrypto).
        token = os.urandom(16).hex()
        channel = sql.channel(self.options.schema, election)
        bell = sql.bell_key(self.options.schema, election)
        retry = self.retry.attempts(timeout, cancel=cancel, election=election)
        give_up = retry.give_up.at
        session: PgSession | None = self._borrow()
        bell_in: int | None = None  # the session generation that holds the doorbell
        waiting = 0  # 1: the first wait is next, 2: waited before
        try:
            while True:
                if bell_in != session.generation:
                    bell_in = None  # a lock is held only by the connection that took it
                try:
                    self._ensure_schema(session, retry.budget())
                    if bell_in is not None:  # before the attempt: no release goes unheard
                        session.listen(channel, retry.budget())
                    t_send = time.monotonic()
                    term, holder_token, holder_node, holder_term, left_s, _, took = session.run(
                        self._acquire_sql(election, token, candidate, ttl, bell,
                                          take_bell=bell_in is None), retry.budget())[0]
                    if took:
                        bell_in = session.generation
                    if term is None and holder_token == token:
                        # An earlier attempt won but its answer was lost: renew what is ours.
                        t_send = time.monotonic()
                        if session.run(self.render(sql.RENEW, election=election, token=token,
                                                   ttl=ttl), retry.budget()):  # fmt: skip
                            term = holder_term
                except wire.Error as exc:
                    self._retry(retry, exc)
                    continue
                retry.succeeded()
                if term is not None:
                    if bell_in != session.generation:
                        bell_in = None
                    leadership = PostgresLeadership(self, election, candidate, int(term), token,
                                                    t_send, ttl, session, bell_in)  # fmt: skip
                    session = None  # the leadership's now
                    return leadership
                holder = None
                if holder_node is not None and holder_term is not None:
                    holder = LeaderInfo(node_id=holder_node, term=int(holder_term))
                if no_wait:
                    raise busy(election, holder)
                if give_up is not None and time.monotonic() >= give_up:
                    raise timed_out(election, timeout)
                if not waiting:
                    waiting = 1
                    if on_wait is not None:
                        on_wait(holder)
                try:
                    if bell_in is not None:
                        self._wait_for_release(session, channel, left_s, give_up, cancel,
                                               election)  # fmt: skip
                    elif self._wait_for_bell(session, bell, election, left_s, give_up, cancel,
                                             first=waiting == 1):  # fmt: skip
                        bell_in = session.generation
                    waiting = 2
                except wire.Error as exc:
                    check_cancel(cancel, election)
                    self._retry(retry, exc)
        finally:
            if session is not None:
                if bell_in == session.generation:  # gave up holding it: the next may have it
                    self._ring(session, bell)
                self.give_back(session, channel)

    def _acquire_sql(self, election: str, token: str, candidate: Candidate, ttl: float,
                     bell: int, take_bell: bool) -> str:  # fmt: skip
        return self.render(
            sql.ACQUIRE, election=election, token=token, node_id=candidate.node_id,
            host=candidate.host, pid=candidate.pid, ttl=ttl, history=self.history_limit,
            channel=sql.channel(self.options.schema, election),
            vanished_reason=VANISHED_REASON, bell=bell, take_bell=take_bell,
        )  # fmt: skip

    def _ring(self, session: PgSession, bell: int) -> None:
        try:
            session.run(self.render(sql.RING_BELL, bell=bell), PARTING_BUDGET)
        except wire.Error:
            pass  # its connection is gone, or going: the server frees the lock then

    def _retry(self, attempts: Attempts, exc: wire.Error) -> None:
        """Pause before the next try, or raise the one-line error when that was the last."""
        try:
            attempts.retry_after(is_transient(exc))
        except GaveUp as gave_up:
            raise self.options.unavailable(exc, gave_up.bound) from None

    @staticmethod
    def _wait_for_release(session: PgSession, channel: str, left_s: float | None,
                          give_up: float | None, cancel: threading.Event | None = None,
                          election: str = "") -> None:  # fmt: skip
        """Holding the doorbell while the lease stands: sleep until a release is announced
        on the election's ``channel``, the lease expires by the server's clock, or
        ``give_up``. Without a holder to wait for (a winner that committed after our
        statement began), look again at once."""
        if left_s is None or left_s <= 0:
            return
        wake = time.monotonic() + left_s + 0.001
        end = wake if give_up is None else min(wake, give_up)
        with cancel_wakeup(cancel) as woken:
            while (left := end - time.monotonic()) > 0:
                check_cancel(cancel, election)
                for note in session.wait(wait_slice(left, cancel) or 0.0, wake=woken):
                    if note.channel == channel and note.payload.startswith("released "):
                        return
            check_cancel(cancel, election)

    def _wait_for_bell(self, session: PgSession, bell: int, election: str,
                       left_s: float | None, give_up: float | None,
                       cancel: threading.Event | None, first: bool) -> bool:  # fmt: skip
        """Wait in the server's lock queue for the election's doorbell; True once this
        session holds it (the leader released, or its connection went: the caller tries
        the lease). The wait lasts until the lease's expiry by the server's clock, in
        pieces (:class:`~lelect.backends.turns.BeatCadence`) between which the connection
        serves the heartbeats; at the expiry one read says whether the leader renewed
        (then the wait goes on until the new expiry) or the lease is gone (False: the
        caller tries to take it)."""
        pieces = 0

        def piece(wait: float) -> bool:
            nonlocal pieces
            seconds = max(round(min(wait, self._beats.slice(first and not pieces)), 3), 0.001)
            pieces += 1
            statement = self.render(sql.WAIT_BELL, bell=bell, ms=max(int(seconds * 1000), 1))
            if session.server_major() >= 14:
                statement = sql.CHECK_CLIENT + statement
            try:
                rows = session.run_long(statement, seconds * 1.25 + self.connect_timeout,
                                        cancel)  # fmt: skip
            except (wire.LockNotAvailable, wire.QueryCanceled):
                rows = None  # the piece is over (or an operator cancelled the wait)
            check_cancel(cancel, election)
            return bool(rows)

        return wait_for_turn(left_s, give_up, piece=piece,
                             look=lambda: self._leader(session, election, self.connect_timeout)[1])

    def resign(self, leadership: Leadership, ending: Ending) -> None:
        session = self._command
        statement = release = self._release_sql(leadership, ending, forget=False)
        if isinstance(leadership, PostgresLeadership):
            leadership.stop()
            session = leadership.session
            if leadership.holds_bell:
                # Free the doorbell once the lease row is gone (the same transaction:
                # the next in line's attempt waits for its commit).
                statement += ";\n" + self.render(sql.RING_BELL, bell=leadership.bell)
        # Past the lease's deadline a release frees nothing (the lease is over anyway),
        # and a lost leadership is most likely not ours any more: wait no longer than
        # the lease lasts, but 1s at least, to close the history entry.
        budget = leadership.parting_budget(self.connect_timeout)
        try:
            session.run(statement, budget)
        except wire.Error as exc:
            if isinstance(leadership, PostgresLeadership) and leadership.holds_bell:
                self._ring(session, leadership.bell)
            # Not fatal: the lease expires by itself.
            log.warning(
                "lelect: could not release %r (%s); it frees itself when the lease runs out",
                leadership.election, self.options.unavailable(exc, budget),
            )  # fmt: skip
            self.release_later(lambda budget: self._command.run(release, budget))
        finally:
            if isinstance(leadership, PostgresLeadership):
                leadership.close()

    def _release_sql(self, leadership: Leadership, ending: Ending, forget: bool) -> str:
        return sql.release_statement(
            self.options.schema, election=leadership.election, token=leadership.token,
            term=leadership.term, node_id=leadership.node_id, outcome=ending.outcome,
            exit_status=ending.exit_status, reason=ending.reason,
            slot=ending.slot, forget=forget,
        )  # fmt: skip

    def hand_back(self, leadership: Leadership) -> HandBack | None:
        if not isinstance(leadership, PostgresLeadership) or leadership.wire is None:
            return None
        return HandBack(
            budget=min(self.connect_timeout, leadership.ttl), election=leadership.election,
            module="lelect.backends.postgres.handback",
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
        validate_stored(election)
        try:
            return self._leader(self._command, election, self.connect_timeout)[0]
        except wire.Error as exc:
            raise self.options.unavailable(exc) from None

    def _leader(self, session: PgSession, election: str, budget: float
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
        """Look at once, then again when the election's channel announces a change (a
        win, a release: LISTEN/NOTIFY), when the lease looked at runs out by the server's
        clock, and, with nobody leading, once per lease (a bound on what a lost
        notification can cost). Nothing else wakes it: a ``stop`` that is a
        :class:`~lelect.backends.base.Cancel` wakes the wait itself (a plain Event is
        looked at every CANCEL_CHECK)."""
        validate_stored(election)
        stop = stop or Cancel()
        session = PgSession(self.options)
        channel = sql.channel(self.options.schema, election)
        retry = self.retry.attempts(None, cancel=stop)

        def looks(woken: WakePipe | None) -> Iterator[LeaderInfo | None]:
            while not stop.is_set():
                try:
                    session.listen(channel, retry.budget())
                    current, left_s = self._leader(session, election, retry.budget())
                except wire.Error as exc:
                    self._retry(retry, exc)
                    continue
                retry.succeeded()
                yield current
                wake = time.monotonic() + (left_s + 0.001 if left_s is not None
                                           else self.default_ttl)  # fmt: skip
                while not stop.is_set() and (left := wake - time.monotonic()) > 0:
                    try:
                        if session.wait(wait_slice(left, stop) or 0.0, wake=woken):
                            break
                    except wire.Error:
                        break

        try:
            with cancel_wakeup(stop) as woken:
                yield from only_changes(looks(woken))
        finally:
            session.close()

    def request_resign(self, election: str, term: int | None = None) -> bool:
        validate_stored(election)
        statement = self.render(sql.REQUEST_RESIGN, election=election,
                                term=None if term is None else int(term),
                                channel=sql.channel(self.options.schema, election))  # fmt: skip
        rows = self._write(statement, create=False)
        return bool(rows)

    # -- heartbeats ---------------------------------------------------------------------

    def publish(self, heartbeat: Heartbeat, ttl: float) -> None:
        validate_stored(heartbeat.election)
        record = encode_member(heartbeat, (), forget_after=ttl).decode("utf-8")
        self._beats.heard(heartbeat.interval)
        self._write(self.render(sql.PUBLISH, election=heartbeat.election,
                                node_id=heartbeat.node_id, record=record, forget_after=ttl,
                                max_arrivals=MAX_ARRIVALS))  # fmt: skip

    def remove_member(self, election: str, node_id: str) -> None:
        validate_stored(election)
        self._write(self.render(sql.REMOVE_MEMBER, election=election, node_id=node_id),
                    create=False)

    def members(self, election: str) -> Members:
        validate_stored(election)
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

    # -- notes ----------------------------------------------------------------------------

    def put_note(self, election: str, key: str, data: bytes, ttl: float | None = None, *,
                 create: bool = False) -> bool:
        validate_stored(election)
        statement = self.render(sql.PUT_NOTE, election=election, key=check_note_key(key),
                                data=check_note(data), ttl=ttl, only_new=create)  # fmt: skip
        return bool(self._write(statement))

    # -- operations ---------------------------------------------------------------------

    def history(self, election: str, limit: int | None = None) -> list[HistoryEntry]:
        validate_stored(election)
        rows = self._read(self.render(sql.HISTORY, election=election, limit=limit))
        return [
            HistoryEntry(election=election, term=int(term), node_id=node_id, host=host, pid=pid,
                         started=started, ended=ended, outcome=outcome,
                         exit_status=exit_status, slot=slot, reason=reason)
            for term, node_id, host, pid, started, ended, outcome, exit_status, slot, reason
            in rows or ()
        ]  # fmt: skip

    def slot_done(self, election: str, slot: str) -> HistoryEntry | None:
        validate_stored(election)
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
        except wire.Error as exc:
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
        except wire.Error as exc:
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
        except wire.InsufficientPrivilege as exc:
            raise self.options.refused(exc) from None
        except wire.Error as exc:
            raise self.options.unavailable(exc) from None


#: What the keeper's hand-back needs of a connection's parameters to make it again.
_HAND_BACK_KEYS = ("host", "hostaddr", "port", "user", "password", "dbname", "options",
                   "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslsni",
                   "sslcertmode", "ssl_min_protocol_version", "ssl_max_protocol_version",
                   "require_auth", "keepalives", "keepalives_idle", "keepalives_interval",
                   "keepalives_count", "tcp_user_timeout")  # fmt: skip


def _wire_params(conn: wire.Wire | None) -> dict[str, object] | None:
    """How the keeper (the same client) reaches the server this connection reached: the
    same address, TLS or not, with the password this connection used (from the URL,
    PGPASSWORD or ~/.pgpass); None without a connection."""
    if conn is None or conn.broken:
        return None
    params = {key: conn.params.get(key) for key in _HAND_BACK_KEYS}
    return {**params, "tls": conn.tls, "application_name": "lelect-keeper"}
