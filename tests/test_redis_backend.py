"""What only the Redis backend does, through the library, against real redis-server
processes: its keys and scripts, terms across FLUSHALL and restarts, history and slots
inside the scripts, the keeper's hand-back, TLS, AUTH/ACL, unix sockets, LOADING,
READONLY and WRONGTYPE, partitions, frozen servers and idle load. What every backend
does is in tests/test_contract.py."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed

import pytest

from lelect.backends import connect
from lelect.backends.base import MAX_ARRIVALS, Candidate, Heartbeat
from lelect.backends.records import HAND_BACK_REASON
from lelect.backends.redis import handback as _handback_redis
from lelect.backends.redis import scripts as _redis_scripts
from lelect.errors import BackendUnavailable, UsageError
from lelect.lease import drift as lease_drift
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


def stored_history(client, election: str) -> list[tuple[int, dict]]:
    """The history sorted set as stored: (score, decoded entry), oldest first."""
    key = f"lelect:{{{election}}}:history"
    return [(int(score), json.loads(text))
            for text, score in client.zrange(key, 0, -1, withscores=True)]


# -- URLs -------------------------------------------------------------------------------


def test_url_forms_and_options(redis_test_certs):
    ca = redis_test_certs["ca"]  # read when the URL is parsed (a garbage one is status 2)
    backend = connect("redis://:s3cret@cache:6380/3?prefix=jobs&ttl=4s&connect_timeout=500ms"
                      "&history=50")
    options = backend.options
    assert (options.where, options.prefix, options.ttl, options.connect_timeout) == (
        "cache:6380", "jobs", 4.0, 0.5,
    )  # fmt: skip
    assert options.connection_kwargs["db"] == 3
    assert options.connection_kwargs["password"] == "s3cret"
    assert (backend.default_ttl, backend.connect_timeout, backend.history_limit) == (4.0, 0.5, 50)
    assert "s3cret" not in backend.display_url and "***" in backend.display_url

    assert connect("redis://cache").options.where == "cache:6379"
    tls = connect(f"rediss://u:pw@cache:6390/0?ssl_ca_certs={ca}").options
    assert tls.connection_kwargs["ssl_ca_certs"] == str(ca)
    assert tls.connection_kwargs["username"] == "u"
    unix = connect("unix:///run/redis/redis.sock?db=2").options
    assert (unix.where, unix.connection_kwargs["db"]) == ("/run/redis/redis.sock", 2)
    defaults = connect("redis://h/0")
    assert (defaults.options.ttl, defaults.history_limit) == (10.0, 1000)


@pytest.mark.parametrize(
    "url",
    [
        "redis://h/abc",
        "redis://h1,h2/0",
        "redis://h/0?bogus=1",
        "redis://h/0?ttl=soon",
        "redis://h/0?ttl=10ms",
        "redis://h/0?ttl=99999999999999h",
        "redis://h/0?connect_timeout=0",
        "redis://h/0?connect_timeout=99999999999h",
        "redis://h/0?history=0",
        "redis://h/0?history=lots",
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
    with pytest.raises(UsageError) as error:
        connect(url)
    assert "\n" not in str(error.value) and "not an integer" not in str(error.value)


# -- keys and scripts ---------------------------------------------------------------------


def test_leader_key_holds_token_with_ttl_and_term_is_server_time(redis_server):
    backend = connect(redis_server.url)
    client = redis_server.client()
    before = time.monotonic()
    with backend.campaign("nightly", candidate("a"), ttl=2.0) as leadership:
        assert leadership.lease_deadline <= before + 2.0 - lease_drift(2.0) + 0.05
        assert client.get("lelect:{nightly}:leader") == leadership.token
        assert 1500 < client.pttl("lelect:{nightly}:leader") <= 2000
        assert abs(leadership.term - server_ms(client)) < 5000
        assert abs(leadership.since - backend.now()) < 5
        assert abs(backend.now() - server_ms(client) / 1000) < 1
    assert client.get("lelect:{nightly}:leader") is None
    assert backend.leader("nightly") is None
    # What stays: the last term and the history (both without expiry), nothing else.
    assert set(client.keys("*")) == {"lelect:{nightly}:term", "lelect:{nightly}:history"}
    assert client.ttl("lelect:{nightly}:history") == -1
    assert connect(redis_server.url + "&prefix=other").elections() == []


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


def test_renews_extend_the_lease_and_report_each_deadline(redis_server):
    backend = connect(redis_server.url)
    deadlines: list[float] = []
    with backend.campaign("e", candidate("a"), ttl=0.6) as leadership:
        leadership.on_deadline(deadlines.append)
        wait_until(lambda: len(deadlines) >= 4, what="four renews")  # 2 ttl and more
        assert leadership.is_leader()
        assert redis_server.client().pttl("lelect:{e}:leader") > 300
    assert deadlines == sorted(deadlines)
    assert not leadership.lost.is_set()


def test_history_entries_are_json_scored_by_term_in_one_sorted_set(redis_server):
    backend = connect(redis_server.url)
    client = redis_server.client()
    leadership = backend.campaign("h", candidate("a"))
    ((score, running),) = stored_history(client, "h")
    assert score == leadership.term
    assert running["outcome"] == "running" and running["term"] == leadership.term
    assert abs(running["started"] - server_ms(client) / 1000) < 5
    leadership.release("exited", 3)
    ((_, closed),) = stored_history(client, "h")
    assert (closed["outcome"], closed["exit_status"]) == ("exited", 3)
    assert closed["started"] <= closed["ended"] <= server_ms(client) / 1000 + 0.001


def test_next_leader_closes_a_vanished_leader_and_its_late_release_changes_nothing(redis_server):
    backend = connect(redis_server.url)
    client = redis_server.client()
    vanished = backend.campaign("v", candidate("a"), ttl=0.5)
    vanished.lease.stop()  # renewing stops: the key expires as if lelect's host died
    wait_until(lambda: client.get("lelect:{v}:leader") is None, what="the lease to run out")
    successor = backend.campaign("v", candidate("b"), timeout=10)
    older, newer = backend.history("v")
    assert (older.term, older.outcome, older.exit_status) == (vanished.term, "vanished", None)
    assert older.reason and older.ended == pytest.approx(newer.started, abs=0.01)
    assert (newer.node_id, newer.outcome) == ("b", "running")

    vanished.release("exited", 0, slot="2026-12-02")  # too late: the first writer won
    assert [h.outcome for h in backend.history("v")] == ["vanished", "running"]
    assert backend.slot_done("v", "2026-12-02") is None
    assert client.get("lelect:{v}:leader") == successor.token
    successor.release()


def test_lease_lost_when_our_token_is_gone_and_release_keeps_theirs(redis_server):
    backend = connect(redis_server.url)
    client = redis_server.client()
    leadership = backend.campaign("e", candidate("a"), ttl=0.6)
    client.set("lelect:{e}:leader", "someone-else", px=5000)
    assert leadership.lost.wait(5)
    assert "token" in leadership.lost_reason
    leadership.release()
    assert client.get("lelect:{e}:leader") == "someone-else"
    # Nobody else wrote a history entry: ours is closed as lost, with the reason.
    (entry,) = backend.history("e")
    assert (entry.outcome, entry.reason) == ("lost", leadership.lost_reason)


def test_slots_map_to_the_completing_entry_and_only_the_newest_are_kept(
    redis_server, monkeypatch
):
    monkeypatch.setattr(_redis_scripts, "MAX_SLOTS", 3)
    backend = connect(redis_server.url)
    client = redis_server.client()
    terms = {}
    for day in range(5):
        leadership = backend.campaign("daily", candidate("a"))
        leadership.release("exited", 0, slot=f"day-{day}")
        terms[leadership.ending.slot] = leadership.term
    kept = client.zrange("lelect:{daily}:slots-order", 0, -1, withscores=True)
    assert kept == [(f"day-{d}", float(terms[f"day-{d}"])) for d in (2, 3, 4)]
    assert set(client.hkeys("lelect:{daily}:slots")) == {"day-2", "day-3", "day-4"}
    assert backend.slot_done("daily", "day-1") is None
    assert backend.slot_done("daily", "day-4").term == terms["day-4"]


def test_resign_request_arrives_with_the_renew_when_pubsub_missed_it(redis_server):
    backend = connect(redis_server.url)
    client = redis_server.client()
    with backend.campaign("e", candidate("a"), ttl=0.9) as leadership:
        client.client_kill_filter(_type="pubsub")
        assert backend.request_resign("e") is True
        assert leadership.resign_requested.wait(5)


# -- the keeper's hand-back ------------------------------------------------------------------

LEADER_PROCESS = """
import json, sys, time
from lelect.backends import connect
from lelect.backends.base import Candidate, Heartbeat
backend = connect(sys.argv[1])
leadership = backend.campaign(sys.argv[2], Candidate("crasher", "testhost", 99), ttl=float(sys.argv[3]))
backend.publish(Heartbeat(sys.argv[2], "crasher", "testhost", 99, "leader", leadership.term, 1,
                          time.time()), ttl=60)
