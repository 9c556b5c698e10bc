"""Where a ZooKeeper election lives, and the transactions that change it: pure functions
over names and records (no client, no I/O; standard library only, so the keeper's
hand-back uses the very same transactions).

``<path>/NAME`` holds nothing but contender nodes laid out exactly as kazoo's
Lock/Election recipe makes them: ``<uuid4 hex>__lock__<10-digit sequence>``, ephemeral,
the node id as data; the lowest sequence leads. lelect's own records live beside the
election under names no election can have (they start with ``_``):

- ``<path>/_members/NAME/<node id>``: heartbeats (the znode mtime is the arrival stamp)
- ``<path>/_resign/NAME``: a request that the leader of a given term step down
- ``<path>/_history/NAME/<10-digit term>``: one leadership (``HistoryEntry`` JSON)
- ``<path>/_slots/NAME/<slot>``: the leadership that completed a once-per slot
- ``<path>/_notes/NAME/<key>``: a note (``put_note``): its ttl, then its bytes
- ``<path>/_holders/NAME/n<N>-<seq>``: a running candidate's word on ``--holders N``,
  ephemeral and sequential (it lives exactly as long as the candidate's session); a node
  the claim carried to another session of the same candidate is
  ``n<N>-r<first seq>-<seq>`` and keeps the first node's place (:func:`holders_claims`)
- ``<path>/_clock``: a scratch node whose mtime tells the server's current time

A history entry is created (version 0) by the multi that makes its leader leader, and
set once more when it is closed: every close is a set at the version it was read at, so
the first writer wins (the leader releasing, or the next leader finding it vanished).
Its times on read come from the znode itself (ctime = started, mtime = ended), the
server's clock.
"""

from __future__ import annotations

import math
import re
from collections import namedtuple
from urllib.parse import quote, unquote

from lelect.backends.records import RUNNING, VANISHED, VANISHED_REASON, HistoryEntry
from lelect.errors import UsageError
from lelect.frozen import Record, replace
from lelect.names import validate_stored

#: kazoo's contender node name: ``<uuid4 hex>__lock__<10-digit sequence>``.
CONTENDER_MARK = "__lock__"
_CONTENDER = re.compile(r"__lock__(-?\d{10})$")
_TERM = re.compile(r"^\d{10}$")


class Contender(namedtuple("Contender", "seq name")):
    """One node under ``<path>/NAME`` (``seq``: its sequence, ``name``), ordered as kazoo
    orders them (by sequence). A tuple: a line of 200 is read at every look."""

    __slots__ = ()


def contenders(children: list[str]) -> list[Contender]:
    """The contender nodes among ``children``, lowest (the leader) first."""
    found = []
    for child in children:
        match = _CONTENDER.search(child)
        if match:
            found.append(Contender(int(match.group(1)), child))
    return sorted(found)


#: A claim on --holders: ``n<N>-<seq>``, or ``n<N>-r<first seq>-<seq>`` once carried.
_HOLDERS_CLAIM = re.compile(r"^n(\d{1,4})-(?:r(\d{10})-)?(\d{10})$")


class HoldersClaim(namedtuple("HoldersClaim", "place seq holders name")):
    """One candidate's ephemeral word on --holders (``place``, ``seq``, ``holders``,
    ``name``), ordered by its place (the sequence of the candidate's first node: a claim
    carried to another session keeps it)."""

    __slots__ = ()


def holders_claim_prefix(holders: int, place: int | None = None) -> str:
    """The name of a claim node before ZooKeeper appends its sequence."""
    return f"n{holders}-" if place is None else f"n{holders}-r{place:010d}-"


def holders_claims(children: list[str]) -> list[HoldersClaim]:
    """The claims among ``children``, the oldest place first."""
    found = []
    for child in children:
        match = _HOLDERS_CLAIM.match(child)
        if match:
            seq = int(match.group(3))
            place = int(match.group(2)) if match.group(2) else seq
            found.append(HoldersClaim(place, seq, int(match.group(1)), child))
    return sorted(found)


def znode_name(text: str, what: str = "a node id") -> str:
    """``text`` as one znode name: '/' and friends quoted; '.' and '..' are reserved."""
    if not text:
        raise UsageError(f"{what} must not be empty")
    name = quote(text, safe=":@")
    return name.replace(".", "%2E") if name in (".", "..") else name


def from_znode_name(name: str) -> str:
    return unquote(name)


def term_name(term: int) -> str:
    """A history entry's node name: the term as ZooKeeper writes sequence numbers."""
    return f"{term:010d}"


def history_terms(children: list[str]) -> list[str]:
    """The history entries among ``children``, oldest (lowest term) first."""
    return sorted(child for child in children if _TERM.match(child))


