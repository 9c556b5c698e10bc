"""The MySQL/MariaDB backend's SQL: the tables and one statement text per verb, rendered
with literals by :func:`render`. Standard library only: the keeper's hand-back sends
the backend's own release text (:func:`release_statement`) over its own wire client.

Tables (in the URL's database, names starting with ``?prefix=``, default ``lelect_``):

- ``lease``    one row per led election: the leadership's random token, who, and
  ``expires_at`` by the server's clock (``NOW(6)``, UTC: every session sets
  ``time_zone = '+00:00'``). Taken only if absent or expired; renewed and released
  only ``WHERE token = ours AND expires_at > NOW(6)``.
- ``term``     the per-election term counter and the token it was handed to; never
  deleted, so terms never go back.
- ``history``  one row per leadership, opened by the transaction that wins it and closed
  by the one that releases it; the newest ``?history=N`` kept.
- ``slot``     once-per slots done, with the leadership that did them.
- ``member``   heartbeats (records.py's codec) and arrival stamps by the server's clock.
- ``note``     small records beside an election (``put_note``): bytes under a key, until
  ``expires_at`` by the server's clock (NULL: until deleted).
- ``schema_version``  one row: the version of this layout, for later migrations.

MySQL has no data-modifying CTEs, so a verb that writes more than one table is one
transaction sent in one round trip (multi-statement text); its guard is one statement
(the lease upsert, the guarded DELETE), and everything else in it is conditioned on
that statement's outcome. A transaction cut short by a lost connection is rolled back
by the server. ``ON DUPLICATE KEY UPDATE`` assignments refer only to columns assigned
after them (``expires_at`` last), so MySQL's left-to-right rule and MariaDB's
``SIMULTANEOUS_ASSIGNMENT`` give the same result.
"""

from __future__ import annotations

import math
import re

from lelect.backends.hashes import sha256
from lelect.backends.records import MAX_ARRIVALS, MAX_SLOTS

SCHEMA_VERSION = 1
DEFAULT_PREFIX = "lelect_"
#: A table prefix lelect accepts: plain lower-case, so names never need care.
PREFIX = re.compile(r"[a-z][a-z0-9_]{0,31}")
TABLES = ("schema_version", "term", "lease", "history", "slot", "member", "note")

#: Every session's settings (the backend's and the hand-back's): expiry is UTC by the
#: server's clock whatever the server's time zone, and text is utf8mb4.
SESSION_SETUP = "SET time_zone = '+00:00', NAMES utf8mb4 COLLATE utf8mb4_bin"


