"""The PostgreSQL backend's SQL: the schema and one statement per verb, each a single
guarded statement (data-modifying CTEs), rendered with literals by :func:`render`.

Standard library only: the job's keeper renders the release statement with the same
text as the backend (``handback``), over its own wire client.

Tables (in the URL's ``?schema=``, default ``lelect``):

- ``lease``   one row per led election: our random token, who, and ``expires_at`` by the
  server's clock. Acquired only if absent or expired; renewed and released only
  ``WHERE token = ours``. A release deletes the row.
- ``term``    the per-election term counter and the token it was handed to; never
  deleted, so terms never go back.
- ``history`` one row per leadership, written by the statement that wins it and closed
  by the one that releases it.
- ``slot``    once-per slots done, with the leadership that did them.
- ``queue``   no longer written: lelect's waiters once queued there, each LISTENing on a
  channel of its own. They now wait in the server's lock queue for the election's
  doorbell, a session advisory lock (:func:`bell_key`). The table stays for the lelects
  of before during an upgrade.
- ``member``  heartbeats (records.py's codec) and arrival stamps by the server's clock.
- ``note``    small records beside an election (``put_note``): bytes under a key, until
  ``expires_at`` by the server's clock (NULL: until deleted).
- ``schema_version``  one row: the version of this layout, for later migrations.
"""

from __future__ import annotations

import math
import re

from lelect.backends.postgres.wire import sha256  # Python's own: hashlib maps libcrypto
from lelect.backends.records import MAX_SLOTS

SCHEMA_VERSION = 1
DEFAULT_SCHEMA = "lelect"
#: A schema name lelect accepts: a plain lower-case identifier, so it never needs care.
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")



class Ident(str):
    """An identifier already checked against :data:`SCHEMA_NAME` (or hex): rendered as a
    quoted identifier."""


def literal(value: object) -> str:
    """``value`` as an SQL literal. Strings use E'' escapes, so the server's
    ``standard_conforming_strings`` does not matter; NUL cannot be stored and is refused."""
    if value is None:
        return "NULL"
    if isinstance(value, Ident):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return f"decode('{value.hex()}', 'hex')"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite number: {value!r}")
        return repr(value)
    text = str(value)
    if "\0" in text:
        raise ValueError("PostgreSQL text cannot hold NUL characters")
    # Undecodable bytes from argv (surrogate escapes) cannot go over a UTF-8 connection.
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def render(statement: str, schema: str, **values: object) -> str:
    """``statement`` with ``%(schema)s`` and each ``%(name)s`` replaced by its literal."""
    if not SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"bad schema name {schema!r}")
    return statement % {"schema": f'"{schema}"', **{k: literal(v) for k, v in values.items()}}


#: Sent with the first statement on each of lelect's connections (not as startup
#: parameters, which a pooler such as PgBouncer refuses): the server probes a silent
#: client after 10 s idle, every 5 s, and closes the session after 3 unanswered probes.
#: Its default is the system's (2 hours idle), and the session of a host cut off by a
#: partition would keep its session advisory lock, the election's doorbell, that long
#: (the lease itself is never tied to a session). Ignored on Unix sockets.
SESSION_SETUP = ("SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5;"
                 " SET tcp_keepalives_count = 3;\n")


#: Sent with each renew on PostgreSQL 14 and later: the server ends the leader's session
#: (and so frees the election's doorbell) once it has been idle this long. TCP keepalives
#: do not see a frozen lelect (its kernel answers them); a leader that went a lease
#: without a renew has lost its lease anyway.
LEADER_IDLE = "SET idle_session_timeout = %(ms)s;\n"


def with_timeout(sql: str, budget: float) -> str:
    """One round trip: the statement under a ``statement_timeout`` of ``budget`` seconds
    (``SET LOCAL`` holds for the implicit transaction of this query string only)."""
    return f"SET LOCAL statement_timeout = {max(1, int(budget * 1000))};\n{sql}"


def channel(schema: str, election: str) -> str:
    """The election's LISTEN/NOTIFY channel: a hash, since a channel name holds at most
    63 bytes and election names up to 128."""
    digest = sha256(f"{schema}/{election}".encode("utf-8", "surrogateescape"))
    return "lelect_" + digest.hexdigest()[:32]


