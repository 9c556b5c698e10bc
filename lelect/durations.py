"""Durations as operators write them: ``500ms``, ``0.5s``, ``10s``, ``2m``, ``1h``; a bare number is seconds."""

from __future__ import annotations

import math
import re

from lelect.errors import UsageError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(text: str | float | int, *, what: str = "duration") -> float:
    """Return seconds as a float, or raise UsageError naming ``what`` and the accepted forms."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _DURATION.match(str(text))
        if not match:
            raise UsageError(
                f"invalid {what} {str(text)!r}: use a number of seconds or 500ms, 0.5s, 10s, 2m, 1h"
            )
        value = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"invalid {what} {text!r}: must be a finite, non-negative duration")
    return value


def format_duration(seconds: float) -> str:
    """Short human form: 250ms, 1.5s, 2m30s, 1h2m."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s".replace(".0s", "s")
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m" if minutes else f"{hours}h"