print(json.dumps([leadership.term, backend.hand_back(leadership).params]), flush=True)
time.sleep(600)  # hold the lease until the test kills this process
"""


def leader_in_a_process(url: str, election: str, ttl: float, processes) -> tuple[int, dict]:
    """A leadership won by a child process, which the test may kill: its term and its
    hand-back recipe's params."""
    child = subprocess.Popen([sys.executable, "-c", LEADER_PROCESS, url, election, str(ttl)],
                             stdout=subprocess.PIPE, text=True)
    processes.append(child)
    return json.loads(child.stdout.readline())


def hand_back_as_the_keeper(params: dict, budget: float, exit_status: int) -> str:
    """Run the hand-back as the keeper does: ``python -S -I``, standard library only,
    params over a pipe (never argv)."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        " from lelect.backends.redis import handback as _handback_redis;"
        " params = json.load(sys.stdin);"
        " print(_handback_redis.hand_back(params, float(sys.argv[2]), int(sys.argv[3])));"
        " assert not {'redis', 'ssl'} & set(sys.modules), sorted(sys.modules)"
    )
    root = str(__import__("pathlib").Path(__file__).resolve().parent.parent)
    done = subprocess.run([sys.executable, "-S", "-I", "-c", code, root, str(budget),
                           str(exit_status)], input=json.dumps(params), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_hand_back_frees_the_election_at_once_for_a_waiting_candidate(
    redis_server, pool, processes
):
    term, params = leader_in_a_process(redis_server.url, "hb", 10.0, processes)
    processes[-1].kill()  # lelect died; its lease (10 s) would keep the election blocked
    client = redis_server.client()
    waiting = threading.Event()
    waiter = pool.submit(connect(redis_server.url).campaign, "hb", candidate("b"),
                         timeout=60, on_wait=lambda holder: waiting.set())
    assert waiting.wait(10)
    lease_left = client.pttl("lelect:{hb}:leader") / 1000
    handed_back = time.monotonic()
    assert hand_back_as_the_keeper(params, 5.0, 137) == "released"
    successor = waiter.result(timeout=30)
    assert time.monotonic() - handed_back < lease_left - 1  # not the lease running out
    backend = connect(redis_server.url)
    old, new = backend.history("hb")
    assert (old.term, old.outcome, old.exit_status) == (term, "lost", 137)
    assert old.reason == HAND_BACK_REASON
    assert (new.term, new.node_id) == (successor.term, "b")
    assert [r.node_id for r in backend.members("hb").records] == []  # the member is gone
    successor.release()


def test_hand_back_after_another_leader_won_changes_nothing(redis_server, processes):
    _, params = leader_in_a_process(redis_server.url, "late", 0.5, processes)
    processes[-1].kill()
    backend = connect(redis_server.url)
    successor = backend.campaign("late", candidate("b"), timeout=30)  # after the lease
    client = redis_server.client()
    before = (client.get("lelect:{late}:leader"), client.hgetall("lelect:{late}:leader-info"),
              stored_history(client, "late"))
    assert _handback_redis.hand_back(params, 5.0, 137) == "not ours"
    after = (client.get("lelect:{late}:leader"), client.hgetall("lelect:{late}:leader-info"),
             stored_history(client, "late"))
    assert after == before
    assert [h.outcome for h in backend.history("late")] == ["vanished", "running"]
    assert backend.leader("late").term == successor.term
    successor.release()


def test_hand_back_gives_up_within_its_budget_when_redis_is_unreachable(
    redis_server, silent_listener, refused_port
):
    with connect(redis_server.url).campaign("gone", candidate("a")) as leadership:
        leadership.lease.stop()
        params = connect(redis_server.url).hand_back(leadership).params
    for port in (silent_listener, refused_port):
        started = time.monotonic()
        with pytest.raises(OSError):
            _handback_redis.hand_back({**params, "address": {"host": "127.0.0.1", "port": port}},
                                      0.5, 0)
        assert time.monotonic() - started < 0.5 + 1.0


@pytest.mark.parametrize("how", ["tls", "unix", "acl-and-db"])
def test_hand_back_over_tls_unix_socket_and_with_a_user_and_db(
    how, redis_server_factory, redis_test_certs
):
    server = redis_server_factory(tls=redis_test_certs)
    certs = redis_test_certs
    if how == "tls":
        url = (f"{server.tls_url}&ssl_certfile={certs['client_cert']}"
               f"&ssl_keyfile={certs['client_key']}")
    elif how == "unix":
        url = f"{server.unix_url}&db=2"
    else:
        server.client().execute_command("ACL", "SETUSER", "lelect", "on", ">pw", *DOCUMENTED_ACL)
        url = f"redis://lelect:pw@{server.host_port}/3"
    backend = connect(url)
    leadership = backend.campaign("hb", candidate("a"))
    leadership.lease.stop()  # renewing stops, as when lelect dies
    recipe = backend.hand_back(leadership)
    assert recipe.module == "lelect.backends.redis.handback"
    assert _handback_redis.hand_back(recipe.params, 5.0, 0) == "released"
    assert backend.leader("hb") is None
    assert backend.history("hb")[-1].outcome == "lost"


def test_hand_back_refuses_a_server_certificate_of_another_ca(
    redis_server_factory, redis_test_certs, tmp_path
):
    server = redis_server_factory(tls=redis_test_certs)
    backend = connect(server.tls_url)
    leadership = backend.campaign("hb", candidate("a"))
    leadership.lease.stop()
    params = backend.hand_back(leadership).params
    with pytest.raises(OSError, match="certificate"):
        _handback_redis.hand_back({**params, "tls": {"ca_certs": str(other_ca(tmp_path))}},
                                  5.0, 0)
    assert backend.leader("hb").term == leadership.term


# -- lease safety -----------------------------------------------------------------------


def test_partition_loses_the_lease_by_its_deadline(redis_server, partition_proxy):
    proxy = partition_proxy("127.0.0.1", redis_server.port)
    backend = connect(f"redis://{proxy.address}/0")
    leadership = backend.campaign("e", candidate("a"), ttl=1.0)
    assert renewed(leadership).wait(5), "no renew went through the proxy"
    proxy.block()
    blocked = time.monotonic()
    deadline = leadership.lease_deadline
    assert leadership.lost.wait(5)
    lost = time.monotonic()
    assert leadership.lease_deadline == deadline  # no renew got through
    assert deadline <= blocked + 1.0
    assert lost - deadline < 0.2
    assert "ran out" in leadership.lost_reason
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
    late: the reconnect's handshake and the renew together do not fit the renew's
    budget. The leadership is marked lost at the deadline all the same, not when the
    call returns."""
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
        assert leadership.lost.wait(5)
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
    for waiter in as_completed(waiters, timeout=30):  # they take turns
        waiter.result().release()


