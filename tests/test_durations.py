"""Durations as people write them: one parser (lelect/durations.py) for flags and URL
options; a table of what it accepts and what it refuses."""

from __future__ import annotations

import pytest

from lelect.backends.urls import parse_url
from lelect.durations import RANGES, parse_duration
from lelect.errors import UsageError
from tests.helpers import run_lelect

ACCEPTED = [
    ("10", 10.0),
    ("0", 0.0),
    ("2.5", 2.5),
    (".5", 0.5),
    ("500ms", 0.5),
    ("0.5s", 0.5),
    ("10s", 10.0),
    ("2m", 120.0),
    ("1h", 3600.0),
    ("1d", 86400.0),
    ("1w", 604800.0),
    ("1h30m", 5400.0),  # Go, consul, etcd
    ("2m30s", 150.0),
    ("1m0.5s", 60.5),
    ("1h1m1s1ms", 3661.001),
    ("5min", 300.0),  # systemd
    ("30sec", 30.0),
    ("2 hours", 7200.0),
    ("1 hour 30 min", 5400.0),
    ("3 days", 259200.0),
    ("250 msec", 0.25),
    ("2Hours", 7200.0),
    (" 3s ", 3.0),
]

REFUSED = [
    "-5s",  # negative
    "-1",
    "1e3",  # exponent
    "1E3s",
    "nan",
    "inf",
    "-inf",
    "infinity",
    "١٠s",  # Arabic-Indic digits: float() would take them
    "１０s",  # fullwidth digits
    "10 s\u200b",
    "9" * 20,  # a huge digit string
    "9" * 5000,  # longer than a duration can be (and never echoed whole)
    "",
    " ",
    "s",
    "ms",
    "10q",
    "5 s s",
    "1.5.5s",
    "1,5s",
    "0x10",
    "1_000",
    "+5s",
    "10s-",
    "1h 30",  # a bare number only alone
]


@pytest.mark.parametrize(("text", "seconds"), ACCEPTED)
def test_accepted(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", REFUSED)
def test_refused_with_one_line(text):
    with pytest.raises(UsageError) as refused:
        parse_duration(text)
    message = str(refused.value)
    assert "\n" not in message and len(message) < 200, message


def test_ranges_still_hold_whatever_the_spelling():
    assert parse_duration("1h30m", limits=RANGES["ttl"]) == 5400.0
    with pytest.raises(UsageError, match="out of range"):
        parse_duration("2 days", limits=RANGES["ttl"])  # ttl is at most 1d
    with pytest.raises(UsageError, match="out of range"):
        parse_duration("50ms", limits=RANGES["ttl"])


def test_url_options_take_the_same_forms():
    url = parse_url("redis://127.0.0.1:6379/0?ttl=2m30s&connect_timeout=1500ms")
    assert url.duration("ttl", 10.0) == 150.0
    assert url.duration("connect_timeout", 5.0) == 1.5
    for bad in ("-5s", "1e3", "nan", "١٠s"):
        with pytest.raises(UsageError):
            parse_url(f"redis://127.0.0.1:6379/0?ttl={bad}").duration("ttl", 10.0)


@pytest.mark.parametrize("text", ["-5s", "1e3", "nan", "١٠s", "9" * 5000, "5 fortnights"])
def test_cli_refuses_nonsense_with_status_2_and_one_line(tmp_path, text):
    out = run_lelect("campaign", "durations", "--timeout", text, "--", "true",
                     backend=f"file://{tmp_path}")
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and len(lines[0]) < 300, out.stderr
    assert "Traceback" not in out.stderr


def test_cli_takes_go_and_systemd_forms(tmp_path):
    out = run_lelect("campaign", "durations", "--timeout", "1h30m", "--max-runtime", "2 hours",
                     "--grace", "5sec", "-q", "--", "true", backend=f"file://{tmp_path}")
    assert out.returncode == 0, out.stderr