def bell_key(schema: str, election: str) -> int:
    """The election's doorbell: the key of the session advisory lock its leader holds and
    its waiters queue for in the server (a release frees it; the server grants it to the
    first in line only). It is never the leadership, only a wake-up."""
    digest = sha256(f"lelect bell/{schema}/{election}".encode("utf-8", "surrogateescape"))
    return int.from_bytes(digest.digest()[:8], "big", signed=True)


# -- the schema -----------------------------------------------------------------------------

#: Created under a transaction-scoped advisory lock (one implicit transaction), so five
#: candidates on a fresh database create it once; the lock protects only this DDL.
CREATE_SCHEMA = """
SELECT pg_advisory_xact_lock(hashtext('lelect schema ' || %(name)s));
CREATE SCHEMA IF NOT EXISTS %(schema)s;
"""

CREATE_TABLES = """
SELECT pg_advisory_xact_lock(hashtext('lelect schema ' || %(name)s));
CREATE TABLE IF NOT EXISTS %(schema)s.schema_version (
    version integer NOT NULL
);
CREATE TABLE IF NOT EXISTS %(schema)s.term (
    election text PRIMARY KEY,
    term bigint NOT NULL,
    token text NOT NULL
);
CREATE TABLE IF NOT EXISTS %(schema)s.lease (
    election text PRIMARY KEY,
    token text NOT NULL,
    node_id text NOT NULL,
    host text,
    pid integer,
    since timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    resign_requested boolean NOT NULL DEFAULT false,
    backend_pid integer  -- the server process of the leader's connection (pg_stat_activity)
);
CREATE TABLE IF NOT EXISTS %(schema)s.history (
    election text NOT NULL,
    term bigint NOT NULL,
    token text NOT NULL,
    node_id text NOT NULL,
    host text,
    pid integer,
    started timestamptz NOT NULL,
    ended timestamptz,
    outcome text NOT NULL,
    exit_status integer,
    slot text,
    reason text,
    PRIMARY KEY (election, term)
);
CREATE TABLE IF NOT EXISTS %(schema)s.slot (
    election text NOT NULL,
    slot text NOT NULL,
    term bigint NOT NULL,
    node_id text NOT NULL,
    host text,
    pid integer,
    started timestamptz,
    ended timestamptz,
    exit_status integer,
    PRIMARY KEY (election, slot)
);
CREATE TABLE IF NOT EXISTS %(schema)s.queue (
    election text NOT NULL,
    token text NOT NULL,
    channel text NOT NULL,
    enqueued timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    backend_pid integer NOT NULL,
    backend_start timestamptz,
    PRIMARY KEY (election, token)
);
CREATE TABLE IF NOT EXISTS %(schema)s.member (
    election text NOT NULL,
    node_id text NOT NULL,
    record text NOT NULL,
    arrivals float8[] NOT NULL,
    forget_at timestamptz NOT NULL,
    PRIMARY KEY (election, node_id)
);
CREATE TABLE IF NOT EXISTS %(schema)s.note (
    election text NOT NULL,
    key text NOT NULL,
    data bytea NOT NULL,
    expires_at timestamptz,  -- NULL: until deleted
    PRIMARY KEY (election, key)
);
INSERT INTO %(schema)s.schema_version (version)
SELECT %(version)s WHERE NOT EXISTS (SELECT 1 FROM %(schema)s.schema_version);
SELECT version FROM %(schema)s.schema_version;
"""

SCHEMA_EXISTS = "SELECT to_regnamespace(%(name)s) IS NOT NULL"

#: -> (version, whether the newest table is there: ``queue`` and then ``note`` came later,
#: without a new version, since older lelects work beside them unchanged)
SCHEMA_VERSION_OF = """
SELECT max(version), to_regclass(%(newest)s) IS NOT NULL FROM %(schema)s.schema_version
"""

# -- leadership -----------------------------------------------------------------------------

