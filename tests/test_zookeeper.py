"""The ZooKeeper backend through the library, against a real ZooKeeper and kazoo's own
Election recipe."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import Permissions

from lelect.backends import connect
from lelect.backends.base import MAX_ARRIVALS, Candidate, Heartbeat, lease_drift
from lelect.errors import (
    BackendUnavailable,
    CampaignTimeout,
    ConfigError,
    ElectionBusy,
    UsageError,
)
from tests.helpers import free_port, wait_until, zk_watchers

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

    backend = connect("zk://zk1:2181/jobs/elect/?session_timeout=4&connect_timeout=4s")
    assert backend.config.path == "/jobs/elect"
    assert (backend.config.session_timeout, backend.config.connect_timeout) == (4.0, 4.0)
    assert backend.ttl == 4.0


def test_auth_is_never_shown():
    backend = connect("zookeeper://zk1:2181/lelect?auth=digest:ops:s3cret&session_timeout=3s")
    assert (backend.config.auth_scheme, backend.config.auth_credential) == ("digest", "ops:s3cret")
    assert "s3cret" not in backend.display_url
    assert "auth=***" in backend.display_url


@pytest.mark.parametrize(
    "url",
    [
        "zookeeper://zk1:2181/lelect?colour=blue",
        "zookeeper://zk1:2181/lelect?session_timeout=soon",
        "zookeeper://zk1:2181/lelect?auth=digest:nopassword",
        "zookeeper://zk1:2181/lelect?auth=digest",
        "zookeeper://ops:pw@zk1:2181/lelect",
        "zookeeper:///lelect",
        "zookeeper://zk1:2181/a//b",
        "zookeeper://zk1:2181/a/../b",
    ],
)
def test_bad_urls_are_usage_errors(url):
    with pytest.raises(UsageError) as caught:
        connect(url)
    assert "\n" not in str(caught.value)
    assert "pw" not in str(caught.value).replace("password", "")


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
        assert sorted(kazoo.get_children(zk_path)) == ["_members", "_resign", "nightly"]
    assert kazoo.get_children(f"{zk_path}/nightly") == []
    assert kazoo.exists(f"{zk_path}/nightly"), "the election node is never deleted"


def test_terms_grow_with_every_leadership(backends, zk_url):
    backend = backends(zk_url)
    terms = []
    for _ in range(4):
        with backend.campaign("terms", candidate("a")) as leadership:
            terms.append(leadership.term)
    assert terms == sorted(set(terms)) and len(terms) == 4


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
        with pytest.raises(ElectionBusy, match="kazoo-user"):
            backend.campaign("shared", candidate("lelect-1"), no_wait=True)
        assert election.contenders() == ["kazoo-user"], "--no-wait left a node behind"

        waiting = pool.submit(backend.campaign, "shared", candidate("lelect-1"))
        wait_until(lambda: len(election.contenders()) == 2, what="lelect to queue")
        assert election.contenders() == ["kazoo-user", "lelect-1"]
        time.sleep(0.3)  # a window: lelect must not win while kazoo's Election leads
        assert not waiting.done()
        finish.set()
        leadership = waiting.result(10)
        assert leadership.term > info.term
        assert backend.leader("shared").node_id == "lelect-1"
        leadership.release()
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


def test_no_wait_and_timeout_leave_no_node(backends, zk_url, zk_path, kazoo):
    backend = backends(zk_url)
    with backend.campaign("busy", candidate("holder")) as leadership:
        with pytest.raises(ElectionBusy, match=rf"'holder' \(term {leadership.term}\)"):
            backend.campaign("busy", candidate("other"), no_wait=True)
        started = time.monotonic()
        with pytest.raises(CampaignTimeout):
            backend.campaign("busy", candidate("other"), timeout=0.5)
        assert 0.4 < time.monotonic() - started < 2.0
        assert len(kazoo.get_children(f"{zk_path}/busy")) == 1


def test_handoff_wakes_the_next_waiter_at_once(backends, zk_url, zookeeper_server, pool):
    first, second = backends(zk_url), backends(zk_url)
    leadership = first.campaign("handoff", candidate("a"))
    waiting = pool.submit(second.campaign, "handoff", candidate("b"))
    # The leader watches its own node; the waiter, queued, watches it too.
    wait_until(
        lambda: zk_watchers(zookeeper_server, leadership.node_path) >= 2, what="b to wait behind a"
    )
    released = time.monotonic()
    leadership.release()
    successor = waiting.result(5)
    assert time.monotonic() - released < 0.3
    assert successor.term > leadership.term
    successor.release()


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
        assert backend.renew_interval(1.2) == pytest.approx(0.4)
        leadership.on_deadline(lambda deadline: deadlines.append((time.monotonic(), deadline)))
        time.sleep(1.5)  # a window: count the probes answered in it (one per 0.4 s)
        assert leadership.is_leader()
    assert 2 <= len(deadlines) <= 5
    for seen_at, deadline in deadlines:
        # From a send time a moment ago, never later than now + granted - drift.
        assert seen_at + 1.2 - lease_drift(1.2) - 0.3 < deadline <= seen_at + 1.2 - lease_drift(1.2)
    assert [d for _, d in deadlines] == sorted(d for _, d in deadlines)


def test_reconnection_within_the_session_disturbs_nothing(backends, zk_url, kazoo, zk_path):
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


def test_deleted_node_is_lost_leadership(backends, zk_url, kazoo):
    backend = backends(zk_url)
    with backend.campaign("deleted", candidate("a")) as leadership:
        kazoo.delete(leadership.node_path)
        assert leadership.lost.wait(3)
        assert "deleted" in leadership.lost_reason
        assert not leadership.is_leader()


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
    proxy.block()
    blocked_at = time.monotonic()
    successor = waiting.result(ttl + 5)
    won_at = time.monotonic()
    assert lost_at, "the partitioned leader never noticed"
    # Its lease ran out no later than a session timeout after the partition...
    assert lost_at[0] - blocked_at <= ttl
    # ...and the other candidate got in only after that (the server expired the session).
    assert won_at > lost_at[0]
    assert won_at - blocked_at >= ttl - lease_drift(ttl) - cut_off.renew_interval(ttl)
    assert successor.term > leadership.term
    leadership.release()
    successor.release()


# -- resign, observe --------------------------------------------------------------------


def test_resign_request_honours_the_term(backends, zk_url, zk_path, kazoo):
    backend = backends(zk_url)
    assert backend.request_resign("quiet") is False
    with backend.campaign("quiet", candidate("a")) as leadership:
        assert backend.request_resign("quiet", term=leadership.term + 7) is False
        assert not leadership.resign_requested.wait(0.3)
        assert backend.request_resign("quiet", term=leadership.term) is True
        assert leadership.resign_requested.wait(3)
        wait_until(lambda: not kazoo.exists(f"{zk_path}/_resign/quiet"), what="request tidied")
    # A request made before a leader's watch was set is still seen.
    with backend.campaign("quiet", candidate("b")) as leadership:
        pass
    with backend.campaign("quiet", candidate("c")) as leadership:
        backend.request_resign("quiet")
        assert leadership.resign_requested.wait(3)


def test_observe_yields_every_leader_change(backends, zk_url, zookeeper_server, pool):
    watcher, contender = backends(zk_url), backends(zk_url)
    stop = threading.Event()
    seen: list = []

    def observe():
        for info in watcher.observe("watched", stop):
            seen.append(None if info is None else info.node_id)

    observer = pool.submit(observe)
    wait_until(lambda: seen == [None], what="the first yield")
    first = contender.campaign("watched", candidate("a"))
    wait_until(lambda: seen[-1:] == ["a"], what="a")
    waiting = pool.submit(contender.campaign, "watched", candidate("b"))
    # a watches its own node, the observer watches the leader's, and b, queued, its predecessor.
    wait_until(lambda: zk_watchers(zookeeper_server, first.node_path) >= 3, what="b to wait")
    time.sleep(0.3)  # a window: the observer must not report b's joining as a change
    assert seen == [None, "a"], "a waiter joining is not a leader change"
    first.release()
    second = waiting.result(5)
    wait_until(lambda: seen[-1:] == ["b"], what="b")
    second.release()
    wait_until(lambda: seen[-1:] == [None], what="nobody")
    stop.set()
    observer.result(5)
    assert seen == [None, "a", "b", None]


# -- heartbeats ---------------------------------------------------------------------------


def test_heartbeats_keep_server_stamped_arrivals(backends, zk_url, zk_path, kazoo):
    backend = backends(zk_url)
    for seq in range(1, MAX_ARRIVALS + 6):
        backend.publish(heartbeat("beats", "node/1", seq), 3600)
    backend.publish(heartbeat("beats", "node-2"), 3600)
    before = time.time()
    members = backend.members("beats")
    assert abs(members.now - before) < 2, "the server's clock, close to ours on one host"
    by_id = {record.node_id: record for record in members.records}
    assert set(by_id) == {"node/1", "node-2"}
    record = by_id["node/1"]
    assert record.heartbeat.seq == MAX_ARRIVALS + 5
    assert len(record.arrivals) == MAX_ARRIVALS
    assert list(record.arrivals) == sorted(record.arrivals)
    _, stat = kazoo.get(f"{zk_path}/_members/beats/node%2F1")
    assert record.arrivals[-1] == stat.mtime / 1000.0
    assert record.arrivals[-1] <= members.now

    kazoo.create(f"{zk_path}/_members/beats/garbage", b"{not json")
    records = {r.node_id: r for r in backend.members("beats").records}
    assert records["garbage"].heartbeat is None and "unreadable" in records["garbage"].error

    backend.remove_member("beats", "node/1")
    backend.remove_member("beats", "never-there")
    assert "node/1" not in {r.node_id for r in backend.members("beats").records}


def test_dead_members_are_forgotten_after_their_ttl(backends, zk_url, zk_path, kazoo):
    backend = backends(zk_url)
    backend.publish(heartbeat("forget", "short-lived"), 0.3)
    backend.publish(heartbeat("forget", "long-lived"), 3600)
    short_at = kazoo.exists(f"{zk_path}/_members/forget/short-lived").mtime / 1000.0
    # Ages are judged by the server's clock: wait until it has passed short-lived's ttl.
    later = wait_until(
        lambda: (m := backend.members("forget")).now - short_at > 0.3 and m,
        what="the server clock to pass short-lived's ttl",
    )
    assert [r.node_id for r in later.records] == ["long-lived"]


def test_leader_names_host_and_pid_from_the_member_record(backends, zk_url):
    backend = backends(zk_url)
    backend.publish(heartbeat("hosted", "a"), 3600)
    with backend.campaign("hosted", candidate("a")) as leadership:
        info = backend.leader("hosted")
        assert (info.node_id, info.term, info.host, info.pid) == ("a", leadership.term, "testhost", 4321)
        assert abs(info.since - time.time()) < 5
        assert info.to_json()["since"].endswith("+00:00")


def test_elections_lists_led_and_membered_elections(backends, zk_url):
    backend = backends(zk_url)
    assert backend.elections() == []
    backend.publish(heartbeat("with-members", "a"), 3600)
    with backend.campaign("with-leader", candidate("a")):
        assert backend.elections() == ["with-leader", "with-members"]
    backend.remove_member("with-members", "a")
    assert backend.elections() == []


# -- many contenders ------------------------------------------------------------------


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
    backend.close()  # the other waiters give up


# -- ACL and errors -------------------------------------------------------------------


def test_acl_lets_everyone_read_and_only_the_owner_write(backends, zookeeper_server, zk_path, kazoo):
    owner = backends(zookeeper_server.url(zk_path, auth="digest:ops:s3cret"))
    reader = backends(zookeeper_server.url(zk_path))
    with owner.campaign("guarded", candidate("ops-node")) as leadership:
        for path in (leadership.node_path, f"{zk_path}/guarded", zk_path):
            acl, _ = kazoo.get_acls(path)  # the server shows others' digests as "user:x"
            assert {(a.id.scheme, a.id.id.split(":")[0], a.perms) for a in acl} == {
                ("digest", "ops", Permissions.ALL),
                ("world", "anyone", Permissions.READ),
            }
        with pytest.raises(NoAuthError):
            kazoo.delete(leadership.node_path)
        assert reader.leader("guarded").node_id == "ops-node"
        with pytest.raises(BackendUnavailable, match="ACL of .* does not allow") as caught:
            reader.campaign("guarded", candidate("intruder"), no_wait=False, timeout=5)
        assert "s3cret" not in str(caught.value)
        assert not leadership.lost.is_set()


def test_unreachable_server_fails_within_connect_timeout(backends):
    port = free_port()  # nothing listens there
    backend = backends(f"zookeeper://127.0.0.1:{port}/lelect?connect_timeout=0.5")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=f"cannot reach ZooKeeper at 127.0.0.1:{port} within 500ms"):
        backend.campaign("unreachable", candidate("a"))
    assert time.monotonic() - started < 2
    with pytest.raises(BackendUnavailable):
        backend.leader("unreachable")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="within 200ms"):
        backend.campaign("unreachable", candidate("a"), timeout=0.2)
    assert time.monotonic() - started < 1.5


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


# -- found in review ------------------------------------------------------------------


def test_contender_without_data_is_busy_not_a_crash(backends, zk_url, zk_path, kazoo):
    """A contender created with null data (as a Java client may) is somebody leading."""
    kazoo.create(f"{zk_path}/nodata/{'0' * 32}__lock__", None, ephemeral=True, sequence=True, makepath=True)
    backend = backends(zk_url)
    with pytest.raises(ElectionBusy, match=r"led by '' \(term 0\)"):
        backend.campaign("nodata", candidate("a"), no_wait=True)
    assert len(kazoo.get_children(f"{zk_path}/nodata")) == 1


@pytest.mark.parametrize(
    "options", ["session_timeout=30d", "session_timeout=0.0001s", "connect_timeout=200000d"]
)
def test_out_of_range_timeouts_are_usage_errors(zookeeper_server, zk_path, options):
    with pytest.raises(UsageError, match="must be at"):
        connect(zookeeper_server.url(zk_path) + "?" + options)


@pytest.mark.parametrize("ttl", [30 * 86400, 0.0001])
def test_out_of_range_ttl_is_a_usage_error(backends, zk_url, ttl):
    """Not a traceback from kazoo's connection thread and a wrong 'cannot reach'."""
    backend = backends(zk_url)
    started = time.monotonic()
    with pytest.raises(UsageError, match="--ttl"):
        backend.campaign("range", candidate("a"), ttl=ttl)
    assert time.monotonic() - started < 1


def test_node_deleted_before_the_first_renew_is_lost_at_once(
    backends, zk_url, kazoo, zookeeper_server
):
    """The leader watches its own node from the start, not from its first renew (which
    is a third of the session away): a node deleted by hand lets a waiter in at once."""
    backend = backends(zk_url)
    with backend.campaign("early", candidate("a"), ttl=6) as leadership:  # renews every 2 s
        # The guard's first probe (at once) sets the watch on our node: deleting it before
        # then would be seen by that probe, not by the watch this test is about.
        wait_until(
            lambda: zk_watchers(zookeeper_server, leadership.node_path) >= 1,
            what="the leader to watch its own node",
        )
        deleted = time.monotonic()
        kazoo.delete(leadership.node_path)
        assert leadership.lost.wait(5)
        assert time.monotonic() - deleted < 0.5, "noticed only at the first renew"
        assert "deleted" in leadership.lost_reason
