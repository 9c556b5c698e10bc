"""The backend contract: the same behaviours, on every backend, against real servers.

Each test takes ``target`` (every backend id in tests/plugins/targets.py) or
``network_target`` (the backends with a server). A new backend is done when it passes
all of them, plus the tests of its own module.
"""

from __future__ import annotations

import threading
import time

import pytest

from lelect.backends import connect
from lelect.backends.base import Candidate, Heartbeat
from lelect.errors import CampaignTimeout, ElectionBusy
from tests.helpers import wait_until


def candidate(node_id: str) -> Candidate:
    return Candidate(node_id=node_id, host="host-" + node_id, pid=4242)


def heartbeat(election: str, node_id: str, seq: int, role: str = "follower") -> Heartbeat:
    return Heartbeat(election=election, node_id=node_id, host="host-" + node_id, pid=4242,
                     role=role, term=None, seq=seq, time=time.time(), cpu_percent=1.5,
                     memory_percent=2.5, interval=0.05)


def with_options(url: str, **options: str) -> str:
    return url + ("&" if "?" in url else "?") + "&".join(f"{k}={v}" for k, v in options.items())


@pytest.fixture
def backend(target):
    with connect(target.url) as opened:
        yield opened


# -- leadership ------------------------------------------------------------------------


def test_terms_strictly_grow_with_every_leadership(backend):
    terms = []
    for _ in range(4):
        leadership = backend.campaign("terms", candidate("a"), timeout=10)
        terms.append(leadership.term)
        leadership.release()
    assert terms == sorted(set(terms)), terms


def test_no_wait_names_the_leader(backend):
    with backend.campaign("busy", candidate("a"), timeout=10) as held:
        with pytest.raises(ElectionBusy, match="'a'|a \\(term"):
            backend.campaign("busy", candidate("b"), no_wait=True)
        assert backend.leader("busy").term == held.term


def test_timeout_zero_tries_once(backend):
    with backend.campaign("once", candidate("a"), timeout=0) as won:
        assert won.is_leader()
        with pytest.raises(CampaignTimeout):
            backend.campaign("once", candidate("b"), timeout=0)


def test_timeout_gives_up_in_time(backend):
    with backend.campaign("late", candidate("a"), timeout=10):
        started = time.monotonic()
        with pytest.raises(CampaignTimeout, match="within"):
            backend.campaign("late", candidate("b"), timeout=0.3)
        assert time.monotonic() - started < 3.0


def test_release_wakes_a_waiter_which_learns_who_led(backend):
    holders = []
    won = {}
    first = backend.campaign("handoff", candidate("a"), timeout=10)

    def wait() -> None:
        leadership = backend.campaign("handoff", candidate("b"), timeout=30,
                                      on_wait=holders.append)
        won["b"] = leadership

    thread = threading.Thread(target=wait)
    thread.start()
    wait_until(lambda: holders, what="the waiter to start waiting")
    assert holders[0] is None or holders[0].node_id == "a"
    first.release()
    thread.join(10)
    assert won["b"].term > first.term
    assert backend.leader("handoff").node_id == "b"
    won["b"].release()
    assert backend.leader("handoff") is None


def test_leader_names_node_term_host_and_pid(backend):
    assert backend.leader("who") is None
    with backend.campaign("who", candidate("a"), timeout=10) as held:
        info = backend.leader("who")
        assert (info.node_id, info.term) == ("a", held.term)
        assert info.since is not None and abs(info.since - time.time()) < 60


def test_resign_request_reaches_only_the_named_term(backend):
    with backend.campaign("quit", candidate("a"), timeout=10) as held:
        assert backend.request_resign("quit", held.term - 1) is False
        assert not held.resign_requested.is_set()
        assert backend.request_resign("quit", held.term) is True
        wait_until(held.resign_requested.is_set, what="the resign request to arrive")
    assert backend.request_resign("quit") is False  # nobody leads


def test_observe_yields_the_leader_then_every_change(backend):
    stop = threading.Event()
    seen: list = []

    def observe() -> None:
        for info in backend.observe("seen", stop):
            seen.append(None if info is None else info.node_id)

    thread = threading.Thread(target=observe, daemon=True)
    thread.start()
    wait_until(lambda: seen == [None], what="the first look")
    for name in ("a", "b"):
        with backend.campaign("seen", candidate(name), timeout=10):
            wait_until(lambda n=name: seen[-1] == n, what=f"{name} observed")
        wait_until(lambda: seen[-1] is None, what="vacancy observed")
    stop.set()
    thread.join(10)
    assert seen == [None, "a", None, "b", None]


# -- heartbeats ---------------------------------------------------------------------------


def test_heartbeats_keep_backend_stamped_arrivals(backend):
    for seq in range(1, 4):
        backend.publish(heartbeat("beats", "a", seq), ttl=60)
        time.sleep(0.02)  # arrival stamps 20 ms apart (the backend's clock)
    members = backend.members("beats")
    (record,) = members.records
    assert record.node_id == "a" and record.heartbeat.seq == 3
    assert record.heartbeat.cpu_percent == 1.5
    assert len(record.arrivals) == 3
    assert list(record.arrivals) == sorted(record.arrivals)
    assert members.now >= record.arrivals[-1] - 0.001
    backend.remove_member("beats", "a")
    assert backend.members("beats").records == ()


def test_elections_lists_led_and_membered_elections(backend):
    backend.publish(heartbeat("with-members", "a", 1), ttl=60)
    with backend.campaign("with-leader", candidate("a"), timeout=10):
        names = backend.elections()
    assert {"with-members", "with-leader"} <= set(names)


def test_now_is_the_backends_clock(backend):
    assert abs(backend.now() - time.time()) < 5


# -- history and once-per slots -------------------------------------------------------------


def test_history_records_each_leadership_and_how_it_ended(backend):
    outcomes = [("exited", 3), ("exited", 0), ("resigned", 0), ("stopped", 143)]
    for outcome, status in outcomes:
        leadership = backend.campaign("hist", candidate("a"), timeout=10)
        assert backend.history("hist")[-1].outcome == "running"
        leadership.release(outcome, status)
    history = backend.history("hist")
    assert [(h.outcome, h.exit_status) for h in history] == outcomes
    terms = [h.term for h in history]
    assert terms == sorted(set(terms))
    first = history[0]
    assert (first.node_id, first.host, first.pid) == ("a", "host-a", 4242)
    assert first.started <= first.ended
    assert [h.term for h in backend.history("hist", limit=2)] == terms[-2:]


def test_history_is_bounded(target):
    with connect(with_options(target.url, history="3")) as bounded:
        for _ in range(5):
            bounded.campaign("bound", candidate("a"), timeout=10).release()
        assert len(bounded.history("bound")) == 3


def test_once_per_slot_is_done_only_after_a_successful_run(backend):
    assert backend.slot_done("slots", "2026-12-02") is None
    failed = backend.campaign("slots", candidate("a"), timeout=10)
    failed.slot = "2026-12-02"
    failed.release("exited", 1)
    assert backend.slot_done("slots", "2026-12-02") is None
    done = backend.campaign("slots", candidate("b"), timeout=10)
    done.slot = "2026-12-02"
    done.release("exited", 0)
    entry = backend.slot_done("slots", "2026-12-02")
    assert entry is not None and entry.term == done.term and entry.node_id == "b"
    assert backend.history("slots")[-1].slot == "2026-12-02"
    assert backend.slot_done("slots", "2026-12-03") is None
