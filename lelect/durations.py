"""Durations as operators write them: ``500ms``, ``0.5s``, ``10s``, ``2m``, ``1h``, ``1d``,
and combined or spelled out as Go and systemd write them (``1h30m``, ``2m30s``, ``5min``,
``30sec``, ``2 hours``); a bare number is seconds. This module is the one parser: CLI
flags and URL options both come here. Every duration lelect takes has a documented range
(:data:`RANGES`), checked when it is parsed: out of range is a usage error, never a
traceback, and never found out after winning.
"""

from __future__ import annotations

import math
import re

from lelect.errors import UsageError
from lelect.frozen import Record

#: Every unit's spellings (Go/consul/etcd: 1h30m; systemd: 5min, 30sec, 2 hours).
_UNIT_NAMES = {
    0.001: ("ms", "msec", "msecs", "millisecond", "milliseconds"),
    1.0: ("s", "sec", "secs", "second", "seconds"),
    60.0: ("m", "min", "mins", "minute", "minutes"),
    3600.0: ("h", "hr", "hrs", "hour", "hours"),
    86400.0: ("d", "day", "days"),
    604800.0: ("w", "week", "weeks"),
}
_UNITS = {name: seconds for seconds, names in _UNIT_NAMES.items() for name in names}
_NUMBER = r"(?:[0-9]{1,12}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})"
# One or more "NUMBER UNIT" parts (spaces allowed between and within), or a bare number.
# Compiled on first use (re's own cache), not on every start: most take no duration.
_PART = rf"({_NUMBER}) *([a-z]+)"
_DURATION = rf" *(?:{_NUMBER} *[a-z]+ *)+"
_BARE = rf" *({_NUMBER}) *"
_WORDS = re.ASCII | re.IGNORECASE
#: Longer text is refused before it is looked at (and never echoed whole).
_MAX_TEXT = 64
FORMS = "a number of seconds, or e.g. 500ms, 0.5s, 30sec, 2m30s, 5min, 1h30m, 2 hours, 1d"

DAY = 86400.0


class Range(Record):
    """Accepted values of one duration: ``minimum``..``maximum`` seconds, and 0 too when
    ``zero`` says what 0 means (e.g. "off")."""

    minimum: float
    maximum: float
    zero: str | None = None

    def describe(self) -> str:
        text = f"{format_duration(self.minimum)} to {format_duration(self.maximum)}"
        return f"0 ({self.zero}) or {text}" if self.zero else text

    def check(self, value: float, what: str, shown: object) -> float:
        """``value`` if in range, else UsageError: "[WHAT ]SHOWN is out of range: use …"."""
        if value == 0 and self.zero:
            return value
        if not self.minimum <= value <= self.maximum:
            prefix = f"{what} " if what else ""
            raise UsageError(f"{prefix}{shown!s} is out of range: use {self.describe()}")
        return value


#: Every duration's range, by the name the README's table uses.
RANGES: dict[str, Range] = {
    "timeout": Range(0.0, 30 * DAY),
    "ttl": Range(0.1, DAY),
    "grace": Range(0.0, 3600.0),
    "max-runtime": Range(0.001, 366 * DAY),
    "hold-at-least": Range(0.0, 366 * DAY),
    "restart-delay": Range(0.0, 3600.0),
    "resign-cooldown": Range(0.0, DAY),
    "heartbeat-interval": Range(0.01, 3600.0, zero="no heartbeats"),
    "forget-after": Range(1.0, 366 * DAY),
    "once-per": Range(1.0, 366 * DAY),
    "interval": Range(0.01, 3600.0),
    "wait": Range(0.0, 30 * DAY),
    "connect_timeout": Range(0.001, 3600.0),
    # lelect simulate (simulated time; a run's cost grows with it)
    "duration": Range(0.001, 600.0),
    "crash-leader-at": Range(0.0, 600.0),
    "delay": Range(0.0, 10.0),
    "jitter": Range(0.0, 10.0),
    "tick": Range(0.001, 1.0),
}


def parse_duration(text: str | float | int, *, what: str = "duration",
                   limits: Range | None = None) -> float:
    """Return seconds as a float, or raise UsageError naming ``what`` and the accepted
    forms (and ``limits``, when given). Accepted: a bare number (seconds) or parts like
    ``1h30m``, ``2m30s``, ``5min``, ``2 hours``, ``500ms``; ASCII digits only, no sign,
    no exponent, no nan/inf."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
        if not math.isfinite(value) or value < 0:
            raise UsageError(f"invalid {what + ' ' if what else ''}{text!r}: must be a finite,"
                             " non-negative duration")
    else:
        value = _parse_text(str(text), what)
    if limits is not None:
        limits.check(value, what, text if len(str(text)) <= _MAX_TEXT else _shown(str(text)))
    return value


def _shown(text: str) -> str:
    return repr(text) if len(text) <= _MAX_TEXT else repr(text[:20] + "…") + f" ({len(text)} characters)"


def _parse_text(text: str, what: str) -> float:
    prefix = f"{what} " if what else ""
    if len(text) > _MAX_TEXT:
        raise UsageError(f"invalid {prefix}{_shown(text)}: too long for a duration; use {FORMS}")
    if text.strip().startswith("-"):
        raise UsageError(f"invalid {prefix}{text!r}: a duration cannot be negative")
    bare = re.fullmatch(_BARE, text, re.ASCII)
    if bare:
        return float(bare.group(1))
    if re.fullmatch(_DURATION, text, _WORDS):
        value = 0.0
        for number, unit in re.findall(_PART, text, _WORDS):
            seconds = _UNITS.get(unit.lower())
            if seconds is None:
                break
            value += float(number) * seconds
        else:
            return value
    if re.fullmatch(r"\s*[0-9]{13,}(?:\.[0-9]*)?\s*[A-Za-z ]*", text):
        # Well formed, but more digits than any range allows.
        raise UsageError(f"{prefix}{text!r} is out of range: use at most 12 digits")
    raise UsageError(f"invalid {prefix}{text!r}: use {FORMS}")


def format_duration(seconds: float) -> str:
    """Short human form: 0s, 250ms, 1.5s, 2m30s, 1h2m, 3d."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s".replace(".0s", "s")
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"
