"""What only the ZooKeeper backend does, through the library, against a real ZooKeeper
and kazoo's own Election recipe. Shared behaviours are in tests/test_contract.py."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import Permissions

from lelect.backends import connect
from lelect.backends.base import Candidate, Heartbeat, HistoryEntry
from lelect.backends.records import HAND_BACK_REASON
from lelect.backends.zookeeper import handback as _handback_zookeeper
from lelect.errors import BackendUnavailable, ConfigError, ElectionBusy, UsageError
from lelect.lease import drift as lease_drift
from lelect.lease import renew_interval
from tests.helpers import run_lelect, wait_until, zk_queue, zk_watchers
from tests.plugins.proxy import Wiretap

CONTENDER = re.compile(r"^[0-9a-f]{32}__lock__\d{10}$")


def candidate(name: str) -> Candidate:
    return Candidate(node_id=name, host="testhost", pid=4321)


def heartbeat(election: str, node_id: str, seq: int = 1) -> Heartbeat:
    return Heartbeat(
        election=election, node_id=node_id, host="testhost", pid=4321, role="follower",
        term=None, seq=seq, time=time.time(), cpu_percent=3.0, memory_percent=40.0,
    )  # fmt: skip


@pytest.fixture
def kazoo(zookeeper_server):
    """A plain kazoo client, as a kazoo user (or an administrator) would have."""
    client = KazooClient(zookeeper_server.hosts, timeout=2)
    client.start(10)
    yield client
    client.stop()
    client.close()


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=64) as executor:
        yield executor


@pytest.fixture
def backends(pool):
    """Factory for backends, closed after the test (before ``pool`` waits for its
    threads, so that campaigns still waiting give up)."""
    opened = []

    def make(url: str):
        backend = connect(url)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()


# -- URLs -------------------------------------------------------------------------------


def test_url_defaults_and_options():
    backend = connect("zookeeper://zk1,zk2:2182")
    config = backend.config
    assert config.hosts == "zk1:2181,zk2:2182"
    assert config.path == "/lelect"
    assert (config.session_timeout, config.connect_timeout) == (10.0, 5.0)
    assert backend.ttl == backend.default_ttl == 10.0
    assert backend.history_limit == 1000

    backend = connect("zk://zk1:2181/jobs/elect/?session_timeout=4&connect_timeout=4s&history=7")
    assert backend.config.path == "/jobs/elect"
    assert (backend.config.session_timeout, backend.config.connect_timeout) == (4.0, 4.0)
    assert backend.ttl == 4.0
    assert backend.history_limit == 7


@pytest.mark.parametrize("ttl", [30 * 86400, 0.0001])
def test_ttl_beyond_zookeepers_32_bit_milliseconds_is_a_usage_error(backends, zk_url, ttl):
    """Not a traceback from kazoo's connection thread and a wrong 'cannot reach'."""
    with pytest.raises(UsageError, match="--ttl"):
        backends(zk_url).campaign("range", candidate("a"), ttl=ttl)


# -- the election, as kazoo lays it out -------------------------------------------------


def test_election_holds_only_kazoo_style_contenders(backends, zk_url, zk_path, kazoo):
    backend = backends(zk_url)
    backend.publish(heartbeat("nightly", "alpha"), 3600)
    with backend.campaign("nightly", candidate("alpha")) as leadership:
        backend.request_resign("nightly")
        children = kazoo.get_children(f"{zk_path}/nightly")
        assert len(children) == 1 and CONTENDER.match(children[0])
        data, stat = kazoo.get(f"{zk_path}/nightly/{children[0]}")
        assert data == b"alpha"
        assert stat.ephemeralOwner != 0
        assert leadership.term == int(children[0][-10:])
        assert leadership.token == children[0]
        assert sorted(kazoo.get_children(zk_path)) == [
            "_history", "_members", "_resign", "nightly"]
    assert kazoo.get_children(f"{zk_path}/nightly") == []
    assert kazoo.exists(f"{zk_path}/nightly"), "the election node is never deleted"


def test_a_contender_prefix_is_a_uuid4_as_kazoo_makes_it():
    """lelect makes kazoo's contender prefix (``uuid.uuid4().hex``) without importing
    uuid: 32 hex digits, version 4, the RFC 4122 variant, never twice the same."""
    import uuid

    from lelect.backends.zookeeper.contest import uuid4_hex

    made = {uuid4_hex() for _ in range(2000)}
    assert len(made) == 2000
    for text in made:
        parsed = uuid.UUID(hex=text)
        assert parsed.hex == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_kazoo_election_leads_and_lelect_waits(backends, zk_url, zk_path, zookeeper_server, pool):
    backend = backends(zk_url)
    kazoo = KazooClient(zookeeper_server.hosts, timeout=2)
    kazoo.start(10)
    election = kazoo.Election(f"{zk_path}/shared", "kazoo-user")
    leading, finish = threading.Event(), threading.Event()

    def lead():
        leading.set()
        finish.wait(20)

    runner = threading.Thread(target=election.run, args=(lead,), daemon=True)
    runner.start()
    try:
        assert leading.wait(10)
        info = backend.leader("shared")
        assert (info.node_id, info.host, info.pid) == ("kazoo-user", None, None)
        # kazoo's Election reads no resign request: say so, exit 1 (was: "asked", 0).
        refused = run_lelect("resign", "shared", backend=zk_url)
        assert refused.returncode == 1 and "cannot be asked" in refused.stderr, refused
        assert refused.stdout == ""
        with pytest.raises(ElectionBusy, match="kazoo-user"):
            backend.campaign("shared", candidate("lelect-1"), no_wait=True)
        assert election.contenders() == ["kazoo-user"], "--no-wait left a node behind"

        told: list = []
        waiting = pool.submit(backend.campaign, "shared", candidate("lelect-1"),
                              on_wait=told.append)
        wait_until(lambda: told, what="lelect to wait")
        assert told[0].node_id == "kazoo-user" and told[0].term == info.term
        assert election.contenders() == ["kazoo-user", "lelect-1"]
        time.sleep(0.3)  # a window: lelect must not win while kazoo's Election leads
        assert not waiting.done()
        finish.set()
        leadership = waiting.result(10)
        assert leadership.term > info.term
        assert backend.leader("shared").node_id == "lelect-1"
        leadership.release()
        # kazoo's leadership wrote no history; lelect's did.
        assert [h.node_id for h in backend.history("shared")] == ["lelect-1"]
    finally:
        finish.set()
        runner.join(10)
        kazoo.stop()
        kazoo.close()


