"""Redis backend: ``redis://[user:pw@]host[:port][/db]``, ``rediss://`` (TLS),
``unix:///path/redis.sock`` and ``redis[s]+sentinel://s1,s2/MASTER[/db]``; options
``prefix``, ``ttl``, ``connect_timeout``, ``history``, ``restart_guard`` (on, or off to
accept the risk of a Redis that forgot its leases: see ``scripts.ACQUIRE``).

Each verb is one Lua script guarded by the leadership's random token (the keys and the
scripts: ``scripts``); every call has a time budget (``link``); a won
leadership keeps its lease in ``lease``; if lelect dies, the job's keeper hands
the leadership back with ``handback``.

Waiters never poll and are never woken as a herd: each subscribes to its own channel
before its first attempt, takes a ticket in the election's line with that attempt, and
sleeps until a release wakes it (only the head of the line is woken) or the leader key's
PTTL runs out (then it tries again, which also keeps its ticket).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

from lelect.backends.base import (
    LOST,
    MAX_ARRIVALS,
    MAX_NOTE,
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
    cancel_wakeup,
    check_cancel,
    check_note,
    check_note_key,
    only_changes,
    timed_out,
    wait_slice,
)
from lelect.backends.records import (
    HAND_BACK_REASON,
    BadRecord,
    decode_member,
    encode_member,
    whole,
)
from lelect.backends.redis.lease import RedisLeadership, milliseconds
from lelect.backends.redis.link import (
    RedisError,
    RedisLink,
    RedisOptions,
    SentinelLink,
    Subscription,
    is_transient,
    log,
)
from lelect.backends.redis.scripts import (
    ACQUIRE,
    GET_NOTE,
    LEADER,
    MEMBERS,
    PUBLISH,
    RELEASE,
    RELEASE_EXIT_STATUS,
    REMOVE_MEMBER,
    REQUEST_RESIGN,
    RedisKeys,
    Script,
    release_args,
)
from lelect.durations import RANGES, format_duration
from lelect.errors import BackendUnavailable
from lelect.lease import Attempts, GaveUp, RetryPolicy
from lelect.names import validate_stored

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only

if TYPE_CHECKING:
    from typing import Any

    from lelect.backends.urls import BackendURL


class RedisBackend(Backend):
    """Elections in one Redis server (or one primary)."""

    scheme = "redis"
    lease_based = True

    def __init__(self, url: BackendURL) -> None:
        super().__init__(url)
        self.scheme = url.scheme
        self.options = RedisOptions.from_url(url)
        self.default_ttl = self.options.ttl
        self.connect_timeout = self.options.connect_timeout
        self.history_limit = self.options.history_limit
        self.link = (SentinelLink(self.options) if self.options.sentinel is not None
                     else RedisLink(self.options))
        self.retry = RetryPolicy(self.options.connect_timeout)

    def _keys(self, election: str) -> RedisKeys:
        return RedisKeys(self.options.prefix, validate_stored(election))

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
        keys = self._keys(election)
        ttl = self.default_ttl if ttl is None else RANGES["ttl"].check(
            ttl, "ttl", format_duration(ttl))
        # secrets.token_hex(16), without secrets' hmac and hashlib (OpenSSL's libcrypto).
        token = os.urandom(16).hex()
        args = [token, milliseconds(ttl), candidate.node_id, candidate.host or "",
                "" if candidate.pid is None else str(candidate.pid), keys.elected_channel,
                election, self.history_limit, "1" if self.options.restart_guard else "0"]
        contact = self.retry.attempts(timeout, cancel=cancel, election=election)
        subscription = None
        if not (no_wait or timeout == 0):  # one try needs no wake-up, nor a ticket
            subscription = Subscription(self.link, [keys.wake_channel(token),
                                                    keys.resign_channel])
        args.append("0" if subscription is None else "1")
        waiting = False
        try:
            while True:
                try:
                    if subscription is not None:
                        subscription.ensure(contact.budget())
                    t_send = time.monotonic()
                    reply = self.link.run(ACQUIRE, keys.acquire_keys, args, contact.budget())
                except RedisError as exc:
                    self._retry(contact, exc)
                    continue
                contact.succeeded()
                if int(reply[0]) == 1:
                    term, since_ms = int(reply[1]), reply[2]
                    leadership = RedisLeadership(
                        self, election, candidate, term, token, t_send, ttl,
                        since=int(since_ms) / 1000 if since_ms else None,
                        subscription=subscription,
                    )
                    subscription = None  # the leadership's listener owns it now
                    return leadership
                pttl, holder = int(reply[1]), _holder(reply[2:])
                if no_wait:
                    raise busy(election, holder)
                if contact.out_of_time():
                    raise timed_out(election, timeout)
                if pttl < 0:
                    raise BackendUnavailable(
                        f"key {keys.leadership[0]} has no expiry: lelect did not write it;"
                        " delete it or use another ?prefix="
                    )
                if not waiting:
                    waiting = True
                    if on_wait is not None:
                        on_wait(holder)
                assert subscription is not None
                self._wait_for_release(subscription, keys, pttl, contact, timeout, cancel)
        finally:
            if subscription is not None:
                subscription.close()

    def _retry(self, attempts: Attempts, exc: RedisError) -> None:
        """Pause before the next try, or raise the one-line error when that was the last."""
        try:
            attempts.retry_after(is_transient(exc))
        except GaveUp as gave_up:
            raise self.options.unavailable(exc, gave_up.bound) from None

    def _wait_for_release(self, subscription: Subscription, keys: RedisKeys, pttl: int,
                          contact: Attempts, timeout: float | None,
                          cancel: threading.Event | None = None) -> None:
        """Sleep until a release wakes us (we head the line) or the leader key's PTTL runs
        out; then the caller tries again, which also keeps our ticket in the line."""
        wake = time.monotonic() + pttl / 1000 + 0.001
        with cancel_wakeup(cancel) as woken:
            while True:
                now = time.monotonic()
                check_cancel(cancel, keys.election)
                if contact.out_of_time():
                    raise timed_out(keys.election, timeout)
                if now >= wake:
                    return
                until = wake if contact.give_up.at is None else min(wake, contact.give_up.at)
                try:
                    message = subscription.next_message(wait_slice(until - now, cancel), woken)
                except RedisError as exc:
                    check_cancel(cancel, keys.election)
                    self._retry(contact, exc)  # resubscribe and try again
                    return
                if message and message[0] != keys.resign_channel:
                    return

    def resign(self, leadership: Leadership, ending: Ending) -> None:
        if isinstance(leadership, RedisLeadership):
            leadership.stopped.set()
            leadership.close_subscription()
        # A lost leadership is most likely not ours any more: do not hang on a dead link.
        budget = leadership.parting_budget(self.options.connect_timeout)
        self._release(self._keys(leadership.election), leadership.token, leadership.term,
                      ending.outcome, ending.exit_status, ending.reason, ending.slot, budget)

    def _release(self, keys: RedisKeys, token: str, term: int, outcome: str,
                 exit_status: int | None, reason: str | None, slot: str | None,
                 budget: float) -> None:
        """Release if still ours and close our history entry if it still runs."""
        args = release_args(keys, token, term, outcome, exit_status, reason, slot)
        try:
            self.link.run(RELEASE, keys.release_keys, args, budget)
        except RedisError as exc:
            # Not fatal: the key expires when the lease runs out.
            log.warning(
                "lelect: could not release %r (%s); it frees itself when the lease runs out",
                keys.election, self.options.unavailable(exc, budget),
            )
            self.release_later(lambda budget: self.link.run(RELEASE, keys.release_keys, args,
                                                            budget))

    def hand_back(self, leadership: Leadership) -> HandBack:
        kwargs = self.options.connection_kwargs
        tls = None
        if self.options.tls:
            tls = {name: kwargs.get(f"ssl_{name}") for name in ("ca_certs", "certfile", "keyfile")}
        sentinel = self.options.sentinel
        address: dict[str, Any] | None = (
            None if sentinel is not None  # asked of a sentinel then
            else {"path": kwargs["path"]} if "path" in kwargs
            else {"host": kwargs["host"], "port": kwargs["port"]}
        )
        keys = self._keys(leadership.election)
        ttl = getattr(leadership, "ttl", self.default_ttl)
        # Everything the keeper's client sends, made here: it imports nothing of lelect.
        # The job's exit status, known only then, goes where argv holds None.
        argv: list[Any] = release_args(keys, leadership.token, leadership.term, LOST, None,
                                       HAND_BACK_REASON, None, forget_member=leadership.node_id)
        argv[RELEASE_EXIT_STATUS] = None
        return HandBack(budget=min(self.options.connect_timeout, ttl), election=leadership.election,
                        module="lelect.backends.redis.handback", params={
            "address": address, "tls": tls, "username": kwargs["username"],
            "sentinel": None if sentinel is None else {
                "master": sentinel.master_name, "sentinels": [list(a) for a in sentinel.sentinels],
                "username": sentinel.connection_kwargs["username"],
                "password": sentinel.connection_kwargs["password"],
            },
            "password": kwargs["password"], "db": kwargs["db"],
            "sha": RELEASE.sha, "script": RELEASE.text, "keys": keys.release_keys,
            "argv": argv,
            # After the lease has run out there is nothing left to hand back.
            "budget": min(self.options.connect_timeout, ttl),
        })

    def leader(self, election: str) -> LeaderInfo | None:
        keys = self._keys(election)
        try:
            return self._leader(keys, self.options.connect_timeout)[0]
        except RedisError as exc:
            raise self.options.unavailable(exc, context=self._context(election)) from None

    def _leader(self, keys: RedisKeys, budget: float) -> tuple[LeaderInfo | None, int]:
        """The leader and the leader key's PTTL in ms (0 when nobody leads)."""
        reply = self.link.run(LEADER, keys.leadership, [], budget)
        if not reply:
            return None, 0
        holder = _holder(reply[1:], keys.election) if len(reply) == 6 else None
        # A token without lelect's record: somebody else's writer holds the key.
        return holder or LeaderInfo(node_id="(unknown)", term=0), int(reply[0])

    def observe(self, election: str, stop: threading.Event | None = None
                ) -> Iterator[LeaderInfo | None]:
        return only_changes(self._looks(self._keys(election), stop or threading.Event()))

    def _looks(self, keys: RedisKeys, stop: threading.Event) -> Iterator[LeaderInfo | None]:
        """A look at the leader now, and again after every announcement, when the leader
        key would expire, or once a lease when nobody leads (a lost announcement costs
        at most that), until ``stop`` (a :class:`~lelect.backends.base.Cancel` wakes the
        wait at once; a plain Event is checked every few hundred ms)."""
        subscription = Subscription(self.link, [keys.released_channel, keys.elected_channel])
        contact = self.retry.attempts(None, cancel=stop)
        try:
            with cancel_wakeup(stop) as woken:
                while not stop.is_set():
                    try:
                        subscription.ensure(contact.budget())
                        current, pttl = self._leader(keys, contact.budget())
                    except RedisError as exc:
                        self._retry(contact, exc)
                        continue
                    contact.succeeded()
                    yield current
                    wake = time.monotonic() + (pttl / 1000 + 0.001 if pttl > 0
                                               else self.default_ttl)
                    while not stop.is_set() and time.monotonic() < wake:
                        try:
                            left = wait_slice(wake - time.monotonic(), stop)
                            if subscription.next_message(left, woken):
                                break
                        except RedisError:
                            break
        finally:
            subscription.close()

    def request_resign(self, election: str, term: int | None = None) -> bool:
        keys = self._keys(election)
        reply = self._run(REQUEST_RESIGN, [*keys.leadership, keys.resign],
                          ["" if term is None else str(int(term)), keys.resign_channel], election)
        return bool(reply)

    # -- heartbeats ---------------------------------------------------------------------

    def publish(self, heartbeat: Heartbeat, ttl: float) -> None:
        keys = self._keys(heartbeat.election)
        record = encode_member(heartbeat, forget_after=ttl)
        self._run(PUBLISH, keys.members,
                  [heartbeat.node_id, record, milliseconds(ttl), MAX_ARRIVALS], heartbeat.election)

    def remove_member(self, election: str, node_id: str) -> None:
        self._run(REMOVE_MEMBER, self._keys(election).members, [node_id], election)

    def members(self, election: str) -> Members:
        reply = self._run(MEMBERS, self._keys(election).members, [], election)
        now = int(reply[0]) + int(reply[1]) / 1e6
        records = [
            decode_member(node_id, record, _stamps(arrivals))
            for node_id, record, arrivals in zip(reply[2::3], reply[3::3], reply[4::3], strict=True)
        ]
        records.sort(key=lambda record: record.node_id)
        return Members(election=election, now=now, records=tuple(records))

    def elections(self) -> list[str]:
        head = f"{self.options.prefix}:{{"
        names: set[str] = set()
        cursor = "0"
        while True:
            cursor, found = self._call("SCAN", cursor, "MATCH", head + "*", "COUNT", 1000)
            for key in found:
                name, sep, kind = key[len(head):].rpartition("}:")
                if sep and kind in ("leader", "members", "history") and name:
                    names.add(name)
            if str(cursor) == "0":
                return sorted(names)

    # -- notes ----------------------------------------------------------------------------

    def put_note(self, election: str, key: str, data: bytes, ttl: float | None = None, *,
                 create: bool = False) -> bool:
        key, data = check_note_key(key), check_note(data)
        expiry = [] if ttl is None else ["PX", milliseconds(ttl)]
        reply = self._call("SET", self._keys(election).note(key), data, *expiry,
                           *(["NX"] if create else []), election=election)
        return reply is not None  # SET NX answers nil when a live note has the key

    def get_note(self, election: str, key: str) -> bytes | None:
        note = self._keys(election).note(check_note_key(key))
        reply = self._run(GET_NOTE, [note], [MAX_NOTE], election)
        # Replies are decoded with surrogateescape: this gives back the bytes stored.
        return None if reply is None else reply.encode("utf-8", "surrogateescape")

    def delete_note(self, election: str, key: str) -> None:
        self._call("DEL", self._keys(election).note(check_note_key(key)), election=election)

    # -- operations -----------------------------------------------------------------------

    def history(self, election: str, limit: int | None = None) -> list[HistoryEntry]:
        keys = self._keys(election)
        if limit is not None and limit <= 0:
            return []
        first = 0 if limit is None else -int(limit)
        entries = []
        for text in self._call("ZRANGE", keys.history, first, -1, election=election):
            try:
                entries.append(HistoryEntry.decode(text, election))
            except ValueError:
                continue  # somebody else's garbage: not a leadership of ours
        return entries

    def slot_done(self, election: str, slot: str) -> HistoryEntry | None:
        keys = self._keys(election)
        text = self._call("HGET", keys.slots[0], slot, election=election)
        if text is None:
            return None
        try:
            return HistoryEntry.decode(text)
        except ValueError:
            # The slot is done all the same: never run it twice over a garbled record.
            return HistoryEntry(election, 0, "(unknown)", None, None, None, outcome="exited",
                                exit_status=0, slot=slot, reason="unreadable slot record")

    def now(self) -> float:
        seconds, micros = self._call("TIME")
        return int(seconds) + int(micros) / 1e6

    def close(self) -> None:
        self.link.close()

    # -- helpers ------------------------------------------------------------------------

    def _run(self, script: Script, keys: list[str], args: list[Any], election: str) -> Any:
        try:
            return self.link.run(script, keys, args, self.options.connect_timeout)
        except RedisError as exc:
            raise self.options.unavailable(exc, context=self._context(election)) from None

    def _call(self, *args: Any, election: str = "") -> Any:
        try:
            return self.link.call(self.options.connect_timeout, *args)
        except RedisError as exc:
            context = self._context(election) if election else ""
            raise self.options.unavailable(exc, context=context) from None

    def _context(self, election: str) -> str:
        return f"under {self.options.prefix}:{{{election}}}"


def _holder(fields: list[Any], election: str = "") -> LeaderInfo | None:
    """A leader from the scripts' [term, node id, host, pid, since_ms] (None: unknown)."""
    if len(fields) < 5:
        return None
    term, node_id, host, pid, since_ms = fields[:5]
    since = None
    if since_ms:
        try:
            since = whole(since_ms, "since") / 1000
        except BadRecord:
            since = float("nan")  # refused below, with the rest of the record
    return LeaderInfo.from_stored(election, node_id or "(unknown)", term or 0, since, host, pid)


def _stamps(text: str) -> list[float]:
    """Arrival stamps as the PUBLISH script keeps them ("sec.usec sec.usec ...")."""
    stamps = []
    for stamp in text.split():
        try:
            stamps.append(float(stamp))
        except ValueError:
            continue
    return stamps
