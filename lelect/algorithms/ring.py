"""Chang–Roberts ring election (1979) as a pure state machine, with crashed nodes skipped.

Nodes sit on a ring (``ring``, in the order messages travel) and only ever pass
ring messages to their successor:

- an initiator becomes a *participant* and sends ``Election(candidate=own id)``;
- a node receiving ``Election(c)`` forwards it if ``c`` is higher than its own
  id; if ``c`` is lower it sends ``Election(own id)`` instead, unless it already
  participates, in which case it swallows the message; if ``c`` is its own id,
  its message went all the way round: it has won;
- the winner starts the coordinator round, ``Elected(leader, term)``, which
  each node records and forwards once, until it comes home.

Failure detection by timeouts: the successor acknowledges every ring message
with :class:`Ack`. Without an Ack within ``ack_timeout`` ticks the sender tries
again (``attempts`` sends in all), then skips that successor as crashed and
passes the message to the next node on the ring. A message whose own
originator is skipped is dropped (it can never come home), and a participant
that hears no outcome within ``round_timeout`` ticks starts over. No suspicion
is remembered, so a restarted node is back in the ring at once; the price is
one ack timeout per dead successor per message. Duplicates from retries are
recognised by ``(src, seq)``.

Leader failure is detected by heartbeats (:mod:`lelect.algorithms.priority`).
A leader that receives an Election for a lower id answers it with a fresh
coordinator round instead of joining.

Assumptions: round trips shorter than ``ack_timeout`` (else live nodes are
skipped and a lower leader may win until heartbeats correct it), and no
partitions (each side elects its own leader).

Messages for one initiator, n live nodes, no loss: the Election travels from
the initiator to the highest id and then once round the ring, so ``n + d``
Elections where ``d`` in ``[0, n-1]`` is the distance from the initiator to
the highest id; then n Elected; every one of them is acknowledged (as many
Acks). With all n initiating at once the Elections number between ``2n - 1``
and ``n(n+1)/2``, the latter when ids decrease along the ring.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum

from lelect.algorithms import ElectionStarted, Message, NodeId, Output, SteppedDown
from lelect.algorithms.priority import Heartbeat, PriorityNode

__all__ = [
    "Ack",
    "Elected",
    "Election",
    "Heartbeat",
    "RingConfig",
    "RingNode",
    "RingState",
]

_REMEMBERED_IDS = 256  # recent (src, seq) kept to recognise retried messages


class RingState(Enum):
    IDLE = "idle"  # a non-participant, following a leader or none
    PARTICIPANT = "participant"
    LEADER = "leader"


@dataclass(frozen=True)
class RingConfig:
    """Timeouts in ticks."""

    heartbeat_interval: int = 5
    leader_timeout: int = 15  # randomized in [T, 2T)
    ack_timeout: int = 3  # must exceed the longest round trip
    attempts: int = 2  # sends to one successor before skipping it
    round_timeout: int | None = None  # default: leader_timeout + 2 ticks per node; randomized


@dataclass(frozen=True)
class Election(Message):
    seq: int
    candidate: NodeId


@dataclass(frozen=True)
class Elected(Message):
    seq: int
    leader: NodeId
    term: int


@dataclass(frozen=True)
class Ack(Message):
    seq: int


@dataclass
class _InFlight:
    """A ring message sent to the node ``hops`` places on, not yet acknowledged."""

    message: Election | Elected
    hops: int
    attempts: int = 1
    waited: int = 0


class RingNode(PriorityNode):
    def __init__(
        self,
        node_id: NodeId,
        ring: Sequence[NodeId],
        rng: random.Random,
        config: RingConfig | None = None,
    ) -> None:
        self._config = config or RingConfig()
        if self._config.ack_timeout < 1 or self._config.attempts < 1:
            raise ValueError("need ack_timeout >= 1 and attempts >= 1")
        super().__init__(
            node_id,
            ring,
            rng,
            heartbeat_interval=self._config.heartbeat_interval,
            leader_timeout=self._config.leader_timeout,
        )
        self._position = self._members.index(node_id)
        self._round_timeout = self._config.round_timeout or (
            self._config.leader_timeout + 2 * len(self._members)
        )
        self._seq = 0  # never reset, so ids stay unique across restarts
        self._reset_ring()

    def _reset_ring(self) -> None:
        self._state = RingState.IDLE
        self._round_waited = 0
        self._round_limit = self._random_timeout(self._round_timeout)
        self._in_flight: dict[int, _InFlight] = {}
        self._seen: set[tuple[NodeId, int]] = set()
        self._seen_order: deque[tuple[NodeId, int]] = deque()
        self._relayed: tuple[NodeId, int] | None = None  # the last Elected passed on

    @property
    def state(self) -> RingState:
        return self._state

    def tick(self) -> Output:
        self._tick_in_flight()
        if self._state is RingState.LEADER:
            self._tick_heartbeat()
        elif self._state is RingState.IDLE:
            if self._leader_silent():
                self._start_election()
        else:
            self._round_waited += 1
            if self._round_waited >= self._round_limit:
                self._start_election()
        return self._out.flush()

    def step(self, message: Message) -> Output:
        match message:
            case Ack(seq=seq):
                self._in_flight.pop(seq, None)
            case Heartbeat(src=leader, term=term):
                self._hear_leader(leader, term, announced=False)
            case Election() | Elected():
                self._out.send(Ack(self._id, message.src, message.seq))
                if self._first_time(message.src, message.seq):
                    self._receive(message)
        return self._out.flush()

    def restart(self) -> Output:
        self._reset_view()
        self._reset_ring()
        return self._out.flush()

    # -- hooks for PriorityNode ---------------------------------------------

    def _in_election(self) -> bool:
        return self._state is RingState.PARTICIPANT

    def _enter_follower(self) -> None:
        self._state = RingState.IDLE

    def _start_election(self) -> None:
        self._set_leader(None, self._term)
        self._out.emit(ElectionStarted(self._id, self._max_term + 1))
        self._participate()
        self._send_along(self._election(self._id))

    # -- Chang–Roberts ------------------------------------------------------

    def _receive(self, message: Election | Elected) -> None:
        if isinstance(message, Election):
            self._on_election(message.candidate)
        else:
            self._on_elected(message.leader, message.term)

    def _on_election(self, candidate: NodeId) -> None:
        if self._state is RingState.LEADER:
            if candidate < self._id:
                self._announce()
            elif candidate > self._id:
                self._out.emit(SteppedDown(self._id, self._term, f"node {candidate} is running"))
                self._set_leader(None, self._term)
                self._participate()
                self._send_along(self._election(candidate))
        elif self._state is RingState.IDLE:
            if candidate != self._id:  # our own id while idle: a stale copy of a finished round
                self._participate()
                self._send_along(self._election(max(candidate, self._id)))
        elif candidate > self._id:
            self._send_along(self._election(candidate))
        elif candidate == self._id:
            self._announce()
        # a participant swallows a lower candidate: its own, higher one is already on its way

    def _on_elected(self, leader: NodeId, term: int) -> None:
        if leader == self._id or (leader, term) == self._relayed:
            return  # our round came home, or this one already passed here
        self._hear_leader(leader, term, announced=True)
        if (self._leader, self._term) == (leader, term):
            self._relayed = (leader, term)
            self._send_along(Elected(self._id, self._id, self._next_seq(), leader, term))

    def _announce(self) -> None:
        """Won (or reasserting against a lower candidate): start a coordinator round."""
        self._state = RingState.LEADER
        self._lead()
        self._send_along(Elected(self._id, self._id, self._next_seq(), self._id, self._term))

    def _participate(self) -> None:
        self._state = RingState.PARTICIPANT
        self._round_waited = 0
        self._round_limit = self._random_timeout(self._round_timeout)

    # -- passing messages round the ring, skipping the dead -------------------

    def _election(self, candidate: NodeId) -> Election:
        return Election(self._id, self._id, self._next_seq(), candidate)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send_along(self, message: Election | Elected, hops: int = 1) -> None:
        """Send ``message`` to the node ``hops`` places on; once every other node has been
        skipped, it has come all the way round and is ours to handle."""
        if hops >= len(self._members):
            self._receive(message)
            return
        target = self._members[(self._position + hops) % len(self._members)]
        addressed = replace(message, src=self._id, dst=target)
        self._in_flight[message.seq] = _InFlight(addressed, hops)
        self._out.send(addressed)

    def _tick_in_flight(self) -> None:
        for seq, flight in list(self._in_flight.items()):
            flight.waited += 1
            if flight.waited < self._config.ack_timeout:
                continue
            if flight.attempts < self._config.attempts:
                flight.attempts += 1
                flight.waited = 0
                self._out.send(flight.message)
                continue
            del self._in_flight[seq]
            message = flight.message
            originator = message.candidate if isinstance(message, Election) else message.leader
            if message.dst != originator:  # else it can never come home: drop it
                self._send_along(message, flight.hops + 1)

    def _first_time(self, src: NodeId, seq: int) -> bool:
        key = (src, seq)
        if key in self._seen:
            return False
        self._seen.add(key)
        self._seen_order.append(key)
        if len(self._seen_order) > _REMEMBERED_IDS:
            self._seen.discard(self._seen_order.popleft())
        return True
