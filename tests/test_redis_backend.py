"""The Redis backend through the library, against real redis-server processes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed

import pytest

from lelect.backends import connect
from lelect.backends.base import MAX_ARRIVALS, Candidate, Heartbeat, lease_drift
from lelect.errors import BackendUnavailable, CampaignTimeout, ElectionBusy, UsageError
from tests.helpers import free_port, redis_listeners, redis_tried, wait_until


def candidate(name: str) -> Candidate:
    return Candidate(node_id=name, host="testhost", pid=1234)


def heartbeat(election: str, node_id: str, seq: int = 1) -> Heartbeat:
    return Heartbeat(
        election=election, node_id=node_id, host="testhost", pid=1234, role="follower",
        term=None, seq=seq, time=time.time(), cpu_percent=1.5, memory_percent=20.0,
    )  # fmt: skip


@pytest.fixture
def pool():
    with ThreadPoolExecutor(max_workers=16) as executor:
        yield executor


def campaign_later(pool, backend, election: str, name: str, **kwargs) -> Future:
    return pool.submit(backend.campaign, election, candidate(name), **kwargs)


def server_ms(client) -> int:
    """The server's clock (TIME) in ms, as the acquire script reads it for a term."""
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def renewed(leadership) -> threading.Event:
    """Set by the next successful renew of ``leadership``."""
    event = threading.Event()
    leadership.on_deadline(lambda _: event.set())
    return event


# -- URLs -------------------------------------------------------------------------------


