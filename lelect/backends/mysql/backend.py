"""MySQL/MariaDB backend: ``mysql://user[:pw]@host[:3306]/database`` (also ``mariadb://``)
with options ``ttl``, ``connect_timeout``, ``history``, ``prefix`` (of the table names,
default ``lelect_``), ``password_file``, and TLS: ``ssl_mode`` (disabled, required,
verify_ca, verify_identity), ``ssl_ca``, ``ssl_cert``, ``ssl_key``.

A leadership is a row in ``<prefix>lease`` taken, renewed and released by guarded
statements (:mod:`lelect.backends.mysql.sql`): taken only if absent or expired by the
server's ``NOW(6)``, renewed and released only ``WHERE token = ours``. The lease engine
(:mod:`lelect.lease`) owns the deadlines, renews and retries; this module supplies the
verbs. ``GET_LOCK`` is never the leadership (a lock tied to a connection dies with a
connection blip and cannot fence): it is only the line's doorbell.

Waiting (MySQL has no notifications): the leader holds the election's lock
(``GET_LOCK``) on its connection; every waiter blocks in ``GET_LOCK`` on it, for at most
the time the lease has left by the server's clock. A release frees the lock after the
lease row is gone, and the server hands the lock to exactly one waiter (the next in
line), which takes the lease and keeps the lock as the new leader: no herd. A waiter
that gets the lock while the lease still stands (the leader's connection dropped, the
leader died and its keeper's hand-back is on its way) keeps it and looks again every
:data:`POLL_BOUND` seconds, bounded by the lease's expiry; it alone polls. The others
look again only when their wait ends at the lease's expiry (about once per lease).

One connection per candidate: the backend's command session carries a campaign, the
leadership it wins (renews, the doorbell, the release), heartbeats, lookups, notes and
observers. A waiter's ``GET_LOCK`` holds that connection, so the wait is cut in slices
that end just after the next heartbeat is due (the cadence is learned from
:meth:`~MySQLBackend.publish`); between two slices whoever waits for the connection goes
first. Without heartbeats a slice lasts until the lease's expiry: a waiting candidate
wakes for nothing else. A second campaign that waits while another one waits (or while
a leadership of this backend renews) on the command session gets a connection of its
own: a wait must not hold up a renew.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

from lelect.backends.base import (
    EXITED,
    MAX_ARRIVALS,
    Backend,
    Candidate,
    Ending,
    HandBack,
    Heartbeat,
    HistoryEntry,
    LeaderInfo,
    Leadership,
    Members,
    busy,
    check_cancel,
    check_note,
    check_note_key,
    only_changes,
    timed_out,
    wait_slice,
)
from lelect.backends.logs import Logger
from lelect.backends.mysql import sql
from lelect.backends.mysql.link import LinkError, MySQLOptions, MySQLSession, wire_params
from lelect.backends.records import VANISHED_REASON, decode_member, encode_member
from lelect.backends.sql_notes import SqlNotes
from lelect.backends.turns import LONGEST_WAIT, BeatCadence, leader_idle, wait_for_turn
from lelect.errors import CampaignCancelled, ConfigError
from lelect.lease import Attempts, GaveUp, Lease, Renewal, RetryPolicy
from lelect.names import validate_stored

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only

if TYPE_CHECKING:
    from lelect.backends.urls import BackendURL

log = Logger("lelect.mysql")


#: How often the next in line (the waiter holding the election's lock while the lease
#: still stands) looks again; and how often an observer looks (no notifications).
POLL_BOUND = 0.5
_NO_LIMIT = 1_000_000_000


class MySQLLeadership(Leadership):
    """A MySQL leadership: its lease is kept by :class:`lelect.lease.Lease` with the
    guarded RENEW statement as its renew verb, on the connection that won it (which
    also holds the election's wake-up lock, when it got it)."""

    def __init__(self, backend: MySQLBackend, election: str, candidate: Candidate,
                 term: int, token: str, sent: float, ttl: float, session: MySQLSession) -> None:
        self.ttl = ttl
        self.session = session
        #: True once the backend has been told this leadership is over (its session
        #: given back, or closed).
        self.given_back = False
        self.wire = wire_params(session)
        idle = backend.render(sql.LEADER_IDLE, seconds=leader_idle(ttl))
        self._renew_sql = idle + backend.render(sql.RENEW, election=election, token=token,
                                                ttl_us=sql.microseconds(ttl))
        lease = Lease(sent, ttl, self._renew, name=f"mysql:{election}",
                      describe=lambda exc: str(backend.options.unavailable(exc, ttl / 3)))
        super().__init__(backend, election, candidate, term, token, lease)

    def _renew(self, budget: float) -> Renewal:
        rows = self.session.run(self._renew_sql, budget)
        if not rows or not int(rows[0][0] or 0):
            return Renewal(False, reason="the lease row no longer holds our token (expired or taken)")
        return Renewal(True, resign_requested=bool(rows[0][1]))


class MySQLBackend(SqlNotes, Backend):
    """Elections in one MySQL or MariaDB database, in tables named with one prefix."""

    notes_sql = sql  # its GET_NOTE and DELETE_NOTE (SqlNotes)

    scheme = "mysql"
    lease_based = True
    creates_state = True

    def __init__(self, url: BackendURL, create: bool = True) -> None:
        super().__init__(url)
        self.scheme = url.scheme
        self.options = MySQLOptions.from_url(url)
        self.options.ssl_context()  # TLS files that cannot be read: refused before anything
        self.default_ttl = self.options.ttl
        self.connect_timeout = self.options.connect_timeout
        self.history_limit = self.options.history
        self.create = create
        self.retry = RetryPolicy(self.options.connect_timeout)
        #: The one connection of this candidate (see the module's docstring).
        self._command = MySQLSession(self.options)
        self._sharing = threading.Lock()
        self._waiting_on_command = False
        self._leading_on_command = 0
        #: The heartbeats' cadence: a waiter's pieces of GET_LOCK end as the next beat is due.
        self._beats = BeatCadence()
        self._schema_ready = False

    def render(self, statement: str, **values: object) -> str:
        return sql.render(statement, self.options.prefix, **values)

    def _bell(self, election: str) -> str:
        return sql.lock_name(self.options.database, self.options.prefix, election)

    # -- the one connection -------------------------------------------------------------

    def _borrow(self, waits: bool) -> MySQLSession:
        """The session a campaign runs on: the command session, unless another campaign
        waits on it, or this one would wait while a leadership renews on it; then a
        session of its own."""
        with self._sharing:
            if self._waiting_on_command or (waits and self._leading_on_command):
                return MySQLSession(self.options)
            self._waiting_on_command = waits
            return self._command

    def _campaign_done(self, session: MySQLSession, won: bool) -> None:
        """A campaign ends: lost, its own session is closed; won, its leadership keeps it."""
        if session is not self._command:
            if not won:
                session.close()
            return
        with self._sharing:
            self._waiting_on_command = False
            if won:
                self._leading_on_command += 1

    def _leadership_done(self, leadership: MySQLLeadership) -> None:
        if leadership.given_back:
            return
        leadership.given_back = True
        if leadership.session is not self._command:
            leadership.session.close()
            return
        with self._sharing:
            self._leading_on_command -= 1

    # -- the schema ---------------------------------------------------------------------

    def _ensure_schema(self, session: MySQLSession, budget: float) -> None:
        """Check the tables' version, creating them on first use. Raises LinkError for
        the caller's retry, ConfigError for what only a person can fix."""
        if self._schema_ready:
            return
        try:
            version = session.run(self.render(sql.SCHEMA_VERSION_OF), budget)[0][0]
        except LinkError as exc:
            if not exc.no_table:
                raise self._refused_or(exc) from None
            version = None
        if version is None:
            try:
                rows = session.run(self.render(sql.CREATE_TABLES, version=sql.SCHEMA_VERSION),
                                   budget)
            except LinkError as exc:
                raise self._refused_or(exc) from None
            version = rows[0][0]
            log.info("lelect: created tables %s* version %s", self.options.prefix, version)
        if int(version) > sql.SCHEMA_VERSION:
            raise ConfigError(
                f"the lelect tables {self.options.prefix}* at {self.options.where} are version"
                f" {version}, newer than this lelect knows ({sql.SCHEMA_VERSION}): upgrade lelect"
            )
        self._schema_ready = True

    def _refused_or(self, exc: LinkError) -> Exception:
        from lelect.backends.mysql.link import PRIVILEGE

        if exc.code in PRIVILEGE:
            return self.options.refused(exc)
        return exc

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
        token = _random_hex()
        bell = self._bell(election)
        retry = self.retry.attempts(timeout, cancel=cancel, election=election)
        give_up = retry.give_up.at
        session = self._borrow(waits=not (no_wait or timeout == 0))
        holding_bell = False
        bell_generation = 0  # a lock is held only by the connection that took it
        waiting = 0  # 1: the first wait is next, 2: waited before
        won = False
        try:
            while True:
                holding_bell = holding_bell and session.generation == bell_generation
                try:
                    self._ensure_schema(session, retry.budget())
                    t_send = time.monotonic()
                    term, holder_token, holder_node, holder_term, left_s = session.run(
                        self._acquire_sql(election, token, candidate, ttl), retry.budget())[0]
                    if term is None and holder_token == token:
                        # An earlier attempt won but its answer was lost: renew what is ours.
                        t_send = time.monotonic()
                        rows = session.run(self.render(sql.RENEW, election=election, token=token,
                                                       ttl_us=sql.microseconds(ttl)),
                                           retry.budget())  # fmt: skip
                        if rows and int(rows[0][0] or 0):
                            term = holder_term
                except LinkError as exc:
                    self._retry(retry, exc)
                    continue
                retry.succeeded()
                if term is not None:
                    holding_bell = holding_bell and session.generation == bell_generation
                    if not holding_bell:
                        try:  # the line's doorbell; without it the next in line polls
                            session.run(self.render(sql.TAKE_BELL, name=bell),
                                        min(retry.budget(), ttl / 3))
                        except LinkError:
                            pass
                    leadership = MySQLLeadership(self, election, candidate, int(term), token,
                                                 t_send, ttl, session)  # fmt: skip
                    won = True  # the session is the leadership's now
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
                left = None if left_s is None else float(left_s)
                try:
                    rang = self._wait(session, bell, left, holding_bell, give_up, cancel,
                                      election, first=not holding_bell and waiting == 1)
                    waiting = 2
                    if rang and not holding_bell:
                        bell_generation = session.generation
                    holding_bell = rang
                except LinkError as exc:
                    check_cancel(cancel, election)
                    self._retry(retry, exc)
        finally:
            self._campaign_done(session, won)

    def _acquire_sql(self, election: str, token: str, candidate: Candidate, ttl: float) -> str:
        return self.render(
            sql.ACQUIRE, election=election, token=token, attempt=_random_hex(),
            node_id=candidate.node_id, host=candidate.host, pid=candidate.pid,
            ttl_us=sql.microseconds(ttl), history_limit=self.history_limit,
            vanished_reason=VANISHED_REASON,
        )  # fmt: skip

    def _wait(self, session: MySQLSession, bell: str, left_s: float | None, holding_bell: bool,
              give_up: float | None, cancel: threading.Event | None, election: str,
              first: bool = False) -> bool:  # fmt: skip
        """Wait for a turn; True if this waiter now holds the election's lock. The lock's
        holder (the next in line while the lease stands) looks again every POLL_BOUND;
        the others block on the lock until the lease's expiry by the server's clock, in
        slices (:class:`~lelect.backends.turns.BeatCadence`) between which the connection
        serves the heartbeats and whatever else this process sends. At the expiry one read says whether the
        leader renewed (then they wait on until the new expiry) or the lease is gone
        (False: the caller tries to take it)."""
        if left_s is None or left_s <= 0:
            return holding_bell  # expired or just gone: look again at once
        now = time.monotonic()
        wait = min(left_s + 0.001, LONGEST_WAIT)
        if give_up is not None:
            wait = min(wait, max(give_up - now, 0.0))
        if holding_bell:
            end = now + min(wait, POLL_BOUND)
            while (left := end - time.monotonic()) > 0:
                check_cancel(cancel, election)
                (cancel or threading.Event()).wait(wait_slice(left, cancel) or left)
            return True
        pieces = 0

        def piece(wait: float) -> bool:
            nonlocal pieces
            seconds = round(min(wait, self._beats.slice(first and not pieces)), 3)
            pieces += 1
            try:
                rows = session.run_long(self.render(sql.WAIT_BELL, name=bell, seconds=seconds),
                                        seconds * 1.25 + self.connect_timeout, cancel=cancel)
            except LinkError:
                check_cancel(cancel, election)
                raise
            check_cancel(cancel, election)
            return bool(rows and rows[0][0] is not None and int(rows[0][0]) == 1)

        return wait_for_turn(left_s, give_up, piece=piece,
                             look=lambda: self._leader(session, election, self.connect_timeout)[1])

    def _retry(self, attempts: Attempts, exc: LinkError) -> None:
        """Pause before the next try, or raise the one-line error when that was the last."""
        try:
            attempts.retry_after(exc.transient)
        except GaveUp as gave_up:
            raise self.options.unavailable(exc, gave_up.bound) from None

    def resign(self, leadership: Leadership, ending: Ending) -> None:
        session = self._command
        statement = release = self._release_sql(leadership, ending, forget=False)
        if isinstance(leadership, MySQLLeadership):
            session = leadership.session
            # Free the doorbell only once the lease row is gone: the next in line wakes
            # to a free lease.
            statement += ";\n" + self.render(sql.RING_BELL, name=self._bell(leadership.election))
        budget = leadership.parting_budget(self.connect_timeout)
        try:
            session.run(statement, budget)
        except (LinkError, ConfigError) as exc:
            log.warning(
                "lelect: could not release %r (%s); it frees itself when the lease runs out",
                leadership.election, self.options.unavailable(exc, budget),
            )  # fmt: skip
            self.release_later(lambda budget: self._command.run(release, budget))
        finally:
            if isinstance(leadership, MySQLLeadership):
                self._leadership_done(leadership)

    def _release_sql(self, leadership: Leadership, ending: Ending, forget: bool) -> str:
        return sql.release_statement(
            self.options.prefix, election=leadership.election, token=leadership.token,
            term=leadership.term, node_id=leadership.node_id, outcome=ending.outcome,
            exit_status=ending.exit_status, reason=ending.reason,
            slot=ending.slot, forget=forget,
        )  # fmt: skip

    def hand_back(self, leadership: Leadership) -> HandBack | None:
        if not isinstance(leadership, MySQLLeadership) or leadership.wire is None:
            return None
        return HandBack(
            budget=min(self.connect_timeout, leadership.ttl), election=leadership.election,
            module="lelect.backends.mysql.handback",
            params={
                **leadership.wire,
                "election": leadership.election,
                "token": leadership.token,
                "term": leadership.term,
                "node_id": leadership.node_id,
                "bell": self._bell(leadership.election),
            },
        )

    def leader(self, election: str) -> LeaderInfo | None:
        validate_stored(election)
        try:
            return self._leader(self._command, election, self.connect_timeout)[0]
        except LinkError as exc:
            raise self.options.unavailable(exc) from None

    def _leader(self, session: MySQLSession, election: str, budget: float
                ) -> tuple[LeaderInfo | None, float | None]:  # fmt: skip
        try:
            rows = session.run(self.render(sql.LEADER, election=election), budget)
        except LinkError as exc:
            if exc.no_table:
                return None, None
            raise
        if not rows:
            return None, None
        node_id, term, since, host, pid, left_s = rows[0]
        info = LeaderInfo(node_id=node_id, term=int(term or 0),
                          since=None if since is None else float(since), host=host, pid=pid)
        return info, None if left_s is None else float(left_s)

    def observe(self, election: str, stop: threading.Event | None = None
                ) -> Iterator[LeaderInfo | None]:  # fmt: skip
        """Look every POLL_BOUND (MySQL has no notifications; one primary-key read), and
        at the lease's expiry by the server's clock."""
        validate_stored(election)
        stop = stop or threading.Event()
        session = self._command  # one connection: shared with whatever else runs here
        retry = self.retry.attempts(None, cancel=stop)

        def looks() -> Iterator[LeaderInfo | None]:
            while not stop.is_set():
                try:
                    current, left_s = self._leader(session, election, retry.budget())
                except LinkError as exc:
                    self._retry(retry, exc)
                    continue
                retry.succeeded()
                yield current
                pause = POLL_BOUND if left_s is None else min(POLL_BOUND, left_s + 0.001)
                stop.wait(pause)

        yield from only_changes(looks())

    def request_resign(self, election: str, term: int | None = None) -> bool:
        validate_stored(election)
        statement = self.render(sql.REQUEST_RESIGN, election=election,
                                term_given=term is not None,
                                term_value=0 if term is None else int(term))  # fmt: skip
        rows = self._write(statement, create=False)
        return bool(rows and int(rows[0][0] or 0))

    # -- heartbeats ---------------------------------------------------------------------

    def publish(self, heartbeat: Heartbeat, ttl: float) -> None:
        validate_stored(heartbeat.election)
        record = encode_member(heartbeat, (), forget_after=ttl).decode("utf-8")
        self._beats.heard(heartbeat.interval)
        self._write(self.render(sql.PUBLISH, election=heartbeat.election,
                                node_id=heartbeat.node_id, record=record,
                                forget_us=sql.microseconds(ttl)))  # fmt: skip

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
            decode_member(node_id, record, _arrivals(arrivals))
            for _, node_id, record, arrivals in rows
            if node_id is not None
        )
        return Members(election=election, now=float(rows[0][0]), records=records)

    def elections(self) -> list[str]:
        rows = self._read(self.render(sql.ELECTIONS))
        return [name for (name,) in rows or ()]

    # -- notes ----------------------------------------------------------------------------

    def put_note(self, election: str, key: str, data: bytes, ttl: float | None = None, *,
                 create: bool = False) -> bool:
        validate_stored(election)
        statement = self.render(
            sql.PUT_NOTE, election=election, key=check_note_key(key), data=check_note(data),
            ttl_us=None if ttl is None else sql.microseconds(ttl), only_new=create,
            attempt=_random_hex(),
        )  # fmt: skip
        rows = self._write(statement)
        return bool(rows and int(rows[0][0] or 0))

    # -- operations ---------------------------------------------------------------------

    def history(self, election: str, limit: int | None = None) -> list[HistoryEntry]:
        validate_stored(election)
        rows = self._read(self.render(sql.HISTORY, election=election,
                                      limit=_NO_LIMIT if limit is None else int(limit)))
        return [
            HistoryEntry(election=election, term=int(term), node_id=node_id, host=host, pid=pid,
                         started=_seconds(started), ended=_seconds(ended), outcome=outcome,
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
                            pid=pid, started=_seconds(started), ended=_seconds(ended),
                            outcome=EXITED, exit_status=exit_status, slot=slot)  # fmt: skip

    def now(self) -> float:
        try:
            return float(self._command.run(sql.NOW, self.connect_timeout)[0][0])
        except LinkError as exc:
            raise self.options.unavailable(exc) from None

    def close(self) -> None:
        self._command.close()
        for leadership in list(self.leaderships):
            if isinstance(leadership, MySQLLeadership) and not leadership.released:
                if leadership.lease is not None:
                    leadership.lease.stop()

    # -- helpers ------------------------------------------------------------------------

    def _read(self, statement: str) -> list[tuple] | None:
        """Rows of a read, or None when the tables do not exist (nothing was written)."""
        try:
            return self._command.run(statement, self.connect_timeout)
        except LinkError as exc:
            if exc.no_table:
                return None
            raise self.options.unavailable(exc) from None

    def _write(self, statement: str, create: bool = True) -> list[tuple]:
        """Rows of a write; the tables are created first if ``create`` (else missing
        tables mean there is nothing to change: no rows)."""
        try:
            if create:
                self._ensure_schema(self._command, self.connect_timeout)
            return self._command.run(statement, self.connect_timeout)
        except LinkError as exc:
            if exc.no_table and not create:
                return []
            raise self.options.unavailable(exc) from None


def _random_hex() -> str:
    """32 random hex digits (as secrets.token_hex(16), without secrets: it imports hashlib
    and so OpenSSL's libcrypto, megabytes of a waiting candidate's memory)."""
    return os.urandom(16).hex()


def _seconds(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _arrivals(text: str | None) -> list[float]:
    stamps: list[float] = []
    for word in (text or "").split()[-MAX_ARRIVALS:]:
        try:
            stamps.append(float(word))
        except ValueError:
            continue
    return stamps


__all__ = ["MySQLBackend", "MySQLLeadership", "CampaignCancelled"]
