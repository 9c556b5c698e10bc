"""The Redis backend's keys and Lua scripts: each verb is one script, guarded by the
leadership's token, so a verb either happens whole or not at all.

The job's keeper runs :data:`RELEASE` too (the hand-back, ``handback``): the
recipe RedisBackend.hand_back makes carries the script, its keys and its arguments.

Every key of an election sits under ``<prefix>:{NAME}:`` (a Redis Cluster hash tag):

- ``leader``  our random per-leadership token, ``SET NX PX ttl``;
- ``leader-info``  hash: token, term, node id, host, pid, since, ttl (expires with it);
- ``term``  the last term handed out: ``max(previous + 1, server TIME in ms)``;
- ``resign``  the token of a leader asked to step down (also announced on pub/sub);
- ``history``  sorted set: one JSON entry per leadership, scored by its term, newest
  ``?history=N`` kept;
- ``slots``, ``slots-order``  once-per slots done: hash slot -> the entry of the
  leadership that completed it, and sorted set slot -> term (newest MAX_SLOTS kept);
- ``members``, ``arrivals``, ``members-expiry``  member records, arrival stamps from
  Redis TIME, and when each member is forgotten;
- ``line``, ``line-expiry``  the candidates waiting, as tickets: sorted sets token ->
  arrival (server time in µs) and token -> when the ticket runs out (ms); a release wakes
  only the head of the line, on its own channel ``wake:<token>`` (:data:`RELEASE`);
- ``boot``  hash: the Redis instance (run id / replication id) that last considered a grant, the
  earliest moment (``base_ms``) its leases can have been granted from, and the longest
  ttl ever asked for (``max_ttl_ms``): the delayed-restart rule (:data:`ACQUIRE`);
- ``note:<key>``  a note (``Backend.put_note``): a string, with Redis's own PX expiry.

Channels: ``released`` (a leader let go: for observers), ``elected`` (a new leader),
``resign-requests``, and ``wake:<token>`` per waiting candidate (the head of the line).
Scripts check key types before their first write: a script that fails half way keeps
what it wrote.
"""

from __future__ import annotations

from lelect.backends.records import MAX_SLOTS, VANISHED_REASON
from lelect.frozen import Record

TYPE_CHECKING = False  # not typing's (~1.5 ms of every start): annotations only
if TYPE_CHECKING:
    from typing import Any


class Script(Record):
    """A Lua script, run by EVALSHA and loaded with EVAL when the server lacks it."""

    text: str

    @property
    def sha(self) -> str:
        return sha1_hex(self.text.encode())


def sha1_hex(data: bytes) -> str:
    """SHA-1 as Redis names scripts by it: CPython's own ``_sha1`` where there is one
    (``hashlib`` loads OpenSSL's libcrypto, 3-4 MB of every waiting candidate)."""
    try:
        from _sha1 import sha1  # type: ignore[import-not-found]
    except ImportError:  # another Python
        from hashlib import sha1
    return sha1(data).hexdigest()


class RedisKeys(Record):
    """The keys and channels of one election, all under one hash tag."""

    prefix: str
    election: str

    def _key(self, name: str) -> str:
        return f"{self.prefix}:{{{self.election}}}:{name}"

    @property
    def head(self) -> str:
        """What every key of the election starts with (for messages)."""
        return self._key("")

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
    def history(self) -> str:
        return self._key("history")

    @property
    def slots(self) -> list[str]:
        return [self._key("slots"), self._key("slots-order")]

    @property
    def boot(self) -> str:
        return self._key("boot")

    @property
    def members(self) -> list[str]:
        return [self._key("members"), self._key("arrivals"), self._key("members-expiry")]

    @property
    def line(self) -> list[str]:
        return [self._key("line"), self._key("line-expiry")]

    def note(self, key: str) -> str:
        """A note's key (``key`` checked by ``check_note_key``: never a brace)."""
        return self._key("note:" + key)

    @property
    def wake_prefix(self) -> str:
        return self._key("wake:")

    def wake_channel(self, token: str) -> str:
        """The channel a waiting candidate sleeps on: a release wakes the head only."""
        return self.wake_prefix + token

    @property
    def released_channel(self) -> str:
        return self._key("released")

    @property
    def elected_channel(self) -> str:
        return self._key("elected")

    @property
    def resign_channel(self) -> str:
        return self._key("resign-requests")

    # What each script is given, in its KEYS order.

    @property
    def acquire_keys(self) -> list[str]:
        return [*self.leadership, self.term, self.resign, self.history, self.boot, *self.line]

    @property
    def renew_keys(self) -> list[str]:
        return [*self.leadership, self.resign]

    @property
    def release_keys(self) -> list[str]:
        return [*self.leadership, self.resign, self.history, *self.slots, *self.members,
                *self.line]


