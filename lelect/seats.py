"""Seats: up to N holders of one election at once (``campaign --holders N``).

Seat S of election NAME is an election of its own, ``NAME:seatS``
(:func:`lelect.names.seat_election`), with its own lease, term (the fencing token of
that seat), history, resign requests and hand-back: everything that keeps one leader
safe keeps each seat safe, on every backend, because it *is* that code. What this
module adds is small:

- **agreement on N**: every candidate claims the note ``holders`` beside NAME (created
  once, refreshed while it runs, gone :data:`PIN_TTL` after the last candidate stops);
  a candidate asking for another N is refused (:class:`HoldersMismatch`, status 78).
  Candidates of a plain election (N = 1) claim it too, so a plain campaign and one
  with seats never share a name. A backend whose sessions live exactly as long as
  their candidate (ZooKeeper: :attr:`Backend.holders_by_session`) keeps the claim in
  the session instead (:meth:`Backend.claim_holders`): nothing is refreshed;
- **one line**: a candidate that finds no free seat waits in the line election
  ``NAME:line`` (herd-free wherever the backend's own line is); only the head of the
  line looks for a seat (every :data:`SEAT_LOOK` seconds: N reads), takes the first
  free one and leaves the line, so a freed seat goes to the next candidate in line and
  a release wakes one waiter, never all of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from lelect.backends.base import (
    EXITED,
    Backend,
    Candidate,
    LeaderInfo,
    Leadership,
    busy,
    check_cancel,
    timed_out,
    with_value,
)
from lelect.backends.notes import HANDOVER_KEY, decode_handover
from lelect.backends.words import RESIGNED
from lelect.errors import (
    BackendUnavailable,
    CampaignTimeout,
    ConfigError,
    ElectionBusy,
    UsageError,
)
from lelect.frozen import Record
from lelect.names import (
    MAX_HOLDERS,
    MAX_SEATED_NAME,
    SEAT_LOOK,
    line_election,
    seat_election,
)

#: The note beside an election that names the number of holders its candidates use.
PIN_KEY = "holders"
#: The most seats an election ever had (no expiry): where ``history`` and ``leader``
#: look once every candidate has gone.
SEATS_KEY = "seats"
#: How long the holders note outlives the last candidate that refreshed it; a running
#: candidate refreshes it every third of this.
PIN_TTL = 30.0


class HoldersMismatch(ConfigError):
    """A candidate asks for another number of holders than the election's candidates use."""


def check_holders(election: str, holders: int) -> int:
    """``holders`` if it is a number of holders lelect can give ``election``, else UsageError."""
    if isinstance(holders, bool) or not isinstance(holders, int) or not 1 <= holders <= MAX_HOLDERS:
        raise UsageError(f"--holders must be a whole number from 1 to {MAX_HOLDERS}")
    if holders > 1 and len(election) > MAX_SEATED_NAME:
        raise UsageError(f"an election with seats has a name of at most {MAX_SEATED_NAME}"
                         f" characters ({len(election)} given)")
    return holders


#: The note lelect writes: ``{"holders":N}`` (as ``json.dumps`` with compact separators).
_NOTE_HEAD = b'{"holders":'


def _encode(holders: int) -> bytes:
    """The note naming ``holders``, byte for byte what ``json.dumps`` makes of it (json
    itself is not imported on every start for this)."""
    return _NOTE_HEAD + str(int(holders)).encode() + b"}"


def _decode(data: bytes | None) -> int | None:
    """The holders a note names (None: no note, or not one lelect wrote)."""
    if not data or len(data) > 64:
        return None
    number = data[len(_NOTE_HEAD):-1]
    if data.startswith(_NOTE_HEAD) and data.endswith(b"}") and number.isdigit() and (
            number[:1] != b"0"):
        value: object = int(number)  # what lelect writes, read without json
    else:
        try:
            import json

            value = json.loads(data.decode("ascii")).get("holders")
        except (ValueError, UnicodeDecodeError, AttributeError):
            return None
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_HOLDERS:
        return value
    return None


