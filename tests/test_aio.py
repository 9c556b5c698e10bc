"""The asyncio API (lelect/aio.py) on every backend: the library contract through
``async with election.leadership()``, and the event loop's lag while it campaigns,
renews and loses."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import pytest

import lelect
from lelect.errors import CampaignTimeout, ElectionBusy, LeadershipLost

#: The loop may lag this much at most (a blocking backend call would lag for seconds: a
#: campaign behind a holder, a lease's wait; a loaded 2-core machine alone lags a few ms,
#: sometimes tens, and once 128 ms in a CI run on three workers).
MAX_LAG = 0.5
LAGS: dict[str, float] = {}
#: connect_timeout of the proxied URLs: it bounds the release after a loss too.
CONNECT_TIMEOUT = 2.0


class LagMeter:
    """Ticks every 5 ms on the loop and keeps the longest overshoot."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            self.worst = max(self.worst, loop.time() - before - 0.005)

    async def __aenter__(self) -> LagMeter:
        self._task = asyncio.ensure_future(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
def client(target):
    with lelect.connect(target.url) as opened:
        yield opened


def test_terms_grow_and_the_loop_never_waits_on_a_campaign_or_renew(target, client):
    async def main() -> list[int]:
        terms = []
        async with LagMeter() as lag:
            for _ in range(3):
                async with client.election("aio-terms", "a").leadership(timeout=10) as lead:
                    assert lead.is_leader() and lead.value is None
                    terms.append(lead.term)
            if target.lease:  # hold past a few renews
                async with client.election("aio-terms", "a").leadership(timeout=10) as lead:
                    deadline = lead.lease_deadline
                    await until(lambda: lead.lease_deadline != deadline, what="a renew")
                    terms.append(lead.term)
                    assert lead.is_leader()
        LAGS[f"{target.id} campaign+renew"] = lag.worst
        assert lag.worst < MAX_LAG, lag.worst
        return terms

    terms = asyncio.run(main())
    assert terms == sorted(set(terms)), terms
    assert client.election("aio-terms").leader() is None  # released on exit


def test_one_leader_at_a_time_and_release_on_exit_wakes_the_next(target, client):
    async def main() -> None:
        inside: list[str] = []
        overlaps: list[tuple[str, ...]] = []
        terms: list[int] = []

        async def candidate(node: str) -> None:
            async with client.election("aio-excl", node).leadership(timeout=30) as lead:
                inside.append(node)
                if len(inside) > 1:
                    overlaps.append(tuple(inside))
                terms.append(lead.term)
                await asyncio.sleep(0.05)  # hold: the others must wait this long
                inside.remove(node)

        async with LagMeter() as lag:
            await asyncio.gather(*(candidate(n) for n in "abc"))
        LAGS[f"{target.id} handoffs"] = lag.worst
        assert not overlaps
        assert terms == sorted(set(terms)) and len(terms) == 3
        assert lag.worst < MAX_LAG, lag.worst

    asyncio.run(main())


def test_no_wait_and_timeout_raise_the_librarys_errors(client):
    async def main() -> None:
        async with client.election("aio-busy", "a").leadership(timeout=10):
            with pytest.raises(ElectionBusy):
                async with client.election("aio-busy", "b").leadership(no_wait=True):
                    pass
            with pytest.raises(CampaignTimeout):
                async with client.election("aio-busy", "b").leadership(timeout=0.2):
                    pass

    asyncio.run(main())


def test_cancelling_the_waiting_task_leaves_the_line(target, client):
    async def main() -> None:
        waiting = asyncio.Event()
        entered = []

        async def b() -> None:
            election = client.election("aio-cancel", "b")
            async with election.leadership(on_wait=lambda holder: waiting.set()):
                entered.append("b")

        async with LagMeter() as lag:
            async with client.election("aio-cancel", "a").leadership(timeout=10) as first:
                task = asyncio.ensure_future(b())
                await asyncio.wait_for(waiting.wait(), 10)
                started = time.monotonic()
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=5)
                assert done, "the cancelled campaign did not leave the line"
                with pytest.raises(asyncio.CancelledError):
                    await task
                cancel_took = time.monotonic() - started
            # b left the line: c takes over at once, and b never led.
            async with client.election("aio-cancel", "c").leadership(timeout=5) as third:
                assert third.term > first.term
        LAGS[f"{target.id} cancel"] = lag.worst
        assert entered == []
        assert cancel_took < 2.0, cancel_took
        assert [e.node_id for e in client.election("aio-cancel").history()] == ["a", "c"]
        assert lag.worst < MAX_LAG, lag.worst

    asyncio.run(main())


