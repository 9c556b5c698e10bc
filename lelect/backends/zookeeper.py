"""ZooKeeper backend (kazoo), laid out exactly as kazoo's Lock/Election recipe.

``<path>/NAME`` holds nothing but contender nodes ``<uuid4 hex>__lock__<seq>``
(ephemeral, sequential, the node id as data). The lowest sequence leads, each waiter
watches only its predecessor, and the leader's sequence number is the term. So
``KazooClient(...).Election("/lelect/NAME", "id")`` contends in the same election as
``lelect campaign NAME``. lelect's own records live beside it:

- ``<path>/_members/NAME/<node id>``: heartbeats; the znode mtime is the arrival stamp
- ``<path>/_resign/NAME``: a request that the leader of a given term step down
- ``<path>/_clock``: a scratch node whose mtime tells the server's current time

A leadership has a ZooKeeper session of its own. The server expires a session the
*granted* session timeout after it last heard from the client, so the lease deadline
counts from the send time of the last answered request: a guard thread sends a timed
probe every ``renew_interval`` and marks the leadership lost when the session is lost,
our node is gone, or the deadline passes without an answer.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    SessionExpiredError,
)

from lelect.backends._zk_session import (
    TRANSIENT,
    ZK_ERRORS,
    Session,
    ZooKeeperConfig,
    check_session_timeout,
    log,
)
from lelect.backends.base import (
    MAX_ARRIVALS,
    Backend,
    Candidate,
    Heartbeat,
    LeaderInfo,
    Leadership,
    MemberRecord,
    Members,
    lease_drift,
)
from lelect.durations import format_duration
from lelect.errors import BackendUnavailable, CampaignTimeout, ConfigError, ElectionBusy, UsageError
from lelect.names import ELECTION_NAME, validate_election

if TYPE_CHECKING:
    from lelect.backends.urls import BackendURL

#: kazoo's contender node name: ``<uuid4 hex>__lock__<10-digit sequence>``.
CONTENDER_MARK = "__lock__"
_CONTENDER = re.compile(r"__lock__(-?\d{10})$")
#: How long a record nobody can read stays listed (a readable one says its own).
DEFAULT_FORGET_AFTER = 3600.0


@dataclass(frozen=True, order=True)
class Contender:
    """One node under ``<path>/NAME``, ordered as kazoo orders them."""

    seq: int
    name: str


def contenders(children: list[str]) -> list[Contender]:
    """The contender nodes among ``children``, lowest (the leader) first."""
    found = []
    for child in children:
        match = _CONTENDER.search(child)
        if match:
            found.append(Contender(int(match.group(1)), child))
    return sorted(found)


class _Reconnect(Exception):
    """A call got no answer (connection lost or timed out): wait for the session."""


class _Recreate(Exception):
    """``<path>/NAME`` itself was deleted (by hand): create it and queue again."""


class ZooKeeperLeadership(Leadership):
    """A won election: our contender node, in a session of its own."""

    def __init__(
        self,
        backend: ZooKeeperBackend,
        election: str,
        candidate: Candidate,
        contender: Contender,
        *,
        session: Session,
        node_path: str,
        resign_path: str,
        lease_deadline: float,
    ) -> None:
        super().__init__(
            backend, election, candidate, contender.seq, contender.name, lease_deadline
        )
        self.session = session
        self.node_path = node_path
        #: The session timeout the server granted: the lease length.
        self.session_timeout = session.granted or session.requested
        self.guard = _LeaseGuard(self, resign_path, backend.renew_interval(self.session_timeout))


class _LeaseGuard:
    """Keeps a leadership's lease deadline current and notices when it is gone.

    Watch and state callbacks run on kazoo's threads and only set flags; this thread
    makes the calls, each with a timeout shorter than the lease left.
    """

    def __init__(self, leadership: ZooKeeperLeadership, resign_path: str, interval: float) -> None:
        self.leadership = leadership
        self.session = leadership.session
        self.resign_path = resign_path
        self.interval = interval
        self.wake = threading.Event()
        self.stopped = threading.Event()
        # Probe at once: its exists() sets the watch on our own node, so a deletion in
        # the first renew interval is noticed at once too, not at the first renew.
        self.probe_now = True
        self.check_resign = True  # a request may predate our watch
        self.thread = threading.Thread(
            target=self._run, name=f"zk-lease-{leadership.election}", daemon=True
        )

    def start(self) -> None:
        self.session.add_listener(self._on_state)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.session.remove_listener(self._on_state)
        self.wake.set()

    # -- kazoo's threads --------------------------------------------------------

    def _on_state(self, state: str) -> None:
        if state == "LOST":
            self.leadership.mark_lost("the ZooKeeper session expired")
        elif state == "CONNECTED":
            # Reconnected within the session: watches are gone, the lease is not.
            self.probe_now = self.check_resign = True
        self.wake.set()

    def _on_node(self, event: Any) -> None:
        if event.type == "DELETED":
            self.leadership.mark_lost(f"our contender node {event.path} was deleted")
        self.wake.set()

    def _on_resign(self, event: Any) -> None:
        if event.type != "NONE":
            self.check_resign = True
        self.wake.set()

    # -- the guard's thread -----------------------------------------------------

    def _run(self) -> None:
        leadership = self.leadership
        next_probe = time.monotonic() + self.interval
        while not self.stopped.is_set() and not leadership.lost.is_set():
            now = time.monotonic()
            deadline = leadership.lease_deadline or now
            if now >= deadline:
                leadership.mark_lost(
                    "no answer from ZooKeeper before the lease ran out"
                    f" ({format_duration(leadership.session_timeout)} session)"
                )
                return
            if self.check_resign:
                self.check_resign = False
                self._look_for_resign(deadline)
            if now >= next_probe or self.probe_now:
                self.probe_now = False
                next_probe = now + self.interval
                self._probe(deadline)
            self.wake.wait(max(0.0, min(next_probe, leadership.lease_deadline or 0) - time.monotonic()))
            self.wake.clear()

    def _ask(self, method: str, *args: Any, deadline: float, **kwargs: Any) -> Any:
        timeout = min(self.interval, deadline - time.monotonic())
        return self.session.call(method, *args, timeout=timeout, **kwargs)

    def _probe(self, deadline: float) -> None:
        """An answered request proves the server heard from us at its send time."""
        leadership = self.leadership
        sent = time.monotonic()
        try:
            stat = self._ask("exists", leadership.node_path, watch=self._on_node, deadline=deadline)
        except (*TRANSIENT, SessionExpiredError):
            return  # no answer is no renew; the deadline stands
        except KazooException as exc:
            log.warning("lease probe for %r failed: %s", leadership.election, type(exc).__name__)
            return
        if self.stopped.is_set():
            return
        if stat is None:
            leadership.mark_lost(f"our contender node {leadership.node_path} is gone")
            return
        granted = self.session.granted or leadership.session_timeout
        renewed = sent + granted - lease_drift(granted)
        if renewed > (leadership.lease_deadline or 0):
            leadership.set_deadline(renewed)

    def _look_for_resign(self, deadline: float) -> None:
        """Honour ``<path>/_resign/NAME`` if it names our term; keep a watch on it."""
        leadership = self.leadership
        try:
            stat = self._ask("exists", self.resign_path, watch=self._on_resign, deadline=deadline)
            if stat is None:
                return
            data, stat = self._ask("get", self.resign_path, deadline=deadline)
        except NoNodeError:
            return
        except (*TRANSIENT, SessionExpiredError):
            self.check_resign = True  # look again once there is an answer
            return
        except KazooException as exc:
            log.warning("reading the resign request failed: %s", type(exc).__name__)
            return
        term = _resign_term(data)
        if term == leadership.term:
            leadership.mark_resign_requested()
        if term is None or term <= leadership.term:
            # Honoured or stale: nobody else will ever act on it.
            try:
                self._ask("delete", self.resign_path, version=stat.version, deadline=deadline)
            except ZK_ERRORS:
                pass


def _resign_term(data: bytes | None) -> int | None:
    try:
        return int(json.loads((data or b"").decode("utf-8"))["term"])
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return None


class _Contest:
    """One candidate's way to the front of ``<path>/NAME``, as kazoo's Lock does it."""

    def __init__(
        self,
        backend: ZooKeeperBackend,
        session: Session,
        election: str,
        candidate: Candidate,
        give_up: float | None,
        no_wait: bool,
        timeout: float | None = None,
    ) -> None:
        self.backend = backend
        self.session = session
        self.election = election
        self.path = backend.election_path(election)
        self.candidate = candidate
        self.give_up = give_up
        self.timeout = timeout
        self.no_wait = no_wait
        # kazoo's trick: after a connection loss during create, the prefix is how we
        # find our own node instead of queueing behind it.
        self.prefix = uuid.uuid4().hex + CONTENDER_MARK
        self.node: str | None = None
        self.create_tried = False
        self.wake = threading.Event()

    def run(self) -> ZooKeeperLeadership:
        self.session.add_listener(self._on_state)
        try:
            while True:
                try:
                    with self.session.errors(f"campaigning for {self.election!r}", self.path):
                        leadership = self._step()
                except _Reconnect:
                    self._await_connection()
                    continue
                except _Recreate:
                    log.warning("%s was deleted while campaigning; creating it again", self.path)
                    self.node, self.create_tried = None, False
                    continue
                if leadership is not None:
                    return leadership
        except BaseException:
            self._withdraw()
            raise
        finally:
            self.session.remove_listener(self._on_state)

    def _on_state(self, state: str) -> None:
        self.wake.set()

    def _on_predecessor(self, event: Any) -> None:
        self.wake.set()

    def _left(self) -> float | None:
        if self.give_up is None:
            return None
        left = self.give_up - time.monotonic()
        if left <= 0:
            raise CampaignTimeout(
                f"not elected leader of {self.election!r} within"
                f" {format_duration(self.timeout or 0.0)}"
            )
        return left

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        left = self._left()
        patience = self.session.granted or self.session.requested
        timeout = patience if left is None else min(left, patience)
        try:
            return self.session.call(method, *args, timeout=timeout, **kwargs)
        except ConnectionClosedError:
            raise
        except (*TRANSIENT, SessionExpiredError):
            raise _Reconnect from None
        except NoNodeError as missing:
            if method in ("get_children", "create"):
                raise _Recreate from missing
            raise

    def _await_connection(self) -> None:
        if self.session.closed:
            raise BackendUnavailable("the ZooKeeper session was closed while campaigning")
        if self.session.connected.is_set():
            self._left()
            return
        log.warning(
            "lost the connection to ZooKeeper at %s while waiting for %r; reconnecting",
            self.session.config.hosts,
            self.election,
        )
        if not self.session.wait_connected(self._left()):
            if self.session.closed:
                raise BackendUnavailable("the ZooKeeper session was closed while campaigning")
            self._left()

    def _step(self) -> ZooKeeperLeadership | None:
        """One look at the queue: win, or watch the predecessor and wait. None: look again."""
        if self.node is None:
            if not self.create_tried:
                self._call("ensure_path", self.path)
                if self.no_wait:
                    self._refuse_if_led(contenders(self._call("get_children", self.path)))
            self.node = self._enter()
        self.wake.clear()
        sent = time.monotonic()
        queue = contenders(self._call("get_children", self.path))
        mine = next((c for c in queue if c.name == self.node), None)
        if mine is None:  # our session expired and took our node with it
            self.node = None
            return None
        ahead = [c for c in queue if c.seq < mine.seq]
        if not ahead:
            return self._won(mine, sent)
        if self.no_wait:
            self._refuse_if_led(ahead)
        predecessor = ahead[-1]
        if self._call("exists", f"{self.path}/{predecessor.name}", watch=self._on_predecessor) is None:
            return None
        log.debug("%s waits behind %s", self.node, predecessor.name)
        if not self.wake.wait(self._left()):
            self._left()
        log.debug("%s woke: looking at the queue again", self.node)
        return None

    def _enter(self) -> str:
        if self.create_tried:
            mine = [c for c in self._call("get_children", self.path) if c.startswith(self.prefix)]
            if mine:
                return mine[0]
        self.create_tried = True
        created = self._call(
            "create",
            f"{self.path}/{self.prefix}",
            self.candidate.node_id.encode("utf-8"),
            ephemeral=True,
            sequence=True,
        )
        return created.rsplit("/", 1)[1]

    def _refuse_if_led(self, queue: list[Contender]) -> None:
        for contender in queue:
            if contender.name == self.node:
                continue
            try:
                data, _ = self._call("get", f"{self.path}/{contender.name}")
            except NoNodeError:
                continue
            raise ElectionBusy(
                f"{self.election!r} is led by {(data or b'').decode('utf-8', 'replace')!r}"
                f" (term {contender.seq})"
            )

    def _won(self, mine: Contender, sent: float) -> ZooKeeperLeadership:
        granted = self.session.granted or self.session.requested
        if time.monotonic() - sent > granted / 3:
            # The answer that made us leader came late (it was queued over a reconnect):
            # a lease counted from its send time would be nearly spent. Prove the session
            # afresh so the job does not start only to be stopped at once.
            sent = time.monotonic()
            if self._call("exists", f"{self.path}/{mine.name}") is None:
                raise _Reconnect
        leadership = ZooKeeperLeadership(
            self.backend,
            self.election,
            self.candidate,
            mine,
            session=self.session,
            node_path=f"{self.path}/{mine.name}",
            resign_path=self.backend.resign_path(self.election),
            lease_deadline=sent + granted - lease_drift(granted),
        )
        leadership.guard.start()
        log.debug("%s leads %r (term %d)", mine.name, self.election, mine.seq)
        return leadership

    def _withdraw(self) -> None:
        """Leave no contender node behind (closing the session would remove it too)."""
        if self.node is None or not self.session.connected.is_set():
            return
        try:
            self.session.call("delete", f"{self.path}/{self.node}", timeout=1.0)
        except ZK_ERRORS:
            pass


class ZooKeeperBackend(Backend):
    """Elections in ZooKeeper, shared with kazoo's Election recipe."""

    scheme = "zookeeper"
    lease_based = True

    def __init__(self, url: BackendURL) -> None:
        super().__init__(url)
        self.config = ZooKeeperConfig.from_url(url)
        #: The session timeout asked for when ``campaign`` is given no ttl.
        self.ttl = self.default_ttl = self.config.session_timeout
        self._lock = threading.Lock()
        self._shared: Session | None = None
        self._campaign_sessions: set[Session] = set()

    # -- paths ------------------------------------------------------------------

    def election_path(self, election: str) -> str:
        return f"{self.config.path}/{validate_election(election)}"

    def members_path(self, election: str) -> str:
        return f"{self.config.path}/_members/{validate_election(election)}"

    def member_path(self, election: str, node_id: str) -> str:
        return f"{self.members_path(election)}/{_member_name(node_id)}"

    def resign_path(self, election: str) -> str:
        return f"{self.config.path}/_resign/{validate_election(election)}"

    @property
    def clock_path(self) -> str:
        return f"{self.config.path}/_clock"

    # -- sessions ---------------------------------------------------------------

    def _session(self) -> Session:
        """The session for everything but campaigns (leader, observe, heartbeats)."""
        with self._lock:
            if self._shared is None or self._shared.closed:
                session = Session(self.config, self.config.session_timeout)
                try:
                    session.start(self.config.connect_timeout)
                except BaseException:
                    session.close()
                    raise
                self._shared = session
            return self._shared

    def _ask(self, session: Session, method: str, *args: Any, **kwargs: Any) -> Any:
        return session.call(method, *args, timeout=self.config.connect_timeout, **kwargs)

    def _connected_session(self, doing: str) -> Session:
        """For best-effort writes (heartbeats): while the connection is down they fail at
        once instead of waiting for it; a beat that cannot arrive is a missed beat."""
        session = self._session()
        if not session.connected.is_set():
            raise BackendUnavailable(f"not connected to ZooKeeper at {self.config.hosts}: {doing} skipped")
        return session

    # -- operations (stubs until the history lands) --------------------------------

    def history(self, election, limit=None):
        return []

    def slot_done(self, election, slot):
        return None

    def now(self) -> float:
        import time as _time

        return _time.time()

    def close(self) -> None:
        with self._lock:
            sessions = [*self._campaign_sessions, *([self._shared] if self._shared else [])]
            self._campaign_sessions.clear()
            self._shared = None
        for session in sessions:
            session.close()

    # -- campaign / resign ------------------------------------------------------

    def campaign(
        self,
        election: str,
        candidate: Candidate,
        *,
        timeout: float | None = None,
        no_wait: bool = False,
        ttl: float | None = None,
        on_wait=None,
    ) -> Leadership:
        validate_election(election)
        give_up = None if timeout is None else time.monotonic() + timeout
        requested = self.ttl if ttl is None else ttl
        if requested <= 0:
            raise UsageError("the session timeout (--ttl) must be longer than 0")
        check_session_timeout(requested, "the session timeout (--ttl)")
        connect_within = self.config.connect_timeout
        if timeout is not None:
            connect_within = min(connect_within, timeout)
        session = Session(self.config, requested)
        try:
            session.start(connect_within)
            self._check_granted(session, requested)
            with self._lock:
                self._campaign_sessions.add(session)
            return _Contest(self, session, election, candidate, give_up, no_wait, timeout).run()
        except BaseException:
            self._forget(session)
            raise

    def _check_granted(self, session: Session, requested: float) -> None:
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

    def _forget(self, session: Session) -> None:
        with self._lock:
            self._campaign_sessions.discard(session)
        session.close()

    def resign(self, leadership: Leadership) -> None:
        """Delete our node at once (the next waiter's watch fires), then end the session."""
        if not isinstance(leadership, ZooKeeperLeadership):
            raise TypeError(f"not a ZooKeeper leadership: {leadership!r}")
        leadership.guard.stop()
        session = leadership.session
        if session.connected.is_set():
            try:
                session.call("delete", leadership.node_path, timeout=min(1.0, leadership.session_timeout / 3))
            except ZK_ERRORS:
                pass  # gone already, or no answer: closing the session removes it too
        self._forget(session)

    # -- who leads --------------------------------------------------------------

    def _front(
        self, session: Session, path: str
    ) -> tuple[Contender, str, float] | None:
        """The leading contender, its node id and creation time; None if nobody leads."""
        try:
            children = self._ask(session, "get_children", path)
        except NoNodeError:
            return None
        for contender in contenders(children):
            try:
                data, stat = self._ask(session, "get", f"{path}/{contender.name}")
            except NoNodeError:
                continue  # it left while we looked: the next one leads
            return contender, (data or b"").decode("utf-8", "replace"), stat.ctime / 1000.0
        return None

    def _leader_info(self, session: Session, election: str, path: str) -> tuple[LeaderInfo, str] | None:
        front = self._front(session, path)
        if front is None:
            return None
        contender, node_id, since = front
        host, pid = self._host_and_pid(session, election, node_id)
        info = LeaderInfo(node_id=node_id, term=contender.seq, since=since, host=host, pid=pid)
        return info, contender.name

    def _host_and_pid(self, session: Session, election: str, node_id: str) -> tuple[str | None, int | None]:
        """From lelect's member record; a kazoo contender has none."""
        if not node_id:
            return None, None
        try:
            data, _ = self._ask(session, "get", self.member_path(election, node_id))
            heartbeat = Heartbeat.from_dict(json.loads(data.decode("utf-8"))["heartbeat"])
        except NoNodeError:
            return None, None
        except (ValueError, TypeError, KeyError, AttributeError):
            return None, None
        return heartbeat.host, heartbeat.pid

    def leader(self, election: str) -> LeaderInfo | None:
        path = self.election_path(election)
        session = self._session()
        with session.errors(f"reading the leader of {election!r}", path):
            found = self._leader_info(session, election, path)
        return None if found is None else found[0]

    def observe(
        self, election: str, stop: threading.Event | None = None
    ) -> Iterator[LeaderInfo | None]:
        """Yield the leader now and on every change. Watches only the leader's node (or
        the empty election), so joining waiters do not wake an observer."""
        path = self.election_path(election)
        stop = stop or threading.Event()
        session = self._session()
        changed = threading.Event()

        def wake(_: Any = None) -> None:
            changed.set()

        session.add_listener(wake)
        last: object = object()
        try:
            while not stop.is_set():
                changed.clear()
                with session.errors(f"watching the leader of {election!r}", path):
                    try:
                        info = self._watch_leader(session, election, path, wake)
                    except (*TRANSIENT, SessionExpiredError) as no_answer:
                        # Wait out a reconnection (kazoo starts a new session by itself).
                        if isinstance(no_answer, ConnectionClosedError) or not session.wait_connected(
                            self.config.connect_timeout
                        ):
                            raise
                        continue
                key = None if info is None else (info.node_id, info.term)
                if key != last:
                    last = key
                    yield info
                while not stop.is_set() and not changed.wait(0.2):
                    pass  # a local wait, so that ``stop`` is honoured
        finally:
            session.remove_listener(wake)

    def _watch_leader(self, session: Session, election: str, path: str, wake: Any) -> LeaderInfo | None:
        found = self._leader_info(session, election, path)
        if found is None:
            # Nobody leads: wake on the first contender (or on the election's creation).
            try:
                if self._ask(session, "get_children", path, watch=wake):
                    wake()
            except NoNodeError:
                if self._ask(session, "exists", path, watch=wake) is not None:
                    wake()
            return None
        info, name = found
        # Sequence numbers only grow, so the leader changes only when its node goes.
        if self._ask(session, "exists", f"{path}/{name}", watch=wake) is None:
            wake()
        return info

    def request_resign(self, election: str, term: int | None = None) -> bool:
        current = self.leader(election)
        if current is None or (term is not None and current.term != term):
            return False
        path = self.resign_path(election)
        request = json.dumps({"term": current.term, "time": time.time()}).encode()
        session = self._session()
        with session.errors(f"asking the leader of {election!r} to resign", path):
            try:
                self._ask(session, "create", path, request, makepath=True)
            except NodeExistsError:
                self._ask(session, "set", path, request)
        return True

    # -- heartbeats -------------------------------------------------------------

    def publish(self, heartbeat: Heartbeat, ttl: float) -> None:
        """Write the heartbeat with the arrival stamps so far: each earlier write's
        stamp is the mtime it left on the node, read back before this write."""
        path = self.member_path(heartbeat.election, heartbeat.node_id)
        session = self._connected_session("heartbeat")
        with session.errors(f"publishing a heartbeat for {heartbeat.election!r}", path):
            for _ in range(5):
                try:
                    data, stat = self._ask(session, "get", path)
                except NoNodeError:
                    try:
                        self._ask(session, "create", path, _member_record(heartbeat, [], ttl), makepath=True)
                        return
                    except NodeExistsError:
                        continue
                earlier = [*_stored_arrivals(data), stat.mtime / 1000.0][-(MAX_ARRIVALS - 1):]
                try:
                    self._ask(session, "set", path, _member_record(heartbeat, earlier, ttl), version=stat.version)
                    return
                except (BadVersionError, NoNodeError):
                    continue  # another writer of the same node id got there first
        raise BackendUnavailable(f"could not publish a heartbeat to {path}: too many concurrent writers")

    def remove_member(self, election: str, node_id: str) -> None:
        path = self.member_path(election, node_id)
        session = self._connected_session("removing the member record")
        with session.errors(f"removing member {node_id!r}", path):
            try:
                self._ask(session, "delete", path)
            except NoNodeError:
                pass

    def members(self, election: str) -> Members:
        path = self.members_path(election)
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
                read.append((child, stat.version, *_read_member(unquote(child), data, stat.mtime / 1000.0)))
            now = self._server_now(session)  # after the reads: no arrival is newer than now
            records = []
            for child, version, record, forget_after in read:
                if now - record.arrivals[-1] > forget_after:
                    self._forget_member(session, f"{path}/{child}", version)
                else:
                    records.append(record)
        return Members(election, now, tuple(sorted(records, key=lambda r: r.node_id)))

    def _forget_member(self, session: Session, path: str, version: int) -> None:
        try:
            self._ask(session, "delete", path, version=version)
        except ZK_ERRORS:
            pass  # written again meanwhile, gone, or not ours to delete

    def _server_now(self, session: Session) -> float:
        """The server's clock: the mtime a touch of ``<path>/_clock`` leaves. Falls back
        to the local clock only if this client may not touch it."""
        try:
            try:
                stat = self._ask(session, "set", self.clock_path, b"")
            except NoNodeError:
                try:
                    self._ask(
                        session, "create", self.clock_path, b"", acl=self.config.clock_acl(), makepath=True
                    )
                except NodeExistsError:
                    pass
                stat = self._ask(session, "set", self.clock_path, b"")
        except NoAuthError:
            log.debug("may not touch %s: judging ages by the local clock", self.clock_path)
            return time.time()
        return stat.mtime / 1000.0

    def elections(self) -> list[str]:
        base = self.config.path
        session = self._session()
        names: set[str] = set()
        with session.errors("listing elections", base):
            for parent in (base, f"{base}/_members"):
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


