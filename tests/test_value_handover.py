"""The pure parts of a leader's value and a handover: the note codecs, who counts as
waiting, what a watcher reports, and the CLI's refusals before anything connects."""

from __future__ import annotations

import json

import pytest

from lelect.backends.notes import (
    MAX_VALUE,
    decode_handover,
    decode_value,
    encode_handover,
    encode_value,
    handover_ttl,
    value_key,
)
from lelect.backends.records import Heartbeat, LeaderInfo, MemberRecord, Members
from lelect.errors import UsageError
from tests.helpers import assert_one_line, run_lelect


def test_a_value_is_keyed_by_its_term_and_bounded_in_bytes():
    assert value_key(7) == "value.7"
    assert encode_value("é" * (MAX_VALUE // 2)) == ("é" * (MAX_VALUE // 2)).encode()
    with pytest.raises(UsageError, match="4096 bytes"):
        encode_value("é" * (MAX_VALUE // 2) + "x")
    with pytest.raises(UsageError, match="UTF-8"):
        encode_value("\udcff")  # a lone surrogate (argv that was not UTF-8)
    assert decode_value(None) is None
    assert decode_value(b"\xff10.0.0.1") == "\ufffd10.0.0.1"
    assert decode_value(b"x" * (MAX_VALUE + 1)) is None


def test_a_handover_bars_every_other_node_above_its_term_only():
    note = decode_handover(encode_handover("b", 5, 30))
    assert (note.to, note.term, note.ttl) == ("b", 5, 30.0)
    assert note.bars("c", 6) and note.bars("c", 9)
    assert not note.bars("b", 6)  # the named node
    assert not note.bars("c", 5)  # the leadership it was written for, or older


@pytest.mark.parametrize("garbage", [None, b"", b"{", b"[]", b'{"to": 1, "term": 2}',
                                     b'{"to": "b", "term": true}', b'{"to": "", "term": 2}',
                                     b'{"term": 2}', b"x" * 5000])
def test_an_unreadable_handover_reserves_nothing(garbage):
    assert decode_handover(garbage) is None


def test_a_handover_lasts_two_leases_at_least_ten_seconds_plus_the_grace():
    assert handover_ttl(None) == 20.0
    assert handover_ttl(3.0) == 20.0
    assert handover_ttl(15.0) == 40.0
    assert decode_handover(json.dumps({"to": "b", "term": 1, "ttl": -4}).encode()).ttl == 20.0


def beat(node_id: str, role: str = "follower") -> Heartbeat:
    return Heartbeat(election="e", node_id=node_id, host="h", pid=1, role=role, term=None,
                     seq=1, time=0.0, interval=1.0)


def test_waiting_means_a_follower_with_fresh_heartbeats():
    from lelect.health import PhiAccrualDetector, is_waiting

    detector = PhiAccrualDetector(expected_interval=1.0)
    members = Members("e", now=100.0, records=(
        MemberRecord("fresh", beat("fresh"), (98.0, 99.0, 100.0)),
        MemberRecord("gone", beat("gone"), (10.0, 11.0, 12.0)),
        MemberRecord("leads", beat("leads", "leader"), (99.0, 100.0)),
        MemberRecord("looks", beat("looks", "observer"), (99.0, 100.0)),
        MemberRecord("garbage", None, (100.0,), error="unreadable"),
    ))
    assert is_waiting(members, "fresh", detector)
    for node in ("gone", "leads", "looks", "garbage", "nobody"):
        assert not is_waiting(members, node, detector), node


def test_a_new_value_is_a_change_for_watch_and_its_hook():
    from lelect.health import LeaderChange, _identity

    before = LeaderInfo("a", 3, value="10.0.0.1")
    after = LeaderInfo("a", 3, value="10.0.0.2")
    assert _identity(before) != _identity(after)
    env = LeaderChange("e", before, after).environ()
    assert (env["LELECT_EVENT"], env["LELECT_VALUE"]) == ("proclaimed", "10.0.0.2")
    env = LeaderChange("e", None, LeaderInfo("b", 4)).environ()
    assert (env["LELECT_EVENT"], env["LELECT_VALUE"]) == ("elected", "")


def test_leader_json_carries_a_null_value_when_none_was_proclaimed():
    assert LeaderInfo("a", 1).to_json()["value"] is None
    assert LeaderInfo("a", 1, value="x").to_json()["value"] == "x"


def test_a_value_over_4kib_is_a_usage_error_before_anything_connects(tmp_path):
    big = "x" * (MAX_VALUE + 1)
    url = f"file://{tmp_path}/state"
    out = run_lelect("campaign", "e", "--value", big, "--", "true", backend=url)
    assert_one_line(out, 2, "4096 bytes")
    out = run_lelect("proclaim", "e", "--term", "1", "-", input=big, backend=url)
    assert_one_line(out, 2, "4096 bytes")
    out = run_lelect("proclaim", "e", "x", backend=url)
    assert out.returncode == 2 and "--term" in out.stderr
    assert not (tmp_path / "state").exists()