def test_lelect_leads_and_kazoo_election_waits(backends, zk_url, zk_path, zookeeper_server):
    backend = backends(zk_url)
    leadership = backend.campaign("shared", candidate("lelect-1"))
    kazoo = KazooClient(zookeeper_server.hosts, timeout=2)
    kazoo.start(10)
    election = kazoo.Election(f"{zk_path}/shared", "kazoo-user")
    ran = threading.Event()
    runner = threading.Thread(target=election.run, args=(ran.set,), daemon=True)
    runner.start()
    try:
        wait_until(lambda: len(election.contenders()) == 2, what="kazoo to queue")
        assert election.contenders() == ["lelect-1", "kazoo-user"]
        assert not ran.wait(0.5), "kazoo's Election ran while lelect led"
        leadership.release()
        assert ran.wait(5)
    finally:
        leadership.release()
        runner.join(10)
        kazoo.stop()
        kazoo.close()


def test_contender_without_data_is_busy_not_a_crash(backends, zk_url, zk_path, kazoo):
    """A contender created with null data (as a Java client may) is somebody leading."""
    kazoo.create(f"{zk_path}/nodata/{'0' * 32}__lock__", None, ephemeral=True, sequence=True,
                 makepath=True)  # fmt: skip
    backend = backends(zk_url)
    with pytest.raises(ElectionBusy, match=r"led by a contender without a node id \(term 0\)"):
        backend.campaign("nodata", candidate("a"), no_wait=True)
    assert len(kazoo.get_children(f"{zk_path}/nodata")) == 1


# -- history and slots, written by the multis that change the leadership --------------------


def test_history_and_slots_live_beside_the_election(backends, zookeeper_server, zk_path, kazoo):
    backend = backends(zookeeper_server.url(zk_path, session_timeout="2s", history="2"))
    terms = []
    for slot, status in (("2026-03-01", 3), ("2026-03-01", 0), ("day/2", 0)):
        leadership = backend.campaign("kept", candidate("a"))
        terms.append(leadership.term)
        assert kazoo.get_children(f"{zk_path}/kept") == [leadership.token]
        backend.history("kept")  # the entry is written beside the leadership: wait for it
        data, _ = kazoo.get(f"{zk_path}/_history/kept/{leadership.term:010d}")
        assert HistoryEntry.decode(data).outcome == "running"
        leadership.release("exited", status, slot=slot)
    assert kazoo.get_children(f"{zk_path}/kept") == []
    # Bounded to the newest two; times are the znodes' own (the server's clock).
    kept = sorted(kazoo.get_children(f"{zk_path}/_history/kept"))
    assert kept == [f"{term:010d}" for term in terms[1:]]
    history = backend.history("kept")
    _, stat = kazoo.get(f"{zk_path}/_history/kept/{kept[-1]}")
    assert (history[-1].started, history[-1].ended) == (stat.ctime / 1000, stat.mtime / 1000)
    assert sorted(kazoo.get_children(f"{zk_path}/_slots/kept")) == ["2026-03-01", "day%2F2"]
    assert backend.slot_done("kept", "2026-03-01").term == terms[1]
    assert backend.slot_done("kept", "day/2").term == terms[2]


def test_notes_live_beside_the_election_and_list_no_election(backends, zk_url, zk_path, kazoo):
    backend = backends(zk_url)
    with backend.campaign("noted", candidate("a")) as leadership:
        assert backend.put_note("noted", "value:1", b"addr", 30) is True
        assert kazoo.get_children(f"{zk_path}/noted") == [leadership.token]
    assert backend.put_note("only-notes", "holders", b"3") is True
    assert sorted(kazoo.get_children(f"{zk_path}/_notes")) == ["noted", "only-notes"]
    data, _ = kazoo.get(f"{zk_path}/_notes/noted/value:1")
    assert data == b"30000\naddr"  # the ttl (ms, from the node's mtime), then the note
    assert backend.elections() == ["noted"]


def test_reading_notes_with_a_ttl_again_writes_no_clock_node(backends, zk_url, zk_path, kazoo):
    """Issue 21 ("lean waiting"): every candidate refreshes its --holders note every few
    seconds; judging a note's ttl reuses a recent reading of the server's clock instead
    of writing the clock node (a write ZooKeeper syncs to disk) each time."""
    backend = backends(zk_url)
    backend.put_note("clocked", "holders", b"1", 30.0)
    assert backend.get_note("clocked", "holders") == b"1"
    _, before = kazoo.get(f"{zk_path}/_clock")
    for _ in range(3):
        assert backend.get_note("clocked", "holders") == b"1"
        assert not backend.put_note("clocked", "holders", b"2", 30.0, create=True)
    _, after = kazoo.get(f"{zk_path}/_clock")
    assert after.version == before.version
    backend.put_note("clocked", "short", b"x", 0.2)
    wait_until(lambda: backend.get_note("clocked", "short") is None, timeout=5,
               what="a 200 ms note to expire by the carried-forward clock")