def holders_count(backend: Backend, election: str) -> int:
    """How many holders ``election`` has: what its running candidates agreed on, else the
    most it ever had, else 1."""
    agreed = backend.holders_agreed(election) if backend.holders_by_session else None
    # (a note: the agreement of other backends, or of candidates of an older lelect)
    return agreed or _decode(backend.get_note(election, PIN_KEY)) or \
        _decode(backend.get_note(election, SEATS_KEY)) or 1


class HoldersPin:
    """This candidate's claim on the number of holders of ``election``."""

    def __init__(self, backend: Backend, election: str, holders: int) -> None:
        self.backend = backend
        self.election = election
        self.holders = check_holders(election, holders)
        self.claimed_at: float | None = None

    @property
    def needs_refresh(self) -> bool:
        """True if :meth:`refresh_if_due` must be called while the candidate runs (the
        note expires); False where the claim lives with the backend's session."""
        return not self.backend.holders_by_session

    def _refuse(self, theirs: int) -> HoldersMismatch:
        return HoldersMismatch(
            f"election {self.election!r} is run with --holders {theirs} by its other"
            f" candidates; this one asks for {self.holders}: every candidate of an"
            " election must use the same --holders (stop them all to change it)"
        )

    def claim(self) -> None:
        """Claim (or refresh) the agreement; raise HoldersMismatch if the election's
        other candidates use another number."""
        backend, election, mine = self.backend, self.election, _encode(self.holders)
        if backend.holders_by_session:
            theirs = backend.claim_holders(election, self.holders)
            if theirs is not None:
                raise self._refuse(theirs)
        elif not backend.put_note(election, PIN_KEY, mine, PIN_TTL, create=True):
            theirs = _decode(backend.get_note(election, PIN_KEY))
            if theirs is not None and theirs != self.holders:
                raise self._refuse(theirs)
            backend.put_note(election, PIN_KEY, mine, PIN_TTL)  # refresh (or mend garbage)
        if self.claimed_at is None and self.holders > 1:
            most = _decode(backend.get_note(election, SEATS_KEY)) or 1
            if most < self.holders:
                backend.put_note(election, SEATS_KEY, _encode(self.holders))
        self.claimed_at = time.monotonic()

    def claim_alongside(self) -> Callable[..., None]:
        """Claim in a thread, alongside a campaign (whose first contact with the server
        reports an unreachable server, within the campaign's own bound); return
        ``verdict()``, which waits for the claim (at most the backend's connect timeout)
        and raises HoldersMismatch if it was refused. Call it before anything runs."""
        done = threading.Event()
        refused: list[HoldersMismatch] = []

        def claim() -> None:
            try:
                self.claim()
            except HoldersMismatch as exc:
                refused.append(exc)
            except Exception:  # noqa: BLE001 - unreachable: the campaign says so itself
                pass
            finally:
                done.set()

        threading.Thread(target=claim, name="holders-claim", daemon=True).start()

        def verdict(within: float | None = None) -> None:
            done.wait(self.backend.connect_timeout if within is None else within)
            if refused:
                raise refused[0]

        return verdict

    def refresh_if_due(self) -> None:
        """Claim again once a third of :data:`PIN_TTL` has passed (from the heartbeat
        thread, or the line's loop); a claim kept by the session is claimed again only
        if that session was lost (a look without a request while it lives)."""
        if self.claimed_at is None:
            return
        if not self.needs_refresh or time.monotonic() - self.claimed_at >= PIN_TTL / 3:
            self.claim()  # (the campaign's own claim comes first: nothing before it)


class Seat(Record):
    """One seat and who holds it (None: free)."""

    seat: int
    holder: LeaderInfo | None

    def to_json(self) -> dict[str, object]:
        """One entry of the ``holders`` list (``leader --json``, ``watch --json``, the
        exporter's /leader/NAME)."""
        return {"seat": self.seat, "leader": self.holder.to_json() if self.holder else None}


def seat_holders(backend: Backend, election: str, holders: int | None = None) -> list[Seat]:
    """Every seat of ``election`` (``holders`` of them, else :func:`holders_count`)."""
    count = holders or holders_count(backend, election)
    names = [seat_election(election, s) for s in range(count)]
    return [Seat(s, with_value(backend, name, backend.leader(name))) for s, name in enumerate(names)]