def test_url_forms_and_options(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until connecting")
    backend = connect("redis://:s3cret@cache:6380/3?prefix=jobs&ttl=4s&connect_timeout=500ms")
    options = backend.options
    assert (options.where, options.prefix, options.ttl, options.connect_timeout) == (
        "cache:6380", "jobs", 4.0, 0.5,
    )  # fmt: skip
    assert options.connection_kwargs["db"] == 3
    assert options.connection_kwargs["password"] == "s3cret"
    assert backend.default_ttl == 4.0
    assert "s3cret" not in backend.display_url and "***" in backend.display_url

    assert connect("redis://cache").options.where == "cache:6379"
    tls = connect(f"rediss://u:pw@cache:6390/0?ssl_ca_certs={ca}").options
    assert tls.connection_kwargs["ssl_ca_certs"] == str(ca)
    assert tls.connection_kwargs["username"] == "u"
    unix = connect("unix:///run/redis/redis.sock?db=2").options
    assert (unix.where, unix.connection_kwargs["db"]) == ("/run/redis/redis.sock", 2)
    assert connect("redis://h/0").options.ttl == 10.0


@pytest.mark.parametrize(
    "url",
    [
        "redis://h/abc",
        "redis://h1,h2/0",
        "redis://h/0?bogus=1",
        "redis://h/0?ttl=soon",
        "redis://h/0?ttl=10ms",
        "redis://h/0?connect_timeout=0",
        "redis://h/0?prefix=a*b",
        "redis://h/0?prefix=",
        "redis://h/0?ssl_ca_certs=/etc/hosts",
        "rediss://h/0?ssl_ca_certs=/no/such/ca.pem",
        "unix://",
        "unix:///run/redis.sock?db=x",
        "redis://h/%C2%B2",  # "²".isdigit() is true, int("²") raises
    ],
)
def test_bad_url_is_usage_error(url):
    with pytest.raises(UsageError):
        connect(url)


def test_campaign_refuses_too_short_ttl(redis_server):
    with pytest.raises(UsageError, match="ttl"):
        connect(redis_server.url).campaign("e", candidate("a"), ttl=0.01)


# -- leadership -------------------------------------------------------------------------


def test_leader_key_holds_token_with_ttl_and_term_is_server_time(redis_server):
    backend = connect(redis_server.url)
    client = redis_server.client()
    before = time.monotonic()
    with backend.campaign("nightly", candidate("a"), ttl=2.0) as leadership:
        assert leadership.lease_deadline <= before + 2.0 - lease_drift(2.0) + 0.05
        assert client.get("lelect:{nightly}:leader") == leadership.token
        assert 1500 < client.pttl("lelect:{nightly}:leader") <= 2000
        server_ms = int(client.time()[0]) * 1000
        assert abs(leadership.term - server_ms) < 5000
        info = backend.leader("nightly")
        assert (info.node_id, info.term, info.host, info.pid) == (
            "a",
            leadership.term,
            "testhost",
            1234,
        )
        assert abs(info.since - time.time()) < 5
    assert client.get("lelect:{nightly}:leader") is None
    assert backend.leader("nightly") is None
    assert set(client.keys("*")) <= {"lelect:{nightly}:term"}


def test_terms_strictly_increase(redis_server):
    backend = connect(redis_server.url)
    terms = []
    for i in range(5):
        with backend.campaign("e", candidate(f"n{i}")) as leadership:
            terms.append(leadership.term)
    assert terms == sorted(set(terms))


def test_terms_keep_growing_after_flushall_and_restart(redis_server):
    backend = connect(redis_server.url)
    with backend.campaign("e", candidate("a")) as first:
        pass
    client = redis_server.client()
    client.flushall()
    # With the term key gone a term is the server's TIME in ms: let it pass the last term.
    wait_until(lambda: server_ms(client) > first.term, what="the server clock to pass term 1")
    with backend.campaign("e", candidate("a")) as second:
        pass
    redis_server.restart()  # no persistence: every key is gone
    client = redis_server.client()
    wait_until(lambda: server_ms(client) > second.term, what="the server clock to pass term 2")
    with backend.campaign("e", candidate("a")) as third:
        pass
    assert first.term < second.term < third.term


def test_no_wait_raises_election_busy_naming_the_leader(redis_server):
    backend = connect(redis_server.url)
    with backend.campaign("e", candidate("alice")) as leadership:
        with pytest.raises(ElectionBusy, match=f"alice.*{leadership.term}"):
            backend.campaign("e", candidate("bob"), no_wait=True)


def test_timeout_raises_campaign_timeout_in_time(redis_server):
    backend = connect(redis_server.url)
    with backend.campaign("e", candidate("alice")):
        started = time.monotonic()
        with pytest.raises(CampaignTimeout):
            backend.campaign("e", candidate("bob"), timeout=0.3)
        assert 0.25 < time.monotonic() - started < 0.6
        with pytest.raises(CampaignTimeout):
            backend.campaign("e", candidate("bob"), timeout=0)
    with backend.campaign("e", candidate("bob"), timeout=0):
        pass


def test_renews_extend_the_lease_and_report_each_deadline(redis_server):
    backend = connect(redis_server.url)
    deadlines: list[float] = []
    with backend.campaign("e", candidate("a"), ttl=0.6) as leadership:
        leadership.on_deadline(deadlines.append)
        time.sleep(1.5)  # a window: the lease must hold for 2.5 TTLs, renewed all along
        assert leadership.is_leader()
        assert redis_server.client().pttl("lelect:{e}:leader") > 300
    assert len(deadlines) >= 5
    assert deadlines == sorted(deadlines)
    assert not leadership.lost.is_set()


def test_lease_lost_when_our_token_is_gone_and_release_keeps_theirs(redis_server):
    backend = connect(redis_server.url)
    client = redis_server.client()
    leadership = backend.campaign("e", candidate("a"), ttl=0.6)
    client.set("lelect:{e}:leader", "someone-else", px=5000)
    assert leadership.lost.wait(0.6)
    assert "token" in leadership.lost_reason
    leadership.release()
    assert client.get("lelect:{e}:leader") == "someone-else"


def test_graceful_release_wakes_a_waiter_at_once(redis_server, pool):
    backend = connect(redis_server.url)
    leader = backend.campaign("e", candidate("a"), ttl=10.0)
    waiter = campaign_later(pool, connect(redis_server.url), "e", "b", ttl=10.0)
    client = redis_server.client()
    # The waiter is asleep on the key's 10 s PTTL: subscribed, and its first attempt made.
    wait_until(
        lambda: redis_listeners(client, "e") >= 2 and redis_tried(client) >= 2,
        what="the waiter to subscribe and try once",
    )
    assert not waiter.done()
    released = time.monotonic()
    leader.release()
    successor = waiter.result(timeout=2)
    assert time.monotonic() - released < 0.5  # the key's PTTL is 10 s: pub/sub woke it
    assert successor.term > leader.term
    successor.release()


CRASHER = """
import sys, time
from lelect.backends import connect
from lelect.backends.base import Candidate
leadership = connect(sys.argv[1]).campaign(sys.argv[2], Candidate.local("crasher"), ttl=1.0)
print(leadership.term, flush=True)
time.sleep(60)  # hold the lease until the test kills this process
"""


def test_crashed_leader_is_replaced_when_its_key_expires(redis_server, pool):
    crasher = subprocess.Popen(
        [sys.executable, "-c", CRASHER, redis_server.url, "e"], stdout=subprocess.PIPE, text=True
    )
    try:
        crashed_term = int(crasher.stdout.readline())
        backend = connect(redis_server.url)
        seen: list[tuple[float, object]] = []
        stop = threading.Event()
        pool.submit(
            lambda: [seen.append((time.monotonic(), x)) for x in backend.observe("e", stop)]
        )
        waiter = campaign_later(pool, connect(redis_server.url), "e", "b", ttl=1.0)
        client = redis_server.client()
        # The observer has seen the crasher lead; the waiter subscribed and tried once (the
        # crasher's listener, the observer and the waiter listen; each has run a script).
        wait_until(
            lambda: seen and redis_listeners(client, "e") >= 3 and redis_tried(client) >= 3,
            what="the observer to look and the waiter to subscribe and try once",
        )
        crasher.kill()
        killed = time.monotonic()
        successor = waiter.result(timeout=3)
        won = time.monotonic()
        assert won - killed < 1.0 + 0.3
        assert successor.term > crashed_term
        wait_until(lambda: seen and seen[-1][1] and seen[-1][1].node_id == "b", what="observed b")
        stop.set()
        successor.release()
    finally:
        crasher.kill()
        crasher.wait()
    leaders = [info.node_id if info else None for _, info in seen]
    assert leaders in (["crasher", None, "b"], ["crasher", "b"])  # b may win before we look
    noticed = seen[1][0]
    assert killed < noticed < killed + 1.0 + 0.3  # woken by the PTTL, not by polling


def test_observe_yields_the_leader_and_every_change(redis_server, pool):
    backend = connect(redis_server.url)
    stop = threading.Event()
    seen: list[tuple[float, object]] = []
    pool.submit(lambda: [seen.append((time.monotonic(), x)) for x in backend.observe("e", stop)])
    wait_until(lambda: seen, what="first observation")
    changes = []
    for name in ("a", "b"):
        leadership = backend.campaign("e", candidate(name), ttl=10.0)
        changes.append(time.monotonic())
        wait_until(lambda n=name: seen[-1][1] and seen[-1][1].node_id == n, timeout=1)
        leadership.release()
        changes.append(time.monotonic())
        wait_until(lambda: seen[-1][1] is None, timeout=1)
    stop.set()
    assert [x.node_id if x else None for _, x in seen] == [None, "a", None, "b", None]
    for changed, (observed, _) in zip(changes, seen[1:], strict=True):
        assert observed - changed < 0.5  # the key's PTTL is 10 s: pub/sub told us


def test_request_resign_reaches_only_the_named_term(redis_server):
    backend = connect(redis_server.url)
    assert backend.request_resign("e") is False  # nobody leads
    with backend.campaign("e", candidate("a"), ttl=10.0) as leadership:
        assert backend.request_resign("e", term=leadership.term - 1) is False
        assert not leadership.resign_requested.wait(0.2)
        assert backend.request_resign("e", term=leadership.term) is True
        assert leadership.resign_requested.wait(1)


def test_resign_request_arrives_with_the_renew_when_pubsub_missed_it(redis_server):
    backend = connect(redis_server.url)
    client = redis_server.client()
    with backend.campaign("e", candidate("a"), ttl=0.9) as leadership:
        client.client_kill_filter(_type="pubsub")
        assert backend.request_resign("e") is True
        assert leadership.resign_requested.wait(0.3 + 0.2)


# -- lease safety -----------------------------------------------------------------------


def test_partition_loses_the_lease_by_its_deadline(redis_server, partition_proxy):
    proxy = partition_proxy("127.0.0.1", redis_server.port)
    backend = connect(f"redis://{proxy.address}/0")
    leadership = backend.campaign("e", candidate("a"), ttl=1.0)
    assert renewed(leadership).wait(5), "no renew went through the proxy"
    proxy.block()
    blocked = time.monotonic()
    deadline = leadership.lease_deadline
    assert leadership.lost.wait(2)
    lost = time.monotonic()
    assert leadership.lease_deadline == deadline  # no renew got through
    assert deadline <= blocked + 1.0
    assert lost - deadline < 0.2
    assert "expired" in leadership.lost_reason
    proxy.unblock()


def test_a_renew_stuck_reconnecting_still_loses_the_lease_by_its_deadline(
    redis_server, partition_proxy
):
    """The partition cuts the connection: the renew must connect again, and the new
    connection (accepted, then silent) hangs in its handshake (SELECT). The call's
    budget bounds the handshake too, so the leadership is lost by its deadline."""
    proxy = partition_proxy("127.0.0.1", redis_server.port)
    backend = connect(f"redis://{proxy.address}/3")  # SELECT: one more round trip
    leadership = backend.campaign("e", candidate("a"), ttl=1.0)
    assert renewed(leadership).wait(5), "no renew went through the proxy"
    proxy.block(cut=True)
    deadline = leadership.lease_deadline
    assert leadership.lost.wait(5)
    assert leadership.lease_deadline == deadline  # no renew got through
    assert time.monotonic() - deadline < 0.2
    proxy.unblock()


def test_a_renew_kept_past_its_deadline_by_a_slow_reconnect_still_loses_on_time(
    redis_server, partition_proxy
):
    """The connection is cut and the server answers, but every message arrives 0.3 s
    late: each of the reconnect's handshake steps fits the renew's budget, all of them
    together do not, so the renew call runs past the lease deadline. The leadership
    is marked lost at the deadline all the same, not when the call returns."""
    proxy = partition_proxy("127.0.0.1", redis_server.port)
    backend = connect(f"redis://{proxy.address}/3")
    leadership = backend.campaign("e", candidate("a"), ttl=1.0)
    assert renewed(leadership).wait(5), "no renew went through the proxy"
    proxy.slow(0.3)
    deadline = leadership.lease_deadline
    assert leadership.lost.wait(5)
    assert time.monotonic() - deadline < 0.2
    assert leadership.lease_deadline == deadline


def test_on_lost_is_called_once_when_lost_and_never_after_a_release(redis_server):
    """The library's on_lost callback: once, by the deadline, for a lost leadership;
    not at all for one released by its holder (and nothing is left waiting for it)."""
    from lelect.election import Election

    calls: list[tuple[float, object]] = []
    kept = Election(connect(redis_server.url), "kept", node_id="a")
    threads = threading.active_count()
    for _ in range(5):
        with kept.campaign(ttl=1.0, on_lost=lambda lead: calls.append((time.monotonic(), lead))):
            pass
    assert calls == []
    # Nothing is left waiting per campaign (renew, listener and lease-watch threads end).
    wait_until(lambda: threading.active_count() <= threads + 1, what="the threads to end")

    election = Election(connect(redis_server.url), "e", node_id="a")
    leadership = election.campaign(ttl=1.0, on_lost=lambda lead: calls.append((time.monotonic(), lead)))
    assert renewed(leadership).wait(5), "no renew went through"
    redis_server.freeze()
    try:
        deadline = leadership.lease_deadline
        wait_until(lambda: calls, timeout=5, what="on_lost")
        assert len(calls) == 1 and calls[0][1] is leadership
        assert calls[0][0] - deadline < 0.2
    finally:
        redis_server.thaw()
    leadership.release()
    assert len(calls) == 1


def test_frozen_server_loses_the_lease_by_its_deadline(redis_server):
    backend = connect(redis_server.url)
    leadership = backend.campaign("e", candidate("a"), ttl=1.0)
    assert renewed(leadership).wait(5), "no renew went through"
    redis_server.freeze()
    try:
        frozen = time.monotonic()
        assert leadership.lost.wait(2)
        assert leadership.lease_deadline <= frozen + 1.0
        assert time.monotonic() - leadership.lease_deadline < 0.2
    finally:
        redis_server.thaw()
    leadership.release()


# -- waiting without polling ------------------------------------------------------------


def test_idle_waiters_send_less_than_one_command_per_second(redis_server, pool):
    leader = connect(redis_server.url).campaign("e", candidate("leader"), ttl=3.0)
    waiters = [
        campaign_later(pool, connect(redis_server.url), "e", f"w{i}", ttl=3.0) for i in range(10)
    ]
    client = redis_server.client()
    # Every waiter subscribed and made its first attempt: what follows is idle waiting.
    wait_until(
        lambda: redis_listeners(client, "e") >= 11 and redis_tried(client) >= 11,
        timeout=20,
        what="10 waiters to subscribe and try once",
    )
    before = redis_server.command_calls()
    window = 3.0
    time.sleep(window)  # a window: count what idle waiters send in it
    after = redis_server.command_calls()
    requests = ("evalsha", "eval", "pttl", "subscribe", "hello", "client|setname")
    sent = sum(after.get(c, 0) - before.get(c, 0) for c in requests)
    renews = window / 1.0 + 1
    per_waiter_per_second = (sent - renews) / len(waiters) / window
    assert per_waiter_per_second < 1.0
    leader.release()
    for waiter in as_completed(waiters, timeout=5):  # they take turns
        waiter.result().release()


# -- heartbeats and members -------------------------------------------------------------


def test_heartbeats_keep_the_last_arrivals_stamped_by_redis(redis_server):
    backend = connect(redis_server.url)
    for seq in range(MAX_ARRIVALS + 5):
        backend.publish(heartbeat("e", "n1", seq), ttl=60)
    backend.publish(heartbeat("e", "n2"), ttl=60)
    members = backend.members("e")
    sec, usec = redis_server.client().time()
    assert abs(members.now - (sec + usec / 1e6)) < 1
    records = {r.node_id: r for r in members.records}
    assert set(records) == {"n1", "n2"}
    n1 = records["n1"]
    assert n1.heartbeat.seq == MAX_ARRIVALS + 4 and n1.heartbeat.cpu_percent == 1.5
    assert len(n1.arrivals) == MAX_ARRIVALS
    assert list(n1.arrivals) == sorted(n1.arrivals)
    assert members.now - 1 < n1.arrivals[0] <= n1.arrivals[-1] <= members.now
    assert len(records["n2"].arrivals) == 1


def test_garbage_member_record_is_reported_not_raised(redis_server):
    backend = connect(redis_server.url)
    backend.publish(heartbeat("e", "good"), ttl=60)
    client = redis_server.client()
    client.hset("lelect:{e}:members", "bad", "{not json")
    client.hset("lelect:{e}:members", "odd", json.dumps({"node_id": "odd"}))
    client.zadd("lelect:{e}:members-expiry", {"bad": 9e12, "odd": 9e12})
    records = {r.node_id: r for r in backend.members("e").records}
    assert records["good"].heartbeat is not None and records["good"].error is None
    for name in ("bad", "odd"):
        assert records[name].heartbeat is None
        assert records[name].error


def test_members_are_forgotten_after_their_ttl_or_at_once_when_removed(redis_server):
    backend = connect(redis_server.url)
    backend.publish(heartbeat("e", "brief"), ttl=0.2)
    backend.publish(heartbeat("e", "stays"), ttl=60)
    backend.publish(heartbeat("e", "leaves"), ttl=60)
    backend.remove_member("e", "leaves")
    listed = backend.members("e")
    assert {r.node_id for r in listed.records} == {"brief", "stays"}
    (brief_at,) = [r.arrivals[-1] for r in listed.records if r.node_id == "brief"]
    # Redis judges by its own TIME: wait until that has passed brief's 0.2 s ttl.
    later = wait_until(
        lambda: (m := backend.members("e")).now > brief_at + 0.2 + 0.001 and m,
        what="the server clock to pass brief's ttl",
    )
    assert {r.node_id for r in later.records} == {"stays"}


def test_elections_lists_elections_with_a_leader_or_members(redis_server):
    backend = connect(redis_server.url)
    assert backend.elections() == []
    backend.publish(heartbeat("with-members", "n1"), ttl=60)
    with backend.campaign("with.leader", candidate("a")):
        with backend.campaign("done", candidate("a")):
            pass
        assert backend.elections() == ["with-members", "with.leader"]
        assert connect(redis_server.url + "?prefix=other").elections() == []


# -- errors -----------------------------------------------------------------------------


def test_connection_refused_is_one_clear_line_at_once():
    backend = connect(f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="connection refused") as error:
        backend.campaign("e", candidate("a"))
    assert time.monotonic() - started < 1
    assert "\n" not in str(error.value)
    with pytest.raises(BackendUnavailable, match="connection refused"):
        backend.leader("e")


def test_silent_server_fails_within_connect_timeout_or_timeout(redis_server, partition_proxy):
    proxy = partition_proxy("127.0.0.1", redis_server.port)
    proxy.block()  # accepts connections, forwards nothing
    backend = connect(f"redis://{proxy.address}/0?connect_timeout=0.5s")
    for timeout, bound in ((None, 0.5), (0.2, 0.2)):
        started = time.monotonic()
        with pytest.raises(BackendUnavailable, match="did not answer"):
            backend.campaign("e", candidate("a"), timeout=timeout)
        assert bound * 0.8 < time.monotonic() - started < bound + 0.3


def test_wrong_or_missing_password_is_a_clear_error(redis_server_factory):
    server = redis_server_factory(password="s3cret")
    with connect(server.url).campaign("e", candidate("a")):
        pass
    for url in (f"redis://:wrong-pw@{server.host_port}/0", f"redis://{server.host_port}/0"):
        with pytest.raises(BackendUnavailable) as error:
            connect(url).campaign("e", candidate("a"))
        message = str(error.value)
        assert "password" in message and "wrong-pw" not in message and "s3cret" not in message


def test_tls_with_a_test_ca(redis_server_factory, redis_test_certs, tmp_path):
    server = redis_server_factory(tls=redis_test_certs)
    with connect(server.tls_url).campaign("e", candidate("a")) as leadership:
        assert connect(server.tls_url).leader("e").term == leadership.term
    certs = redis_test_certs
    with_client_cert = (
        f"{server.tls_url}&ssl_certfile={certs['client_cert']}&ssl_keyfile={certs['client_key']}"
    )
    assert connect(with_client_cert).leader("e") is None
    other_ca = tmp_path / "other-ca.pem"  # a CA that did not sign the server's certificate
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=some other CA", "-keyout", str(tmp_path / "other-ca.key"),
         "-out", str(other_ca)],
        check=True, capture_output=True,
    )  # fmt: skip
    bad = [
        f"rediss://127.0.0.1:{server.tls_port}/0?ssl_ca_certs={other_ca}",
        f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={certs['ca']}&connect_timeout=0.5",
    ]
    for url in bad:
        with pytest.raises(BackendUnavailable, match="TLS"):
            connect(url).campaign("e", candidate("a"))