class ElectionPaths(Record):
    """Every znode of one election under the base ``path``."""

    base: str
    election: str

    @classmethod
    def of(cls, base: str, election: str) -> ElectionPaths:
        return cls(base, validate_stored(election))

    @property
    def contenders(self) -> str:
        return f"{self.base}/{self.election}"

    def contender(self, name: str) -> str:
        return f"{self.contenders}/{name}"

    @property
    def members(self) -> str:
        return f"{self.base}/_members/{self.election}"

    def member(self, node_id: str) -> str:
        return f"{self.members}/{znode_name(node_id)}"

    @property
    def resign(self) -> str:
        return f"{self.base}/_resign/{self.election}"

    @property
    def history(self) -> str:
        return f"{self.base}/_history/{self.election}"

    def entry(self, term: int) -> str:
        return f"{self.history}/{term_name(term)}"

    @property
    def slots(self) -> str:
        return f"{self.base}/_slots/{self.election}"

    def slot(self, slot: str) -> str:
        return f"{self.slots}/{znode_name(slot, 'a once-per slot')}"

    @property
    def notes(self) -> str:
        return f"{self.base}/_notes/{self.election}"

    def note(self, key: str) -> str:
        return f"{self.notes}/{znode_name(key, 'a note key')}"

    @property
    def holders(self) -> str:
        return f"{self.base}/_holders/{self.election}"


def clock_path(base: str) -> str:
    return f"{base}/_clock"


class StoredNote(Record):
    """A note's node: ZooKeeper has no TTL nodes by default, so the ttl is stored in the
    data (whole milliseconds, or ``-`` for none) and counts from the node's mtime, which
    the server stamps at every write; it is judged against the server's clock."""

    data: bytes
    ttl_ms: int | None = None

    @classmethod
    def of(cls, data: bytes, ttl: float | None) -> StoredNote:
        return cls(data, None if ttl is None else max(0, math.ceil(ttl * 1000)))

    def encode(self) -> bytes:
        return (b"-" if self.ttl_ms is None else b"%d" % self.ttl_ms) + b"\n" + self.data

    @classmethod
    def decode(cls, raw: bytes) -> StoredNote | None:
        """The note in a node's data, or None if it is not one."""
        head, newline, data = raw.partition(b"\n")
        if not newline or not (head == b"-" or head.isdigit()):
            return None
        return cls(data, None if head == b"-" else int(head))

    def live(self, mtime_ms: int, now: float) -> bool:
        """Unexpired at the server's time ``now`` (epoch seconds), written at ``mtime_ms``."""
        return self.ttl_ms is None or now * 1000 < mtime_ms + self.ttl_ms


# -- the writes of a transaction (ZooKeeper multi), each naming what it compares ---------

#: "Whatever version": a delete or check that compares only the node's existence.
ANY_VERSION = -1
#: A history entry's version while it is "running" (created, never set).
OPEN_ENTRY = 0


class Check(Record):
    """Fails the transaction unless ``path`` exists (at ``version``)."""

    path: str
    version: int = ANY_VERSION


class Create(Record):
    """A persistent node (with the backend's ACL); fails if it exists."""

    path: str
    data: bytes


class SetData(Record):
    """Fails unless ``path`` is at ``version``."""

    path: str
    data: bytes
    version: int


class Delete(Record):
    path: str
    version: int = ANY_VERSION


Op = Check | Create | SetData | Delete


def entry_data(entry: HistoryEntry) -> bytes:
    return entry.encode().encode("utf-8")


def win_ops(paths: ElectionPaths, mine: Contender, entry: HistoryEntry,
            newest: tuple[HistoryEntry, int] | None, prune: list[str]) -> list[Op]:
    """Becoming leader: our contender node must still exist; our history entry is
    created; the newest earlier entry, if still running at the version read, is closed
    as vanished (its leader never said goodbye); the oldest entries beyond the bound go."""
    ops: list[Op] = [Check(paths.contender(mine.name)),
                     Create(paths.entry(mine.seq), entry_data(entry))]
    if newest is not None:
        earlier, version = newest
        if earlier.outcome == RUNNING and earlier.term < mine.seq:
            vanished = replace(earlier, outcome=VANISHED, ended=entry.started,
                               reason=VANISHED_REASON)
            ops.append(SetData(paths.entry(earlier.term), entry_data(vanished), version))
    ops.extend(Delete(f"{paths.history}/{name}") for name in prune)
    return ops


def history_prune(children: list[str], limit: int) -> list[str]:
    """The entries to delete so that, with one more, at most ``limit`` remain."""
    terms = history_terms(children)
    return terms[: max(0, len(terms) - (limit - 1))]


def release_ops(node_path: str | None, closing: tuple[str, HistoryEntry] | None,
                slot: tuple[str, bytes] | None = None, prune_slots: tuple[str, ...] = (),
                *, create: bool = False) -> list[Op]:
    """Stepping down: delete our contender node (its name is our token), close our
    entry (path, closed entry) if it is still open (``create``: write it closed, for an
    entry that was never written), and record a completed once-per slot (trimming the
    oldest). A part given as None is left out: a retry drops what cannot apply."""
    ops: list[Op] = []
    if node_path is not None:
        ops.append(Delete(node_path))
    if closing is not None:
        entry_path, closed = closing
        ops.append(Create(entry_path, entry_data(closed)) if create
                   else SetData(entry_path, entry_data(closed), OPEN_ENTRY))
    if slot is not None:
        ops.append(Create(*slot))
        ops.extend(Delete(path) for path in prune_slots)
    return ops


def hand_back_ops(node_path: str, closing: tuple[str, HistoryEntry] | None,
                  member_path: str) -> list[Op]:
    """The keeper's release after lelect died: as :func:`release_ops`, and the member
    record goes too (nobody publishes for that candidate any more)."""
    return [*release_ops(node_path, closing), Delete(member_path)]