def test_a_hostile_or_oversized_note_node_reads_as_none(backends, zk_url, zk_path, kazoo):
    from lelect.backends.base import MAX_NOTE

    backend = backends(zk_url)
    for key, raw in (("big", b"-\n" + b"x" * (MAX_NOTE + 1)), ("garbage", b"\xff" * 20),
                     ("no-ttl", b"abc\nx")):  # fmt: skip
        kazoo.create(f"{zk_path}/_notes/e/{key}", raw, makepath=True)
        assert backend.get_note("e", key) is None
    assert backend.put_note("e", "garbage", b"mine", 30, create=True) is True  # not a live note
    assert backend.get_note("e", "garbage") == b"mine"


# -- the lease --------------------------------------------------------------------------


def test_lease_uses_the_granted_session_timeout(backends, zookeeper_server, zk_path):
    backend = backends(zookeeper_server.url(zk_path))
    # The test server grants 400 ms at least (2 ticks) and 60 s at most.
    before = time.monotonic()
    with backend.campaign("granted", candidate("a"), ttl=0.1) as leadership:
        assert leadership.session_timeout == pytest.approx(0.4)
        assert leadership.lease_deadline <= time.monotonic() + 0.4 - lease_drift(0.4)
        assert leadership.lease_deadline > before
    with pytest.raises(ConfigError, match="granted a 1m session, shorter than the 1m40s"):
        backend.campaign("granted", candidate("a"), ttl=100)


def test_lease_deadline_follows_answered_probes(backends, zk_url):
    backend = backends(zk_url)
    deadlines: list[tuple[float, float]] = []
    with backend.campaign("probes", candidate("a"), ttl=1.2) as leadership:
        assert renew_interval(1.2) == pytest.approx(0.4)
        leadership.on_deadline(lambda deadline: deadlines.append((time.monotonic(), deadline)))
        time.sleep(1.5)  # a window: count the probes answered in it (one per 0.4 s)
        assert leadership.is_leader()
    assert 2 <= len(deadlines) <= 5
    for seen_at, deadline in deadlines:
        # From a send time a moment ago, never later than now + granted - drift.
        assert seen_at + 1.2 - lease_drift(1.2) - 0.3 < deadline <= seen_at + 1.2 - lease_drift(1.2)
    assert [d for _, d in deadlines] == sorted(d for _, d in deadlines)


def test_reconnection_within_the_session_disturbs_nothing(backends, zk_url, kazoo):
    backend = backends(zk_url)
    with backend.campaign("blip", candidate("a"), ttl=3) as leadership:
        session = leadership.session
        session_id = session.client.client_id[0]
        states: list[str] = []
        session.add_listener(states.append)
        # Break the TCP connection under kazoo, as a NAT or a load balancer would.
        session.client._connection._socket.shutdown(socket.SHUT_RDWR)
        wait_until(lambda: states[-2:] == ["SUSPENDED", "CONNECTED"], timeout=5, what="reconnect")
        renewed = leadership.lease_deadline
        wait_until(lambda: leadership.lease_deadline > renewed, timeout=3, what="a renew")
        assert not leadership.lost.is_set()
        assert leadership.is_leader()
        assert session.client.client_id[0] == session_id
        assert kazoo.exists(leadership.node_path)


def test_deleted_node_is_lost_at_once_and_closes_its_entry(
    backends, zk_url, kazoo, zookeeper_server
):
    """The leader watches its own node from the start, not from its first renew (a third
    of the session away): a node deleted by hand is noticed at once."""
    backend = backends(zk_url)
    with backend.campaign("deleted", candidate("a"), ttl=6) as leadership:  # renews every 2 s
        wait_until(
            lambda: zk_watchers(zookeeper_server, leadership.node_path) >= 1,
            what="the leader to watch its own node",
        )
        deleted = time.monotonic()
        kazoo.delete(leadership.node_path)
        assert leadership.lost.wait(5)
        assert time.monotonic() - deleted < 0.5, "noticed only at the first renew"
        assert "deleted" in leadership.lost_reason
        assert not leadership.is_leader()
    (entry,) = backend.history("deleted")
    assert entry.outcome == "lost" and "deleted" in entry.reason


def test_partitioned_leader_is_lost_before_its_session_can_expire(
    backends, zookeeper_server, zk_path, partition_proxy, pool
):
    proxy = partition_proxy("127.0.0.1", zookeeper_server.port)
    ttl = 2.0
    cut_off = backends(zookeeper_server.url(zk_path, hosts=proxy.address))
    healthy = backends(zookeeper_server.url(zk_path))
    leadership = cut_off.campaign("partition", candidate("cut-off"), ttl=ttl)
    lost_at: list[float] = []
    leadership.subscribe(lambda kind: kind == "lost" and lost_at.append(time.monotonic()))
    waiting = pool.submit(healthy.campaign, "partition", candidate("healthy"), ttl=ttl)
    # The leader watches its own node; the healthy candidate, queued, watches it too.
    wait_until(
        lambda: zk_watchers(zookeeper_server, leadership.node_path) >= 2,
        what="the healthy candidate to wait behind the leader",
    )
    # Its history entry is written beside its start: cut off before it landed, there
    # would be no entry to close as vanished.
    wait_until(lambda: [h.outcome for h in healthy.history("partition")] == ["running"],
               what="the leader's history entry")
    proxy.block()
    blocked_at = time.monotonic()
    successor = waiting.result(ttl + 5)
    won_at = time.monotonic()
    assert lost_at, "the partitioned leader never noticed"
    # Its lease ran out no later than a session timeout after the partition...
    assert lost_at[0] - blocked_at <= ttl
    # ...and the other candidate got in only after that (the server expired the session).
    assert won_at > lost_at[0]
    assert won_at - blocked_at >= ttl - lease_drift(ttl) - renew_interval(ttl)
    assert successor.term > leadership.term
    leadership.release()
    successor.release()
    # The next leader found the cut-off one gone without a word.
    assert [h.outcome for h in healthy.history("partition")] == ["vanished", "exited"]