def campaign_seat(
    backend: Backend,
    election: str,
    candidate: Candidate,
    holders: int,
    *,
    timeout: float | None = None,
    no_wait: bool = False,
    ttl: float | None = None,
    on_wait: Callable[[LeaderInfo | None], None] | None = None,
    cancel: threading.Event | None = None,
    pin: HoldersPin | None = None,
    take: Callable[[str], Leadership | None] | None = None,
    on_head: Callable[[Leadership], None] | None = None,
) -> Leadership:
    """Block until ``candidate`` holds a seat of ``election``; return that seat's
    leadership (``leadership.seat`` says which). Errors as :meth:`Backend.campaign`.

    ``pin``: the caller's claim on the number of holders, which it has made (this
    refreshes it while at the head of the line); None claims one here first.
    ``take(seat_election)`` tries one free seat without waiting (None: taken by somebody
    else first); by default ``backend.campaign(..., no_wait=True)``. ``on_head(line)`` is
    called when the candidate reaches the head of the line (a CLI candidate has its
    keeper hand the line back should lelect die there)."""
    if pin is None:
        pin = HoldersPin(backend, election, holders)
        pin.claim()
    started = time.monotonic()
    line = line_election(election)

    def reserved(name: str) -> bool:
        """A free seat being handed to another node (resign --to): not ours to try."""
        handover = decode_handover(backend.get_note(name, HANDOVER_KEY))
        return handover is not None and handover.to != candidate.node_id

    def left() -> float | None:
        return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))

    def try_seats() -> Leadership | None:
        for seat in range(holders):
            name = seat_election(election, seat)
            if backend.leader(name) is not None or reserved(name):
                continue
            leadership = take(name) if take is not None else _take(backend, name, candidate, ttl)
            if leadership is not None:
                if cancel is not None and cancel.is_set():
                    # Cancelled as it won (a SIGTERM to lelect): nothing may run on it.
                    leadership.release(EXITED, None, "the campaign was cancelled as it won")
                    check_cancel(cancel, election)
                return leadership
        return None

    if backend.leader(line) is None:  # nobody waits: a free seat is anybody's
        leadership = try_seats()
        if leadership is not None:
            return leadership
    if no_wait:
        held = [s.holder for s in seat_holders(backend, election, holders) if s.holder]
        raise busy(election, held[0] if held else None)
    told = False
    while True:
        check_cancel(cancel, election)

        def waits(_holder: LeaderInfo | None) -> None:
            nonlocal told
            if not told and on_wait is not None:
                held = [s.holder for s in seat_holders(backend, election, holders) if s.holder]
                on_wait(held[0] if held else None)
            told = True

        try:
            head = backend.campaign(line, candidate, timeout=left(), ttl=ttl,
                                    on_wait=waits, cancel=cancel)
        except CampaignTimeout:
            raise timed_out(election, timeout) from None
        try:
            if on_head is not None:
                on_head(head)
            if not told:
                waits(None)
            while head.is_leader() and not head.resign_requested.is_set():
                # (asked to step back: the head of the line is handed to the node a
                # seat is being handed to, resign --to --seat)
                leadership = try_seats()
                if leadership is not None:
                    return leadership
                pin.refresh_if_due()
                waiting = left()
                if waiting is not None and waiting <= 0:
                    raise timed_out(election, timeout)
                pause = SEAT_LOOK if waiting is None else min(SEAT_LOOK, waiting)
                if cancel is not None:
                    cancel.wait(pause)
                    check_cancel(cancel, election)
                else:
                    head.lost.wait(pause)
        finally:
            try:
                head.release(RESIGNED if head.resign_requested.is_set() else None)
            except BackendUnavailable:
                pass  # its lease runs out by itself


def _take(backend: Backend, name: str, candidate: Candidate, ttl: float | None) -> Leadership | None:
    try:
        return backend.campaign(name, candidate, no_wait=True, ttl=ttl)
    except ElectionBusy:
        return None
