"""Redis backend: ``redis://[user:pw@]host[:port][/db]``, ``rediss://`` (TLS) and
``unix:///path/redis.sock``; options ``prefix``, ``ttl``, ``connect_timeout``.

Every election lives under ``<prefix>:{NAME}:`` (the braces are a Redis Cluster hash tag):

- ``leader``  our random per-leadership token, ``SET NX PX ttl``; renewed and deleted only
  while it still holds our token (one Lua script each);
- ``leader-info``  hash: token, term, node id, host, pid, since, ttl (expires with ``leader``);
- ``term``  the last term handed out; a new one is ``max(previous + 1, server TIME in ms)``
  so a Redis that lost its data never hands out an older term;
- ``resign``  the token of a leader asked to step down (also announced on pub/sub);
- ``members``, ``arrivals``, ``members-expiry``  heartbeats, arrival stamps from Redis
  TIME, and when each member is forgotten.

Waiters never poll: they subscribe to ``released`` before their first attempt and
otherwise sleep until the leader key's PTTL runs out.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from lelect.backends._redis_link import (
    Link,
    RedisOptions,
    Script,
    Subscription,
    check_ttl,
    is_transient,
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
from lelect.errors import BackendUnavailable, CampaignTimeout, ElectionBusy
from lelect.names import validate_election

if TYPE_CHECKING:
    from lelect.backends.urls import BackendURL

log = logging.getLogger("lelect.redis")

# Scripts check key types before they write: a script that fails half way keeps its writes.
_TYPE_CHECK = """
local function wrong_type(key, want)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' and kind ~= want then
    return redis.error_reply('WRONGTYPE key ' .. key .. ' holds a ' .. kind .. ', not a ' .. want)
  end
end
"""

_NOW_MS = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
"""

# KEYS: leader, leader-info, term, resign
# ARGV: token, ttl_ms, node_id, host, pid, elected channel
# -> {1, term} when won, else {0, pttl, holder node id, holder term}
# Trying again with the same token after a lost answer finds the election already ours:
# the lease is then extended from this call, as a renew would.
_ACQUIRE = Script(
    _TYPE_CHECK
    + """
local err = wrong_type(KEYS[1], 'string') or wrong_type(KEYS[2], 'hash')
  or wrong_type(KEYS[3], 'string') or wrong_type(KEYS[4], 'string')
if err then return err end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return {1, redis.call('HGET', KEYS[2], 'term')}
end
local previous = tonumber(redis.call('GET', KEYS[3]) or '0')
if not previous or previous ~= previous or previous == math.huge or previous == -math.huge then
  return redis.error_reply('WRONGTYPE key ' .. KEYS[3] .. ' does not hold a term number')
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
"""
    + _NOW_MS
    + """
  local term = string.format('%.0f', math.max(previous + 1, now_ms))
  redis.call('SET', KEYS[3], term)
  redis.call('DEL', KEYS[2], KEYS[4])
  redis.call('HSET', KEYS[2], 'token', ARGV[1], 'term', term, 'node_id', ARGV[3],
             'host', ARGV[4], 'pid', ARGV[5], 'since_ms', string.format('%.0f', now_ms),
             'ttl_ms', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  redis.call('PUBLISH', ARGV[6], term)
  return {1, term}
end
local holder = redis.call('HMGET', KEYS[2], 'token', 'node_id', 'term')
if holder[1] ~= redis.call('GET', KEYS[1]) then holder = {false, false, false} end
return {0, redis.call('PTTL', KEYS[1]), holder[2], holder[3]}
"""
)

# KEYS: leader, leader-info, resign; ARGV: token, ttl_ms -> {renewed, resign requested}
_RENEW = Script(
    """
local asked = redis.call('GET', KEYS[3]) == ARGV[1]
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0, 0} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {1, asked and 1 or 0}
"""
)

