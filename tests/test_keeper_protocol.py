"""The messages between lelect and its keeper: every one round-trips, garbage is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lelect import keeper_protocol as proto

EXAMPLES = [
    proto.Start(7, "-", -1), proto.Start(1795766138059, "1d@2026-12-02T00:00:00Z", 2),
    proto.Lease(12345.678901, 0.25), proto.Signal(15), proto.Stop(15, 10.0, "lost"),
    proto.Release(), proto.Recipe('{"module": "m", "params": {"pw": "a b"}}'), proto.Exit(),
    proto.Prepare(), proto.Unprepare(),
    proto.Locked(3, 1796000000.123, -1), proto.Waiting(), proto.Busy(), proto.TimedOut(),
    proto.Error("cannot open lock file: [Errno 13] Permission denied"), proto.Started(4242),
    proto.ExecFailed("nope: No such file or directory"), proto.Leftovers(2, 10.0),
    proto.Exited(143, "resign"), proto.Released(), proto.Suspended(),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.verb)
def test_every_message_round_trips(message):
    line = message.encode()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert proto.decode(line) == message


@given(st.text(min_size=0, max_size=200))
def test_text_fields_survive_anything_but_newlines(text):
    message = proto.Error(text)
    assert proto.decode(message.encode()).message == text.replace("\n", " ")


def test_a_reader_splits_lines_across_reads():
    reader = proto.LineReader()
    data = proto.Started(9).encode() + proto.Exited(0, "exit").encode()
    assert reader.feed(data[:5]) == []
    assert reader.feed(data[5:]) == [proto.Started(9), proto.Exited(0, "exit")]


@pytest.mark.parametrize("line", [b"nonsense 1\n", b"started\n", b"started x\n",
                                  b"lease 1.0\n", b"stop 15 1.0\n",
                                  # numbers are ASCII, bounded and finite
                                  "started \uff11\uff12\n".encode(), b"started " + b"9" * 5000,
                                  b"lease nan 1.0\n", b"lease 1e999 1.0\n", b"lease 1.0 inf\n",
                                  b"started 1.5\n"])
def test_garbage_is_refused_with_the_line(line):
    with pytest.raises(proto.ProtocolError):
        proto.decode(line)


def test_a_reader_refuses_an_endless_line():
    reader = proto.LineReader()
    with pytest.raises(proto.ProtocolError):
        for _ in range(100):
            reader.feed(b"error " + b"A" * 4096)


def test_words_must_be_words_and_messages_are_immutable():
    with pytest.raises(proto.ProtocolError):
        proto.Stop(15, 1.0, "two words").encode()
    with pytest.raises(AttributeError):
        proto.Started(1).pid = 2
    with pytest.raises(TypeError):
        proto.Started()


def test_config_round_trips_and_stops_at_the_command():
    argv = proto.encode_config({"lock": "/x/a b.lock", "grace": 1.5}) + ["--", "sh", "-c", "a=b"]
    assert proto.decode_config(argv) == ({"lock": "/x/a b.lock", "grace": "1.5"},
                                         ["sh", "-c", "a=b"])


# -- the recipe's JSON, without json --------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_compact_json_is_what_json_dumps_writes(value):
    """lelect.json_text.compact_json: json.dumps(value, separators=(",", ":")), byte for
    byte (the hand-back recipe goes with the job's start, without importing json)."""
    import json

    from lelect.json_text import compact_json

    text = compact_json(value)
    assert text == json.dumps(value, separators=(",", ":"))
    assert text.isascii() and "\n" not in text  # one line of the keeper protocol


def test_compact_json_escapes_lone_surrogates_and_refuses_what_json_has_no_form_for():
    import json

    from lelect.json_text import compact_json

    odd = {"pw": "a\udcff\"\\\x00\x7f\u2028é😀", "t": (1, 2.5, None)}
    assert compact_json(odd) == json.dumps(odd, separators=(",", ":"))
    assert json.loads(compact_json(odd)) == {"pw": odd["pw"], "t": [1, 2.5, None]}
    for bad in (float("nan"), float("inf"), {1: "x"}, object(), b"bytes"):
        with pytest.raises((ValueError, TypeError)):
            compact_json(bad)


def test_a_recipe_message_is_the_recipe_as_json():
    import json

    from lelect.backends.records import HandBack
    from lelect.supervisor import recipe_message

    recipe = HandBack(budget=2.0, election="e", module="lelect.backends.redis.handback",
                      params={"host": "127.0.0.1", "port": 6379, "password": 'p"w\n', "db": None})
    message = recipe_message(recipe)
    decoded = proto.decode(message.encode().rstrip(b"\n"))
    assert json.loads(decoded.json) == {
        "budget": 2.0, "election": "e", "module": "lelect.backends.redis.handback",
        "params": {"host": "127.0.0.1", "port": 6379, "password": 'p"w\n', "db": None}}
