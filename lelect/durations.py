"""Durations as operators write them: ``500ms``, ``0.5s``, ``10s``, ``2m``, ``1h``, ``1d``;
a bare number is seconds. Every duration lelect takes has a documented range
(:data:`RANGES`), checked when it is parsed: out of range is a usage error, never a
traceback, and never found out after winning.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lelect.errors import UsageError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")

DAY = 86400.0


@dataclass(frozen=True)
class Range:
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
    forms (and ``limits``, when given)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise UsageError(
                f"invalid {what + ' ' if what else ''}{str(text)!r}: use a number of seconds"
                " or 500ms, 0.5s, 10s, 2m, 1h, 1d"
            )
        value = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"invalid {what + ' ' if what else ''}{text!r}: must be a finite,"
                         " non-negative duration")
    if limits is not None:
        limits.check(value, what, text)
    return value


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