def _proxied(target, partition_proxy):
    """The target's URL through a proxy that can cut it off from its server."""
    server = urlsplit(target.url)
    proxy = partition_proxy(server.hostname, server.port)
    return proxy, target.url_for(CONNECT_TIMEOUT, "127.0.0.1", proxy.port)


def test_a_lost_lease_cancels_the_block_by_its_deadline(network_target, partition_proxy):
    proxy, url = _proxied(network_target, partition_proxy)
    seen: list[tuple[str, float]] = []

    async def main() -> None:
        with lelect.connect(url) as client:
            async with LagMeter() as lag:
                with pytest.raises(LeadershipLost, match="lost the leadership"):
                    async with client.election("aio-lost", "a").leadership(
                        timeout=10, on_lost=lambda lead: seen.append(("on_lost", time.monotonic()))
                    ) as lead:
                        proxy.block()
                        deadline = lead.lease_deadline
                        try:
                            await asyncio.sleep(60)  # cancelled by the loss
                        except asyncio.CancelledError:
                            seen.append(("cancelled", time.monotonic()))
                            raise
                # The release after a loss is bounded by the connect timeout.
                seen.append(("left", time.monotonic()))
            assert not lead.is_leader()
            assert deadline is not None
            # Every renew after the cut failed, so the deadline is the one we saw, or the
            # one of a renew answered just before the cut.
            assert [what for what, _ in seen] == ["on_lost", "cancelled", "left"]
            assert seen[1][1] <= (lead.lease_deadline or deadline) + 0.25, \
                (seen, lead.lease_deadline)
            assert seen[2][1] - seen[1][1] < CONNECT_TIMEOUT + 1.0, seen
            LAGS[f"{network_target.id} loss"] = lag.worst
            assert lag.worst < MAX_LAG, lag.worst

    asyncio.run(main())


def test_cancel_on_loss_false_leaves_the_task_alone(target_redis, partition_proxy):
    proxy, url = _proxied(target_redis, partition_proxy)

    async def main() -> None:
        with lelect.connect(url) as client:
            async with client.election("aio-keep", "a").leadership(
                    timeout=10, cancel_on_loss=False) as lead:
                proxy.block()
                reason = await asyncio.wait_for(lead.lost(), 10)
                assert reason and not lead.is_leader()
                assert lead.lost_event.is_set()

    asyncio.run(main())


def test_report_loop_lags():
    """Not a check: prints the worst loop lag each test above measured (pytest -s)."""
    for name, worst in sorted(LAGS.items()):
        print(f"loop lag {name}: {worst * 1000:.1f} ms")


def test_a_seat_and_a_value_from_asyncio(client):
    async def main():
        async with client.election("aseats", holders=2).leadership(timeout=10) as first, \
                client.election("aseats", holders=2).leadership(timeout=10) as second:
            assert {first.seat, second.seat} == {0, 1}
            await first.proclaim("10.0.0.1:5432")
            assert first.value == "10.0.0.1:5432"
            shown = client.election("aseats").seat(first.seat).leader()
            return shown.value, shown.term == first.term

    assert asyncio.run(main()) == ("10.0.0.1:5432", True)
