"""ZooKeeper backend (kazoo), laid out exactly as kazoo's Lock/Election recipe.

``<path>/NAME`` holds nothing but contender nodes ``<uuid4 hex>__lock__<seq>``
(ephemeral, sequential, the node id as data). The lowest sequence leads, each waiter
watches only its predecessor, and the leader's sequence number is the term. So
``KazooClient(...).Election("/lelect/NAME", "id")`` contends in the same election as
``lelect campaign NAME``. lelect's own records live beside it (:mod:`.layout`).

The pieces, one per module as kazoo's recipes are: where things live and the
transactions that change them (``layout``), sessions and their bounded connect
(``session``), the way to the front of the queue (``contest``), the lease guard
(``lease``) and the keeper's standard-library hand-back (``handback``).
This module is the backend over them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    SessionExpiredError,
)

from lelect.backends.base import (
    LOST,
    MAX_ARRIVALS,
    MAX_NOTE,
    PARTING_BUDGET,
    RUNNING,
    Backend,
    Candidate,
    Ending,
    HandBack,
    Heartbeat,
    HistoryEntry,
    LeaderInfo,
    Leadership,
    Members,
    check_note,
    check_note_key,
    only_changes,
)
from lelect.backends.notes import value_key
from lelect.backends.records import (
    MAX_SLOTS,
    ResignAnswer,
    decode_member,
    encode_member,
    stored_arrivals,
)
from lelect.backends.zookeeper.acl import guard_acls
from lelect.backends.zookeeper.contest import Contest
from lelect.backends.zookeeper.holders import HoldersClaims
from lelect.backends.zookeeper.layout import (
    ANY_VERSION,
    Contender,
    Create,
    Delete,
    ElectionPaths,
    SetData,
    StoredNote,
    clock_path,
    contenders,
    entry_data,
    from_znode_name,
    history_terms,
    release_ops,
)
from lelect.backends.zookeeper.lease import ZooKeeperLeadership, resign_request
from lelect.backends.zookeeper.session import (
    TRANSIENT,
    ZK_ERRORS,
    ZooKeeperConfig,
    ZooKeeperSession,
    check_session_timeout,
    log,
)
from lelect.durations import format_duration
from lelect.errors import BackendUnavailable, ConfigError
from lelect.frozen import replace
from lelect.lease import connect_budget
from lelect.names import ELECTION_NAME

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only

if TYPE_CHECKING:
    from typing import Any

    from lelect.backends.urls import BackendURL

#: The longest a release (or a lost leader's last word) waits for an answer.
RELEASE_PATIENCE = 1.0
#: Tries of the release multi (each retry leaves out a part that cannot apply).
RELEASE_TRIES = 5
#: Tries of a note's write against writers that change or delete it meanwhile.
NOTE_TRIES = 5
#: How long a reading of the server's clock judges notes' ttls (carried forward by the
#: local monotonic clock): a refresh of a note writes no clock node meanwhile.
NOTE_CLOCK_REUSE = 60.0


class ZooKeeperBackend(Backend):
    """Elections in ZooKeeper, shared with kazoo's Election recipe."""

    scheme = "zookeeper"
    lease_based = True
    holders_by_session = True
    tells_next_in_line = True

    def __init__(self, url: BackendURL) -> None:
        super().__init__(url)
        self.config = ZooKeeperConfig.from_url(url)
        #: The session timeout asked for when ``campaign`` is given no ttl.
        self.ttl = self.default_ttl = self.config.session_timeout
        self.connect_timeout = self.config.connect_timeout
        self.history_limit = self.config.history_limit
        self._lock = threading.Lock()
        self._closed = False
        self._sessions: set[ZooKeeperSession] = set()  # every session not yet closed
        self._connecting: set[ZooKeeperSession] = set()
        #: The last "no server answered" of any session of ours, and when (monotonic);
        #: cleared by the next session that connects.
        self._verdict: tuple[BackendUnavailable, float] | None = None
        # The shared session (everything but campaigns): one connect at a time; a caller
        # that waited behind a failed one gets its verdict instead of trying again.
        self._shared: ZooKeeperSession | None = None
        self._shared_lock = threading.Lock()
        self._shared_tries = 0
        #: Campaigns' sessions, each with an event set once its connect concluded: while
        #: one lives, everything else this candidate asks goes through it (one session
        #: per candidate, heartbeats and lookups included), and no shared one is opened.
        self._campaigning: dict[ZooKeeperSession, threading.Event] = {}
        #: Shared sessions observers watch through, and how many: never taken over.
        self._observed: dict[ZooKeeperSession, int] = {}
        #: This process's claims on --holders, kept by its sessions (:mod:`.holders`).
        self._holders = HoldersClaims(self)

    def paths(self, election: str) -> ElectionPaths:
        return ElectionPaths.of(self.config.path, election)

    # -- sessions ---------------------------------------------------------------

    def _start(self, session: ZooKeeperSession, within: float) -> None:
        """Connect ``session`` within ``within``; a session that finds no server gives
        the same verdict to every other session of ours still connecting, so the whole
        connect keeps one bound."""
        with self._lock:
            if self._closed:
                raise BackendUnavailable("the ZooKeeper backend was closed")
            self._sessions.add(session)
            self._connecting.add(session)
        try:
            session.start(within)
        except BackendUnavailable as verdict:
            with self._lock:
                self._sessions.discard(session)
                others = []
                if session.unreachable:
                    self._verdict = (verdict, time.monotonic())
                    others = list(self._connecting - {session})
            for other in others:
                other.fail(verdict)
            raise
        else:
            with self._lock:
                self._verdict = None
        finally:
            with self._lock:
                self._connecting.discard(session)

    def _session(self, *, best_effort: bool = False) -> ZooKeeperSession:
        """The session for everything but campaigns (leader, heartbeats, notes): a
        campaign's session while one lives (:meth:`_campaign_session`), else the shared
        one.

        ``best_effort`` (heartbeats and their removal: a beat that cannot arrive now is
        a missed beat): never wait behind another connect or for a reconnect, and fail
        at once while a verdict of "no server" stands (for ``connect_timeout``: trying
        again sooner could learn nothing new)."""
        campaigning = self._campaign_session(wait=not best_effort)
        if campaigning is not None:
            if best_effort and not campaigning.connected.is_set():
                raise BackendUnavailable(f"not connected to ZooKeeper at {self.config.hosts}")
            return campaigning
        return self._shared_session(best_effort=best_effort)

    def _campaign_session(self, wait: bool) -> ZooKeeperSession | None:
        """The newest campaign's session that connected and is not closed (waiting, with
        ``wait``, up to the connect timeout for one still connecting), or None."""
        with self._lock:
            campaigns = list(self._campaigning.items())
        for session, started in reversed(campaigns):
            if not (started.wait(self.config.connect_timeout) if wait else started.is_set()):
                continue
            if not session.closed and session.granted is not None:
                return session
        return None

    def _shared_session(self, *, best_effort: bool = False, observing: bool = False
                        ) -> ZooKeeperSession:
        """The session of a process that does not campaign (or between campaigns);
        ``observing``: for an observer's watches, so no campaign takes it over (the
        caller ends that with :meth:`_unobserve`)."""
        return self._shared_or_new(best_effort=best_effort, observing=observing)

    def _unobserve(self, session: ZooKeeperSession) -> None:
        with self._lock:
            left = self._observed.pop(session, 1) - 1
            if left > 0:
                self._observed[session] = left

    def _shared_or_new(self, *, best_effort: bool, observing: bool) -> ZooKeeperSession:
        if best_effort:
            with self._lock:
                verdict = self._verdict
            if verdict is not None and time.monotonic() - verdict[1] < self.config.connect_timeout:
                raise verdict[0]
            if not self._shared_lock.acquire(blocking=False):
                raise BackendUnavailable(f"still connecting to ZooKeeper at {self.config.hosts}")
        else:
            tries = self._shared_tries
            self._shared_lock.acquire()
        try:
            session = self._shared
            if session is not None and not session.closed:
                if best_effort and not session.connected.is_set():
                    raise BackendUnavailable(f"not connected to ZooKeeper at {self.config.hosts}")
                return self._observing(session) if observing else session
            with self._lock:
                verdict = self._verdict
            if not best_effort and self._shared_tries != tries and verdict is not None:
                raise verdict[0]  # we waited behind an attempt that found no server
            self._shared_tries += 1
            session = ZooKeeperSession(self.config, self.config.session_timeout)
            self._start(session, self.config.connect_timeout)
            self._shared = session
            return self._observing(session) if observing else session
        finally:
            self._shared_lock.release()

    def _observing(self, session: ZooKeeperSession) -> ZooKeeperSession:
        """Count an observer of ``session`` (under the shared lock: no campaign takes it
        over meanwhile)."""
        with self._lock:
            self._observed[session] = self._observed.get(session, 0) + 1
        return session

    def _ask(self, session: ZooKeeperSession, method: str, *args: Any, **kwargs: Any) -> Any:
        return session.call(method, *args, timeout=self.config.connect_timeout, **kwargs)

    def _live_sessions(self) -> list[ZooKeeperSession]:
        """Every connected session of ours, campaigns' first (newest first)."""
        with self._lock:
            campaigns = list(reversed(self._campaigning))
            others = [s for s in self._sessions if s not in self._campaigning]
        return [s for s in campaigns + others if s.connected.is_set() and not s.closed]

    def _forget(self, session: ZooKeeperSession, wait: float = RELEASE_PATIENCE, *,
                carry: bool = True) -> None:
        """End ``session``; ``carry``: a --holders claim only it keeps goes on in another
        session of ours first (not for a lost leader: nothing of ours runs on it)."""
        if carry:
            self._holders.leaving(session, RELEASE_PATIENCE)
        with self._lock:
            self._sessions.discard(session)
            self._campaigning.pop(session, None)
        session.close(wait)

    def close(self) -> None:
        """Close every session; one still connecting is dropped at once."""
        with self._lock:
            self._closed = True
            sessions = list(self._sessions)
            self._sessions.clear()
        for session in sessions:
            session.close()

    # -- campaign / resign ------------------------------------------------------

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
        on_next: Callable[[bool], None] | None = None,
    ) -> Leadership:
        paths = self.paths(election)
        requested = self.ttl if ttl is None else ttl
        check_session_timeout(requested, "the session timeout (--ttl)")
        started = time.monotonic()
        budget = connect_budget(self.config.connect_timeout, timeout)
        session = self._adopt_shared(requested, budget)
        if session is None:
            session = ZooKeeperSession(self.config, requested)
            connected = threading.Event()
            with self._lock:
                self._campaigning[session] = connected
            try:
                self._start(session, budget)
            except BaseException:
                with self._lock:
                    self._campaigning.pop(session, None)
                raise
            finally:
                connected.set()
        try:
            self._check_granted(session, requested)
            guard_acls(session, paths, budget)
            self._holders.carry_to(session, election)
            contest = Contest(
                self, session, paths, candidate,
                give_up=None if timeout is None else started + timeout,
                # At least one attempt: timeout=0 still wins a free election.
                calls_until=None if timeout is None else started + max(timeout, budget),
                timeout=timeout, no_wait=no_wait, on_wait=on_wait, cancel=cancel,
                on_next=on_next,
            )
            return contest.run()
        except BaseException:
            self._forget(session)
            raise

    def _adopt_shared(self, requested: float, budget: float) -> ZooKeeperSession | None:
        """The shared session, taken over by a campaign that asks for its session timeout
        (what a lookup or the holders claim made just before the campaign opened): one
        session per candidate. None if there is none, connected, of that timeout."""
        if not self._shared_lock.acquire(timeout=max(budget, 0.0)):
            return None
        try:
            shared = self._shared
            if (shared is None or shared.closed or not shared.connected.is_set()
                    or shared.requested != requested):
                return None
            started = threading.Event()
            started.set()
            with self._lock:
                if shared in self._observed:
                    return None
                self._campaigning[shared] = started
            self._shared = None
            return shared
        finally:
            self._shared_lock.release()

    def _check_granted(self, session: ZooKeeperSession, requested: float) -> None:
        granted = session.granted or requested
        if round(granted * 1000) < round(requested * 1000):
            raise ConfigError(
                f"ZooKeeper granted a {format_duration(granted)} session, shorter than the"
                f" {format_duration(requested)} asked for (its maxSessionTimeout): use"
                f" --ttl {format_duration(granted)} or session_timeout={format_duration(granted)}"
            )
        if granted > requested:
            log.info(
                "ZooKeeper granted a %s session (its minSessionTimeout), not %s",
                format_duration(granted),
                format_duration(requested),
            )

    def resign(self, leadership: Leadership, ending: Ending) -> None:
        """One multi deletes our node (the next waiter's watch fires), closes our history
        entry and marks a completed slot; then the session ends. A leadership that is no
        longer ours only closes its own entry, if nobody did."""
        if not isinstance(leadership, ZooKeeperLeadership):
            raise TypeError(f"not a ZooKeeper leadership: {leadership!r}")
        leadership.guard.stop()
        session = leadership.session
        # The entry of a job that ended at once may still be on its way (no record lost).
        leadership.await_record(leadership.parting_budget(self.config.connect_timeout))
        # A lost session reconnects as a new one: wait for it (the job is already dead,
        # nothing is in a hurry), so the lost leader can still say how its leadership ended.
        lost = leadership.lease_over() or ending.outcome == LOST
        give_up = time.monotonic() + (PARTING_BUDGET if lost else 0)
        released = False
        while session.wait_connected(max(0.0, give_up - time.monotonic())):
            try:
                self._release(session, leadership, ending)
                released = True
                break
            except TRANSIENT as exc:
                # A re-created session (with credentials to send again) may drop the
                # first request: a lost leader tries again while its patience lasts.
                if not lost or time.monotonic() >= give_up:
                    log.debug("releasing %s failed (%s): its session's end removes it",
                              leadership.node_path, type(exc).__name__)
                    break
            except ZK_ERRORS as exc:
                log.debug("releasing %s failed (%s): its session's end removes it",
                          leadership.node_path, type(exc).__name__)
                break
        if released:
            # The session's end (a write the server logs, and our client's threads
            # stopping) waits until the next leader's job has started (tidy_up).
            leadership.aftermath = lambda: self._forget(session, carry=not lost)
        else:
            self._forget(session, carry=not lost)
            # A server that restarts or thaws gives the old session a whole timeout
            # again: delete our node (by its unique name) as soon as it answers.
            self.release_later(lambda budget: self._release(
                self._connected_session(), leadership, ending))

    def _connected_session(self) -> ZooKeeperSession:
        """A session that is connected now (a campaign's, else the shared one), without
        waiting for any."""
        with self._lock:
            live = [s for s in self._sessions if s.connected.is_set() and not s.closed]
        return live[0] if live else self._session(best_effort=True)

    def _closing_entry(self, leadership: ZooKeeperLeadership, ending: Ending,
                       slot: str | None) -> HistoryEntry:
        opened = leadership.entry or HistoryEntry(
            election=leadership.election, term=leadership.term, node_id=leadership.node_id,
            host=leadership.candidate.host, pid=leadership.candidate.pid, started=None,
        )
        return replace(opened, ended=time.time(), outcome=ending.outcome,
                       exit_status=ending.exit_status, reason=ending.reason, slot=slot)

    def _release(self, session: ZooKeeperSession, leadership: ZooKeeperLeadership,
                 ending: Ending) -> None:
        paths = leadership.paths
        done = ending.done_slot
        closed = self._closing_entry(leadership, ending, done)
        entry_path = paths.entry(leadership.term)
        node: str | None = leadership.node_path
        entry_open = True
        # An entry never written (the leadership never began, or was lost before it
        # could write it) is written closed.
        create = not leadership.entry_written
        slot = prune = None
        if done is not None:
            slot = (paths.slot(done), self._slot_record(session, entry_path, closed))
            prune = self._slots_to_prune(session, paths)
        forgetting = None
        for _ in range(RELEASE_TRIES):
            closing = (entry_path, closed if slot else replace(closed, slot=None))
            ops = release_ops(node, closing if entry_open else None, slot, prune or (),
                              create=create)
            if not ops:
                break
            committing = session.commit_async(ops)
            if forgetting is None and self._forgets_value(leadership, ending):
                # A look, right behind the release, answered in the same round trip; the
                # value is deleted only if there is one. Not a blind delete: a write,
                # even a failing one, is a transaction the server logs (fsync), and a
                # single server answers the next leader's first read only after it.
                forgetting = session.client.exists_async(paths.note(value_key(leadership.term)))
            failed = session.settle(committing, ops, timeout=RELEASE_PATIENCE)
            if failed is None:
                break
            if failed.op == Delete(leadership.node_path) and isinstance(failed.error, NoNodeError):
                node = slot = None  # not ours any more: only our own entry is left to close
            elif isinstance(failed.op, SetData):
                entry_open = False  # closed by the next leader (first writer wins), or never written
            elif isinstance(failed.op, Create) and failed.op.path == entry_path:
                if isinstance(failed.error, NodeExistsError):
                    create = False  # written after all: close it
                elif isinstance(failed.error, NoNodeError):
                    self._ask(session, "ensure_path", paths.history)  # the election's first
                else:
                    entry_open = False
            elif isinstance(failed.op, Create) and isinstance(failed.error, NoNodeError):
                self._ask(session, "ensure_path", paths.slots)  # the election's first slot
            elif isinstance(failed.op, Create):
                slot = None  # completed by somebody else already
            elif isinstance(failed.op, Delete) and isinstance(failed.error, NoNodeError):
                prune = tuple(path for path in prune or () if path != failed.op.path)
            else:
                log.warning("releasing %r: %s", leadership.election, type(failed.error).__name__)
                break
        if forgetting is not None:
            try:
                if forgetting.get(timeout=RELEASE_PATIENCE) is not None:
                    session.call("delete", paths.note(value_key(leadership.term)),
                                 timeout=RELEASE_PATIENCE)
                leadership.value_forgotten = True
            except NoNodeError:
                leadership.value_forgotten = True  # gone meanwhile
            except ZK_ERRORS:
                pass  # the campaign forgets it after the release

    @staticmethod
    def _forgets_value(leadership: ZooKeeperLeadership, ending: Ending) -> bool:
        """The release forgets this term's value itself (as Leadership.release would, after
        it): not for a lost leadership, which gets no last word but the release."""
        return (leadership.publishes_value and not leadership.value_forgotten
                and ending.outcome != LOST and not leadership.lease_over())

    def _await_records(self) -> None:
        """Before reading what a win of ours writes: wait until our wins are recorded."""
        for leadership in list(self.leaderships):
            if isinstance(leadership, ZooKeeperLeadership) and not leadership.released:
                leadership.await_record(self.config.connect_timeout)

    def _slot_record(self, session: ZooKeeperSession, entry_path: str, closed: HistoryEntry) -> bytes:
        """The completing leadership as the slot keeps it (started: its entry's ctime)."""
        try:
            stat = self._ask(session, "exists", entry_path)
        except ZK_ERRORS:
            stat = None
        started = closed.started if stat is None else stat.ctime / 1000.0
        return entry_data(replace(closed, started=started))

    def _slots_to_prune(self, session: ZooKeeperSession, paths: ElectionPaths) -> tuple[str, ...]:
        """The oldest slots beyond MAX_SLOTS (counting the one about to be added)."""
        try:
            children = self._ask(session, "get_children", paths.slots)
        except NoNodeError:
            return ()
        excess = len(children) + 1 - MAX_SLOTS
        if excess <= 0:
            return ()
        pending = [(child, session.client.exists_async(f"{paths.slots}/{child}"))
                   for child in children]
        made = []
        for child, result in pending:
            stat = result.get(timeout=self.config.connect_timeout)
            if stat is not None:
                made.append((stat.czxid, f"{paths.slots}/{child}"))
        return tuple(path for _, path in sorted(made)[:excess])

    def hand_back(self, leadership: Leadership) -> HandBack | None:
        """What the job's keeper needs to end our campaign session from a fresh
        connection if lelect dies: its id and password (so nothing it does can act in
        anybody else's session), our node, our entry and our member record."""
        if not isinstance(leadership, ZooKeeperLeadership):
            return None
        session = leadership.session
        client_id = session.client_id
        if client_id is None:
            return None
        session_id, password = client_id
        paths = leadership.paths
        return HandBack(
            budget=min(self.config.connect_timeout, leadership.session_timeout), election=leadership.election,
            module="lelect.backends.zookeeper.handback",
            params={
                "hosts": [list(host) for host in self.config.host_ports],
                "session_id": session_id,
                "password": password.hex(),
                "last_zxid": session.client.last_zxid,
                "timeout_ms": int(leadership.session_timeout * 1000),
                "auth": None if self.config.auth_scheme is None
                else [self.config.auth_scheme, self.config.auth_credential or ""],
                "node": leadership.node_path,
                "entry_path": paths.entry(leadership.term),
                "entry": None if leadership.entry is None else leadership.entry.encode(),
                "member": paths.member(leadership.node_id),
                # An entry lelect had no time to write is created with lelect's ACL.
                "acl": [[acl.perms, acl.id.scheme, acl.id.id] for acl in self.config.acl()],
                # Past the session timeout the session is gone anyway.
                "budget": min(self.config.connect_timeout, leadership.session_timeout),
            },
        )

    # -- who leads --------------------------------------------------------------

    def contender_info(self, session: ZooKeeperSession, paths: ElectionPaths, contender: Contender,
                       timeout: float) -> LeaderInfo | None:
        """``contender`` as a LeaderInfo (host and pid from lelect's member record; a
        kazoo contender has none); None if it left while we looked."""
        try:
            data, stat = session.call("get", paths.contender(contender.name), timeout=timeout)
        except NoNodeError:
            return None
        node_id = (data or b"").decode("utf-8", "replace")
        host = pid = None
        if node_id:
            try:
                record, _ = session.call("get", paths.member(node_id), timeout=timeout)
            except NoNodeError:
                record = None
            heartbeat = decode_member(node_id, record).heartbeat if record else None
            if heartbeat is not None:
                host, pid = heartbeat.host, heartbeat.pid
        return LeaderInfo(node_id=node_id, term=contender.seq, since=stat.ctime / 1000.0,
                          host=host, pid=pid)

    def _leader(self, session: ZooKeeperSession, paths: ElectionPaths) -> tuple[LeaderInfo, str] | None:
        """The leader and its node's name, or None."""
        try:
            children = self._ask(session, "get_children", paths.contenders)
        except NoNodeError:
            return None
        for contender in contenders(children):
            info = self.contender_info(session, paths, contender, self.config.connect_timeout)
            if info is not None:  # else it left while we looked: the next one leads
                return info, contender.name
        return None

    def leader(self, election: str) -> LeaderInfo | None:
        paths = self.paths(election)
        session = self._session()
        with session.errors(f"reading the leader of {election!r}", paths.contenders):
            found = self._leader(session, paths)
        return None if found is None else found[0]

    def observe(
        self, election: str, stop: threading.Event | None = None
    ) -> Iterator[LeaderInfo | None]:
        """Yield the leader now and on every change, woken by watches. Watches only the
        leader's node (or the empty election), so joining waiters do not wake it."""
        paths = self.paths(election)
        stop = stop or threading.Event()
        session = self._shared_session(observing=True)  # its watches outlive a campaign
        changed = threading.Event()

        def wake(_: Any = None) -> None:
            changed.set()

        def looks() -> Iterator[LeaderInfo | None]:
            while not stop.is_set():
                changed.clear()
                with session.errors(f"watching the leader of {election!r}", paths.contenders):
                    try:
                        info = self._watch_leader(session, paths, wake)
                    except (*TRANSIENT, SessionExpiredError) as no_answer:
                        # Wait out a reconnection (kazoo starts a new session by itself).
                        if isinstance(no_answer, ConnectionClosedError) or \
                                not session.wait_connected(self.config.connect_timeout):
                            raise
                        continue
                yield info
                changed.wait()

        done = threading.Event()
        threading.Thread(target=_relay_stop, args=(stop, changed, done),
                         name=f"zk-observe-{election}", daemon=True).start()
        session.add_listener(wake)
        try:
            yield from only_changes(looks())
        finally:
            done.set()
            session.remove_listener(wake)
            self._unobserve(session)

    def _watch_leader(self, session: ZooKeeperSession, paths: ElectionPaths, wake: Any
                      ) -> LeaderInfo | None:
        found = self._leader(session, paths)
        if found is None:
            # Nobody leads: wake on the first contender (or on the election's creation).
            try:
                if self._ask(session, "get_children", paths.contenders, watch=wake):
                    wake()
            except NoNodeError:
                if self._ask(session, "exists", paths.contenders, watch=wake) is not None:
                    wake()
            return None
        info, name = found
        # Sequence numbers only grow, so the leader changes only when its node goes.
        if self._ask(session, "exists", paths.contender(name), watch=wake) is None:
            wake()
        return info

    def request_resign(self, election: str, term: int | None = None) -> ResignAnswer:
        current = self.leader(election)
        if current is None or (term is not None and current.term != term):
            return ResignAnswer.NOT_LEADING
        paths = self.paths(election)
        path = paths.resign
        request = resign_request(current.term)
        self._await_records()
        session = self._session()
        with session.errors(f"asking the leader of {election!r} to resign", path):
            # lelect records each of its leaderships as it wins; a kazoo Election leader
            # has no record and reads no request.
            if current.host is None and self._ask(session, "exists", paths.entry(current.term)) is None:
                return ResignAnswer.CANNOT_ASK
            try:
                self._ask(session, "create", path, request, makepath=True)
            except NodeExistsError:
                self._ask(session, "set", path, request)
        return ResignAnswer.ASKED

    # -- heartbeats -------------------------------------------------------------

    def publish(self, heartbeat: Heartbeat, ttl: float) -> None:
        """Write the heartbeat with the arrival stamps so far: each earlier write's
        stamp is the mtime it left on the node, read back before this write."""
        path = self.paths(heartbeat.election).member(heartbeat.node_id)
        session = self._session(best_effort=True)
        with session.errors(f"publishing a heartbeat for {heartbeat.election!r}", path):
            for _ in range(5):
                try:
                    data, stat = self._ask(session, "get", path)
                except NoNodeError:
                    try:
                        self._ask(session, "create", path, encode_member(heartbeat, (), ttl),
                                  makepath=True)
                        return
                    except NodeExistsError:
                        continue
                # The arrival being written now is stamped by its own mtime, read later.
                earlier = [*stored_arrivals(data), stat.mtime / 1000.0][-(MAX_ARRIVALS - 1):]
                try:
                    self._ask(session, "set", path, encode_member(heartbeat, earlier, ttl),
                              version=stat.version)
                    return
                except (BadVersionError, NoNodeError):
                    continue  # another writer of the same node id got there first
        raise BackendUnavailable(f"could not publish a heartbeat to {path}: too many concurrent writers")

    def remove_member(self, election: str, node_id: str) -> None:
        path = self.paths(election).member(node_id)
        session = self._session(best_effort=True)
        with session.errors(f"removing member {node_id!r}", path):
            try:
                self._ask(session, "delete", path)
            except NoNodeError:
                pass

    def members(self, election: str) -> Members:
        path = self.paths(election).members
        session = self._session()
        with session.errors(f"reading the members of {election!r}", path):
            try:
                children = self._ask(session, "get_children", path)
            except NoNodeError:
                children = []
            pending = [(child, session.client.get_async(f"{path}/{child}")) for child in children]
            read = []
            for child, result in pending:
                try:
                    data, stat = result.get(timeout=self.config.connect_timeout)
                except NoNodeError:
                    continue
                record = decode_member(from_znode_name(child), data, [stat.mtime / 1000.0])
                read.append((child, stat.version, record))
            now = self._server_now(session)  # after the reads: no arrival is newer than now
            records = []
            for child, version, record in read:
                if now - record.arrivals[-1] > record.forget_after:
                    self._forget_member(session, f"{path}/{child}", version)
                else:
                    records.append(record)
        return Members(election, now, tuple(sorted(records, key=lambda r: r.node_id)))

    def _forget_member(self, session: ZooKeeperSession, path: str, version: int) -> None:
        try:
            self._ask(session, "delete", path, version=version)
        except ZK_ERRORS:
            pass  # written again meanwhile, gone, or not ours to delete

    def elections(self) -> list[str]:
        base = self.config.path
        session = self._session()
        names: set[str] = set()
        with session.errors("listing elections", base):
            for parent in (base, f"{base}/_members", f"{base}/_history"):
                try:
                    children = self._ask(session, "get_children", parent)
                except NoNodeError:
                    continue
                pending = [
                    (child, session.client.exists_async(f"{parent}/{child}"))
                    for child in children
                    if ELECTION_NAME.fullmatch(child)
                ]
                for child, result in pending:
                    stat = result.get(timeout=self.config.connect_timeout)
                    if stat is not None and stat.numChildren > 0:
                        names.add(child)
        return sorted(names)

    # -- notes ------------------------------------------------------------------

    def put_note(self, election: str, key: str, data: bytes, ttl: float | None = None, *,
                 create: bool = False) -> bool:
        """Create the node, or set it: with ``create`` only at the version read when the
        note there has expired (by the server's clock)."""
        path = self.paths(election).note(check_note_key(key))
        stored = StoredNote.of(check_note(data), ttl).encode()
        session = self._session()
        with session.errors(f"writing note {key!r} of {election!r}", path):
            for _ in range(NOTE_TRIES):
                try:
                    self._ask(session, "create", path, stored, makepath=True)
                    return True
                except NodeExistsError:
                    pass
                try:
                    version = ANY_VERSION
                    if create:
                        raw, stat = self._ask(session, "get", path)
                        if self._live_note(session, raw, stat) is not None:
                            return False
                        version = stat.version
                    self._ask(session, "set", path, stored, version=version)
                    return True
                except (NoNodeError, BadVersionError):
                    continue  # deleted or written meanwhile: look again
        raise BackendUnavailable(f"could not write note {path}: too many concurrent writers")

    def get_note(self, election: str, key: str) -> bytes | None:
        path = self.paths(election).note(check_note_key(key))
        session = self._session()
        with session.errors(f"reading note {key!r} of {election!r}", path):
            try:
                raw, stat = self._ask(session, "get", path)
            except NoNodeError:
                return None
            return self._live_note(session, raw, stat)

    def _live_note(self, session: ZooKeeperSession, raw: bytes | None, stat: Any) -> bytes | None:
        """A note node's bytes if they are a live note of at most MAX_NOTE bytes."""
        note = StoredNote.decode(raw or b"")
        if note is None or len(note.data) > MAX_NOTE:
            return None
        if note.ttl_ms is not None and not note.live(stat.mtime, self._note_now(session)):
            return None
        return note.data

    def _note_now(self, session: ZooKeeperSession) -> float:
        """The server's clock for a note's ttl: a touch of the clock node at most
        :data:`NOTE_CLOCK_REUSE` old, carried forward by the local monotonic clock (so a
        candidate's refresh of its --holders note every few seconds writes no clock
        node). It runs behind the server by at most one round trip: a note is judged
        live that much longer, never shorter."""
        sample = session.clock_sample
        now = time.monotonic()
        if sample is not None and now - sample[1] < NOTE_CLOCK_REUSE:
            return now + sample[0]
        server = self._server_now(session)
        if session.clock_sample is not sample:
            return server  # (the local clock, stored as such: this client may not touch it)
        answered = time.monotonic()
        session.clock_sample = (server - answered, answered)
        return server

    def delete_note(self, election: str, key: str) -> None:
        path = self.paths(election).note(check_note_key(key))
        session = self._session()
        with session.errors(f"deleting note {key!r} of {election!r}", path):
            try:
                self._ask(session, "delete", path)
            except NoNodeError:
                pass

    # -- the agreement on --holders (kept by the sessions: .holders) -----------------

    def claim_holders(self, election: str, holders: int) -> int | None:
        return self._holders.claim(election, holders)

    def holders_agreed(self, election: str) -> int | None:
        return self._holders.agreed(election)

    # -- operations -------------------------------------------------------------

    def history(self, election: str, limit: int | None = None) -> list[HistoryEntry]:
        """Oldest first; times from each entry's znode (ctime: started, mtime: ended)."""
        path = self.paths(election).history
        self._await_records()
        session = self._session()
        with session.errors(f"reading the history of {election!r}", path):
            try:
                names = history_terms(self._ask(session, "get_children", path))
            except NoNodeError:
                return []
            if limit is not None:
                names = names[-limit:] if limit > 0 else []
            pending = [session.client.get_async(f"{path}/{name}") for name in names]
            entries = []
            for result in pending:
                try:
                    data, stat = result.get(timeout=self.config.connect_timeout)
                    entry = HistoryEntry.decode(data or b"", election)
                except (NoNodeError, ValueError):
                    continue  # pruned while we read, or garbage
                ended = None if entry.outcome == RUNNING else stat.mtime / 1000.0
                entries.append(replace(entry, started=stat.ctime / 1000.0, ended=ended))
        return entries

    def slot_done(self, election: str, slot: str) -> HistoryEntry | None:
        path = self.paths(election).slot(slot)
        session = self._session()
        with session.errors(f"reading once-per slot {slot!r} of {election!r}", path):
            try:
                data, stat = self._ask(session, "get", path)
            except NoNodeError:
                return None
        try:
            entry = HistoryEntry.decode(data or b"")
        except ValueError:
            return None
        return replace(entry, ended=stat.ctime / 1000.0)

    def now(self) -> float:
        session = self._session()
        with session.errors("reading the server's clock", clock_path(self.config.path)):
            return self._server_now(session)

    def _server_now(self, session: ZooKeeperSession) -> float:
        """The server's clock: the mtime a touch of ``<path>/_clock`` leaves. Falls back
        to the local clock only if this client may not touch it."""
        path = clock_path(self.config.path)
        try:
            try:
                stat = self._ask(session, "set", path, b"")
            except NoNodeError:
                # The parents first, with lelect's ACL: makepath would give them the
                # clock's, which lets anybody write.
                self._ask(session, "ensure_path", self.config.path)
                try:
                    self._ask(session, "create", path, b"", acl=self.config.clock_acl(),
                              makepath=True)
                except NodeExistsError:
                    pass
                stat = self._ask(session, "set", path, b"")
        except NoAuthError:
            log.debug("may not touch %s: judging ages by the local clock", path)
            session.clock_sample = (time.time() - time.monotonic(), time.monotonic())
            return time.time()
        return stat.mtime / 1000.0


def _relay_stop(stop: threading.Event, changed: threading.Event, done: threading.Event) -> None:
    """Wake an observer the moment ``stop`` is set; end once the observer has ended
    (looked at once a second: only this thread's own end waits for it)."""
    while not stop.wait(1.0):
        if done.is_set():
            return
    changed.set()