def literal(value: object) -> str:
    """``value`` as an SQL literal. Text goes as a hex literal with a character set
    introducer, so neither ``NO_BACKSLASH_ESCAPES`` nor any byte in it matters."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, bytes):
        return f"X'{value.hex()}'"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {value!r}")
        return repr(value)
    # Undecodable bytes from argv (surrogate escapes) cannot go into a utf8mb4 column.
    data = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace").encode()
    return f"_utf8mb4 X'{data.hex()}' COLLATE utf8mb4_bin"


def render(statement: str, prefix: str, **values: object) -> str:
    """``statement`` with each ``%(t_table)s`` as the prefixed table name and each other
    ``%(name)s`` as its literal."""
    if not PREFIX.fullmatch(prefix):
        raise ValueError(f"bad table prefix {prefix!r}")
    tables = {f"t_{name}": f"`{prefix}{name}`" for name in TABLES}
    return statement % {**tables, **{k: literal(v) for k, v in values.items()}}


def microseconds(seconds: float) -> int:
    return max(1, int(round(seconds * 1_000_000)))


def with_timeout(sql: str, budget: float, mariadb: bool) -> str:
    """``sql`` behind the settings that make the server give up on it by itself within
    ``budget`` seconds: MariaDB's ``max_statement_time`` (every statement), MySQL's
    ``max_execution_time`` (read-only SELECTs only); on both, ``innodb_lock_wait_timeout``
    (whole seconds, at least 1) for a statement stuck behind a row lock."""
    lock_wait = max(1, math.ceil(budget))
    if mariadb:
        limit = f"max_statement_time = {max(budget, 0.001):.3f}"
    else:
        limit = f"max_execution_time = {max(1, int(budget * 1000))}"
    return f"SET SESSION {limit}, innodb_lock_wait_timeout = {lock_wait};\n{sql}"


def lock_name(database: str, prefix: str, election: str) -> str:
    """The election's wake-up lock (``GET_LOCK``; at most 64 characters): held by the
    leader, waited on by the line. Never the leadership itself."""
    digest = sha256(f"{database}/{prefix}/{election}".encode("utf-8", "surrogateescape"))
    return "lelect:" + digest.hexdigest()[:48]


# -- the schema -----------------------------------------------------------------------------

_TEXT = "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
_ELECTION = "election VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL"
_TOKEN = "CHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL"
_TABLE = f"ENGINE=InnoDB DEFAULT {_TEXT}"

CREATE_TABLES = f"""
CREATE TABLE IF NOT EXISTS %(t_schema_version)s (
    id TINYINT NOT NULL PRIMARY KEY,
    version INT NOT NULL
) {_TABLE};
CREATE TABLE IF NOT EXISTS %(t_term)s (
    {_ELECTION} PRIMARY KEY,
    term BIGINT NOT NULL,
    token {_TOKEN}
) {_TABLE};
CREATE TABLE IF NOT EXISTS %(t_lease)s (
    {_ELECTION} PRIMARY KEY,
    token {_TOKEN},
    attempt {_TOKEN},
    node_id VARCHAR(256) NOT NULL,
    host VARCHAR(1024),
    pid INT,
    since DATETIME(6) NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    resign_requested TINYINT NOT NULL DEFAULT 0
) {_TABLE};
CREATE TABLE IF NOT EXISTS %(t_history)s (
    {_ELECTION},
    term BIGINT NOT NULL,
    token {_TOKEN},
    node_id VARCHAR(256) NOT NULL,
    host VARCHAR(1024),
    pid INT,
    started DATETIME(6) NOT NULL,
    ended DATETIME(6),
    outcome VARCHAR(16) NOT NULL,
    exit_status INT,
    slot TEXT,
    reason TEXT,
    PRIMARY KEY (election, term)
) {_TABLE};
CREATE TABLE IF NOT EXISTS %(t_slot)s (
    {_ELECTION},
    slot_key CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    slot TEXT NOT NULL,
    term BIGINT NOT NULL,
    node_id VARCHAR(256) NOT NULL,
    host VARCHAR(1024),
    pid INT,
    started DATETIME(6),
    ended DATETIME(6),
    exit_status INT,
    PRIMARY KEY (election, slot_key),
    KEY by_end (election, ended)
) {_TABLE};
CREATE TABLE IF NOT EXISTS %(t_member)s (
    {_ELECTION},
    node_id VARCHAR(256) NOT NULL,
    record MEDIUMTEXT NOT NULL,
    arrivals TEXT NOT NULL,
    forget_at DATETIME(6) NOT NULL,
    PRIMARY KEY (election, node_id)
) {_TABLE};
CREATE TABLE IF NOT EXISTS %(t_note)s (
    {_ELECTION},
    note_key VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    data BLOB NOT NULL,
    expires_at DATETIME(6),
    attempt {_TOKEN},
    PRIMARY KEY (election, note_key)
) {_TABLE};
INSERT INTO %(t_schema_version)s (id, version) VALUES (1, %(version)s)
ON DUPLICATE KEY UPDATE id = id;
SELECT MAX(version) FROM %(t_schema_version)s
"""

#: Names the newest table too: tables made before it (by an older lelect, which works
#: beside it unchanged: no new version) read as missing, and CREATE_TABLES adds it.
SCHEMA_VERSION_OF = """SELECT MAX(version) FROM %(t_schema_version)s
WHERE NOT EXISTS (SELECT 1 FROM %(t_note)s WHERE FALSE)"""

# -- leadership -----------------------------------------------------------------------------

_TAKE = "IF(expires_at <= NOW(6), {new}, {old})"


def _take(column: str, new: str) -> str:
    return f"{column} = " + _TAKE.format(new=new, old=column)


#: Win the election if its lease is absent or expired (the upsert's guard, on the locked
#: row; ``attempt`` tells this statement's win from an earlier one of ours), and only
#: then: bump the term, close an earlier "running" entry as vanished, open ours, prune
#: the history. A loser learns who holds the lease and for how long by the server's
#: clock. -> (won term | NULL, holder token, holder node id, holder term, seconds left)
ACQUIRE = f"""SET @lelect_won = 0, @lelect_term = NULL;
START TRANSACTION;
INSERT INTO %(t_lease)s /* lelect acquire */
    (election, token, attempt, node_id, host, pid, since, expires_at, resign_requested)
