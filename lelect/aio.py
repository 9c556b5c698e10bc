"""lelect for asyncio: campaign without blocking the event loop.

    client = lelect.connect("redis://cache:6379/0")
    async with client.election("nightly").leadership(timeout=30) as lead:
        await run_report(fencing_token=lead.term)

The backends are synchronous; each campaign runs in a thread of its own (not the
loop's default executor, whose few workers a waiting campaign would hold for as long
as it waits), and the loop only hears what happened, through ``call_soon_threadsafe``.
Cancelling the task that waits sets the campaign's cancel event: the backend leaves
the line (as on a timeout) and the cancellation completes once it has. A leadership
lost inside the block calls ``on_lost`` and then cancels the block's task; the block
ends with :class:`~lelect.errors.LeadershipLost` (``cancel_on_loss=False`` leaves the
task alone: watch ``lead.is_leader()`` or ``await lead.lost()`` yourself).
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

from lelect.errors import LeadershipLost
from lelect.lease import check_cancel

if TYPE_CHECKING:
    from lelect.backends.base import LeaderInfo, Leadership
    from lelect.election import Election

T = TypeVar("T")

__all__ = ["AsyncLeadership", "LeadershipBlock", "run_in_thread"]


async def run_in_thread(func: Callable[[], T], name: str = "lelect-aio") -> T:
    """``func()`` in a new daemon thread; the loop waits for its result without blocking.
    Cancelling the awaiting task does not stop ``func``: it runs to its end."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = func()
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting task
            outcome: tuple[T | None, BaseException | None] = (None, error)
        else:
            outcome = (result, None)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


class AsyncLeadership:
    """A won election, seen from asyncio. ``term`` is the fencing token (of ``seat``, in
    an election with seats); ``value`` is the value this leadership last proclaimed
    (:meth:`proclaim`; None: none yet)."""

    def __init__(self, leadership: Leadership, loop: asyncio.AbstractEventLoop) -> None:
        self.leadership = leadership
        self.election: str = leadership.election
        self.node_id: str = leadership.node_id
        self.term: int = leadership.term
        self.seat: int | None = leadership.seat
        self.value: str | None = None
        #: Set (on the loop) when the leadership is lost; see :meth:`lost`.
        self.lost_event = asyncio.Event()
        #: Set when somebody asked this leader to step down (``lelect resign``).
        self.resign_requested = asyncio.Event()
        self._loop = loop

    @property
    def lost_reason(self) -> str | None:
        return self.leadership.lost_reason

    @property
    def lease_deadline(self) -> float | None:
        """When the lease runs out without a renew (``time.monotonic()``; None: no lease)."""
        return self.leadership.lease_deadline

    def is_leader(self) -> bool:
        """Still the leader: not lost, not released, the lease not run out. Check it
        before each protected step, and stamp each step with :attr:`term`."""
        return self.leadership.is_leader()

    async def proclaim(self, value: str) -> None:
        """Publish ``value`` as this leadership's value (``Leadership.proclaim``, in a
        thread): NotLeader if this term no longer leads."""
        await run_in_thread(lambda: self.leadership.proclaim(value), name="lelect-proclaim")
        self.value = value

    async def lost(self) -> str:
        """Wait until the leadership is lost; return why."""
        await self.lost_event.wait()
        return self.lost_reason or "the leadership was lost"

    def __repr__(self) -> str:
        return f"<AsyncLeadership {self.election!r} term={self.term} node={self.node_id!r}>"


LostCallback = Callable[[AsyncLeadership], object]


class LeadershipBlock:
    """``async with election.leadership(...) as lead``: campaign on entry (in a thread),
    release on exit (in a thread). Made by :meth:`lelect.election.Election.leadership`."""

    def __init__(self, election: Election, timeout: float | None = None, *,
                 no_wait: bool = False, ttl: float | None = None,
                 on_lost: LostCallback | None = None, cancel_on_loss: bool = True,
                 on_wait: Callable[[LeaderInfo | None], object] | None = None) -> None:
        self.election = election
        self.timeout = timeout
        self.no_wait = no_wait
        self.ttl = ttl
        self.on_lost = on_lost
        self.cancel_on_loss = cancel_on_loss
        self.on_wait = on_wait
        self.lead: AsyncLeadership | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelled_for_loss = False

    async def __aenter__(self) -> AsyncLeadership:
        if self.lead is not None:
            raise RuntimeError("a leadership block cannot be entered twice")
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        from lelect.backends.base import Cancel

        cancel = Cancel()  # wakes the backend's wait: no periodic look at it
        election = self.election

        on_wait = self.on_wait

        def started_waiting(holder: LeaderInfo | None) -> None:  # the campaign's thread
            if on_wait is not None:
                try:
                    loop.call_soon_threadsafe(on_wait, holder)
                except RuntimeError:  # the loop is closed
                    pass

        def campaign() -> Leadership:
            leadership = election.campaign(self.timeout, no_wait=self.no_wait, ttl=self.ttl,
                                           cancel=cancel, on_wait=started_waiting)
            if cancel.is_set():  # won just as the caller gave up: let go at once
                leadership.release()
                check_cancel(cancel, election.name)
            return leadership

        waiting = asyncio.ensure_future(run_in_thread(campaign, f"lelect-campaign:{election.name}"))
        try:
            leadership = await asyncio.shield(waiting)
        except asyncio.CancelledError:
            cancel.set()
            # Cancelled while waiting: the cancellation completes once the line is left.
            try:
                await waiting
            except BaseException:  # noqa: BLE001 - CampaignCancelled, or it failed anyway
                pass
            raise
        lead = self.lead = AsyncLeadership(leadership, loop)

        def changed(kind: str) -> None:  # a backend's thread
            try:
                loop.call_soon_threadsafe(self._changed, kind)
            except RuntimeError:  # the loop is closed
                pass

        leadership.subscribe(changed)
        if leadership.lost.is_set():  # lost before we subscribed
            self._changed("lost")
        if leadership.resign_requested.is_set():
            lead.resign_requested.set()
        return lead

    def _changed(self, kind: str) -> None:
        lead = self.lead
        if lead is None:
            return
        if kind == "resign":
            lead.resign_requested.set()
        if kind != "lost" or lead.lost_event.is_set() or lead.leadership.released:
            return
        lead.lost_event.set()
        if self.on_lost is not None:
            result = self.on_lost(lead)
            if inspect.isawaitable(result):
                asyncio.ensure_future(result)
        task = self._task
        if self.cancel_on_loss and task is not None and not task.done():
            self._cancelled_for_loss = True
            task.cancel(f"the leadership of {lead.election!r} (term {lead.term}) was lost")

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        lead = self.lead
        if lead is None:
            return
        leadership = lead.leadership
        release = asyncio.ensure_future(run_in_thread(
            leadership.release, f"lelect-release:{lead.election}"))
        try:
            await asyncio.shield(release)  # cancelled meanwhile: the thread still releases
        finally:
            lost_here = self._cancelled_for_loss and exc_type is asyncio.CancelledError
            if lost_here and _uncancel(self._task) == 0:
                raise LeadershipLost(
                    f"lost the leadership of {lead.election!r} (term {lead.term}):"
                    f" {lead.lost_reason or 'the leadership was lost'}"
                ) from None


def _uncancel(task: asyncio.Task[object] | None) -> int:
    """Take back the cancellation this block asked for (Python 3.11+); the number of
    cancellations still asked (by others): 0 means only ours."""
    if task is None or sys.version_info < (3, 11):
        return 0
    return task.uncancel()