#: Win the election if its lease is absent or expired (the upsert's WHERE, on the locked
#: row), and only then: bump the term, open the history entry, close an earlier
#: "running" one as vanished, prune the history, announce. A loser learns who holds the
#: lease and for how long (by the server's clock; missing when the winner committed
#: after this statement's snapshot: try again).
#: With ``take_bell``, a winner also takes the election's doorbell if it is free.
#: -> (won term | NULL, holder token, holder node id, holder term, seconds left, notified,
#:     took the doorbell)
ACQUIRE = """/* lelect acquire */
WITH won AS (
    INSERT INTO %(schema)s.lease AS l
        (election, token, node_id, host, pid, since, expires_at, backend_pid)
    VALUES (%(election)s, %(token)s, %(node_id)s, %(host)s, %(pid)s, clock_timestamp(),
            clock_timestamp() + %(ttl)s * interval '1 second', pg_backend_pid())
    ON CONFLICT (election) DO UPDATE
        SET token = excluded.token, node_id = excluded.node_id, host = excluded.host,
            pid = excluded.pid, since = excluded.since, expires_at = excluded.expires_at,
            resign_requested = false, backend_pid = excluded.backend_pid
        WHERE l.expires_at <= clock_timestamp()
    RETURNING l.since
), counted AS (
    INSERT INTO %(schema)s.term AS t (election, term, token)
    SELECT %(election)s, 1, %(token)s FROM won
    ON CONFLICT (election) DO UPDATE SET term = t.term + 1, token = excluded.token
    RETURNING t.term
), vanished AS (
    UPDATE %(schema)s.history
    SET outcome = 'vanished', ended = clock_timestamp(), reason = %(vanished_reason)s
    WHERE election = %(election)s AND outcome = 'running' AND EXISTS (SELECT 1 FROM won)
    RETURNING term
), opened AS (
    INSERT INTO %(schema)s.history AS h
        (election, term, token, node_id, host, pid, started, outcome)
    SELECT %(election)s, counted.term, %(token)s, %(node_id)s, %(host)s, %(pid)s, won.since,
           'running'
    FROM counted, won
    ON CONFLICT (election, term) DO UPDATE
        SET token = excluded.token, node_id = excluded.node_id, host = excluded.host,
            pid = excluded.pid, started = excluded.started, ended = NULL,
            outcome = 'running', exit_status = NULL, slot = NULL, reason = NULL
    RETURNING term
), pruned AS (
    DELETE FROM %(schema)s.history h USING counted
    WHERE h.election = %(election)s AND h.term <= counted.term - %(history)s
    RETURNING h.term
), announced AS (
    SELECT pg_notify(%(channel)s, 'elected ' || term) FROM counted
), holder AS (
    SELECT l.token, l.node_id, t.term,
           extract(epoch FROM l.expires_at - clock_timestamp())::float8 AS left_s
    FROM %(schema)s.lease l
    LEFT JOIN %(schema)s.term t ON t.election = l.election AND t.token = l.token
    WHERE l.election = %(election)s AND NOT EXISTS (SELECT 1 FROM won)
), belled AS (
    SELECT pg_try_advisory_lock(%(bell)s) AS took FROM won WHERE %(take_bell)s
)
SELECT (SELECT term FROM counted), holder.token, holder.node_id, holder.term, holder.left_s,
       (SELECT count(*) FROM announced), coalesce((SELECT bool_or(took) FROM belled), false)
FROM (SELECT 1) AS one LEFT JOIN holder ON true
"""

#: A waiter's wait for the election's doorbell, at most ``ms`` milliseconds (then
#: LockNotAvailable): it returns once the leader's release frees it, to the first in line.
WAIT_BELL = """/* lelect wait */
SET LOCAL lock_timeout = %(ms)s;
SELECT pg_advisory_lock(%(bell)s)
"""

#: Prepended to :data:`WAIT_BELL` on PostgreSQL 14 and later: a waiter's server process
#: looks at its client's connection every second while it waits, so a waiter killed in
#: line leaves the lock queue within a second, not when its wait would have ended.
CHECK_CLIENT = "SET LOCAL client_connection_check_interval = 1000;\n"

#: The leader's release frees the doorbell (sent after the release, in the same query).
RING_BELL = "SELECT pg_advisory_unlock(%(bell)s)"

#: Extend our lease from now by the server's clock, only while it is ours and alive.
#: -> one row (resign requested?) if renewed, none if the lease is gone
RENEW = """/* lelect renew */
UPDATE %(schema)s.lease
SET expires_at = clock_timestamp() + %(ttl)s * interval '1 second', backend_pid = pg_backend_pid()
WHERE election = %(election)s AND token = %(token)s AND expires_at > clock_timestamp()
RETURNING resign_requested
"""

