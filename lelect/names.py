"""Election names: ``[A-Za-z0-9][A-Za-z0-9._-]{0,127}``; names starting with ``_`` are lelect's own."""

from __future__ import annotations

import re

from lelect.errors import UsageError

ELECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# -- the parts of an election with seats (``campaign --holders N``) -------------------------
# Seat S of election NAME is an election of its own, ``NAME:seatS`` (its own lease, term,
# history and hand-back), and ``NAME:line`` is the one line candidates wait in for a
# seat. The ``:`` keeps them out of any name a user can give, and out of ``elections``.

#: How often the head of an election's line looks for a free seat (N reads or tries).
SEAT_LOOK = 0.05
#: The most holders an election may have.
MAX_HOLDERS = 100
#: The longest name of an election with seats (its parts stay within 128 characters).
MAX_SEATED_NAME = 120
PART_NAME = re.compile(
    r"(?P<election>[A-Za-z0-9][A-Za-z0-9._-]{0,119}):(?:seat(?P<seat>0|[1-9][0-9]?)|line)"
)


def seat_election(election: str, seat: int) -> str:
    """The election that seat ``seat`` of ``election`` is."""
    return f"{election}:seat{int(seat)}"


def line_election(election: str) -> str:
    """The election whose leader is the head of the line for ``election``'s seats."""
    return f"{election}:line"


def split_part(name: str) -> tuple[str, int | None]:
    """``(election, seat)`` of a stored name (seat None: the election itself or its line)."""
    match = PART_NAME.fullmatch(name)
    if match is None:
        return name, None
    seat = match.group("seat")
    return match.group("election"), None if seat is None else int(seat)


def validate_stored(name: str) -> str:
    """What a backend accepts: an election name, or one of lelect's own parts of one."""
    if isinstance(name, str) and PART_NAME.fullmatch(name):
        return name
    return validate_election(name)


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