def test_a_server_without_resp3_gets_a_pubsub_connection_and_one_log_line(
        redis_server_factory, pool, caplog):
    """A server that answers HELLO with an error (Redis before 6; here HELLO is renamed
    away) is spoken to in RESP2: lelect says so in one line and subscribes on a
    connection of its own; a release still wakes the waiter at once."""
    server = redis_server_factory(password="pw",
                                  extra=("--rename-command", "HELLO", "HELLO-renamed-away"))
    caplog.set_level(logging.INFO, logger="lelect.redis")
    leader = connect(server.url).campaign("old", candidate("a"), ttl=30.0)
    waiting = threading.Event()
    waiter_backend = connect(server.url)
    waiter = pool.submit(waiter_backend.campaign, "old", candidate("b"), timeout=60, ttl=30.0,
                         on_wait=lambda holder: waiting.set())
    assert waiting.wait(10)
    client = server.client()
    wait_until(lambda: len(client.client_list()) >= 5, timeout=10,
               what="two connections for each candidate (and ours)")
    released = time.monotonic()
    leader.release()
    successor = waiter.result(timeout=30)
    assert time.monotonic() - released < 5  # woken by the release, not the 30 s lease
    successor.release()
    told = [r.getMessage() for r in caplog.records if r.name == "lelect.redis"]
    assert len(told) == 2, told  # once for each backend (link)
    assert "pw" not in " ".join(told)