def test_unix_socket_url(redis_server):
    with connect(redis_server.unix_url).campaign("e", candidate("a")) as leadership:
        assert connect(redis_server.url).leader("e").term == leadership.term


def test_wrong_type_key_under_our_prefix_is_a_clear_error(redis_server):
    backend = connect(redis_server.url)
    redis_server.client().hset("lelect:{e}:leader", "x", "y")
    redis_server.client().set("lelect:{m}:members", "x")
    for call in (
        lambda: backend.campaign("e", candidate("a")),
        lambda: backend.leader("e"),
        lambda: backend.members("m"),
        lambda: backend.publish(heartbeat("m", "n1"), ttl=60),
    ):
        with pytest.raises(BackendUnavailable, match=r"lelect:\{[em]\}:\w+ holds a"):
            call()


def test_read_only_replica_is_a_clear_error(redis_server):
    redis_server.client().replicaof("127.0.0.1", free_port())  # a replica of nobody
    backend = connect(redis_server.url)
    assert backend.leader("e") is None  # reads still work
    with pytest.raises(BackendUnavailable, match="READONLY"):
        backend.campaign("e", candidate("a"))


def test_loading_server_is_a_clear_error(redis_server, pool):
    client = redis_server.client(socket_timeout=30)
    # Loading then takes 2000 x 1 ms, and the server answers others (LOADING) meanwhile.
    client.config_set("key-load-delay", 1000)
    client.config_set("loading-process-events-interval-bytes", 1024)
    client.execute_command("DEBUG", "POPULATE", "2000")
    reloading = pool.submit(client.execute_command, "DEBUG", "RELOAD")
    backend = connect(redis_server.url)
    with pytest.raises(BackendUnavailable, match="LOADING"):
        while not reloading.done():
            backend.leader("e")
    reloading.result()


