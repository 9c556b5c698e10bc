"""A won ZooKeeper election and the guard that keeps its lease honest.

A leadership has a ZooKeeper session of its own. The server expires a session the
*granted* session timeout after it last heard from the client, so the lease deadline
counts from the send time of the last answered request: the guard sends a timed probe
every ``renew_interval`` (an ``exists`` on our own node, which also keeps a watch on
it) and marks the leadership lost when the session is lost, our node is gone, or the
deadline passes without an answer. It also honours ``<path>/_resign/NAME`` requests
that name our term.

Nothing of this is asked before the job may start: once the leadership begins, one
thread writes its history entry and sets the guard's two watches (our node, the resign
request) in one pipelined round trip, beside the job.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable

from kazoo.exceptions import KazooException, NoNodeError, SessionExpiredError

from lelect.backends.base import Candidate, HistoryEntry, Leadership
from lelect.backends.zookeeper.layout import Contender, ElectionPaths
from lelect.backends.zookeeper.session import TRANSIENT, ZK_ERRORS, ZooKeeperSession, log
from lelect.lease import Lease, Renewal

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only

if TYPE_CHECKING:
    from typing import Any

    from lelect.backends.zookeeper.backend import ZooKeeperBackend


class ZooKeeperLeadership(Leadership):
    """A won election: our contender node (its name is the token, its sequence the
    term), in a session of its own, and our open history entry."""

    def __init__(
        self,
        backend: ZooKeeperBackend,
        paths: ElectionPaths,
        candidate: Candidate,
        contender: Contender,
        *,
        session: ZooKeeperSession,
        entry: HistoryEntry | None,
        sent: float,
        record: Callable[[Callable[[], None]], HistoryEntry | None] | None = None,
    ) -> None:
        self.paths = paths
        self.session = session
        self.node_path = paths.contender(contender.name)
        #: Our history entry, and whether it is written (the release closes it; one that
        #: is not, it writes closed).
        self.entry = entry
        self.entry_written = record is None and entry is not None
        #: Writes our entry (returns it, or None if it could not be written), beside the
        #: job, calling its argument once the multi is sent; ``recorded`` is set once it
        #: has run (at once without one).
        self._record = record
        self.recorded = threading.Event()
        if record is None:
            self.recorded.set()
        self._record_lock = threading.Lock()
        self.begun = False
        #: The session timeout the server granted: the lease length.
        self.session_timeout = session.granted or session.requested
        self.guard = LeaseGuard(self)
        lease = Lease(sent, self.session_timeout, self.guard.renew, name=f"zk:{paths.election}",
                      describe=lambda exc: type(exc).__name__)
        super().__init__(backend, paths.election, candidate, contender.seq, contender.name,
                         lease, since=None if entry is None else entry.started)

    def _begin(self) -> None:
        self.begun = True
        self.guard.start()
        with self._record_lock:
            if self._record is None:
                self.guard.look_soon()
                return
        threading.Thread(target=self._record_beside_the_job, name=f"lelect-zk-record:{self.election}",
                         daemon=True).start()

    def _record_beside_the_job(self) -> None:
        """The win's history entry, with the guard's first look in the same round trip."""
        looks: list[tuple[Any, Any]] = []
        try:
            try:
                # The watches go right behind the entry's multi (not before it: our node
                # deleted in between would leave the leadership unrecorded).
                written = self._record(lambda: looks.append(self.guard.ask_first_look()))
                self.entry_written = written is not None
            finally:
                self._record = None  # (it holds the contest's answers)
                self.recorded.set()  # (the release need not wait for the watches' answers)
            if not looks:
                looks.append(self.guard.ask_first_look())
            self.guard.settle_first_look(looks[0])
        except Exception:  # noqa: BLE001 - the lease's own renew looks again
            log.debug("recording the win failed", exc_info=True)
            self.guard.look_soon()
        finally:
            self.recorded.set()

    def await_record(self, budget: float) -> None:
        """Before anything reads or changes our entry: wait (at most ``budget``) until
        the win's entry is written (or could not be). A leadership that never began (a
        late win, a handover that bars it) writes none: its release writes it closed."""
        with self._record_lock:
            if not self.begun:
                self._record = None
                self.recorded.set()
        self.recorded.wait(budget)


class LeaseGuard:
    """The ZooKeeper side of a leadership's lease: the renew verb (a timed probe, an
    ``exists`` on our own node that also keeps a watch on it, and a look at resign
    requests when one may have come) and the session and node events.

    Watch and state callbacks run on kazoo's threads and only set flags or mark the
    leadership lost; calls are made by the lease's thread, each with its budget.
    """

    def __init__(self, leadership: ZooKeeperLeadership) -> None:
        self.leadership = leadership
        self.session = leadership.session
        self.resign_path = leadership.paths.resign
        self.check_resign = True  # a request may predate our watch

    def start(self) -> None:
        self.session.add_listener(self._on_state)

    def look_soon(self) -> None:
        """Probe at once: its exists() sets the watch on our own node, so a deletion in
        the first renew interval is noticed at once too, not at the first renew."""
        self._renew_soon()

    def ask_first_look(self) -> tuple[Any, Any]:
        """The renew's two watches, asked without waiting (they go out with the history's
        multi): our node's and the resign request's."""
        client = self.session.client
        return (client.exists_async(self.leadership.node_path, watch=self._on_node),
                client.exists_async(self.resign_path, watch=self._on_resign))

    def settle_first_look(self, asked: tuple[Any, Any]) -> None:
        """Their answers: our node gone is a lost leadership; a resign request there is
        read by the renew at once; no answer makes the renew look at once."""
        node, resign = asked
        budget = self.session.granted or self.leadership.session_timeout
        try:
            if node.get(timeout=budget) is None:
                self.leadership.mark_lost(f"our contender node {self.leadership.node_path} is gone")
                return
            self.check_resign = resign.get(timeout=budget) is not None
        except ZK_ERRORS:
            self.check_resign = True
        if self.check_resign:
            self._renew_soon()

    def stop(self) -> None:
        self.session.remove_listener(self._on_state)

    def _renew_soon(self) -> None:
        if self.leadership.lease is not None:
            self.leadership.lease.renew_soon()

    # -- kazoo's threads --------------------------------------------------------

    def _on_state(self, state: str) -> None:
        if state == "LOST":
            self.leadership.mark_lost("the ZooKeeper session expired")
        elif state == "CONNECTED":
            # Reconnected within the session: watches are gone, the lease is not.
            self.check_resign = True
            self._renew_soon()

    def _on_node(self, event: Any) -> None:
        if event.type == "DELETED":
            self.leadership.mark_lost(f"our contender node {event.path} was deleted")

    def _on_resign(self, event: Any) -> None:
        if event.type != "NONE":
            self.check_resign = True
            self._renew_soon()

    # -- the lease's thread -----------------------------------------------------

    def renew(self, budget: float) -> Renewal:
        """An answered request proves the server heard from us at its send time."""
        end = time.monotonic() + budget
        if self.check_resign:
            self.check_resign = False
            self._look_for_resign(end)
        leadership = self.leadership
        stat = self._ask("exists", leadership.node_path, watch=self._on_node, end=end)
        if stat is None:
            return Renewal(False, reason=f"our contender node {leadership.node_path} is gone")
        return Renewal(True, granted=self.session.granted or leadership.session_timeout)

    def _ask(self, method: str, *args: Any, end: float, **kwargs: Any) -> Any:
        timeout = max(end - time.monotonic(), 0.001)
        return self.session.call(method, *args, timeout=timeout, **kwargs)

    def _look_for_resign(self, end: float) -> None:
        """Honour ``<path>/_resign/NAME`` if it names our term; keep a watch on it."""
        leadership = self.leadership
        try:
            stat = self._ask("exists", self.resign_path, watch=self._on_resign, end=end)
            if stat is None:
                return
            data, stat = self._ask("get", self.resign_path, end=end)
        except NoNodeError:
            return
        except (*TRANSIENT, SessionExpiredError):
            self.check_resign = True  # look again once there is an answer
            return
        except KazooException as exc:
            log.warning("reading the resign request failed: %s", type(exc).__name__)
            return
        term = resign_term(data)
        if term == leadership.term:
            leadership.mark_resign_requested()
        if term is None or term <= leadership.term:
            # Honoured or stale: nobody else will ever act on it.
            try:
                self._ask("delete", self.resign_path, version=stat.version, end=end)
            except ZK_ERRORS:
                pass


def resign_request(term: int) -> bytes:
    return json.dumps({"term": term, "time": time.time()}).encode()


def resign_term(data: bytes | None) -> int | None:
    """The term a resign request names (None for garbage)."""
    from lelect.backends.records import load_record, whole

    try:
        return whole(load_record(data)["term"], "term", 0)
    except (ValueError, TypeError, KeyError):
        return None