# KEYS: leader, leader-info, resign; ARGV: token, released channel, term -> 1 if released
_RELEASE = Script(
    """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""
)

# KEYS: leader, leader-info
# -> nil | {pttl} (holder unknown) | {pttl, term, node_id, host, pid, since_ms}
_LEADER = Script(
    _TYPE_CHECK
    + """
local err = wrong_type(KEYS[1], 'string') or wrong_type(KEYS[2], 'hash')
if err then return err end
local token = redis.call('GET', KEYS[1])
if not token then return false end
local info = redis.call('HMGET', KEYS[2], 'token', 'term', 'node_id', 'host', 'pid', 'since_ms')
local pttl = redis.call('PTTL', KEYS[1])
if info[1] ~= token then return {pttl} end
return {pttl, info[2], info[3], info[4], info[5], info[6]}
"""
)

# KEYS: leader, leader-info, resign; ARGV: term or '', resign channel -> 1 if asked
_REQUEST_RESIGN = Script(
    _TYPE_CHECK
    + """
local err = wrong_type(KEYS[3], 'string')
if err then return err end
local token = redis.call('GET', KEYS[1])
if not token then return 0 end
local info = redis.call('HMGET', KEYS[2], 'token', 'term', 'ttl_ms')
if info[1] ~= token or (ARGV[1] ~= '' and ARGV[1] ~= info[2]) then return 0 end
redis.call('SET', KEYS[3], token, 'PX', info[3] or '60000')
redis.call('PUBLISH', ARGV[2], info[2])
return 1
"""
)

# KEYS: members, arrivals, members-expiry; ARGV: node_id, heartbeat json, ttl_ms, max arrivals
_PUBLISH = Script(
    _TYPE_CHECK
    + """
local err = wrong_type(KEYS[1], 'hash') or wrong_type(KEYS[2], 'hash')
  or wrong_type(KEYS[3], 'zset')
if err then return err end
"""
    + _NOW_MS
    + """
local stamp = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
local now_text = string.format('%.0f', now_ms)
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_text)) do
  redis.call('HDEL', KEYS[1], node)
  redis.call('HDEL', KEYS[2], node)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_text)