def test_documented_acl_suffices_and_a_missing_permission_is_a_clear_error(redis_server):
    client = redis_server.client()
    acl = "~lelect:* &lelect:* -@all +@read +@write +@scripting +@pubsub +@connection +scan +time"
    client.execute_command(
        "ACL", "SETUSER", "lelect", "on", ">pw", "resetkeys", "resetchannels", *acl.split()
    )
    backend = connect(f"redis://lelect:pw@{redis_server.host_port}/0")
    with backend.campaign("e", candidate("a"), ttl=1.0) as leadership:
        assert backend.request_resign("e") and leadership.resign_requested.wait(1)
        assert renewed(leadership).wait(5), "no renew went through"
        assert leadership.is_leader()
    backend.publish(heartbeat("e", "n1"), ttl=60)
    assert [r.node_id for r in backend.members("e").records] == ["n1"]
    assert backend.elections() == ["e"]
    client.execute_command("ACL", "SETUSER", "lelect", "-time")
    with pytest.raises(BackendUnavailable, match="may not run"):
        backend.campaign("e", candidate("a"))


def test_non_finite_term_key_is_a_clear_error(redis_server):
    backend = connect(redis_server.url)
    for garbage in ("inf", "-inf", "nan"):
        redis_server.client().set("lelect:{e}:term", garbage)
        with pytest.raises(BackendUnavailable, match=r"lelect:\{e\}:term does not hold a term"):
            backend.campaign("e", candidate("a"))


def test_undecodable_node_id_and_foreign_bytes_do_not_raise(redis_server):
    # A node id from argv may carry surrogate escapes (``--id $'\xff'``); a key under the
    # prefix may hold bytes that are not UTF-8.
    backend = connect(redis_server.url)
    name = "n\udcff"
    with backend.campaign("e", candidate(name)) as leadership:
        assert backend.leader("e").node_id == name
        backend.publish(heartbeat("e", name), ttl=60)
        assert [r.node_id for r in backend.members("e").records] == [name]
        redis_server.client().hset("lelect:{e}:leader-info", "host", b"\xff\xfe")
        assert backend.leader("e").term == leadership.term
