"""A Redis leadership keeping its lease: a renew thread (every ttl/3, each call bounded
by the time left) and a listener thread that hears resign requests."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from lelect.backends._redis_link import Subscription
from lelect.backends._redis_scripts import RENEW, ElectionKeys
from lelect.backends.base import Candidate, Leadership, lease_drift

if TYPE_CHECKING:
    from lelect.backends.redis import RedisBackend


class RedisLeadership(Leadership):
    def __init__(
        self,
        backend: RedisBackend,
        election: str,
        candidate: Candidate,
        term: int,
        token: str,
        lease_deadline: float,
        ttl: float,
        since: float | None,
        subscription: Subscription | None,
    ) -> None:
        super().__init__(backend, election, candidate, term, token, lease_deadline, since)
        self.ttl = ttl
        self.keys = ElectionKeys(backend.options.prefix, election)
        self.stopped = threading.Event()
        self._backend = backend
        self._subscription = subscription

    def start(self, granted_at: float) -> None:
        """Start renewing (``granted_at``: when the winning request was sent) and listening."""
        threads = (
            (lambda: self._keep_lease(granted_at), "renew"),
            (self._listen, "resign-listener"),
        )
        for target, name in threads:
            threading.Thread(
                target=target, name=f"lelect-redis-{name}:{self.election}", daemon=True
            ).start()

    def _keep_lease(self, granted_at: float) -> None:
        link, options = self._backend.link, self._backend.options
        interval = self._backend.renew_interval(self.ttl)
        retry_delay = min(interval / 4, 0.25)
        next_renew = granted_at + interval
        last_error = ""
        while not self.stopped.wait(max(next_renew - time.monotonic(), 0.0)):
            deadline = self.lease_deadline or 0.0
            left = deadline - time.monotonic()
            if left <= 0:
                self.mark_lost(f"lease expired with no successful renew{last_error}")
                return
            t_send = time.monotonic()
            try:
                renewed, asked = link.run(RENEW, self.keys.renew_keys,
                                          [self.token, milliseconds(self.ttl)],
                                          budget=min(left, interval))
            except RedisError as exc:
                last_error = f" (last error: {options.unavailable(exc, min(left, interval))})"
                next_renew = min(time.monotonic() + retry_delay, deadline)
                continue
            if self.stopped.is_set():
                return
            if not renewed:
                self.mark_lost("the leader key no longer holds our token (expired or taken)")
                return
            last_error = ""
            self.set_deadline(t_send + self.ttl - lease_drift(self.ttl))
            if asked:
                self.mark_resign_requested()
            next_renew = t_send + interval

    def _listen(self) -> None:
        subscription = self._subscription or Subscription(
            self._backend.link, [self.keys.released_channel, self.keys.resign_channel]
        )
        try:
            while not self.stopped.is_set() and not self.lost.is_set():
                try:
                    subscription.ensure(self._backend.options.connect_timeout)
                    message = subscription.next_message(timeout=0.5)
                except RedisError:
                    self.stopped.wait(0.5)  # the renew script reports requests too
                    continue
                if message and message[0] == self.keys.resign_channel:
                    if message[1] in ("", str(self.term)):
                        self.mark_resign_requested()
        finally:
            subscription.close()


def milliseconds(seconds: float) -> int:
    return max(int(seconds * 1000), 1)