#: Release our live lease (only by our token) and announce it; close our own history entry
#: if still "running" (first writer wins), mark a once-per slot done for an "exited 0",
#: and with ``forget`` drop our member record (the keeper's hand-back).
#: The release is announced on the election's channel (observers, and a waiter that holds
#: the doorbell while the lease stood); the leader's backend frees the doorbell after it
#: (:data:`RING_BELL`), which wakes the next in line.
#: -> (released, notified, entry closed, slot marked, member dropped) as counts
RELEASE = """/* lelect release */
WITH released AS (
    DELETE FROM %(schema)s.lease
    WHERE election = %(election)s AND token = %(token)s AND expires_at > clock_timestamp()
    RETURNING election
), announced AS (
    SELECT pg_notify(%(channel)s, 'released ' || %(term)s) FROM released
), closed AS (
    UPDATE %(schema)s.history
    SET ended = clock_timestamp(), outcome = %(outcome)s, exit_status = %(exit_status)s,
        reason = %(reason)s,
        slot = CASE WHEN %(outcome)s = 'exited' AND %(exit_status)s::integer = 0
                    THEN %(slot)s::text END
    WHERE election = %(election)s AND term = %(term)s AND token = %(token)s
      AND outcome = 'running'
    RETURNING term, node_id, host, pid, started, ended, exit_status, slot
), done AS (
    INSERT INTO %(schema)s.slot
        (election, slot, term, node_id, host, pid, started, ended, exit_status)
    SELECT %(election)s, slot, term, node_id, host, pid, started, ended, exit_status
    FROM closed WHERE slot IS NOT NULL
    ON CONFLICT (election, slot) DO NOTHING
    RETURNING slot
), old_slots AS (
    DELETE FROM %(schema)s.slot
    WHERE election = %(election)s AND EXISTS (SELECT 1 FROM done) AND slot IN (
        SELECT slot FROM %(schema)s.slot WHERE election = %(election)s
        ORDER BY ended DESC OFFSET %(slots_kept)s)
    RETURNING slot
), forgotten AS (
    DELETE FROM %(schema)s.member
    WHERE %(forget)s AND election = %(election)s AND node_id = %(node_id)s
    RETURNING node_id
)
SELECT (SELECT count(*) FROM released), (SELECT count(*) FROM announced),
       (SELECT count(*) FROM closed), (SELECT count(*) FROM done),
       (SELECT count(*) FROM forgotten)
"""



def release_statement(schema: str, *, election: str, token: str, term: int, node_id: str,
                      outcome: str, exit_status: int | None, reason: str | None,
                      slot: str | None, forget: bool) -> str:  # fmt: skip
    """:data:`RELEASE` for one leadership: the backend's resign and the keeper's hand-back
    (``forget``: drop the member record too) send the same text."""
    return render(
        RELEASE, schema, election=election, token=token, term=term, node_id=node_id,
        outcome=outcome, exit_status=exit_status, reason=reason, slot=slot, forget=forget,
        channel=channel(schema, election), slots_kept=MAX_SLOTS - 1,
    )  # fmt: skip


#: Who leads: the live lease and its term. -> (node id, term, since, host, pid, seconds left)
LEADER = """/* lelect leader */
SELECT l.node_id, t.term, extract(epoch FROM l.since)::float8, l.host, l.pid,
       extract(epoch FROM l.expires_at - clock_timestamp())::float8
FROM %(schema)s.lease l
LEFT JOIN %(schema)s.term t ON t.election = l.election AND t.token = l.token
WHERE l.election = %(election)s AND l.expires_at > clock_timestamp()
"""

#: Ask the live leader (of ``term`` when given) to step down. -> (its term, notified) if asked
REQUEST_RESIGN = """/* lelect request-resign */
WITH asked AS (
    UPDATE %(schema)s.lease l SET resign_requested = true
    FROM %(schema)s.term t
    WHERE l.election = %(election)s AND t.election = l.election AND t.token = l.token
      AND l.expires_at > clock_timestamp()
      AND (%(term)s::bigint IS NULL OR t.term = %(term)s::bigint)
    RETURNING t.term
), announced AS (
    SELECT pg_notify(%(channel)s, 'resign ' || term) FROM asked
)
SELECT term, (SELECT count(*) FROM announced) FROM asked
"""

# -- heartbeats -----------------------------------------------------------------------------

