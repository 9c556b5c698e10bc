"""A Redis leadership: its lease (kept by :class:`lelect.lease.Lease` with the guarded
RENEW script as its renew verb) and a listener thread that hears resign requests."""

from __future__ import annotations

import threading

from lelect.backends.base import Candidate, Leadership, WakePipe
from lelect.backends.redis.link import RedisError, Subscription
from lelect.backends.redis.scripts import RENEW, RedisKeys
from lelect.lease import Lease, Renewal

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only

if TYPE_CHECKING:
    from lelect.backends.redis.backend import RedisBackend

NOT_OURS = "the leader key no longer holds our token (expired or taken)"


class RedisLeadership(Leadership):
    def __init__(
        self,
        backend: RedisBackend,
        election: str,
        candidate: Candidate,
        term: int,
        token: str,
        sent: float,
        ttl: float,
        since: float | None,
        subscription: Subscription | None,
    ) -> None:
        self.keys = RedisKeys(backend.options.prefix, election)
        self.ttl = ttl
        self.stopped = threading.Event()
        self._backend = backend
        self._subscription = subscription
        #: Ends the listener's wait when the leadership stops or is lost.
        self._wake: WakePipe | None = None
        lease = Lease(sent, ttl, self._renew, name=f"redis:{election}",
                      describe=lambda exc: str(backend.options.unavailable(exc, ttl / 3)))
        super().__init__(backend, election, candidate, term, token, lease, since)

    def _renew(self, budget: float) -> Renewal:
        renewed, asked = self._backend.link.run(
            RENEW, self.keys.renew_keys, [self.token, milliseconds(self.ttl)], budget=budget)
        if not renewed:
            return Renewal(False, reason=NOT_OURS)
        return Renewal(True, resign_requested=bool(asked))

    def _begin(self) -> None:
        wake = self._wake = WakePipe()
        self.subscribe(lambda kind: wake.wake() if kind == "lost" else None)
        threading.Thread(target=self._listen, args=(wake,),
                         name=f"lelect-redis-resign:{self.election}", daemon=True).start()

    def _listen(self, wake: WakePipe) -> None:
        subscription = self._subscription or Subscription(
            self._backend.link, [self.keys.resign_channel]
        )
        self._subscription = None
        # Sleeps until a request, the leadership's end (``wake``) or a renew's worth of
        # time (to follow a master that moved: the renew script reports requests too).
        quiet = self.ttl / 3
        try:
            while not self.stopped.is_set() and not self.lost.is_set():
                try:
                    subscription.ensure(self._backend.options.connect_timeout)
                    message = subscription.next_message(quiet, wake)
                except RedisError:
                    self.stopped.wait(0.5)  # the renew script reports requests too
                    continue
                if message and message[0] == self.keys.resign_channel:
                    if message[1] in ("", str(self.term)):
                        self.mark_resign_requested()
        finally:
            subscription.close()
            wake.close()

    def close_subscription(self) -> None:
        """Stop listening: a leadership that never began hands its subscription back to
        nobody; a listening one's listener wakes and ends (``stopped`` is set)."""
        if self._wake is not None:
            self._wake.wake()
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None


def milliseconds(seconds: float) -> int:
    return max(int(seconds * 1000), 1)
