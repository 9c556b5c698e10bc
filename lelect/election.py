"""The library's front door: one election of one backend.

    election = lelect.connect().election("nightly")
    with election.campaign(timeout=30) as leadership:
        do_work(fencing_token=leadership.term)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from lelect.backends.base import Backend, Candidate, LeaderInfo, Leadership, Members
from lelect.names import validate_election

T = TypeVar("T")


class Election:
    def __init__(self, backend: Backend, name: str, node_id: str | None = None) -> None:
        self.backend = backend
        self.name = validate_election(name)
        self.candidate = Candidate.local(node_id)

    def campaign(
        self,
        timeout: float | None = None,
        *,
        no_wait: bool = False,
        ttl: float | None = None,
        on_elected: Callable[[Leadership], None] | None = None,
        on_lost: Callable[[Leadership], None] | None = None,
    ) -> Leadership:
        """Block until this process leads; return the leadership (a context manager that
        releases on exit). ``on_lost`` is called from a background thread if the
        leadership is lost before it is released; check ``leadership.is_leader()``
        before each protected step, and pass ``leadership.term`` as a fencing token."""
        leadership = self.backend.campaign(
            self.name, self.candidate, timeout=timeout, no_wait=no_wait, ttl=ttl
        )
        if on_elected is not None:
            on_elected(leadership)
        if on_lost is not None:
            called = threading.Lock()

            def lost(kind: str = "lost") -> None:
                # Once, and not for a leadership we released ourselves.
                if kind == "lost" and not leadership.released and called.acquire(blocking=False):
                    on_lost(leadership)

            leadership.subscribe(lost)
            if leadership.lost.is_set():  # lost before we subscribed
                lost()
        return leadership

    def run(self, func: Callable[..., T], *args: object, timeout: float | None = None) -> T:
        """Like kazoo's Election.run: campaign, call ``func(*args)`` while leading, release."""
        with self.campaign(timeout=timeout):
            return func(*args)

    def leader(self) -> LeaderInfo | None:
        return self.backend.leader(self.name)

    def resign(self, term: int | None = None) -> bool:
        """Ask the current leader (only of ``term`` if given) to step down."""
        return self.backend.request_resign(self.name, term)

    def members(self) -> Members:
        return self.backend.members(self.name)

    def observe(self, stop: threading.Event | None = None) -> Iterator[LeaderInfo | None]:
        return self.backend.observe(self.name, stop)