def test_a_message_read_while_a_command_waits_reaches_the_subscription(redis_server):
    """RESP3: a push that arrives before a command's answer goes to the subscription
    sharing the connection, and the answer to the command."""
    from lelect.backends.redis.link import Subscription

    backend = connect(redis_server.url)
    subscription = Subscription(backend.link, ["chan"])
    try:
        subscription.ensure(5.0)
        client = redis_server.client()
        assert client.publish("chan", "hello") == 1
        # A PUBLISH of our own makes the server push ours before its answer.
        assert backend.link.call(5.0, "PUBLISH", "chan", "again") == 1
        assert backend.link.call(5.0, "PING") == "PONG"
        assert subscription.next_message(5.0) == ("chan", "hello")
        assert subscription.next_message(5.0) == ("chan", "again")
        assert subscription.next_message(0.1) is None
        names = [c for c in client.client_list() if c["name"] == "lelect"]
        assert len(names) == 1  # commands and the subscription: one connection
    finally:
        subscription.close()
        backend.close()


def test_observe_looks_again_within_a_lease_when_an_announcement_is_lost(
        redis_server, monkeypatch):
    """Nobody leads and the announcement of the new leader never reaches the watcher (a
    lost message): it still sees the leader within about a lease (ttl 1 s here), by its
    bounded look, and a Cancel ends its wait at once."""
    from lelect.backends.base import Cancel
    from lelect.backends.redis.link import Subscription

    monkeypatch.setattr(Subscription, "deliver", lambda self, channel, data: None)
    watcher = connect(redis_server.url + "&ttl=1s")
    stop = Cancel()
    looks = watcher.observe("lost", stop)
    assert next(looks) is None
    leadership = connect(redis_server.url).campaign("lost", candidate("a"), ttl=30.0)
    elected = time.monotonic()
    seen = next(looks)
    assert seen is not None and seen.node_id == "a"
    assert time.monotonic() - elected < 1.0 + 1.0
    threading.Timer(0.2, stop.set).start()
    cancelled = time.monotonic()
    with pytest.raises(StopIteration):
        next(looks)
    assert time.monotonic() - cancelled < 0.2 + 0.15
    leadership.release()


