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


#: Longest node id lelect accepts (``--id``); ids from other writers are shortened when shown.
MAX_NODE_ID = 256


def printable(text: object, limit: int | None = None) -> str:
    """``text`` safe for a terminal and a log line: every character that is not
    printable (escape sequences, newlines, NUL, bidi overrides) is shown as its escape,
    so a record or a server cannot drive the terminal or forge a line. With ``limit``,
    shortened to that many characters."""
    shown = str(text)
    if not shown.isprintable():
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)
    if limit is not None and len(shown) > limit:
        shown = shown[: max(limit - 1, 0)] + "…"
    return shown


def validate_node_id(node_id: str) -> str:
    """Return ``node_id`` if lelect may write it (1-256 printable characters), else raise
    UsageError: a node id reaches other people's terminals, logs and hook scripts."""
    if not isinstance(node_id, str) or not node_id or len(node_id) > MAX_NODE_ID \
            or not node_id.isprintable():
        raise UsageError(
            f"invalid node id '{printable(node_id, 40)}': use 1-{MAX_NODE_ID} printable"
            " characters (no control characters, newlines or escape sequences)"
        )
    return node_id
