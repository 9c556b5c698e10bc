"""Election names: ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``; names starting with ``_`` are lelect's own."""

from __future__ import annotations

import re

from lelect.errors import UsageError

ELECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def validate_election(name: str) -> str:
    """Return ``name`` if it is a valid election name, else raise UsageError saying why."""
    if not isinstance(name, str) or not ELECTION_NAME.fullmatch(name):
        shown = repr(name) if len(str(name)) <= 40 else repr(str(name)[:40] + "…")
        raise UsageError(
            f"invalid election name {shown}: use 1-128 characters from A-Z a-z 0-9 . _ -,"
            " starting with a letter or digit"
        )
    return name
