"""A review of seats, a leader's value and the handover (issue 22): each test shows one
suspicion, on real servers and real lelect processes."""

from __future__ import annotations

import threading
import time

import pytest

from lelect.backends import connect
from lelect.backends.notes import HANDOVER_KEY, decode_handover
from lelect.errors import CampaignCancelled
from tests.helpers import run_lelect

#: A note nobody can read: nested deeper than Python's json parser recurses.
DEEP = b"[" * 2000 + b"]" * 2000  # 4000 bytes: within the 4 KiB a note may have


def test_a_deeply_nested_handover_note_reserves_nothing():
    assert decode_handover(DEEP) is None
    assert decode_handover(b'{"to": "b", "term": 1, "ttl": ' + b"[" * 1500 + b"]" * 1500
                           + b"}") is None


@pytest.mark.parametrize("target", ["file", "redis"], indirect=True)
def test_a_deeply_nested_handover_note_written_by_another_is_data_not_a_crash(target):
    with connect(target.url) as backend:
        backend.put_note("deep", HANDOVER_KEY, DEEP, 60)
        backend.put_note("deep2:seat0", HANDOVER_KEY, DEEP, 60)
    out = run_lelect("campaign", "deep", "--", "true", backend=target.url)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    seated = run_lelect("campaign", "deep2", "--holders", "2", "--", "true", backend=target.url)
    assert seated.returncode == 0, seated.stderr
    assert "Traceback" not in seated.stderr


@pytest.mark.parametrize("target", ["file", "redis"], indirect=True)
def test_a_cancelled_campaign_for_a_seat_takes_no_seat(target):
    """A plain campaign whose cancel is set when it wins releases and raises; one for a
    seat must too (else `lelect campaign --holders N` starts its job after a SIGTERM
    that came while its head of the line was taking a seat)."""
    from lelect.election import Election

    cancel = threading.Event()
    cancel.set()
    with connect(target.url) as backend:
        with pytest.raises(CampaignCancelled):
            Election(backend, "cancelled", "a").campaign(cancel=cancel)
        with pytest.raises(CampaignCancelled):
            Election(backend, "cancelled2", "a", holders=2).campaign(cancel=cancel)
        assert all(seat.holder is None for seat in Election(backend, "cancelled2").seats(2))


def test_the_holders_agreement_outlives_30s_without_frequent_heartbeats(target_file, tmp_path):
    """The holders note lives PIN_TTL (30 s) and is refreshed from the heartbeat thread:
    a holder with --heartbeat-interval 0 (or 1m) must still keep it, or after 30 s a
    candidate with another --holders is let in beside it (more jobs than N)."""
    from lelect.seats import PIN_TTL
    from tests.test_contract import leading

    url = target_file.url
    target = type("T", (), {"url": url})
    held = [leading(target, f"pinned{i}", tmp_path, f"h{i}", "--holders", "2",
                    "--heartbeat-interval", every) for i, every in enumerate(("0", "1m"))]
    time.sleep(PIN_TTL + 2)  # the note's life (nothing to await: time itself is the test)
    ran = tmp_path / "ran"
    for i in range(2):
        out = run_lelect("campaign", f"pinned{i}", "--holders", "3", "--no-wait", "--",
                         "touch", str(ran), backend=url)
        assert out.returncode == 78, (out.returncode, out.stderr)
    assert not ran.exists()
    for proc, release in held:
        release.touch()
        proc.communicate(timeout=30)


@pytest.mark.parametrize("target", ["file", "redis"], indirect=True)
def test_a_candidate_barred_by_a_handover_waits_no_longer_than_the_note_lives(target):
    """A candidate that wins while a handover names another node steps down and waits
    for that node, bounded by the note's life: by what is *left* of it, not its whole
    ttl again (one that wins late in the reservation, after the named node died, would
    leave the election leaderless for up to a second reservation). Shown with a note
    whose stored life (1 s) is shorter than its ttl field (20 s): what a note written
    19 s ago looks like."""
    from lelect.backends.notes import encode_handover

    with connect(target.url) as backend:
        backend.put_note("late", HANDOVER_KEY, encode_handover("ghost", 0, 20.0), 1.0)
    started = time.monotonic()
    out = run_lelect("campaign", "late", "--timeout", "30s", "--", "true", backend=target.url)
    took = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert took < 8.0, f"barred for {took:.1f}s by a note that lived 1s"


@pytest.mark.parametrize("target", ["file", "redis"], indirect=True)
def test_a_seat_reserved_for_another_node_does_not_keep_a_candidate_from_a_free_seat(target):
    from lelect.backends.notes import encode_handover

    with connect(target.url) as backend:
        backend.put_note("reserved:seat0", HANDOVER_KEY, encode_handover("ghost", 0, 20.0), 20)
    started = time.monotonic()
    out = run_lelect("campaign", "reserved", "--holders", "2", "--timeout", "30s", "--", "sh",
                     "-c", "echo $LELECT_SEAT", backend=target.url)
    took = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1"]
    assert took < 8.0, f"seat 1 was free, but the campaign waited {took:.1f}s"