# -- heartbeats and members -------------------------------------------------------------


def test_arrivals_are_stamped_by_redis_time_and_trimmed(redis_server):
    backend = connect(redis_server.url)
    for seq in range(MAX_ARRIVALS + 5):
        backend.publish(heartbeat("e", "n1", seq), ttl=60)
    members = backend.members("e")
    assert abs(members.now - server_ms(redis_server.client()) / 1000) < 1
    (n1,) = members.records
    assert n1.heartbeat.seq == MAX_ARRIVALS + 4
    assert len(n1.arrivals) == MAX_ARRIVALS
    assert members.now - 1 < n1.arrivals[0] <= n1.arrivals[-1] <= members.now
    stored = json.loads(redis_server.client().hget("lelect:{e}:members", "n1"))
    assert stored["heartbeat"]["seq"] == MAX_ARRIVALS + 4 and stored["forget_after"] == 60


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


def test_members_are_forgotten_after_their_ttl_by_redis_time(redis_server):
    backend = connect(redis_server.url)
    backend.publish(heartbeat("e", "brief"), ttl=0.2)
    backend.publish(heartbeat("e", "stays"), ttl=60)
    listed = backend.members("e")
    assert {r.node_id for r in listed.records} == {"brief", "stays"}
    (brief_at,) = [r.arrivals[-1] for r in listed.records if r.node_id == "brief"]
    # Redis judges by its own TIME: wait until that has passed brief's 0.2 s ttl.
    later = wait_until(
        lambda: (m := backend.members("e")).now > brief_at + 0.2 + 0.001 and m,
        what="the server clock to pass brief's ttl",
    )
    assert {r.node_id for r in later.records} == {"stays"}