def test_a_release_zookeeper_missed_while_down_is_made_once_it_answers(backends,
                                                                       fresh_zookeeper, zk_path):
    """Issue 18: a leader loses its lease while ZooKeeper is down (or frozen), and its
    release goes unanswered. The server, back, gives the old session a whole timeout
    again, and the candidate, back in line, waited behind its own node. The node is
    deleted (by its unique name) once the server answers."""
    backend = backends(fresh_zookeeper.url(zk_path, session_timeout="3s"))
    held = backend.campaign("missed", candidate("a"), ttl=3.0)
    fresh_zookeeper.stop()
    try:
        wait_until(held.lost.is_set, timeout=10, what="the lease to run out")
        held.release()  # unanswered
    finally:
        fresh_zookeeper.start()
    asked = time.monotonic()
    again = backend.campaign("missed", candidate("a"), ttl=3.0, timeout=30)
    took = time.monotonic() - asked
    again.release()
    assert again.term > held.term
    assert took < 1.5, f"won {took:.2f}s after the restart (session timeout 3s)"


# -- one release wakes one waiter ---------------------------------------------------------


def test_one_leader_change_wakes_one_waiter_of_fifty(
    backends, zk_url, zk_path, zookeeper_server, pool, caplog
):
    caplog.set_level(logging.WARNING, logger="lelect.zookeeper.kazoo")
    caplog.set_level(logging.DEBUG, logger="lelect.zookeeper")  # last: it sets the handler's level
    backend = backends(zk_url)
    leader = backend.campaign("crowd", candidate("c00"), ttl=10)
    waiters: list[Future] = [
        pool.submit(backend.campaign, "crowd", candidate(f"c{i:02d}"), ttl=10) for i in range(1, 50)
    ]
    election_path = f"{zk_path}/crowd"

    def watched() -> dict[str, int]:
        """Watches on the election's nodes, by path (from the server's own account)."""
        counts: dict[str, int] = {}
        path = None
        for line in zookeeper_server.command("wchp").splitlines():
            if line.startswith("/"):
                path = line.strip()
            elif line.strip() and path is not None and path.startswith(election_path):
                counts[path] = counts.get(path, 0) + 1
        return counts

    wait_until(lambda: sum(watched().values()) >= 50, timeout=20, what="49 waiters to watch")
    counts = watched()
    assert election_path not in counts, "nobody watches the whole election"
    # Each waiter watches its predecessor; the leader (and only it) also watches itself.
    assert sorted(counts.values()) == [1] * 48 + [2]
    before = len(caplog.records)
    leader.release()
    wait_until(lambda: any(f.done() for f in waiters), timeout=5, what="a successor")
    successor = next(f for f in waiters if f.done())
    time.sleep(0.5)  # a window: no other waiter may wake (or win) after the one
    woke = [r for r in caplog.records[before:] if "woke" in r.getMessage()]
    assert len(woke) == 1, [r.getMessage() for r in woke]
    assert sum(f.done() for f in waiters) == 1
    assert successor.result().term > leader.term
    successor.result().release()
    backend.close()  # the other waiters give up; one may have won the release just before
    for waiter in waiters:
        with contextlib.suppress(Exception):
            waiter.result(timeout=10).release()


class ZooKeeperRequests(Wiretap):
    """What clients send a real ZooKeeper through a proxy, read off the wire: (request,
    the last part of its path) of each request, in order. Left out: the connect request,
    pings, the session's end and watches set again on a reconnect (the client's own
    housekeeping)."""

    NAMES = {1: "Create", 2: "Delete", 3: "Exists", 4: "GetData", 5: "SetData", 6: "GetACL",
             7: "SetACL", 8: "GetChildren", 9: "Sync", 12: "GetChildren2", 13: "Check",
             14: "Transaction", 15: "Create", 19: "Create", 21: "Create", 22: "MultiRead"}
    HOUSEKEEPING = {11, -11, 100, 101, 105}  # ping, closeSession, auth, setWatches(2)

    def size(self, header: bytes) -> int:
        return int.from_bytes(header, "big")

    def read(self, number: int, header: bytes, body: bytes) -> tuple[str, str] | None:
        kind = int.from_bytes(body[4:8], "big", signed=True)
        if number == 0 or kind in self.HOUSEKEEPING:  # (the first: the ConnectRequest)
            return None
        path = ""
        if kind != 14 and len(body) >= 12:  # a multi's paths are in its ops
            length = int.from_bytes(body[8:12], "big", signed=True)
            path = body[12:12 + max(length, 0)].decode(errors="replace")
        return self.NAMES.get(kind, f"op{kind}"), path.rsplit("/", 1)[-1]


@pytest.fixture
def watched(zookeeper_server, zk_path, partition_proxy):
    """``(url, requests)``: a URL like ``zk_url`` whose clients reach the server through a
    proxy that reads what they send (:class:`ZooKeeperRequests`)."""
    requests = ZooKeeperRequests()
    proxy = partition_proxy("127.0.0.1", zookeeper_server.port, requests)
    return zookeeper_server.url(zk_path, hosts=proxy.address, session_timeout="2s"), requests