#: Store a heartbeat and stamp its arrival by the server's clock (the newest
#: ``max_arrivals`` kept); forget the election's members whose time is up.
PUBLISH = """/* lelect publish */
WITH forgotten AS (
    DELETE FROM %(schema)s.member
    WHERE election = %(election)s AND node_id <> %(node_id)s AND forget_at <= clock_timestamp()
    RETURNING node_id
), stored AS (
    INSERT INTO %(schema)s.member AS m (election, node_id, record, arrivals, forget_at)
    VALUES (%(election)s, %(node_id)s, %(record)s,
            ARRAY[extract(epoch FROM clock_timestamp())::float8],
            clock_timestamp() + %(forget_after)s * interval '1 second')
    ON CONFLICT (election, node_id) DO UPDATE
        SET record = excluded.record, forget_at = excluded.forget_at,
            arrivals = CASE WHEN m.forget_at <= clock_timestamp() THEN excluded.arrivals
                            ELSE (m.arrivals || excluded.arrivals)[
                                greatest(1, cardinality(m.arrivals) + 2 - %(max_arrivals)s):]
                       END
    RETURNING node_id
)
SELECT (SELECT count(*) FROM stored), (SELECT count(*) FROM forgotten)
"""

REMOVE_MEMBER = """
DELETE FROM %(schema)s.member WHERE election = %(election)s AND node_id = %(node_id)s
"""

#: -> (server now, node id, record, arrivals) per member still listed; one row with NULLs
#: when there is none
MEMBERS = """
SELECT extract(epoch FROM clock_timestamp())::float8, m.node_id, m.record, m.arrivals
FROM (SELECT 1) AS one
LEFT JOIN %(schema)s.member m
    ON m.election = %(election)s AND m.forget_at > clock_timestamp()
ORDER BY m.node_id
"""

ELECTIONS = """
SELECT election FROM %(schema)s.lease WHERE expires_at > clock_timestamp()
UNION
SELECT election FROM %(schema)s.member WHERE forget_at > clock_timestamp()
UNION
SELECT election FROM %(schema)s.history
ORDER BY 1
"""

# -- notes ----------------------------------------------------------------------------------

_LIVE_NOTE = "(n.expires_at IS NULL OR n.expires_at > clock_timestamp())"

#: Store a note until ``ttl`` seconds from now by the server's clock (NULL: no expiry); with
#: ``only_new``, only over no note or an expired one (the upsert's WHERE, on the locked row).
#: -> one row if written, none if a live note stands
PUT_NOTE = """/* lelect put-note */
INSERT INTO %(schema)s.note AS n (election, key, data, expires_at)
VALUES (%(election)s, %(key)s, %(data)s,
        clock_timestamp() + %(ttl)s::float8 * interval '1 second')
ON CONFLICT (election, key) DO UPDATE
    SET data = excluded.data, expires_at = excluded.expires_at
    WHERE NOT %(only_new)s OR NOT """ + _LIVE_NOTE + """
RETURNING 1
"""

#: The live note, NULL when it is longer than ``max_bytes`` (not even sent: a bounded read).
GET_NOTE = """
SELECT CASE WHEN octet_length(n.data) <= %(max_bytes)s THEN n.data END
FROM %(schema)s.note n
WHERE n.election = %(election)s AND n.key = %(key)s AND """ + _LIVE_NOTE

DELETE_NOTE = """/* lelect delete-note */
DELETE FROM %(schema)s.note WHERE election = %(election)s AND key = %(key)s
"""

# -- operations -----------------------------------------------------------------------------

_EPOCH = "extract(epoch FROM {})::float8"

HISTORY = f"""
SELECT * FROM (
    SELECT term, node_id, host, pid, {_EPOCH.format("started")}, {_EPOCH.format("ended")},
           outcome, exit_status, slot, reason
    FROM %(schema)s.history WHERE election = %(election)s
    ORDER BY term DESC LIMIT %(limit)s
) AS newest ORDER BY term
"""

SLOT_DONE = f"""
SELECT term, node_id, host, pid, {_EPOCH.format("started")}, {_EPOCH.format("ended")},
       exit_status
FROM %(schema)s.slot WHERE election = %(election)s AND slot = %(slot)s
"""

NOW = "SELECT extract(epoch FROM clock_timestamp())::float8"