# -- notes ----------------------------------------------------------------------------------


def test_notes_share_the_elections_hash_tag_expire_by_px_and_make_no_election(redis_server):
    from redis.crc import key_slot

    backend = connect(redis_server.url)
    client = redis_server.client()
    assert backend.put_note("noted", "handover", b"node-b", 5, create=True) is True
    assert backend.put_note("noted", "holders", b"3") is True
    assert set(client.keys("*")) == {"lelect:{noted}:note:handover", "lelect:{noted}:note:holders"}
    slots = {key_slot(key.encode()) for key in client.keys("*")}
    assert slots == {key_slot(b"lelect:{noted}:leader")}
    assert 4000 < client.pttl("lelect:{noted}:note:handover") <= 5000
    assert client.pttl("lelect:{noted}:note:holders") == -1
    assert backend.elections() == [] and backend.leader("noted") is None
    # Bytes that are not UTF-8 come back as they went in.
    assert backend.put_note("noted", "value:1", b"\xff\x00\xed\xa0\x80") is True
    assert backend.get_note("noted", "value:1") == b"\xff\x00\xed\xa0\x80"


def test_an_oversized_or_mistyped_note_never_leaves_the_server(redis_server):
    from lelect.backends.base import MAX_NOTE

    backend = connect(redis_server.url)
    client = redis_server.client()
    client.set("lelect:{e}:note:value:1", "x" * (1 << 20))
    sent = int(client.info("stats")["total_net_output_bytes"])
    assert backend.get_note("e", "value:1") is None
    assert int(client.info("stats")["total_net_output_bytes"]) - sent < MAX_NOTE
    client.hset("lelect:{e}:note:holders", "n", "3")
    with pytest.raises(BackendUnavailable) as error:
        backend.get_note("e", "holders")
    assert "holds a hash" in str(error.value) and "\n" not in str(error.value)


# -- reaching Redis: bounds, TLS, AUTH, ACL, unix sockets ------------------------------------


def test_connection_refused_fails_at_once_stating_the_bound(refused_port):
    backend = connect(f"redis://127.0.0.1:{refused_port}/0")  # connect_timeout 5 s
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="within 5s: connection refused") as error:
        backend.campaign("e", candidate("a"))
    assert time.monotonic() - started < 1  # not the 5 s bound
    assert "\n" not in str(error.value)
    with pytest.raises(BackendUnavailable, match="connection refused"):
        backend.leader("e")