def test_a_waiter_wins_in_one_round_trip_after_its_predecessor_is_deleted(backends, zk_url,
                                                                         watched):
    """Issue 21 ("fast winning"): once the node it waits behind is deleted, a waiting
    candidate reads the queue, and the handover note with it, in one round trip before
    its job may run: nothing is written on the way (the history entry is written beside
    the job, once the leadership is kept, and the release waits for it)."""
    url, requests = watched
    first_backend, second_backend = backends(zk_url), backends(url)
    first = first_backend.campaign("quick", candidate("a"), timeout=10)
    waiting, won = threading.Event(), []
    campaigner = threading.Thread(target=lambda: won.append(second_backend.campaign(
        "quick", candidate("b"), timeout=30, keep_later=True,
        on_wait=lambda holder: waiting.set())), name="campaigner")
    campaigner.start()
    assert waiting.wait(10)
    since = requests.mark()
    first.release()
    campaigner.join(10)
    second = won[0]
    assert sorted(requests.since(since)) == [("GetChildren", "quick"), ("GetData", "handover")]
    second.keep()
    wait_until(lambda: [h.outcome for h in first_backend.history("quick")] == ["exited", "running"],
               timeout=10, what="the win in the history")
    second.release()
    assert [h.outcome for h in first_backend.history("quick")] == ["exited", "exited"]


def test_a_win_kept_later_starts_no_thread_and_sends_nothing_until_kept(backends, watched):
    """Issue 21: ``lelect campaign`` tells its keeper to start the job before the lease's
    threads start (``keep_later``): until ``keep()`` the won leadership has started no
    thread and sent nothing (its history entry and watches go once it is kept)."""
    url, requests = watched
    backend = backends(url)
    before = {t.ident for t in threading.enumerate()}
    leadership = backend.campaign("later", candidate("a"), timeout=10, keep_later=True)
    since = requests.mark()
    time.sleep(0.2)  # a window: nothing may be sent, nothing started
    assert not leadership.kept and requests.since(since) == []
    assert not [t.name for t in threading.enumerate()
                if t.ident not in before and t.name.startswith("lelect-")]
    assert not leadership.recorded.is_set()
    leadership.keep()
    assert leadership.recorded.wait(5)
    assert [h.outcome for h in backend.history("later")] == ["running"]
    leadership.release()
    assert [h.outcome for h in backend.history("later")] == ["exited"]


def test_a_release_writes_nothing_but_its_multi_unless_a_value_was_published(backends, watched):
    """Issue 21: the release's multi is its only write when the term published no value
    (a blind delete of the value note was a second transaction, fsync'ed by the server
    even when it fails, which a single server finishes before the next leader's first
    read); a published value is still deleted with the release."""
    url, requests = watched
    backend = backends(url)
    for value in (None, "here"):
        leadership = backend.campaign("quiet", candidate("a"), timeout=10)
        leadership.publishes_value = True  # as lelect campaign's leaderships do
        if value is not None:
            leadership.proclaim(value)
        leadership.recorded.wait(5)
        since = requests.mark()
        leadership.release()
        # (The lease's own probe, an exists on its node, may come just before.)
        node = leadership.node_path.rsplit("/", 1)[-1]
        sent = [sent for sent in requests.since(since) if sent != ("Exists", node)]
        value_note = f"value.{leadership.term}"
        assert sent[:2] == [("Transaction", ""), ("Exists", value_note)], sent
        assert sent[2:] == ([] if value is None else [("Delete", value_note)]), sent
        assert leadership.value_forgotten
        assert backend.get_note("quiet", value_note) is None


def test_a_leadership_whose_entry_could_not_be_written_is_recorded_by_its_release(
        backends, zk_url):
    """The entry is written beside the job; a leader frozen or cut off before it could
    write it still leaves its leadership in the history: the release writes it closed.
    Here the leadership is released before it was kept (``keep_later``: its entry is
    written only once kept), so the entry was never written."""
    backend = backends(zk_url)
    leadership = backend.campaign("unwritten", candidate("a"), timeout=10, keep_later=True)
    assert backend.history("unwritten") == []
    leadership.release("exited", 0)
    (entry,) = backend.history("unwritten")
    assert (entry.node_id, entry.term, entry.outcome, entry.exit_status) == (
        "a", leadership.term, "exited", 0)


# -- ACL and credentials -------------------------------------------------------------


def test_acl_lets_everyone_read_and_only_the_owner_write(backends, zookeeper_server, zk_path, kazoo):
    owner = backends(zookeeper_server.url(zk_path, auth="digest:ops:s3cret"))
    reader = backends(zookeeper_server.url(zk_path))
    with owner.campaign("guarded", candidate("ops-node")) as leadership:
        entry = f"{zk_path}/_history/guarded/{leadership.term:010d}"
        assert owner.put_note("guarded", "value:1", b"x") is True
        note = f"{zk_path}/_notes/guarded/value:1"
        assert owner.claim_holders("guarded", 1) is None
        claims = f"{zk_path}/_holders/guarded"
        claim = f"{claims}/{kazoo.get_children(claims)[0]}"
        for path in (leadership.node_path, f"{zk_path}/guarded", zk_path, entry, note,
                     f"{zk_path}/_holders", claims, claim):
            acl, _ = kazoo.get_acls(path)  # the server shows others' digests as "user:x"
            assert {(a.id.scheme, a.id.id.split(":")[0], a.perms) for a in acl} == {
                ("digest", "ops", Permissions.ALL),
                ("world", "anyone", Permissions.READ),
            }
        for path in (leadership.node_path, claim):
            with pytest.raises(NoAuthError):
                kazoo.delete(path)
        assert reader.leader("guarded").node_id == "ops-node"
        assert reader.history("guarded")[-1].outcome == "running"
        with pytest.raises(BackendUnavailable, match="ACL of .* does not allow") as caught:
            reader.campaign("guarded", candidate("intruder"), no_wait=False, timeout=5)
        assert "s3cret" not in str(caught.value)
        assert not leadership.lost.is_set()