VALUES (%(election)s, %(token)s, %(attempt)s, %(node_id)s, %(host)s, %(pid)s, NOW(6),
        NOW(6) + INTERVAL %(ttl_us)s MICROSECOND, 0)
ON DUPLICATE KEY UPDATE
    {_take("token", "%(token)s")}, {_take("attempt", "%(attempt)s")},
    {_take("node_id", "%(node_id)s")}, {_take("host", "%(host)s")},
    {_take("pid", "%(pid)s")}, {_take("since", "NOW(6)")},
    {_take("resign_requested", "0")},
    {_take("expires_at", "NOW(6) + INTERVAL %(ttl_us)s MICROSECOND")};
SELECT attempt = %(attempt)s INTO @lelect_won FROM %(t_lease)s WHERE election = %(election)s;
INSERT INTO %(t_term)s (election, term, token)
SELECT %(election)s, 1, %(token)s FROM DUAL WHERE @lelect_won
ON DUPLICATE KEY UPDATE term = term + 1, token = %(token)s;
SELECT term INTO @lelect_term FROM %(t_term)s WHERE election = %(election)s AND @lelect_won;
UPDATE %(t_history)s SET outcome = 'vanished', ended = NOW(6), reason = %(vanished_reason)s
WHERE election = %(election)s AND outcome = 'running' AND @lelect_won;
INSERT INTO %(t_history)s (election, term, token, node_id, host, pid, started, outcome)
SELECT %(election)s, @lelect_term, %(token)s, %(node_id)s, %(host)s, %(pid)s, since, 'running'
FROM %(t_lease)s WHERE election = %(election)s AND @lelect_won
ON DUPLICATE KEY UPDATE token = %(token)s, node_id = %(node_id)s, host = %(host)s,
    pid = %(pid)s, started = NOW(6), ended = NULL, outcome = 'running', exit_status = NULL,
    slot = NULL, reason = NULL;
DELETE FROM %(t_history)s
WHERE election = %(election)s AND @lelect_won AND term <= @lelect_term - %(history_limit)s;
COMMIT;
SELECT IF(@lelect_won, @lelect_term, NULL), l.token, l.node_id, t.term,
       TIMESTAMPDIFF(MICROSECOND, NOW(6), l.expires_at) / 1000000
FROM (SELECT 1) AS one
LEFT JOIN %(t_lease)s l ON l.election = %(election)s
LEFT JOIN %(t_term)s t ON t.election = l.election AND t.token = l.token"""

#: Sent with each renew: the server closes the leader's connection (and so frees the
#: election's doorbell, its named lock) once it has been silent this long. A leader's
#: host cut off by a partition leaves its connection open, and the server's default
#: (``wait_timeout``, 8 hours) would keep the doorbell held that long. A leader that
#: went a lease without a renew has lost its lease anyway.
LEADER_IDLE = "SET SESSION wait_timeout = %(seconds)s;\n"

#: Extend our live lease from now by the server's clock.
#: -> (1 if renewed else 0, resign requested?)
RENEW = """UPDATE %(t_lease)s /* lelect renew */
SET expires_at = NOW(6) + INTERVAL %(ttl_us)s MICROSECOND
WHERE election = %(election)s AND token = %(token)s AND expires_at > NOW(6);
SELECT ROW_COUNT(), (SELECT resign_requested FROM %(t_lease)s
                     WHERE election = %(election)s AND token = %(token)s)"""

#: Release our live lease (only by our token); close our own history entry if still
#: "running" (first writer wins); then RELEASE_SLOT and RELEASE_FORGET when they apply, and
#: RELEASE_END. -> (released, entry closed, slot marked, member dropped) as counts
RELEASE = """START TRANSACTION;
DELETE FROM %(t_lease)s /* lelect release */
WHERE election = %(election)s AND token = %(token)s AND expires_at > NOW(6);
SET @lelect_released = ROW_COUNT();
UPDATE %(t_history)s
SET ended = NOW(6), outcome = %(outcome)s, exit_status = %(exit_status)s, reason = %(reason)s,
    slot = IF(%(outcome)s = 'exited' AND %(exit_status)s = 0, %(slot)s, NULL)