@pytest.mark.parametrize("timeout, bound, shown", [(None, 1.0, "1s"), (0.7, 0.7, "700ms"),
                                                   (0, 0.5, "500ms")])
def test_silent_server_fails_within_the_connect_budget(silent_listener, timeout, bound, shown):
    """A listener that accepts and never answers: connect_timeout (1 s), or the timeout
    if shorter, but never below one attempt (0.5 s: ``timeout=0`` tries once)."""
    backend = connect(f"redis://127.0.0.1:{silent_listener}/0?connect_timeout=1s")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=f"within {shown}: connected, but no answer"):
        backend.campaign("e", candidate("a"), timeout=timeout)
    assert bound * 0.9 < time.monotonic() - started < bound + 1.0


def test_whole_connect_handshake_fits_one_budget(redis_server_factory, partition_proxy):
    """Every handshake answer (AUTH, SETNAME, SELECT) arrives 0.9 s late: each would fit
    a 1 s socket timeout (2.7 s in all), all of them do not fit the connect's 1 s budget."""
    server = redis_server_factory(password="pw")
    proxy = partition_proxy("127.0.0.1", server.port)
    proxy.slow(0.9)
    backend = connect(f"redis://:pw@{proxy.address}/3?connect_timeout=1s")
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="within 1s"):
        backend.leader("e")
    assert time.monotonic() - started < 1.0 + 1.0


def test_wrong_or_missing_password_is_a_clear_error(redis_server_factory):
    server = redis_server_factory(password="s3cret")
    with connect(server.url).campaign("e", candidate("a")):
        pass
    for url in (f"redis://:wrong-pw@{server.host_port}/0", f"redis://{server.host_port}/0"):
        with pytest.raises(BackendUnavailable) as error:
            connect(url).campaign("e", candidate("a"))
        message = str(error.value)
        assert "password" in message and "wrong-pw" not in message and "s3cret" not in message


def other_ca(directory) -> object:
    """A CA that did not sign the test server's certificate."""
    path = directory / "other-ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=some other CA", "-keyout", str(directory / "other-ca.key"),
         "-out", str(path)],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


def test_tls_with_a_test_ca(redis_server_factory, redis_test_certs, tmp_path):
    server = redis_server_factory(tls=redis_test_certs)
    with connect(server.tls_url).campaign("e", candidate("a")) as leadership:
        assert connect(server.tls_url).leader("e").term == leadership.term
    certs = redis_test_certs
    with_client_cert = (
        f"{server.tls_url}&ssl_certfile={certs['client_cert']}&ssl_keyfile={certs['client_key']}"
    )
    assert connect(with_client_cert).leader("e") is None
    bad = [
        f"rediss://127.0.0.1:{server.tls_port}/0?ssl_ca_certs={other_ca(tmp_path)}",
        f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={certs['ca']}&connect_timeout=0.5",
    ]
    for url in bad:
        with pytest.raises(BackendUnavailable, match="TLS"):
            connect(url).campaign("e", candidate("a"))


def test_unix_socket_url(redis_server):
    with connect(redis_server.unix_url).campaign("e", candidate("a")) as leadership:
        assert connect(redis_server.url).leader("e").term == leadership.term