_TYPE_CHECK = """
local function wrong_type(key, want)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' and kind ~= want then
    return redis.error_reply('WRONGTYPE key ' .. key .. ' holds a ' .. kind .. ', not a ' .. want)
  end
end
"""

_NOW = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local now_s = tonumber(now[1]) + tonumber(now[2]) / 1000000
"""

# The history: a sorted set of JSON entries (HistoryEntry's fields) scored by term.
_HISTORY = """
local function entry_of(history, term)
  for _, text in ipairs(redis.call('ZRANGEBYSCORE', history, term, term)) do
    local ok, entry = pcall(cjson.decode, text)
    if ok and type(entry) == 'table' then return entry, text end
  end
end
local function store_entry(history, term, old_text, entry)
  if old_text then redis.call('ZREM', history, old_text) end
  redis.call('ZADD', history, term, cjson.encode(entry))
end
-- Close the entry of ``term`` if it is still running (the first writer wins).
local function close_entry(history, term, outcome, ended, exit_status, reason, slot)
  local entry, text = entry_of(history, term)
  if not entry or entry.outcome ~= 'running' then return nil end
  entry.outcome, entry.ended = outcome, ended
  entry.exit_status, entry.reason, entry.slot = exit_status, reason, slot
  store_entry(history, term, text, entry)
  return entry
end
local function optional(text) if text == '' then return nil end return text end
"""

_FORGET_MEMBER = """
local function forget_member(members, arrivals, expiry, node)
  redis.call('HDEL', members, node)
  redis.call('HDEL', arrivals, node)
  redis.call('ZREM', expiry, node)
end
"""

# The line of waiting candidates (herd-free hand-off). A ticket is a token in ``line``
# (scored by arrival) and in ``line-expiry`` (scored by when it runs out). A release
# publishes to the head's own channel only; PUBLISH counts the subscribers it reached, so
# a candidate that died in line (its connection is gone) is skipped at once, as is a
# ticket whose time ran out (a frozen waiter). A notification lost anyway costs at most
# what was left of the lease: every waiter also sleeps on the leader key's PTTL.
_LINE = """
local function leave_line(line, expiry, token)
  redis.call('ZREM', line, token)
  redis.call('ZREM', expiry, token)
end
local function wake_next(line, expiry, prefix, message, now_ms)
  for _ = 1, 1000 do
    local head = redis.call('ZRANGE', line, 0, 0)[1]
    if not head then return 0 end
    local expires = tonumber(redis.call('ZSCORE', expiry, head) or '0') or 0
    if expires > now_ms and redis.call('PUBLISH', prefix .. head, message) > 0 then
      return 1
    end
    leave_line(line, expiry, head)
  end
  return 0