WHERE election = %(election)s AND term = %(term)s AND token = %(token)s
  AND outcome = 'running';
SET @lelect_closed = ROW_COUNT();
"""

#: Mark a once-per slot done (an "exited 0" of a run with a slot) if we closed the entry.
RELEASE_SLOT = """INSERT IGNORE INTO %(t_slot)s
    (election, slot_key, slot, term, node_id, host, pid, started, ended, exit_status)
SELECT election, SHA2(slot, 256), slot, term, node_id, host, pid, started, ended, exit_status
FROM %(t_history)s
WHERE @lelect_closed > 0 AND election = %(election)s AND term = %(term)s
  AND slot IS NOT NULL;
SET @lelect_done = ROW_COUNT();
DELETE FROM %(t_slot)s WHERE @lelect_done > 0 AND election = %(election)s AND ended < (
    SELECT ended FROM (SELECT ended FROM %(t_slot)s WHERE election = %(election)s
                       ORDER BY ended DESC LIMIT 1 OFFSET %(slots_kept)s) AS oldest_kept);
"""

#: Drop our member record (the keeper's hand-back).
RELEASE_FORGET = """DELETE FROM %(t_member)s WHERE election = %(election)s AND node_id = %(node_id)s;
SET @lelect_forgotten = ROW_COUNT();
"""

RELEASE_END = """COMMIT;
SELECT @lelect_released, @lelect_closed, %(done)s, %(forgotten)s"""


def release_statement(prefix: str, *, election: str, token: str, term: int, node_id: str,
                      outcome: str, exit_status: int | None, reason: str | None,
                      slot: str | None, forget: bool) -> str:  # fmt: skip
    """:data:`RELEASE` for one leadership: the backend's resign and the keeper's hand-back
    (``forget``: drop the member record too) send the same text. The parts that cannot
    apply are left out (each statement of a text is server work: a plain release is 7)."""
    marks_slot = slot is not None and outcome == "exited" and exit_status == 0
    text = (RELEASE + (RELEASE_SLOT if marks_slot else "") + (RELEASE_FORGET if forget else "")
            + RELEASE_END % {"done": "@lelect_done" if marks_slot else "0",
                             "forgotten": "@lelect_forgotten" if forget else "0"})
    return render(
        text, prefix, election=election, token=token, term=term, node_id=node_id,
        outcome=outcome, exit_status=exit_status, reason=reason, slot=slot,
        slots_kept=MAX_SLOTS - 1,
    )  # fmt: skip


#: Who leads: the live lease and its term. -> (node id, term, since, host, pid, seconds left)
LEADER = """SELECT l.node_id, t.term, UNIX_TIMESTAMP(l.since), l.host, l.pid,
       TIMESTAMPDIFF(MICROSECOND, NOW(6), l.expires_at) / 1000000
FROM %(t_lease)s l
LEFT JOIN %(t_term)s t ON t.election = l.election AND t.token = l.token
WHERE l.election = %(election)s AND l.expires_at > NOW(6)"""

#: Ask the live leader (of ``term`` when given) to step down. -> (1 if asked else 0)
REQUEST_RESIGN = """UPDATE %(t_lease)s l /* lelect request-resign */
JOIN %(t_term)s t ON t.election = l.election AND t.token = l.token
SET l.resign_requested = 1
WHERE l.election = %(election)s AND l.expires_at > NOW(6)
  AND (%(term_given)s = 0 OR t.term = %(term_value)s);
SELECT ROW_COUNT()"""

# -- heartbeats -----------------------------------------------------------------------------

_STAMP = "CAST(UNIX_TIMESTAMP(NOW(6)) AS CHAR)"

#: Store a heartbeat and stamp its arrival by the server's clock (the newest
#: ``MAX_ARRIVALS`` kept, space-separated); forget the election's members whose time is up.
PUBLISH = f"""DELETE FROM %(t_member)s
WHERE election = %(election)s AND node_id <> %(node_id)s AND forget_at <= NOW(6);
INSERT INTO %(t_member)s (election, node_id, record, arrivals, forget_at) /* lelect publish */
VALUES (%(election)s, %(node_id)s, %(record)s, {_STAMP},
        NOW(6) + INTERVAL %(forget_us)s MICROSECOND)