local history = {}
for s in string.gmatch(redis.call('HGET', KEYS[2], ARGV[1]) or '', '%S+') do
  history[#history + 1] = s
end
history[#history + 1] = stamp
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1],
           table.concat(history, ' ', math.max(1, #history - tonumber(ARGV[4]) + 1)))
redis.call('ZADD', KEYS[3], string.format('%.0f', now_ms + tonumber(ARGV[3])), ARGV[1])
local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
local forget_at = string.format('%.0f', tonumber(last[2]))
for i = 1, 3 do redis.call('PEXPIREAT', KEYS[i], forget_at) end
return stamp
"""
)

# KEYS: members, arrivals, members-expiry -> {now sec, now usec, node, heartbeat, arrivals, ...}
_MEMBERS = Script(
    _TYPE_CHECK
    + """
local err = wrong_type(KEYS[1], 'hash') or wrong_type(KEYS[2], 'hash')
  or wrong_type(KEYS[3], 'zset')
if err then return err end
"""
    + _NOW_MS
    + """
local out = {now[1], now[2]}
local live = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. string.format('%.0f', now_ms), '+inf')
for _, node in ipairs(live) do
  out[#out + 1] = node
  out[#out + 1] = redis.call('HGET', KEYS[1], node) or ''
  out[#out + 1] = redis.call('HGET', KEYS[2], node) or ''
end
return out
"""
)

# KEYS: members, arrivals, members-expiry; ARGV: node_id
_REMOVE_MEMBER = Script(
    """
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""
)


@dataclass(frozen=True)
class ElectionKeys:
    """The keys and channels of one election, all under one hash tag."""

    prefix: str
    election: str

    def _key(self, name: str) -> str:
        return f"{self.prefix}:{{{self.election}}}:{name}"

    @property
    def leadership(self) -> list[str]:
        return [self._key("leader"), self._key("leader-info")]

    @property
    def term(self) -> str:
        return self._key("term")

    @property
    def resign(self) -> str:
        return self._key("resign")

    @property
    def members(self) -> list[str]:
        return [self._key("members"), self._key("arrivals"), self._key("members-expiry")]

    @property
    def released_channel(self) -> str:
        return self._key("released")

    @property
    def elected_channel(self) -> str:
        return self._key("elected")

    @property
    def resign_channel(self) -> str:
        return self._key("resign-requests")


class RedisLeadership(Leadership):
    """A Redis leadership: a renew thread keeps the lease (every ttl/3, each call bounded
    by the time left) and a listener thread hears resign requests."""

    def __init__(
        self,
        backend: RedisBackend,
        election: str,
        candidate: Candidate,
        term: int,
        token: str,
        lease_deadline: float,
        ttl: float,
        subscription: Subscription | None,
    ) -> None:
        super().__init__(backend, election, candidate, term, token, lease_deadline)
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
                renewed, asked = self._backend.link.run(
                    _RENEW,
                    [*self.keys.leadership, self.keys.resign],
                    [self.token, _ms(self.ttl)],
                    budget=min(left, interval),
                )
            except RedisError as exc:
                last_error = f" (last error: {self._backend.options.unavailable(exc)})"
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


class RedisBackend(Backend):
    """Elections in one Redis server (or one primary)."""

    scheme = "redis"
    lease_based = True

    def __init__(self, url: BackendURL) -> None:
        super().__init__(url)
        self.scheme = url.scheme
        self.options = RedisOptions.from_url(url)
        self.default_ttl = self.options.ttl
        self.link = Link(self.options)

    # -- leadership -------------------------------------------------------------------

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
        ttl = self.default_ttl if ttl is None else ttl
        check_ttl(ttl)
        keys = ElectionKeys(self.options.prefix, election)
        token = secrets.token_hex(16)
        give_up = None if timeout is None else time.monotonic() + timeout
        subscription = None
        if not no_wait:
            subscription = Subscription(self.link, [keys.released_channel, keys.resign_channel])
        retry = _Retry(self.options, give_up, context=self._context(election))
        try:
            while True:
                try:
                    if subscription is not None:
                        subscription.ensure(retry.budget())
                    t_send = time.monotonic()
                    reply = self.link.run(
                        _ACQUIRE,
                        [*keys.leadership, keys.term, keys.resign],
                        [
                            token,
                            _ms(ttl),
                            candidate.node_id,
                            candidate.host or "",
                            "" if candidate.pid is None else str(candidate.pid),
                            keys.elected_channel,
                        ],
                        retry.budget(),
                    )
                except RedisError as exc:
                    retry.failed(exc)
                    continue
                retry.succeeded()
                if int(reply[0]) == 1:
                    deadline = t_send + ttl - lease_drift(ttl)
                    if deadline <= time.monotonic():
                        # The answer came after the lease it granted ran out.
                        self._try_release(keys, token, int(reply[1]), retry.budget())
                        continue
                    leadership = RedisLeadership(
                        self,
                        election,
                        candidate,
                        int(reply[1]),
                        token,
                        deadline,
                        ttl,
                        subscription,
                    )
                    subscription = None  # the leadership's listener owns it now
                    leadership.start(granted_at=t_send)
                    return leadership
                pttl, holder, holder_term = int(reply[1]), reply[2], reply[3]
                if no_wait:
                    who = f" by {holder} (term {holder_term})" if holder else ""
                    raise ElectionBusy(f"election {election!r} is led{who}")
                if pttl < 0:
                    raise BackendUnavailable(
                        f"key {keys.leadership[0]} has no expiry: lelect did not write it;"
                        " delete it or use another ?prefix="
                    )
                assert subscription is not None
                self._wait_for_release(subscription, keys, pttl, give_up, retry)
        finally:
            if subscription is not None:
                subscription.close()

    def _wait_for_release(
        self,
        subscription: Subscription,
        keys: ElectionKeys,
        pttl: int,
        give_up: float | None,
        retry: _Retry,
    ) -> None:
        """Sleep until a release is announced or the leader key is gone. When the PTTL
        runs out, one PTTL call tells a renewed key (sleep on) from an expired one."""
        wake = time.monotonic() + pttl / 1000 + 0.001
        while True:
            now = time.monotonic()
            if give_up is not None and now >= give_up:
                raise CampaignTimeout(f"no leadership of {keys.election!r} within the timeout")
            if now >= wake:
                try:
                    pttl = int(self.link.call(retry.budget(), "PTTL", keys.leadership[0]))
                except RedisError as exc:
                    retry.failed(exc)
                    return
                if pttl <= 0:
                    return
                wake = time.monotonic() + pttl / 1000 + 0.001
                continue
            timeout = min(wake, give_up) if give_up is not None else wake
            try:
                message = subscription.next_message(timeout - now)
            except RedisError as exc:
                retry.failed(exc)  # resubscribe and try again
                return
            if message and message[0] == keys.released_channel:
                return

    def resign(self, leadership: Leadership) -> None:
        if isinstance(leadership, RedisLeadership):
            leadership.stopped.set()
        keys = ElectionKeys(self.options.prefix, leadership.election)
        # A lost leadership is most likely not ours any more: do not hang on a dead link.
        budget = self.options.connect_timeout
        if leadership.lost.is_set():
            budget = min(budget, 1.0)
        self._try_release(keys, leadership.token, leadership.term, budget)

    def _try_release(self, keys: ElectionKeys, token: str, term: int, budget: float) -> None:
        try:
            self.link.run(
                _RELEASE,
                [*keys.leadership, keys.resign],
                [token, keys.released_channel, str(term)],
                budget,
            )
        except RedisError as exc:
            # Not fatal: the key expires when the lease runs out.
            log.warning(
                "lelect: could not release %r (%s); it frees itself when the lease runs out",
                keys.election,
                self.options.unavailable(exc),
            )

    def leader(self, election: str) -> LeaderInfo | None:
        keys = ElectionKeys(self.options.prefix, validate_election(election))
        try:
            return self._leader(keys, self.options.connect_timeout)[0]
        except RedisError as exc:
            raise self.options.unavailable(exc, self._context(election)) from None

    def _leader(self, keys: ElectionKeys, budget: float) -> tuple[LeaderInfo | None, int]:
        """The leader and the leader key's PTTL in ms (0 when nobody leads)."""
        reply = self.link.run(_LEADER, keys.leadership, [], budget)
        if not reply:
            return None, 0
        pttl = int(reply[0])
        if len(reply) < 6:  # a token without lelect's record: somebody else's writer
            return LeaderInfo(node_id="(unknown)", term=0), pttl
        _, term, node_id, host, pid, since_ms = reply
        return (
            LeaderInfo(
                node_id=node_id or "(unknown)",
                term=int(term or 0),
                since=int(since_ms) / 1000 if since_ms else None,
                host=host or None,
                pid=int(pid) if pid else None,
            ),
            pttl,
        )

    def observe(
        self, election: str, stop: threading.Event | None = None
    ) -> Iterator[LeaderInfo | None]:
        keys = ElectionKeys(self.options.prefix, validate_election(election))
        stop = stop or threading.Event()
        subscription = Subscription(self.link, [keys.released_channel, keys.elected_channel])
        retry = _Retry(self.options, None, context=self._context(election))
        unset = object()
        last: object = unset
        try:
            while not stop.is_set():
                try:
                    subscription.ensure(retry.budget())
                    current, pttl = self._leader(keys, retry.budget())
                except RedisError as exc:
                    retry.failed(exc)
                    continue
                retry.succeeded()
                if current != last:
                    last = current
                    yield current
                # Wake on an announcement, when the key would expire, or to check ``stop``.
                wake = time.monotonic() + (pttl / 1000 + 0.001 if pttl > 0 else 3600.0)
                while not stop.is_set() and time.monotonic() < wake:
                    try:
                        if subscription.next_message(min(wake - time.monotonic(), 0.25)):
                            break
                    except RedisError:
                        break
        finally:
            subscription.close()

    def request_resign(self, election: str, term: int | None = None) -> bool:
        keys = ElectionKeys(self.options.prefix, validate_election(election))
        reply = self._call(
            _REQUEST_RESIGN,
            [*keys.leadership, keys.resign],
            ["" if term is None else str(int(term)), keys.resign_channel],
            election,
        )
        return bool(reply)

    # -- heartbeats ---------------------------------------------------------------------

    def publish(self, heartbeat: Heartbeat, ttl: float) -> None:
        keys = ElectionKeys(self.options.prefix, validate_election(heartbeat.election))
        self._call(
            _PUBLISH,
            keys.members,
            [heartbeat.node_id, json.dumps(heartbeat.to_dict()), _ms(ttl), MAX_ARRIVALS],
            heartbeat.election,
        )

    def remove_member(self, election: str, node_id: str) -> None:
        keys = ElectionKeys(self.options.prefix, validate_election(election))
        self._call(_REMOVE_MEMBER, keys.members, [node_id], election)

    def members(self, election: str) -> Members:
        keys = ElectionKeys(self.options.prefix, validate_election(election))
        reply = self._call(_MEMBERS, keys.members, [], election)
        now = int(reply[0]) + int(reply[1]) / 1e6
        records = [
            _member_record(node_id, heartbeat_json, arrivals)
            for node_id, heartbeat_json, arrivals in zip(
                reply[2::3], reply[3::3], reply[4::3], strict=True
            )
        ]
        records.sort(key=lambda record: record.node_id)
        return Members(election=election, now=now, records=tuple(records))

    def elections(self) -> list[str]:
        head = f"{self.options.prefix}:{{"
        names: set[str] = set()
        cursor = "0"
        try:
            while True:
                cursor, found = self.link.call(
                    self.options.connect_timeout, "SCAN", cursor, "MATCH", head + "*", "COUNT", 1000
                )
                for key in found:
                    name, sep, kind = key[len(head) :].rpartition("}:")
                    if sep and kind in ("leader", "members") and name:
                        names.add(name)
                if str(cursor) == "0":
                    return sorted(names)
        except RedisError as exc:
            raise self.options.unavailable(exc) from None

    # -- operations (stubs until the history lands) --------------------------------

    def history(self, election, limit=None):
        return []

    def slot_done(self, election, slot):
        return None

    def now(self) -> float:
        import time as _time

        return _time.time()

    def close(self) -> None:
        self.link.close()

    # -- helpers ------------------------------------------------------------------------

    def _call(self, script: Script, keys: list[str], args: list[Any], election: str) -> Any:
        try:
            return self.link.run(script, keys, args, self.options.connect_timeout)
        except RedisError as exc:
            raise self.options.unavailable(exc, self._context(election)) from None

    def _context(self, election: str) -> str:
        return f"under {self.options.prefix}:{{{election}}}"


class _Retry:
    """Connection trouble while campaigning: the first contact fails at once; later a
    streak of transient errors is borne for ``connect_timeout`` (or until ``give_up``)."""

    def __init__(self, options: RedisOptions, give_up: float | None, context: str) -> None:
        self._options = options
        self._give_up = give_up
        self._context = context
        self._contacted = False
        self._streak_start: float | None = None
        self._delay = 0.05

    def budget(self) -> float:
        """Time allowed for the next call: connect_timeout, the campaign timeout, and
        the rest of a failure streak, whichever is shortest."""
        now = time.monotonic()
        limit = self._options.connect_timeout
        if self._streak_start is not None:
            limit = self._streak_start + self._options.connect_timeout - now
        if self._give_up is not None:
            limit = min(limit, self._give_up - now)
        # Enough for one answer from a healthy server even with --timeout 0.
        return max(limit, min(0.05, self._options.connect_timeout))

    def succeeded(self) -> None:
        self._contacted = True
        self._streak_start = None
        self._delay = 0.05

    def failed(self, exc: RedisError) -> None:
        """Sleep before the next try, or raise BackendUnavailable when out of time."""
        now = time.monotonic()
        if self._streak_start is None:
            self._streak_start = now
        give_up = self._streak_start + self._options.connect_timeout
        if self._give_up is not None:
            give_up = min(give_up, self._give_up)
        if not self._contacted or not is_transient(exc) or now >= give_up:
            raise self._options.unavailable(exc, self._context) from None
        time.sleep(min(self._delay, max(give_up - now, 0.0)))
        self._delay = min(self._delay * 2, 0.5)


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


def _member_record(node_id: str, heartbeat_json: str, arrivals_text: str) -> MemberRecord:
    arrivals: list[float] = []
    for stamp in arrivals_text.split():
        try:
            arrivals.append(float(stamp))
        except ValueError:
            continue
    try:
        heartbeat = Heartbeat.from_dict(json.loads(heartbeat_json))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        detail = "no heartbeat stored" if not heartbeat_json else f"{type(exc).__name__}: {exc}"
        return MemberRecord(node_id, None, tuple(arrivals), error=f"unreadable record ({detail})")
    return MemberRecord(node_id, heartbeat, tuple(arrivals))
