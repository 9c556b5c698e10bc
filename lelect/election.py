"""The library's front door, and the CLI's: a :class:`Client` on one backend, and one
:class:`Election` of it.

    client = lelect.connect()                      # $LELECT_BACKEND, else embedded
    election = client.election("nightly")
    with election.campaign(timeout=30) as leadership:
        do_work(fencing_token=leadership.term)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

from lelect.backends.base import (
    Backend,
    Candidate,
    HistoryEntry,
    LeaderInfo,
    Leadership,
    Members,
    ResignAnswer,
    not_leading,
    publish_value,
    with_value,
)
from lelect.backends.notes import HANDOVER_KEY, encode_handover, encode_value, handover_ttl
from lelect.errors import LelectError, NotWaiting, UsageError
from lelect.names import split_part, validate_election, validate_node_id, validate_stored
from lelect.seats import HoldersMismatch, Seat, check_holders

TYPE_CHECKING = False  # not typing's (~2 ms of every start): annotations only
if TYPE_CHECKING:
    from typing import TypeVar

    from lelect.aio import LeadershipBlock, LostCallback
    from lelect.campaign import CampaignOptions, CampaignResult, CampaignStatus, Log
    from lelect.health import GroupHealth, GroupWatch, PhiAccrualDetector

    T = TypeVar("T")



class Client:
    """One backend, opened by URL (see :func:`lelect.connect`)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    @property
    def url(self) -> str:
        """The backend's URL with any password masked."""
        return self.backend.display_url

    def election(self, name: str, node_id: str | None = None, *, holders: int = 1) -> Election:
        """One election; ``holders`` > 1 lets that many lead at once, each in a seat."""
        return Election(self.backend, name, node_id=node_id, holders=holders)

    def elections(self) -> list[str]:
        """Every election the backend knows (skipping names no election could have)."""
        from lelect.names import ELECTION_NAME

        return [n for n in self.backend.elections() if ELECTION_NAME.fullmatch(n)]

    def watch(self, names: Sequence[str] = (), detector: PhiAccrualDetector | None = None,
              interval: float = 1.0) -> GroupWatch:
        """Looks at elections (``names``, or all) again and again: ``watch``'s data."""
        from lelect.health import GroupWatch, PhiAccrualDetector

        return GroupWatch(self.backend, names, detector or PhiAccrualDetector(), interval)

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Election:
    def __init__(self, backend: Backend, name: str, node_id: str | None = None, *,
                 holders: int = 1) -> None:
        self.backend = backend
        self.name = validate_stored(name) if split_part(name)[1] is not None \
            else validate_election(name)
        self.candidate = Candidate.local(None if node_id is None else validate_node_id(node_id))
        #: Up to this many lead at once, each in a seat (``campaign --holders N``).
        self.holders = check_holders(self.name, holders)

    def seat(self, seat: int) -> Election:
        """Seat ``seat`` of this election, as an election of its own (its leader, its
        history, a resign request to it)."""
        from lelect.names import MAX_HOLDERS, seat_election

        if not 0 <= seat < MAX_HOLDERS:
            raise UsageError(f"--seat must be a whole number from 0 to {MAX_HOLDERS - 1}")
        return Election(self.backend, seat_election(self.name, seat), self.candidate.node_id)

    def holders_count(self) -> int:
        """How many may lead at once: what the running candidates agreed on, else the
        most this election ever had, else 1."""
        from lelect.seats import holders_count

        return holders_count(self.backend, self.name)

    def seats(self, holders: int | None = None) -> list[Seat]:
        """Every seat and who holds it (``holders`` seats, else :meth:`holders_count`)."""
        from lelect.seats import seat_holders

        return seat_holders(self.backend, self.name, holders)

    def campaign(
        self,
        timeout: float | None = None,
        *,
        no_wait: bool = False,
        ttl: float | None = None,
        on_elected: Callable[[Leadership], None] | None = None,
        on_lost: Callable[[Leadership], None] | None = None,
        cancel: threading.Event | None = None,
        on_wait: Callable[[LeaderInfo | None], None] | None = None,
    ) -> Leadership:
        """Block until this process leads; return the leadership (a context manager that
        releases on exit). ``on_lost`` is called from a background thread if the
        leadership is lost before it is released; check ``leadership.is_leader()``
        before each protected step, and pass ``leadership.term`` as a fencing token.
        Setting ``cancel`` (from another thread) makes a waiting campaign leave the line
        and raise :class:`~lelect.errors.CampaignCancelled` (a :class:`lelect.Cancel`
        wakes the wait at once; a plain Event is looked at 4 times a second while it
        waits); ``on_wait(holder)`` is
        called once (in the campaigning thread) when it starts waiting behind somebody."""
        from lelect.seats import HoldersPin, campaign_seat

        pin = HoldersPin(self.backend, self.name, self.holders)
        agreed = pin.claim_alongside()  # a plain election never shares its name with seats
        if self.holders > 1:
            leadership = campaign_seat(
                self.backend, self.name, self.candidate, self.holders, timeout=timeout,
                no_wait=no_wait, ttl=ttl, cancel=cancel, on_wait=on_wait, pin=pin,
            )
        else:
            leadership = self.backend.campaign(
                self.name, self.candidate, timeout=timeout, no_wait=no_wait, ttl=ttl,
                cancel=cancel, on_wait=on_wait,
            )
        try:
            agreed()
        except HoldersMismatch:
            leadership.release("stopped", None, "its candidates disagree on holders")
            raise
        if on_elected is not None:
            on_elected(leadership)
        if on_lost is not None:
            called = threading.Lock()

            def lost(kind: str = "lost") -> None:
                # Once, and not for a leadership we released ourselves.
                if kind == "lost" and not leadership.released and called.acquire(blocking=False):
                    on_lost(leadership)

            leadership.subscribe(lost)
            if leadership.lost.is_set():  # lost before we subscribed
                lost()
        return leadership

    def leadership(
        self,
        timeout: float | None = None,
        *,
        no_wait: bool = False,
        ttl: float | None = None,
        on_lost: LostCallback | None = None,
        cancel_on_loss: bool = True,
        on_wait: Callable[[LeaderInfo | None], object] | None = None,
    ) -> LeadershipBlock:
        """For asyncio: ``async with election.leadership(timeout=30) as lead:`` campaigns
        without blocking the event loop (see :mod:`lelect.aio`). Cancelling the waiting
        task leaves the line; a loss inside the block calls ``on_lost(lead)``, then
        cancels the block's task, and the block raises LeadershipLost (unless
        ``cancel_on_loss=False``). ``on_wait(holder)`` runs on the loop when the
        campaign starts waiting behind somebody."""
        from lelect.aio import LeadershipBlock

        return LeadershipBlock(self, timeout, no_wait=no_wait, ttl=ttl, on_lost=on_lost,
                               cancel_on_loss=cancel_on_loss, on_wait=on_wait)

    def run(self, func: Callable[..., T], *args: object, timeout: float | None = None) -> T:
        """Like kazoo's Election.run: campaign, call ``func(*args)`` while leading, release."""
        with self.campaign(timeout=timeout):
            return func(*args)

    def run_job(self, command: Sequence[str], log: Log | None = None,
                **options: object) -> CampaignResult:
        """Guard a command as ``lelect campaign`` does: run it only while this node
        leads, under a keeper; options as :class:`lelect.campaign.CampaignOptions`."""
        from lelect.campaign import CampaignOptions

        options.setdefault("holders", self.holders)
        opts = CampaignOptions(election=self.name, command=tuple(command),
                               node_id=self.candidate.node_id, **options)  # type: ignore[arg-type]
        return self.run_options(opts, log)

    def run_options(self, options: CampaignOptions, log: Log | None = None, *,
                    systemd: bool = False, status: CampaignStatus | None = None
                    ) -> CampaignResult:
        """:meth:`run_job` with ready-made options; ``systemd`` talks to systemd
        (Type=notify: READY, STATUS, WATCHDOG, STOPPING) when it listens; ``status`` is
        kept current (the leadership while leading) for a probe to read."""
        from lelect.campaign import _no_log, run_campaign
        from lelect.systemd import Notifier

        return run_campaign(self.backend, options, log or _no_log,
                            Notifier() if systemd else None, status)

    def leader(self) -> LeaderInfo | None:
        """Who leads now, with the value its term proclaimed (None: nobody)."""
        return with_value(self.backend, self.name, self.backend.leader(self.name))

    def wait_for_holders(self, timeout: float | None = None) -> list[Seat]:
        """The seats once one is held (or as they are when ``timeout`` ran out)."""
        import time

        from lelect.names import SEAT_LOOK

        end = None if timeout is None else time.monotonic() + timeout
        while True:
            seats = self.seats()
            if any(s.holder for s in seats) or (end is not None and time.monotonic() >= end):
                return seats
            time.sleep(SEAT_LOOK * 4)

    def request_resign(self, term: int | None = None) -> bool | ResignAnswer:
        """Ask the current leader (only of ``term`` if given) to step down: true if it
        was asked; ``ResignAnswer.CANNOT_ASK`` (false) if the leader is not lelect's (an
        ``etcdctl elect``, a kazoo Election) and cannot be asked."""
        return self.backend.request_resign(self.name, term)

    def proclaim(self, value: str, term: int) -> None:
        """Publish ``value`` (text, at most 4 KiB of UTF-8) as the value of the leadership
        of ``term`` (a job's ``LELECT_TERM``), replacing any earlier one. Raises NotLeader
        (nothing written) unless ``term`` leads, before and after the write. For a seat:
        ``election.seat(S).proclaim(...)``."""
        data = encode_value(value)
        now = self.backend.leader(self.name)
        if now is None or now.term != term:
            raise not_leading(self.name, term, now)
        publish_value(self.backend, self.name, term, data)

    def is_waiting(self, node_id: str, detector: PhiAccrualDetector | None = None) -> bool:
        """``node_id`` is a live candidate waiting in line: a fresh "follower" heartbeat
        among the election's members (published under the election itself, with seats
        too)."""
        from lelect.health import PhiAccrualDetector, is_waiting

        members = self.backend.members(split_part(self.name)[0])
        return is_waiting(members, node_id, detector or PhiAccrualDetector())

    def hand_over(self, to: str, term: int) -> bool | ResignAnswer:
        """Ask the leadership of ``term`` to step down in favour of node ``to``: for a
        bounded time (:func:`~lelect.backends.notes.handover_ttl`) only ``to`` may take
        it, then anybody may. Raises NotLeader unless ``term`` leads, NotWaiting unless
        ``to`` is a live candidate waiting in line (both: nothing changed). Otherwise as
        :meth:`request_resign` (if the leader could not be asked, the reservation is
        taken back). For a seat: ``election.seat(S).hand_over(...)``."""
        now = self.backend.leader(self.name)
        if now is None or now.term != term:
            raise not_leading(self.name, term, now)
        if not self.is_waiting(to):
            raise NotWaiting(f"{to} is not waiting in {split_part(self.name)[0]}; nothing"
                             " changed")
        ttl = handover_ttl(self.backend.default_ttl if self.backend.lease_based else None)
        self.backend.put_note(self.name, HANDOVER_KEY, encode_handover(to, term, ttl), ttl)
        if split_part(self.name)[1] is not None:
            self._reserve_line(to, ttl)
        answer = self.backend.request_resign(self.name, term)
        if not answer:
            try:
                self.backend.delete_note(self.name, HANDOVER_KEY)
            except LelectError:
                pass  # it expires
        return answer

    def _reserve_line(self, to: str, ttl: float) -> None:
        """A seat handed over: ``to`` waits in the seats' line, where only its head looks
        for a free seat. Reserve the head of the line for ``to`` too, and ask whoever is
        there now to step back into line."""
        from lelect.names import line_election

        line = line_election(split_part(self.name)[0])
        head = self.backend.leader(line)
        if head is not None and head.node_id == to:
            return
        self.backend.put_note(line, HANDOVER_KEY,
                              encode_handover(to, head.term if head else 0, ttl), ttl)
        if head is not None:
            self.backend.request_resign(line, head.term)

    def members(self) -> Members:
        return self.backend.members(self.name)

    def history(self, limit: int | None = None) -> list[HistoryEntry]:
        """The newest ``limit`` leaderships (default: all kept), oldest first; of every
        seat, for an election with seats (each entry's ``seat`` says which)."""
        count = self.holders_count() if split_part(self.name)[1] is None else 1
        if count <= 1:
            return self.backend.history(self.name, limit)
        entries = [entry for seat in range(count)
                   for entry in self.seat(seat).history(limit)]
        entries.sort(key=lambda entry: (entry.started or 0.0, entry.seat or 0, entry.term))
        return entries if limit is None else entries[-limit:]

    def wait_for_leader(self, after_term: int = -1, timeout: float | None = None
                        ) -> LeaderInfo | None:
        """The leader (with its value) once there is one with a term above
        ``after_term`` (None if there is none within ``timeout``; None waits for ever)."""
        from lelect.health import next_leader

        info = next_leader(self.backend, self.name, after_term, timeout)
        return with_value(self.backend, self.name, info)

    def wait_for_successor(self, to: str, after_term: int, timeout: float | None = None
                           ) -> LeaderInfo | None:
        """After :meth:`hand_over` to ``to``: the leader that took over from ``after_term``
        (None if nobody did within ``timeout``). A candidate that won while the handover
        held and stepped down at once is passed over: the answer is ``to``, or whoever
        leads once the reservation is over."""
        import time

        end = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if end is None else max(0.0, end - time.monotonic())
            info = self.wait_for_leader(after_term, left)
            if info is None or info.node_id == to:
                return info
            if self.backend.get_note(self.name, HANDOVER_KEY) is None:
                now = self.leader()  # ``to`` may have won and spent the note meanwhile
                return now if now is not None and now.term > after_term else info
            after_term = info.term

    def health(self, detector: PhiAccrualDetector | None = None) -> GroupHealth:
        """The leader and every member, judged by the phi accrual failure detector."""
        from lelect.health import PhiAccrualDetector, check

        return check(self.backend, self.name, detector or PhiAccrualDetector())

    def observe(self, stop: threading.Event | None = None) -> Iterator[LeaderInfo | None]:
        """The leader now and again on every change of leadership, each with its value
        as it was when looked at."""
        for info in self.backend.observe(self.name, stop):
            yield with_value(self.backend, self.name, info)