ON DUPLICATE KEY UPDATE
    arrivals = IF(forget_at <= NOW(6), {_STAMP},
                  SUBSTRING_INDEX(CONCAT(arrivals, ' ', {_STAMP}), ' ', -{MAX_ARRIVALS})),
    record = %(record)s,
    forget_at = NOW(6) + INTERVAL %(forget_us)s MICROSECOND"""

REMOVE_MEMBER = "DELETE FROM %(t_member)s WHERE election = %(election)s AND node_id = %(node_id)s"

#: -> (server now, node id, record, arrivals) per member still listed; one row with NULLs
#: when there is none
MEMBERS = """SELECT UNIX_TIMESTAMP(NOW(6)), m.node_id, m.record, m.arrivals
FROM (SELECT 1) AS one
LEFT JOIN %(t_member)s m ON m.election = %(election)s AND m.forget_at > NOW(6)
ORDER BY m.node_id"""

#: Led now, with live members, or with a history (an election that ran stays listed).
ELECTIONS = """SELECT election FROM %(t_lease)s WHERE expires_at > NOW(6)
UNION
SELECT election FROM %(t_member)s WHERE forget_at > NOW(6)
UNION
SELECT DISTINCT election FROM %(t_history)s
ORDER BY 1"""

# -- notes ----------------------------------------------------------------------------------

_LIVE_NOTE = "(expires_at IS NULL OR expires_at > NOW(6))"
_KEEP = f"%(only_new)s AND {_LIVE_NOTE}"

#: Store a note until ``ttl_us`` from now by the server's clock (NULL: no expiry); with
#: ``only_new``, only over no note or an expired one (every assignment guarded, on the
#: locked row; ``attempt`` tells whether this statement wrote). -> (1 if written else 0)
PUT_NOTE = f"""START TRANSACTION;
INSERT INTO %(t_note)s (election, note_key, data, expires_at, attempt) /* lelect put-note */
VALUES (%(election)s, %(key)s, %(data)s, NOW(6) + INTERVAL %(ttl_us)s MICROSECOND,
        %(attempt)s)
ON DUPLICATE KEY UPDATE
    attempt = IF({_KEEP}, attempt, %(attempt)s), data = IF({_KEEP}, data, %(data)s),
    expires_at = IF({_KEEP}, expires_at, NOW(6) + INTERVAL %(ttl_us)s MICROSECOND);
SELECT attempt = %(attempt)s FROM %(t_note)s
WHERE election = %(election)s AND note_key = %(key)s;
COMMIT"""

#: The live note, NULL when it is longer than ``max_bytes`` (not even sent: a bounded read).
GET_NOTE = f"""SELECT IF(LENGTH(data) <= %(max_bytes)s, data, NULL) FROM %(t_note)s
WHERE election = %(election)s AND note_key = %(key)s AND {_LIVE_NOTE}"""

DELETE_NOTE = "DELETE FROM %(t_note)s WHERE election = %(election)s AND note_key = %(key)s"

# -- operations -----------------------------------------------------------------------------

HISTORY = """SELECT * FROM (
    SELECT term, node_id, host, pid, UNIX_TIMESTAMP(started), UNIX_TIMESTAMP(ended),
           outcome, exit_status, slot, reason
    FROM %(t_history)s WHERE election = %(election)s
    ORDER BY term DESC LIMIT %(limit)s
) AS newest ORDER BY term"""

SLOT_DONE = """SELECT term, node_id, host, pid, UNIX_TIMESTAMP(started), UNIX_TIMESTAMP(ended),
       exit_status
FROM %(t_slot)s WHERE election = %(election)s AND slot_key = SHA2(%(slot)s, 256)"""

NOW = "SELECT UNIX_TIMESTAMP(NOW(6))"

#: The waiters' wake-up: block until the election's lock is free (then hold it), at most
#: ``seconds``; at once if this connection holds it already (``GET_LOCK`` would count a
#: second hold, and one release would not free it). -> 1 got it, 0 timed out
WAIT_BELL = ("SELECT IF(IS_USED_LOCK(%(name)s) <=> CONNECTION_ID(), 1,"
             " GET_LOCK(%(name)s, %(seconds)s))")
#: The winner takes the lock at once if it is free (or already its own). -> 1, 0
TAKE_BELL = "SELECT IF(IS_USED_LOCK(%(name)s) <=> CONNECTION_ID(), 1, GET_LOCK(%(name)s, 0))"
RING_BELL = "SELECT RELEASE_LOCK(%(name)s)"