# -- member records -------------------------------------------------------------


def _member_name(node_id: str) -> str:
    """A node id as one znode name ('/' and friends quoted; '.' and '..' are reserved)."""
    if not node_id:
        raise UsageError("a node id must not be empty")
    name = quote(node_id, safe=":@")
    return name.replace(".", "%2E") if name in (".", "..") else name


def _member_record(heartbeat: Heartbeat, arrivals: list[float], forget_after: float) -> bytes:
    record = {"heartbeat": heartbeat.to_dict(), "arrivals": arrivals, "forget_after": forget_after}
    return json.dumps(record, separators=(",", ":")).encode("utf-8")


def _stored_arrivals(data: bytes | None) -> list[float]:
    try:
        return [float(stamp) for stamp in json.loads((data or b"").decode("utf-8"))["arrivals"]]
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return []


def _read_member(node_id: str, data: bytes | None, mtime: float) -> tuple[MemberRecord, float]:
    """A member record and how long it stays listed; garbage becomes an error record."""
    try:
        record = json.loads((data or b"").decode("utf-8"))
        heartbeat = Heartbeat.from_dict(record["heartbeat"])
        arrivals = [*(float(stamp) for stamp in record.get("arrivals", [])), mtime]
        forget_after = float(record.get("forget_after", DEFAULT_FORGET_AFTER))
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
        error = f"unreadable heartbeat record: {type(exc).__name__}: {exc}"
        return MemberRecord(node_id, None, (mtime,), error=error), DEFAULT_FORGET_AFTER
    return MemberRecord(node_id, heartbeat, tuple(arrivals[-MAX_ARRIVALS:])), forget_after


