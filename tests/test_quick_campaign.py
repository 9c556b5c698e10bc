"""``lelect campaign`` read without click (lelect.cli.quick): the same options and
values as the click command, and every other form left to click."""

from __future__ import annotations

import pytest

from lelect.cli import _click_main, quick

SAME = [
    ["campaign", "e", "--", "sh", "-c", "echo hi"],
    ["campaign", "e", "echo", "-n", "hi"],
    ["campaign", "-q", "e", "-w", "5s", "true"],
    ["campaign", "e", "-qn", "-w5s", "--", "true", "--ttl", "3"],
    ["-b", "file:///tmp/x", "campaign", "e", "true"],
    ["--backend=file:///tmp/x", "campaign", "e", "-b", "file:///tmp/y", "true"],
    ["campaign", "e", "--heartbeat-interval", "0", "--grace=2", "--stop-signal", "int",
     "--", "sleep", "1"],
    ["campaign", "e", "--stop-signal", "9", "--timeout", "1m", "-E", "3", "true"],
    ["campaign", "e", "--id", "web-1", "--holders", "3", "--once-per", "1d", "--once-key",
     "k", "--value", "v w", "true"],
    ["campaign", "e", "--restart", "--restart-delay", "2s", "--resign-cooldown", "0",
     "--hold-at-least", "1s", "--max-runtime", "1h", "--forget-after", "1d", "--no-wait",
     "--ttl", "9", "--log-format", "json", "--quiet", "true"],
    ["campaign", "--", "e", "--", "x"],
    ["campaign", "e", "-", "x"],
]

LEFT_TO_CLICK = [
    [], ["campaign"], ["campaign", "e"], ["campaign", "e", "--"], ["campaign", "--help"],
    ["campaign", "e", "--help", "x"], ["--version"], ["-v", "campaign", "e", "x"],
    ["leader", "e"], ["campaign", "e", "--bogus", "x"], ["campaign", "e", "-w", "xx", "x"],
    ["campaign", "e", "-E", "300", "x"], ["campaign", "e", "--holders", "0", "x"],
    ["campaign", "e", "--stop-signal", "NOPE", "x"], ["campaign", "e", "--log-format", "xml", "x"],
    ["campaign", "e", "--status-listen", ":0", "x"], ["campaign", "e", "--restart=1", "x"],
    ["campaign", "e", "--timeout"], ["campaign", "bad name!", "x"],
    ["campaign", "e", "--id", "a\nb", "x"], ["campaign", "e", "-Z", "x"],
    ["campaign", "e", "--ttl", "-1", "x"],
]


def clicks_reading(argv: list[str], monkeypatch) -> dict:
    seen = {}

    def body(url, election, command, log, status_listen, values):
        seen.update(url=url, election=election, command=command, log_format=log.fmt,
                    quiet=log.quiet, values=values)
        return 0

    monkeypatch.setattr(quick, "campaign_body", body)
    assert _click_main(argv) == 0
    return seen


@pytest.mark.parametrize("argv", SAME, ids=" ".join)
def test_the_quick_reading_is_the_click_commands(argv, monkeypatch):
    parsed = quick.parse_campaign(argv)
    assert parsed is not None
    assert parsed == clicks_reading(argv, monkeypatch)


@pytest.mark.parametrize("argv", LEFT_TO_CLICK, ids=" ".join)
def test_anything_else_is_left_to_click(argv):
    assert quick.parse_campaign(argv) is None


def test_signal_names_as_click_reads_them():
    assert quick.signal_number("term") == quick.signal_number("SIGTERM") == 15
    assert quick.signal_number(" 9 ") == 9
    assert quick.signal_number("0") is None
    assert quick.signal_number("999") is None
    assert quick.signal_number("SIGNOPE") is None


# -- generated command lines: whatever the quick reading accepts, click reads the same ----

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lelect.options import CAMPAIGN  # noqa: E402

VALUES = {
    "duration": ["5s", "1m", "0", "2", "1.5s", "1d", "-1", "xx", "", "10ms", "1h30m"],
    "signal": ["TERM", "int", "sigkill", "9", "0", "999", "NOPE", ""],
    "node-id": ["web-1", "a b", "", "x" * 300, "é"],
    "exit-code": ["0", "3", "255", "256", "-1", "x", "٣"],
    "count": ["1", "3", "0", "x", "99999"],
    "text": ["v", "v w", "", "-", "--x"],
}
FLAGS = [flag for option in CAMPAIGN for flag in option.flags] + [
    "-q", "--quiet", "--log-format", "--bogus", "-Z", "--help", "-h", "--status-listen"]
KIND = {flag: option.kind for option in CAMPAIGN for flag in option.flags}


@st.composite
def command_lines(draw) -> list[str]:
    argv: list[str] = []
    if draw(st.booleans()):
        argv += draw(st.sampled_from([["-b", "file:///tmp/q"], ["--backend=file:///tmp/r"]]))
    argv.append("campaign")
    words = draw(st.lists(st.one_of(
        st.sampled_from(FLAGS).flatmap(lambda flag: st.tuples(
            st.just(flag),
            st.sampled_from(VALUES.get(KIND.get(flag, "text"), ["x"]) if KIND.get(flag) != "flag"
                            else [None]),
            st.sampled_from(["=", " ", "glued"]))),
        st.sampled_from(["e", "job-1", "bad name!", "--", "-", "true", "-n", "x"])),
        max_size=8))
    for word in words:
        if isinstance(word, str):
            argv.append(word)
            continue
        flag, value, joint = word
        if value is None:
            argv.append(flag)
        elif joint == "=" and flag.startswith("--"):
            argv.append(f"{flag}={value}")
        elif joint == "glued" and not flag.startswith("--"):
            argv.append(flag + value)
        else:
            argv += [flag, value]
    return argv


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=command_lines())
def test_a_generated_command_line_the_quick_reading_accepts_is_read_alike_by_click(
        argv, monkeypatch):
    parsed = quick.parse_campaign(argv)
    if parsed is not None:
        assert parsed == clicks_reading(argv, monkeypatch)