end
"""

# The delayed-restart rule. A Redis that restarted without its data (no persistence), or
# a replica promoted in its master's place, may have forgotten leases that still run: it
# grants none until the longest lease it could have granted has run out. Leases of an
# earlier instance were all granted before this one started, so a restarted instance
# waits max ttl from its start (TIME - uptime + 1 s: the uptime may be a second over); a promoted replica (it has a second
# replication id) cannot tell when its master last granted and waits max ttl from the
# first attempt it sees. The instance is told by its run id and its replication id
# together: a master demoted to a replica and promoted back keeps its run id, but not
# its replication id, and the master in between may have granted leases it never
# received. Without INFO (a server that renames it), the rule falls back to "no boot
# record: wait max ttl from now".
# -> milliseconds to wait (<= 0: grants may go ahead).
_RESTART_WAIT = """
local function field(info, name)
  if type(info) ~= 'string' then return nil end
  return string.match(info, name .. ':([%w]+)')
end
local function restart_wait(boot, ttl_ms, now_ms)
  local server = redis.pcall('INFO', 'server')
  local replication = redis.pcall('INFO', 'replication')
  local run_id = field(server, 'run_id') or 'unknown'
  local uptime = tonumber(field(server, 'uptime_in_seconds') or '')
  local replid2 = field(replication, 'master_replid2')
  local promoted = replid2 == nil or string.match(replid2, '^0+$') == nil
  local instance = run_id .. '/' .. (field(replication, 'master_replid') or 'unknown')
  local mark = redis.call('HMGET', boot, 'instance', 'base_ms', 'max_ttl_ms')
  local max_ttl = math.max(tonumber(mark[3] or '') or 0, ttl_ms)
  local base = tonumber(mark[2] or '')
  if mark[1] ~= instance or not base then
    if promoted or not uptime or run_id == 'unknown' then
      base = now_ms
    else
      -- uptime_in_seconds is two whole-second clocks subtracted: it may be up to 1 s
      -- more than the instance has really run, so count the start 1 s later.
      base = now_ms - (uptime - 1) * 1000
    end
  end
  redis.call('HDEL', boot, 'run_id')  -- the field before replication ids counted
  redis.call('HSET', boot, 'instance', instance, 'base_ms', string.format('%.0f', base),
             'max_ttl_ms', string.format('%.0f', max_ttl))
  return base + max_ttl - now_ms
end
"""

# KEYS: leader, leader-info, term, resign, history, boot, line, line-expiry
# ARGV: token, ttl_ms, node_id, host, pid, elected channel, election, history limit,
#       restart guard ('1' on, '0' off), join the line ('1': a loser takes or keeps its
#       ticket, good for what is left of the lease plus ttl; a winner leaves the line)
# -> {1, term, since_ms} when won, else {0, pttl[, term, node id, host, pid, since_ms]}
#    (while the restart guard holds grants back: {0, milliseconds left})
# Trying again with the same token after a lost answer finds the election already ours:
# the lease is then extended from this call, as a renew would.
ACQUIRE = Script(
    _TYPE_CHECK
    + _HISTORY
    + _RESTART_WAIT
    + _LINE
    + """
local err = wrong_type(KEYS[1], 'string') or wrong_type(KEYS[2], 'hash')
  or wrong_type(KEYS[3], 'string') or wrong_type(KEYS[4], 'string')
  or wrong_type(KEYS[5], 'zset') or wrong_type(KEYS[6], 'hash')
  or wrong_type(KEYS[7], 'zset') or wrong_type(KEYS[8], 'zset')
