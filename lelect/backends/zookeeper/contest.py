"""One candidate's way to the front of ``<path>/NAME``, as kazoo's Lock does it, and the
multi that makes it leader.

The candidate creates an ephemeral sequential contender node, and while somebody is
ahead it watches only its predecessor (so one release wakes one waiter). The look that
finds nobody ahead is the win: one round trip, in which the queue is read together with
what a new leader needs before its job may start (the handover note). The history entry
is written beside the job (:meth:`Contest.record_win`): the history is read, then one
multi checks that our node still exists, creates our entry, closes the entry of a leader
that vanished and trims the history to its bound; the release and this process's own
reads wait for it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from kazoo.exceptions import (
    BadVersionError,
    ConnectionClosedError,
    NodeExistsError,
    NoNodeError,
    SessionExpiredError,
)

from lelect.backends.base import (
    MAX_NOTE,
    Candidate,
    HistoryEntry,
    LeaderInfo,
    busy,
    check_cancel,
    timed_out,
    wait_event,
)
from lelect.backends.notes import HANDOVER_KEY
from lelect.backends.zookeeper.layout import (
    CONTENDER_MARK,
    Check,
    Contender,
    Create,
    ElectionPaths,
    StoredNote,
    contenders,
    history_prune,
    history_terms,
    term_name,
    win_ops,
)
from lelect.backends.zookeeper.lease import ZooKeeperLeadership
from lelect.backends.zookeeper.session import (
    TRANSIENT,
    ZK_ERRORS,
    CallCancelled,
    ZooKeeperSession,
    log,
)
from lelect.errors import BackendUnavailable
from lelect.frozen import Record

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only

if TYPE_CHECKING:
    from typing import Any

    from lelect.backends.zookeeper.backend import ZooKeeperBackend

#: Tries of the winning multi before leading without a history entry (each retry
#: follows a concurrent change of the history, which only a leader makes).
WIN_TRIES = 4


#: "The winning look cannot say": the campaign reads the handover note itself.
_UNKNOWN = object()


def uuid4_hex() -> str:
    """``uuid.uuid4().hex`` (kazoo's prefix of a contender node) without importing
    ``uuid`` (and ``platform``, which it imports): ~2.5 ms of each candidate's start."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return raw.hex()


class _Reconnect(Exception):
    """A call got no answer (connection lost or timed out): wait for the session."""


class _Recreate(Exception):
    """``<path>/NAME`` itself was deleted (by hand): create it and queue again."""


class _Gone(Exception):
    """Our contender node is gone (our session expired): queue again."""


class _HistoryLook(Record):
    """Answers on their way: the history's entry names, and (term, entry) of a guess at
    the newest (the leader we followed)."""

    children: Any
    guess: tuple[int, Any] | None


class Contest:
    """Campaign in ``paths`` with ``session`` until leader.

    ``give_up`` (monotonic) is when waiting ends (CampaignTimeout); ``calls_until`` is
    how long calls may take, at least one attempt, so that ``timeout=0`` still wins a
    free election. Both are None for no timeout.
    """

    def __init__(
        self,
        backend: ZooKeeperBackend,
        session: ZooKeeperSession,
        paths: ElectionPaths,
        candidate: Candidate,
        *,
        give_up: float | None,
        calls_until: float | None,
        timeout: float | None,
        no_wait: bool,
        on_wait: Callable[[LeaderInfo | None], None] | None,
        cancel: threading.Event | None = None,
        on_next: Callable[[bool], None] | None = None,
    ) -> None:
        self.backend = backend
        self.session = session
        self.paths = paths
        self.election = paths.election
        self.candidate = candidate
        self.give_up = give_up
        self.calls_until = calls_until
        self.timeout = timeout
        self.no_wait = no_wait
        self.on_wait = on_wait
        #: Told whether we are next in line after each look (Backend.campaign's hint).
        self.on_next = on_next
        self.cancel = cancel
        # kazoo's trick: after a connection loss during create, the prefix is how we
        # find our own node instead of queueing behind it.
        self.prefix = uuid4_hex() + CONTENDER_MARK
        self.node: str | None = None
        self.create_tried = False
        self.waiting_told = False
        #: The leader while we are next in line: most likely the newest history entry
        #: when we win (read together with the queue, to save a round trip).
        self.next_after: Contender | None = None
        self.looked = False
        self.wake = threading.Event()
        #: Set (with ``wake``) by anything but the predecessor's history entry appearing:
        #: then the queue is looked at again.
        self.changed = False

    def run(self) -> ZooKeeperLeadership:
        self.session.add_listener(self._on_state)
        try:
            while True:
                try:
                    with self.session.errors(f"campaigning for {self.election!r}",
                                             self.paths.contenders):
                        leadership = self._step()
                except _Reconnect:
                    self._await_connection()
                    continue
                except _Recreate:
                    log.warning("%s was deleted while campaigning; creating it again",
                                self.paths.contenders)
                    self.node, self.create_tried = None, False
                    continue
                except _Gone:
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
        self.changed = True
        self.wake.set()

    def _on_predecessor(self, event: Any) -> None:
        self.changed = True
        self.wake.set()

    def _on_promotion(self, event: Any) -> None:
        """The predecessor's history entry appeared: it leads, so we are next in line."""
        self.wake.set()

    # -- time ---------------------------------------------------------------------

    def _wait_left(self) -> float | None:
        """Seconds left to wait (None: no timeout); CampaignTimeout once none are."""
        if self.give_up is None:
            return None
        left = self.give_up - time.monotonic()
        if left <= 0:
            raise timed_out(self.election, self.timeout)
        return left

    def _call_timeout(self) -> float:
        patience = self.session.granted or self.session.requested
        if self.calls_until is None:
            return patience
        return min(patience, max(0.0, self.calls_until - time.monotonic()))

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            # While the connection is down kazoo holds the call until the session is back:
            # a cancel (SIGTERM, Ctrl-C) ends that wait at once.
            return self.session.call(method, *args, timeout=self._call_timeout(),
                                     cancel=self.cancel, **kwargs)
        except CallCancelled:
            check_cancel(self.cancel, self.election)
            raise
        except ConnectionClosedError:
            raise
        except (*TRANSIENT, SessionExpiredError):
            raise _Reconnect from None
        except NoNodeError as missing:
            if method == "get_children" and args[0] == self.paths.contenders:
                raise _Recreate from missing
            raise

    def _await_connection(self) -> None:
        if self.session.closed:
            raise BackendUnavailable("the ZooKeeper session was closed while campaigning")
        if self.session.connected.is_set():
            self._wait_left()
            if self.calls_until is not None and time.monotonic() >= self.calls_until:
                raise timed_out(self.election, self.timeout)
            return
        log.warning(
            "lost the connection to ZooKeeper at %s while waiting for %r; reconnecting",
            self.session.config.hosts,
            self.election,
        )
        if not self.session.wait_connected(self._wait_left(), self.cancel):
            check_cancel(self.cancel, self.election)
            if self.session.closed:
                raise BackendUnavailable("the ZooKeeper session was closed while campaigning")
            self._wait_left()

    # -- the queue ----------------------------------------------------------------

    def _step(self) -> ZooKeeperLeadership | None:
        """One look at the queue: win, or watch the predecessor and wait. None: look again."""
        path = self.paths.contenders
        if self.node is None:
            if self.no_wait and not self.create_tried:
                try:
                    queue = contenders(self._call("get_children", path))
                except _Recreate:
                    queue = []  # a new election: nobody leads
                self._refuse_if_led(queue)
            self.node = self._enter()
        self.wake.clear()
        self.changed = False
        # Likely to win (the first look, or next in line): what a win needs before its job
        # is read with the queue, in the same round trip.
        sent = time.monotonic()
        handover = (self.session.client.get_async(self.paths.note(HANDOVER_KEY))
                    if not self.looked or self.next_after else None)
        self.looked = True
        queue = contenders(self._call("get_children", path))
        mine = next((c for c in queue if c.name == self.node), None)
        if mine is None:  # our session expired and took our node with it
            self.node = None
            return None
        ahead = [c for c in queue if c.seq < mine.seq]
        if not ahead:
            return self._won(mine, sent, handover)
        self.next_after = ahead[0] if len(ahead) == 1 else None
        if self.on_next is not None:
            self.on_next(self.next_after is not None)
        if self.no_wait:
            self._refuse_if_led(ahead)
        left = self._wait_left()
        predecessor = ahead[-1]
        promoting = self.on_next is not None and self.next_after is None
        if promoting:
            # It writes its history entry as its job starts: then we are next in line,
            # without a look of ours at the line. Asked with the next call, no wait.
            self.session.client.exists_async(self.paths.entry(predecessor.seq),
                                             watch=self._on_promotion)
        if self._call("exists", self.paths.contender(predecessor.name),
                      watch=self._on_predecessor) is None:
            return None
        if self.on_wait is not None and not self.waiting_told:
            self.waiting_told = True
            self.on_wait(self._holder(ahead[0]))
        log.debug("%s waits behind %s", self.node, predecessor.name)
        while True:
            if not wait_event(self.wake, left, self.cancel, self.election):
                self._wait_left()
                break
            if self.changed or not promoting:
                break
            self.wake.clear()
            if self.changed:  # came just now
                break
            promoting = False
            self.next_after = predecessor  # the next look is likely the win: read with it
            self.on_next(True)
            left = self._wait_left()
        log.debug("%s woke: looking at the queue again", self.node)
        return None

    def _enter(self) -> str:
        path = self.paths.contenders
        if self.create_tried:
            mine = [c for c in self._call("get_children", path) if c.startswith(self.prefix)]
            if mine:
                return mine[0]
        self.create_tried = True
        node = f"{path}/{self.prefix}"
        data = self.candidate.node_id.encode("utf-8")
        try:
            created = self._call("create", node, data, ephemeral=True, sequence=True)
        except NoNodeError:
            # The first candidate ever: make the election's node (never deleted after).
            self._call("ensure_path", path)
            created = self._call("create", node, data, ephemeral=True, sequence=True)
        return created.rsplit("/", 1)[1]

    def _refuse_if_led(self, queue: list[Contender]) -> None:
        for contender in queue:
            if contender.name == self.node:
                continue
            try:
                data, _ = self._call("get", self.paths.contender(contender.name))
            except NoNodeError:
                continue
            # A contender made by another client may carry no node id at all.
            node_id = (data or b"").decode("utf-8", "replace") or "a contender without a node id"
            raise busy(self.election, LeaderInfo(node_id=node_id, term=contender.seq))

    def _holder(self, front: Contender) -> LeaderInfo | None:
        """Who leads, as ``leader()`` shows it (None if it left while we looked)."""
        try:
            return self.backend.contender_info(self.session, self.paths, front,
                                               timeout=self._call_timeout())
        except ZK_ERRORS:
            return None

    # -- winning ------------------------------------------------------------------

    def _won(self, mine: Contender, sent: float, handover: Any) -> ZooKeeperLeadership:
        """Nobody is ahead: we lead. Nothing is written before the job may start (the
        history entry is written beside it, :meth:`record_win`)."""
        entry = HistoryEntry(
            election=self.election, term=mine.seq, node_id=self.candidate.node_id,
            host=self.candidate.host, pid=self.candidate.pid, started=time.time(),
        )
        leadership = ZooKeeperLeadership(
            self.backend,
            self.paths,
            self.candidate,
            mine,
            session=self.session,
            entry=entry,
            sent=sent,
            record=lambda sent_with: self.record_win(mine, entry, sent_with),
        )
        if handover is not None:
            note = self._handover_at_win(handover)
            if note is not _UNKNOWN:
                leadership.notes_at_win[HANDOVER_KEY] = note
        log.debug("%s leads %r (term %d)", mine.name, self.election, mine.seq)
        return leadership

    def _ask_history(self) -> _HistoryLook:
        """Ask for the history's entries and the entry of the leader we followed, without
        waiting (the answers come in one round trip)."""
        client = self.session.client
        guess = self.next_after
        return _HistoryLook(
            client.get_children_async(self.paths.history),
            None if guess is None else (guess.seq, client.get_async(self.paths.entry(guess.seq))),
        )

    def _handover_at_win(self, result: Any) -> bytes | None | object:
        """The handover note's bytes as read with the winning look (None: there is none),
        or _UNKNOWN when the look cannot say (no answer; a note with a ttl, which is judged
        by the server's clock): the campaign then reads it itself."""
        try:
            raw, _ = result.get(timeout=self._call_timeout())
        except NoNodeError:
            return None
        except ZK_ERRORS:
            return _UNKNOWN
        note = StoredNote.decode(raw or b"")
        if note is None or len(note.data) > MAX_NOTE:
            return None  # garbage reserves nothing
        return _UNKNOWN if note.ttl_ms is not None else note.data

    def _answer(self, result: Any, timeout: float) -> Any:
        try:
            return result.get(timeout=timeout)
        except (*TRANSIENT, SessionExpiredError):
            raise _Reconnect from None

    def record_win(self, mine: Contender, entry: HistoryEntry, sent_with: Callable[[], None] | None
                   ) -> HistoryEntry | None:
        """The history multi, beside the job: our entry, or None if the history cannot be
        written (we lead all the same: the history is a record, not the election).
        ``sent_with()`` is called once, right after the first multi is sent (what it asks
        goes in the same round trip)."""
        timeout = self.backend.config.connect_timeout
        for _ in range(WIN_TRIES):
            look = self._ask_history()
            try:
                try:
                    children = self._answer(look.children, timeout)
                except NoNodeError:
                    children = []
                newest = self._newest_before(children, mine.seq, look, timeout)
            except (_Reconnect, *ZK_ERRORS) as exc:
                log.warning("cannot read the history of %r: %s", self.election,
                            type(exc).__name__)
                return None
            ops = win_ops(self.paths, mine, entry, newest,
                          history_prune(children, self.backend.history_limit))
            try:
                committing = self.session.commit_async(ops)
                if sent_with is not None:
                    sent_with, then = None, sent_with
                    then()
                failed = self.session.settle(committing, ops, timeout)
                if failed is not None and isinstance(failed.op, Create) and \
                        isinstance(failed.error, NoNodeError):
                    self.session.call("ensure_path", self.paths.history, timeout=timeout)
                    continue  # the first leadership
            except ZK_ERRORS as exc:
                log.warning("cannot write the history of %r: %s", self.election,
                            type(exc).__name__)
                return None
            if failed is None:
                return entry
            if isinstance(failed.op, Check):
                return None  # our node went with our session: the lease's guard says so
            if isinstance(failed.op, Create) and isinstance(failed.error, NodeExistsError):
                return entry  # an earlier try of ours went through; its answer was lost
            if not isinstance(failed.error, (BadVersionError, NoNodeError)):
                log.warning("cannot write the history of %r: %s", self.election,
                            type(failed.error).__name__)
                return None
            # An entry changed or went under us (a leader that was slow to close its
            # own, a hand edit): read again.
        log.warning("gave up writing the history of %r after %d tries", self.election,
                    WIN_TRIES)
        return None

    def _newest_before(self, children: list[str], term: int, look: _HistoryLook, timeout: float
                       ) -> tuple[HistoryEntry, int] | None:
        """The newest entry before ``term`` and its version (None if there is none)."""
        earlier = [name for name in history_terms(children) if int(name) < term]
        if not earlier:
            return None
        newest = earlier[-1]
        try:
            if look.guess is not None and term_name(look.guess[0]) == newest:
                data, stat = self._answer(look.guess[1], timeout)
            else:
                data, stat = self.session.call("get", f"{self.paths.history}/{newest}",
                                               timeout=timeout)
            return HistoryEntry.decode(data or b""), stat.version
        except (NoNodeError, ValueError):
            return None  # gone meanwhile, or garbage: nothing to close

    def _withdraw(self) -> None:
        """Leave no contender node behind (closing the session would remove it too)."""
        if self.node is None or not self.session.connected.is_set():
            return
        try:
            self.session.call("delete", self.paths.contender(self.node), timeout=1.0)
        except ZK_ERRORS:
            pass