def test_refused_credentials_are_one_line(backends, zookeeper_server, zk_path):
    backend = backends(zookeeper_server.url(zk_path, auth="kerberos-ish:whoever"))
    with pytest.raises(BackendUnavailable, match="refused the credentials") as caught:
        backend.campaign("auth", candidate("a"), timeout=5)
    assert "whoever" not in str(caught.value)


def test_garbage_resign_request_is_ignored(backends, zk_url, zk_path, kazoo):
    backend = backends(zk_url)
    kazoo.create(f"{zk_path}/_resign/junk", b"not json", makepath=True)
    with backend.campaign("junk", candidate("a")) as leadership:
        assert not leadership.resign_requested.wait(0.3)


# -- connecting keeps its bound (the CLI side is in test_zookeeper_cli.py) ------------------


def test_sessions_of_one_backend_share_one_connect_bound(backends, silent_listener, pool):
    """A campaign that finds no server tells the backend's other connects at once (the
    CLI's heartbeats), so all of them end by the campaign's bound."""
    backend = backends(f"zookeeper://127.0.0.1:{silent_listener}/lelect?connect_timeout=60s")
    shared = pool.submit(backend.leader, "x")
    wait_until(lambda: backend._connecting, what="the shared session to start connecting")
    with pytest.raises(BackendUnavailable, match="within 1s: .*is that a ZooKeeper port"):
        backend.campaign("x", candidate("a"), timeout=1)
    with pytest.raises(BackendUnavailable, match="within 1s"):
        shared.result(timeout=5)  # not 60 s


def test_a_session_that_never_connected_closes_at_once(silent_listener, pool):
    backend = connect(f"zookeeper://127.0.0.1:{silent_listener}/lelect?connect_timeout=60s")
    trying = pool.submit(backend.leader, "x")
    wait_until(lambda: backend._connecting, what="the connect to start")
    backend.close()
    with pytest.raises(BackendUnavailable, match="closed while connecting"):
        trying.result(timeout=5)  # not the 60 s connect_timeout


# -- the keeper's hand-back ---------------------------------------------------------------

WIN_IN_CHILD = """
import json, sys, time
from lelect.backends import connect
from lelect.backends.base import Candidate, Heartbeat
backend = connect(sys.argv[1])
backend.publish(Heartbeat(sys.argv[2], "crashed", "testhost", 1, "follower", None, 1, time.time()), 3600)
leadership = backend.campaign(sys.argv[2], Candidate("crashed", "testhost", 1))
print(json.dumps(backend.hand_back(leadership).params), flush=True)
time.sleep(3600)
"""