if err then return err end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  leave_line(KEYS[7], KEYS[8], ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  return {1, unpack(redis.call('HMGET', KEYS[2], 'term', 'since_ms'))}
end
local previous = tonumber(redis.call('GET', KEYS[3]) or '0')
if not previous or previous ~= previous or previous == math.huge or previous == -math.huge then
  return redis.error_reply('WRONGTYPE key ' .. KEYS[3] .. ' does not hold a term number')
end
"""
    + _NOW
    + """
if ARGV[9] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then
  local wait = restart_wait(KEYS[6], tonumber(ARGV[2]), now_ms)
  if wait > 0 then return {0, math.ceil(wait)} end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local term = string.format('%.0f', math.max(previous + 1, now_ms))
  redis.call('SET', KEYS[3], term)
  redis.call('DEL', KEYS[2], KEYS[4])
  redis.call('HSET', KEYS[2], 'token', ARGV[1], 'term', term, 'node_id', ARGV[3],
             'host', ARGV[4], 'pid', ARGV[5], 'since_ms', string.format('%.0f', now_ms),
             'ttl_ms', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
  -- The leader before us left no word: close its entry with the time we found out.
  local newest = redis.call('ZRANGE', KEYS[5], -1, -1, 'WITHSCORES')
  if newest[2] then
    close_entry(KEYS[5], newest[2], 'vanished', now_s, nil, '"""
    + VANISHED_REASON
    + """', nil)
  end
  store_entry(KEYS[5], term, nil, {
    election = ARGV[7], term = tonumber(term), node_id = ARGV[3], host = optional(ARGV[4]),
    pid = tonumber(ARGV[5]), started = now_s, outcome = 'running'})
  redis.call('ZREMRANGEBYRANK', KEYS[5], 0, -1 - tonumber(ARGV[8]))
  leave_line(KEYS[7], KEYS[8], ARGV[1])
  redis.call('PUBLISH', ARGV[6], term)
  return {1, term, string.format('%.0f', now_ms)}
end
local holder = redis.call('HMGET', KEYS[2], 'token', 'node_id', 'term', 'host', 'pid', 'since_ms')
local pttl = redis.call('PTTL', KEYS[1])
if ARGV[10] == '1' then
  redis.call('ZADD', KEYS[7], 'NX', string.format('%.0f', now_ms * 1000 + tonumber(now[2]) % 1000),
             ARGV[1])
  redis.call('ZADD', KEYS[8], string.format('%.0f', now_ms + math.max(pttl, 0) + tonumber(ARGV[2])),
             ARGV[1])
end
if holder[1] ~= redis.call('GET', KEYS[1]) then return {0, pttl} end
return {0, pttl, holder[3], holder[2], holder[4], holder[5], holder[6]}
"""
)

# KEYS: leader, leader-info, resign; ARGV: token, ttl_ms -> {renewed, resign requested}
RENEW = Script(
    """
local asked = redis.call('GET', KEYS[3]) == ARGV[1]
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0, 0} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {1, asked and 1 or 0}
"""
)

# KEYS: leader, leader-info, resign, history, slots, slots-order, members, arrivals,
#       members-expiry, line, line-expiry
# ARGV: token, term, released channel, outcome, exit status or '', reason or '',
#       once-per slot or '', max slots, node id whose member record goes or '',
#       wake channel prefix
# -> 1 if we still led and released, 0 if the leadership was no longer ours.
# A release announces itself on ``released`` (observers) and wakes the head of the line
# only (waiting candidates).
# Our own history entry is closed either way if it still runs; the slot is marked done
# only with it (an exited job with status 0 ended while nobody else could lead).
# The job's keeper runs this script too (the hand-back), forgetting our member record.
RELEASE = Script(
    _TYPE_CHECK
    + _HISTORY
    + _FORGET_MEMBER
    + _LINE
    + """
local err = wrong_type(KEYS[1], 'string') or wrong_type(KEYS[4], 'zset')
  or wrong_type(KEYS[5], 'hash') or wrong_type(KEYS[6], 'zset') or wrong_type(KEYS[7], 'hash')
  or wrong_type(KEYS[8], 'hash') or wrong_type(KEYS[9], 'zset')
  or wrong_type(KEYS[10], 'zset') or wrong_type(KEYS[11], 'zset')
if err then return err end
"""
    + _NOW
    + """
local ours = redis.call('GET', KEYS[1]) == ARGV[1]
if ours then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  redis.call('PUBLISH', ARGV[3], ARGV[2])
  wake_next(KEYS[10], KEYS[11], ARGV[10], ARGV[2], now_ms)
end
local slot = nil
if ARGV[4] == 'exited' and ARGV[5] == '0' then slot = optional(ARGV[7]) end
local entry = close_entry(KEYS[4], ARGV[2], ARGV[4], now_s, tonumber(ARGV[5]),
                          optional(ARGV[6]), slot)
if entry and slot then
  redis.call('HSET', KEYS[5], slot, cjson.encode(entry))
  redis.call('ZADD', KEYS[6], ARGV[2], slot)
  local gone = redis.call('ZRANGE', KEYS[6], 0, -1 - tonumber(ARGV[8]))
  for _, old in ipairs(gone) do redis.call('HDEL', KEYS[5], old) end
  redis.call('ZREMRANGEBYRANK', KEYS[6], 0, -1 - tonumber(ARGV[8]))
end
if ARGV[9] ~= '' then forget_member(KEYS[7], KEYS[8], KEYS[9], ARGV[9]) end
return ours and 1 or 0
"""
)

# KEYS: leader, leader-info
# -> nil | {pttl} (holder unknown) | {pttl, term, node_id, host, pid, since_ms}
LEADER = Script(
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
REQUEST_RESIGN = Script(
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

_MEMBER_TYPES = """
local err = wrong_type(KEYS[1], 'hash') or wrong_type(KEYS[2], 'hash')
  or wrong_type(KEYS[3], 'zset')
if err then return err end
"""

# KEYS: members, arrivals, members-expiry
# ARGV: node_id, member record (records.encode_member), ttl_ms, max arrivals -> stamp
PUBLISH = Script(
    _TYPE_CHECK
    + _FORGET_MEMBER
    + _MEMBER_TYPES
    + _NOW
    + """
local stamp = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
local now_text = string.format('%.0f', now_ms)
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_text)) do
  forget_member(KEYS[1], KEYS[2], KEYS[3], node)
end
local stamps = {}
for s in string.gmatch(redis.call('HGET', KEYS[2], ARGV[1]) or '', '%S+') do
  stamps[#stamps + 1] = s
end
stamps[#stamps + 1] = stamp
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1],
           table.concat(stamps, ' ', math.max(1, #stamps - tonumber(ARGV[4]) + 1)))
redis.call('ZADD', KEYS[3], string.format('%.0f', now_ms + tonumber(ARGV[3])), ARGV[1])
local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
local forget_at = string.format('%.0f', tonumber(last[2]))
for i = 1, 3 do redis.call('PEXPIREAT', KEYS[i], forget_at) end
return stamp
"""
)

# KEYS: members, arrivals, members-expiry
# -> {now sec, now usec, node, record, arrivals, node, record, arrivals, ...}
MEMBERS = Script(
    _TYPE_CHECK
    + _MEMBER_TYPES
    + _NOW
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
REMOVE_MEMBER = Script(
    _FORGET_MEMBER
    + """
forget_member(KEYS[1], KEYS[2], KEYS[3], ARGV[1])
return 1
"""
)

# KEYS: note; ARGV: most bytes -> the note, or nil (none, or longer than that: a read of
# a note is bounded, so an oversized value never leaves the server)
GET_NOTE = Script(
    _TYPE_CHECK
    + """
local err = wrong_type(KEYS[1], 'string')
if err then return err end
if redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[1]) then return false end
return redis.call('GET', KEYS[1])
"""
)


#: Where the job's exit status sits in :data:`RELEASE`'s ARGV.
RELEASE_EXIT_STATUS = 4


def release_args(keys: RedisKeys, token: str, term: int, outcome: str,
                 exit_status: int | None, reason: str | None, slot: str | None,
                 forget_member: str = "") -> list[Any]:
    """:data:`RELEASE`'s ARGV."""
    return [token, str(term), keys.released_channel, outcome,
            "" if exit_status is None else str(int(exit_status)), reason or "", slot or "",
            MAX_SLOTS, forget_member, keys.wake_prefix]
