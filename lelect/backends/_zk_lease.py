"""A won ZooKeeper election and the guard that keeps its lease honest.

A leadership has a ZooKeeper session of its own. The server expires a session the
*granted* session timeout after it last heard from the client, so the lease deadline
counts from the send time of the last answered request: the guard sends a timed probe
every ``renew_interval`` (an ``exists`` on our own node, which also keeps a watch on
it) and marks the leadership lost when the session is lost, our node is gone, or the
deadline passes without an answer. It also honours ``<path>/_resign/NAME`` requests
that name our term.
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

from kazoo.exceptions import KazooException, NoNodeError, SessionExpiredError

from lelect.backends._zk_layout import Contender, ElectionPaths
from lelect.backends._zk_session import TRANSIENT, ZK_ERRORS, Session, log
from lelect.backends.base import Candidate, HistoryEntry, Leadership, lease_drift
from lelect.durations import format_duration

if TYPE_CHECKING:
    from lelect.backends.zookeeper import ZooKeeperBackend


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
        session: Session,
        entry: HistoryEntry | None,
        lease_deadline: float,
    ) -> None:
        super().__init__(backend, paths.election, candidate, contender.seq, contender.name,
                         lease_deadline, since=None if entry is None else entry.started)
        self.paths = paths
        self.session = session
        self.node_path = paths.contender(contender.name)
        #: Our history entry as written when we won (None: the history could not be written).
        self.entry = entry
        #: The session timeout the server granted: the lease length.
        self.session_timeout = session.granted or session.requested
        self.guard = LeaseGuard(self, backend.renew_interval(self.session_timeout))


class LeaseGuard:
    """Keeps a leadership's lease deadline current and notices when it is gone.

    Watch and state callbacks run on kazoo's threads and only set flags; this thread
    makes the calls, each with a timeout shorter than the lease left.
    """

    def __init__(self, leadership: ZooKeeperLeadership, interval: float) -> None:
        self.leadership = leadership
        self.session = leadership.session
        self.resign_path = leadership.paths.resign
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
        term = resign_term(data)
        if term == leadership.term:
            leadership.mark_resign_requested()
        if term is None or term <= leadership.term:
            # Honoured or stale: nobody else will ever act on it.
            try:
                self._ask("delete", self.resign_path, version=stat.version, deadline=deadline)
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