def leader_in_child(url: str, election: str, processes: list) -> tuple[subprocess.Popen, dict]:
    """A leadership won in a process of its own, and its hand-back parameters."""
    child = subprocess.Popen([sys.executable, "-c", WIN_IN_CHILD, url, election],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    processes.append(child)
    return child, json.loads(child.stdout.readline())


def test_hand_back_frees_the_election_at_once(backends, zookeeper_server, zk_path, kazoo,
                                               pool, processes):  # fmt: skip
    # With credentials: the entry and the member record are writable by their owner only.
    url = zookeeper_server.url(zk_path, session_timeout="10s", auth="digest:ops:s3cret")
    child, params = leader_in_child(url, "handed", processes)
    backend = backends(url)
    told: list = []
    waiting = pool.submit(backend.campaign, "handed", candidate("next"), on_wait=told.append)
    wait_until(lambda: told, what="the next candidate to wait")
    child.kill()
    child.wait()
    assert _handback_zookeeper.hand_back(params, 5.0, 137) == "released"
    successor = waiting.result(timeout=5)  # long before the 10 s session could expire
    crashed, running = backend.history("handed")
    assert (crashed.node_id, crashed.outcome, crashed.exit_status) == ("crashed", "lost", 137)
    assert crashed.reason == HAND_BACK_REASON
    assert (running.term, running.outcome) == (successor.term, "running")
    assert not kazoo.exists(f"{zk_path}/_members/handed/crashed"), "member record left behind"
    successor.release()


def test_hand_back_writes_an_entry_lelect_died_before_writing(backends, zookeeper_server, zk_path,
                                                             kazoo, processes):
    """The entry is written beside the job: lelect killed as its job starts may not have
    written it. The keeper's hand-back then creates it, closed as lost, with lelect's ACL."""
    url = zookeeper_server.url(zk_path, session_timeout="10s", auth="digest:ops:s3cret")
    child, params = leader_in_child(url, "early", processes)
    entry_path = params["entry_path"]
    wait_until(lambda: kazoo.exists(entry_path), what="the entry written beside the leadership")
    child.kill()
    child.wait()
    owner = KazooClient(zookeeper_server.hosts, timeout=2, auth_data=[("digest", "ops:s3cret")])
    owner.start(10)
    try:
        owner.delete(entry_path)  # as if lelect had died before writing it
    finally:
        owner.stop()
        owner.close()
    assert _handback_zookeeper.hand_back(params, 5.0, 137) == "released"
    (lost,) = backends(url).history("early")
    assert (lost.node_id, lost.outcome, lost.exit_status) == ("crashed", "lost", 137)
    assert lost.reason == HAND_BACK_REASON
    acl, _ = kazoo.get_acls(entry_path)
    assert {(a.id.scheme, a.id.id.split(":")[0], a.perms) for a in acl} == {
        ("digest", "ops", Permissions.ALL), ("world", "anyone", Permissions.READ)}


def test_hand_back_after_the_session_expired_changes_nothing(backends, zk_url, zk_path, kazoo,
                                                             pool, processes):  # fmt: skip
    child, params = leader_in_child(zk_url, "expired", processes)
    backend = backends(zk_url)
    waiting = pool.submit(backend.campaign, "expired", candidate("next"))
    # (the entry is written beside the leadership: a leader frozen before leaves none)
    wait_until(lambda: kazoo.exists(params["entry_path"]), what="the crashed leader's entry")
    os.kill(child.pid, signal.SIGSTOP)  # its session expires 2 s later; the next one wins
    successor = waiting.result(timeout=15)
    assert _handback_zookeeper.hand_back(params, 5.0, 137) == "not ours"
    assert kazoo.exists(successor.node_path) and not successor.lost.is_set()
    assert [h.outcome for h in backend.history("expired")] == ["vanished", "running"]
    assert kazoo.exists(f"{zk_path}/_members/expired/crashed"), "nothing may be touched"
    successor.release()


def test_hand_back_gives_up_within_its_budget(backends, zk_url, silent_listener, refused_port,
                                              kazoo):  # fmt: skip
    backend = backends(zk_url)
    leadership = backend.campaign("far", candidate("a"))
    params = backend.hand_back(leadership).params
    params["hosts"] = [["127.0.0.1", refused_port], ["127.0.0.1", silent_listener]]
    started = time.monotonic()
    with pytest.raises(OSError):
        _handback_zookeeper.hand_back(params, 1.0, 0)
    assert time.monotonic() - started < 3.0  # its 1 s budget, not a session or a TCP timeout
    assert kazoo.exists(leadership.node_path) and leadership.is_leader()
    leadership.release()


def test_squatted_election_is_taken_back_and_an_outside_contender_refused(
    backends, zookeeper_server, zk_path, kazoo
):
    """An anonymous client made the election (world:anyone:cdrwa) and entered it before
    lelect with credentials ever ran: lelect takes the node back (it has ADMIN there),
    refuses to contend behind the stranger (78, one line naming its node), and once the
    stranger is gone wins an election that no anonymous client can touch any more."""
    from tests.helpers import run_lelect

    url = zookeeper_server.url(zk_path, auth="digest:ops:s3cret")
    squatter = kazoo.create(f"{zk_path}/squat/0123456789abcdef__lock__", b"anonymous-squatter",
                            ephemeral=True, sequence=True, makepath=True)
    out = run_lelect("campaign", "squat", "--no-wait", "--", "true", backend=url)
    assert out.returncode == 78, out.stderr
    refusal = [line for line in out.stderr.splitlines() if "error" in line]
    assert len(refusal) == 1 and squatter in refusal[0] and "world:anyone:cdrwa" in refusal[0]
    assert "s3cret" not in out.stderr
    with pytest.raises(NoAuthError):  # the election is lelect's now
        kazoo.create(f"{zk_path}/squat/late__lock__", b"x", ephemeral=True, sequence=True)

    kazoo.stop()  # the stranger's session ends: its contender goes
    kazoo.start(10)
    owner = backends(url)
    with owner.campaign("squat", candidate("ops-node"), timeout=10) as leadership:
        with pytest.raises(NoAuthError):
            kazoo.delete(leadership.node_path)
        for own in ("_resign", "_members", "_history"):
            with pytest.raises(NoAuthError):
                kazoo.create(f"{zk_path}/{own}/squat", b"x", makepath=True)
        assert not leadership.lost.is_set()


def test_open_lelect_nodes_are_given_lelect_acl(backends, zookeeper_server, zk_path, kazoo):
    for path in (zk_path, f"{zk_path}/open", f"{zk_path}/_resign", f"{zk_path}/_resign/open"):
        kazoo.ensure_path(path)  # world:anyone:cdrwa, made by an anonymous client
    owner = backends(zookeeper_server.url(zk_path, auth="digest:ops:s3cret"))
    with owner.campaign("open", candidate("ops-node"), timeout=10) as leadership:
        for path in (zk_path, f"{zk_path}/open", f"{zk_path}/_resign"):
            acl, _ = kazoo.get_acls(path)
            assert {(a.id.scheme, a.id.id.split(":")[0], a.perms) for a in acl} == {
                ("digest", "ops", Permissions.ALL), ("world", "anyone", Permissions.READ)}
        with pytest.raises(NoAuthError):  # (lelect cleared the stale request when it won)
            kazoo.create(f"{zk_path}/_resign/open", b'{"term": %d}' % leadership.term)
        with pytest.raises(NoAuthError):
            kazoo.delete(leadership.node_path)


def test_the_server_clock_node_leaves_lelect_path_closed_to_writers(backends, zookeeper_server,
                                                                     zk_path, kazoo):
    """The first thing lelect writes under a new path may be its clock node (anybody may
    touch it): the path above it still gets lelect's ACL, not the clock's."""
    owner = backends(zookeeper_server.url(zk_path, auth="digest:ops:s3cret"))
    owner.now()
    acl, _ = kazoo.get_acls(zk_path)
    assert {(a.id.scheme, a.id.id.split(":")[0], a.perms) for a in acl} == {
        ("digest", "ops", Permissions.ALL), ("world", "anyone", Permissions.READ)}


def test_acl_lelect_cannot_fix_is_refused_naming_the_node(backends, zookeeper_server, zk_path):
    from kazoo.security import make_acl, make_digest_acl

    other = KazooClient(zookeeper_server.hosts, timeout=2, auth_data=[("digest", "other:pw")])
    other.start(10)
    try:
        # Anybody may create and delete below it, but only "other" may change its ACL.
        other.create(zk_path, acl=[make_digest_acl("other", "pw", all=True),
                                   make_acl("world", "anyone", read=True, create=True,
                                            delete=True)])
        owner = backends(zookeeper_server.url(zk_path, auth="digest:ops:s3cret"))
        with pytest.raises(ConfigError, match=f"node {zk_path} has ACL .*world:anyone:cdr") as caught:
            owner.campaign("held", candidate("ops-node"), timeout=10)
        assert "no ADMIN right" in str(caught.value) and "s3cret" not in str(caught.value)
    finally:
        other.delete(zk_path, recursive=True)
        other.stop()
        other.close()


# -- the agreement on --holders, kept by the sessions (issue 21) ---------------------------


def test_holders_claims_are_ephemeral_and_the_oldest_place_wins(backends, zk_url, zk_path, kazoo):
    first, second, third = backends(zk_url), backends(zk_url), backends(zk_url)
    assert first.claim_holders("agree", 2) is None
    assert first.claim_holders("agree", 2) is None  # while it lives: no second node
    assert third.claim_holders("agree", 3) == 2
    assert second.claim_holders("agree", 2) is None
    claims = kazoo.get_children(f"{zk_path}/_holders/agree")
    assert len(claims) == 2 and all(c.startswith("n2-") for c in claims), claims
    assert third.holders_agreed("agree") == 2
    first.close()
    assert third.claim_holders("agree", 3) == 2  # the second still claims 2
    second.close()
    assert third.holders_agreed("agree") is None
    assert third.claim_holders("agree", 3) is None
    assert kazoo.get_children(f"{zk_path}/_holders/agree")[0].startswith("n3-")


def test_a_seat_taken_from_the_line_carries_the_holders_claim(backends, zk_url, zk_path, kazoo,
                                                               pool):
    """A candidate with seats waits in the line on one session and takes its seat on
    another; the line's session ends, and its word on --holders goes on with the seat's
    (same place), so a candidate with another --holders is still refused."""
    from lelect.election import Election

    names = ("a", "b", "c")
    elections = {n: Election(backends(zk_url), "carried", n, holders=2) for n in names}
    held = {n: elections[n].campaign(timeout=10) for n in ("a", "b")}
    waiting = pool.submit(elections["c"].campaign, timeout=20)
    wait_until(lambda: kazoo.exists(f"{zk_path}/carried:line")
               and zk_queue(kazoo, f"{zk_path}/carried:line"), what="c at the head of the line")
    held["a"].release()
    seat = waiting.result(timeout=20)
    assert seat.is_leader()
    wait_until(lambda: not zk_queue(kazoo, f"{zk_path}/carried:line"), what="c to leave the line")
    claims = sorted(kazoo.get_children(f"{zk_path}/_holders/carried"))
    assert len(claims) == 2 and sum("-r" in c for c in claims) == 1, claims
    assert backends(zk_url).claim_holders("carried", 3) == 2
    seat.release()
    held["b"].release()


def test_a_holders_claim_goes_on_in_another_session_before_its_own_ends(backends, zk_url,
                                                                       zk_path, kazoo):
    backend = backends(zk_url)
    first = backend.campaign("moving", candidate("a"), timeout=10)
    assert backend.claim_holders("moving", 2) is None  # in the first campaign's session
    other = backend.campaign("elsewhere", candidate("a"), timeout=10)
    [made] = kazoo.get_children(f"{zk_path}/_holders/moving")
    first.release()
    [carried] = kazoo.get_children(f"{zk_path}/_holders/moving")
    assert carried.startswith(f"n2-r{made[3:]}-"), (made, carried)  # the same place
    assert backends(zk_url).claim_holders("moving", 3) == 2
    assert backend.claim_holders("moving", 2) is None
    assert kazoo.get_children(f"{zk_path}/_holders/moving") == [carried]
    other.release()
    assert kazoo.get_children(f"{zk_path}/_holders/moving") == []  # nowhere left to go


def test_a_cancel_ends_a_campaign_reconnecting_to_its_server_at_once(backends, zookeeper_server,
                                                                     zk_path, partition_proxy):
    """A waiting candidate whose connection is cut reconnects (its session may live on);
    a cancel (SIGTERM, Ctrl-C) ends that wait at once, as it ends the wait in line: its
    calls are not queued behind the reconnection (they waited out the session's calls)."""
    from lelect.backends.base import Cancel
    from lelect.errors import CampaignCancelled

    proxy = partition_proxy("127.0.0.1", zookeeper_server.port)
    leader = backends(zookeeper_server.url(zk_path)).campaign("cut", candidate("a"))
    waiter = backends(zookeeper_server.url(zk_path).replace(f":{zookeeper_server.port}",
                                                            f":{proxy.port}"))
    cancel, waiting, ended = Cancel(), threading.Event(), []

    def campaign() -> None:
        try:
            waiter.campaign("cut", candidate("b"), cancel=cancel,
                            on_wait=lambda holder: waiting.set())
        except BaseException as exc:  # noqa: BLE001 - what ended it is the test
            ended.append((time.monotonic(), exc))

    thread = threading.Thread(target=campaign, daemon=True)
    thread.start()
    assert waiting.wait(10)
    proxy.block(cut=True)
    wait_until(lambda: not any(s.connected.is_set() for s in list(waiter._sessions)),
               timeout=10, what="the waiter to see its connection cut")
    time.sleep(0.5)  # the outage itself: the campaign is somewhere in its reconnecting
    cancelled = time.monotonic()
    cancel.set()
    thread.join(10)
    assert ended and isinstance(ended[0][1], CampaignCancelled), ended
    assert ended[0][0] - cancelled < 1.0
    leader.release()