@pytest.mark.parametrize("form", ["tcp-db3-password", "tls", "unix"])
def test_a_leader_and_a_waiter_hold_one_connection_each(form, redis_server_factory,
                                                        redis_test_certs, pool):
    """Over TCP (with a password and a database), TLS and a unix socket: the leader's
    renews and resign listener, the waiter's attempts and wake-up subscription, and the
    heartbeats of both share one connection per candidate."""
    server = redis_server_factory(password="pw" if form.startswith("tcp") else None,
                                  tls=redis_test_certs if form == "tls" else None)
    if form == "tls":
        url = server.tls_url
    elif form == "unix":
        url = server.unix_url
    else:
        url = f"redis://:pw@{server.host_port}/3?restart_guard=off"
    url += ("&" if "?" in url else "?") + "ttl=1s"
    leading, waiting_backend = connect(url), connect(url)
    leadership = leading.campaign("one", candidate("a"))
    waiting = threading.Event()
    waiter = pool.submit(waiting_backend.campaign, "one", candidate("b"), timeout=60,
                         on_wait=lambda holder: waiting.set())
    assert waiting.wait(10)
    client = server.client()
    for backend, name in ((leading, "a"), (waiting_backend, "b")):
        backend.publish(heartbeat("one", name), 10.0)
    for _ in range(5):  # renews, heartbeats and waiting, over a second
        assert len([c for c in client.client_list() if c["name"] == "lelect"]) == 2
        time.sleep(0.25)
    leadership.release()
    waiter.result(timeout=10).release()


#: The ACL docs/backends.md documents for lelect's Redis user.
DOCUMENTED_ACL = ("resetkeys", "resetchannels", "~lelect:*", "&lelect:*", "-@all", "+@read",
                  "+@write", "+@scripting", "+@pubsub", "+@connection", "+scan", "+time")


def test_documented_acl_suffices_and_a_missing_permission_is_a_clear_error(redis_server):
    client = redis_server.client()
    client.execute_command("ACL", "SETUSER", "lelect", "on", ">pw", *DOCUMENTED_ACL)
    backend = connect(f"redis://lelect:pw@{redis_server.host_port}/0")
    with backend.campaign("e", candidate("a"), ttl=1.0) as leadership:
        assert backend.request_resign("e") and leadership.resign_requested.wait(5)
        assert renewed(leadership).wait(5), "no renew went through"
        assert leadership.is_leader()
        leadership.release("exited", 0, slot="s")
    assert backend.slot_done("e", "s").term == leadership.term
    assert backend.history("e")[-1].outcome == "exited"
    assert abs(backend.now() - time.time()) < 5
    backend.publish(heartbeat("e", "n1"), ttl=60)
    assert [r.node_id for r in backend.members("e").records] == ["n1"]
    assert backend.elections() == ["e"]
    client.execute_command("ACL", "SETUSER", "lelect", "-time")
    with pytest.raises(BackendUnavailable, match="may not run"):
        backend.campaign("e", candidate("a"))


# -- what other writers may leave under the prefix -------------------------------------------


def test_wrong_type_key_under_our_prefix_is_a_clear_error(redis_server):
    backend = connect(redis_server.url)
    client = redis_server.client()
    client.hset("lelect:{e}:leader", "x", "y")
    client.set("lelect:{m}:members", "x")
    client.set("lelect:{h}:history", "x")
    for call in (
        lambda: backend.campaign("e", candidate("a")),
        lambda: backend.leader("e"),
        lambda: backend.members("m"),
        lambda: backend.publish(heartbeat("m", "n1"), ttl=60),
        lambda: backend.campaign("h", candidate("a")),
        lambda: backend.history("h"),
    ):
        with pytest.raises(BackendUnavailable, match=r"lelect:\{[emh]\}:\w+ holds|wrong type"):
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


def test_non_finite_term_key_is_a_clear_error(redis_server):
    backend = connect(redis_server.url)
    for garbage in ("inf", "-inf", "nan"):
        redis_server.client().set("lelect:{e}:term", garbage)
        with pytest.raises(BackendUnavailable, match=r"lelect:\{e\}:term does not hold a term"):
            backend.campaign("e", candidate("a"))


def test_garbage_history_entries_are_skipped(redis_server):
    backend = connect(redis_server.url)
    redis_server.client().zadd("lelect:{g}:history", {"{not json": 1, '{"term": 2}': 2})
    with backend.campaign("g", candidate("a")) as leadership:
        pass
    assert [h.term for h in backend.history("g")] == [leadership.term]


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
    assert backend.history("e")[-1].node_id == name
