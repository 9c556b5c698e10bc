"""A deterministic, seeded discrete-event simulator for :mod:`lelect.algorithms`.

The simulator owns everything the state machines do not: the clock, the
network and the faults. Each node ticks every ``tick_ms`` of simulated time at
its own phase (clocks are not in step); each message is delayed by its link's
``delay_ms`` plus a uniform jitter, may be lost, is dropped while a partition
separates its ends or its destination is down. Crashed nodes neither tick nor
receive; a restarted node keeps only what its algorithm calls stable state.

Every message sent, delivered or dropped, every node event and every fault is
recorded in a trace. All randomness comes from ``random.Random`` streams
derived from the seed (one per node, one for the network, one for the clock
phases), so the same scenario always gives the same trace.

``run(scenario)`` returns a :class:`SimResult`: the leader all live nodes agree
on at the end (or None), its term, message counts and the time to leader. The
time to leader is when the final agreement began: from then to the end of the
run every live node named the same live leader.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import re
from collections import Counter, deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from lelect.algorithms import BecameLeader, Event, Message, Node, NodeId, Output
from lelect.algorithms.bully import BullyConfig, BullyNode
from lelect.algorithms.raft import RaftConfig, RaftNode
from lelect.algorithms.ring import RingConfig, RingNode
from lelect.durations import RANGES, parse_duration
from lelect.errors import UsageError

ALGORITHMS = ("bully", "ring", "raft")
_CONFIGS: dict[str, type] = {"bully": BullyConfig, "ring": RingConfig, "raft": RaftConfig}


# -- the scenario ------------------------------------------------------------


#: The most nodes a scenario has, and the most messages a run sends before it stops:
#: together they keep a run within seconds of real time (Bully's elections cost n²
#: messages; a lossy Ring may never get a message round).
MAX_NODES = 200
MESSAGE_BUDGET = 300_000


@dataclass(frozen=True)
class Link:
    """One direction of a link: each message takes ``delay_ms + uniform(0, jitter_ms)``."""

    delay_ms: float = 2.0
    jitter_ms: float = 3.0
    loss: float = 0.0  # probability that a message is lost


@dataclass(frozen=True)
class Partition:
    """From ``start_ms`` to ``end_ms`` (None: to the end) only nodes in the same group talk.

    Nodes named in no group form one more group together, so ``groups=({3},)``
    cuts node 3 off from everyone else.
    """

    groups: tuple[frozenset[NodeId], ...]
    start_ms: float
    end_ms: float | None = None


@dataclass(frozen=True)
class Crash:
    """Node ``node`` crashes at ``at_ms`` and, if ``restart_ms`` is set, comes back then."""

    node: NodeId
    at_ms: float
    restart_ms: float | None = None


@dataclass(frozen=True)
class Scenario:
    """Everything a run depends on. Nodes are numbered 1..``nodes``.

    Without ``duration_ms`` the run lasts until every scheduled fault has
    happened and all live nodes have agreed on one leader for ``settle_ms``, or
    until ``give_up_ms`` after the last fault, whichever comes first.
    """

    algorithm: str
    nodes: int
    seed: int = 0
    duration_ms: float | None = None
    tick_ms: float = 10.0
    link: Link = Link()
    links: Mapping[tuple[NodeId, NodeId], Link] = field(default_factory=dict)
    partitions: tuple[Partition, ...] = ()
    crashes: tuple[Crash, ...] = ()
    crash_leader_at_ms: float | None = None  # crash whoever leads then (or the next to win)
    ring_order: tuple[NodeId, ...] | None = None  # Ring only; default 1, 2, ..., n
    config: BullyConfig | RingConfig | RaftConfig | None = None
    settle_ms: float = 500.0
    give_up_ms: float = 10_000.0

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise UsageError(
                f"unknown algorithm {self.algorithm!r}: use one of {', '.join(ALGORITHMS)}"
            )
        if not 1 <= self.nodes <= MAX_NODES:
            raise UsageError(f"invalid number of nodes {self.nodes}: use 1 to {MAX_NODES}")
        if not self.tick_ms > 0:
            raise UsageError(f"invalid tick {self.tick_ms} ms: must be positive")
        for link in (self.link, *self.links.values()):
            if not (link.delay_ms >= 0 and link.jitter_ms >= 0 and math.isfinite(link.delay_ms)
                    and math.isfinite(link.jitter_ms)):
                raise UsageError(f"invalid link delay {link.delay_ms:g} ms, jitter"
                                 f" {link.jitter_ms:g} ms: both must be finite and >= 0")
            if not 0 <= link.loss < 1:  # also refuses nan
                raise UsageError(f"invalid loss {link.loss:g}: use a probability in [0, 1)")
        for partition in self.partitions:
            _check_partition(partition, self.nodes)
        for crash in self.crashes:
            _check_crash(crash, self.nodes)
        if self.ring_order is not None and sorted(self.ring_order) != list(self.members):
            raise UsageError(f"ring order must list each of the nodes 1..{self.nodes} once")
        if self.config is not None and not isinstance(self.config, _CONFIGS[self.algorithm]):
            raise UsageError(f"{type(self.config).__name__} does not configure {self.algorithm}")

    @property
    def members(self) -> tuple[NodeId, ...]:
        return tuple(range(1, self.nodes + 1))

    def last_fault_ms(self) -> float:
        times = [0.0]
        for partition in self.partitions:
            times.append(partition.start_ms if partition.end_ms is None else partition.end_ms)
        for crash in self.crashes:
            times.append(crash.at_ms if crash.restart_ms is None else crash.restart_ms)
        if self.crash_leader_at_ms is not None:
            times.append(self.crash_leader_at_ms)
        return max(times)


def _check_node(node: NodeId, nodes: int, what: str) -> None:
    if not 1 <= node <= nodes:
        raise UsageError(f"{what} names node {node}, but the nodes are 1..{nodes}")


def _check_crash(crash: Crash, nodes: int) -> None:
    _check_node(crash.node, nodes, "crash")
    if crash.restart_ms is not None and crash.restart_ms <= crash.at_ms:
        raise UsageError(f"node {crash.node} must restart after it crashes")


def _check_partition(partition: Partition, nodes: int) -> None:
    named: set[NodeId] = set()
    for group in partition.groups:
        if not group:
            raise UsageError("a partition group is empty")
        for node in group:
            _check_node(node, nodes, "partition")
        if named & group:
            raise UsageError(f"partition puts node {min(named & group)} in two groups")
        named |= group
    if len(partition.groups) + (len(named) < nodes) < 2:
        raise UsageError("a partition must split the nodes into at least two groups")
    if partition.end_ms is not None and partition.end_ms <= partition.start_ms:
        raise UsageError("a partition must end after it starts")


_TIME_WINDOW_HELP = "TIME or START-END, e.g. 2s or 2s-6s"


def parse_partition(spec: str, nodes: int) -> Partition:
    """``GROUP[/GROUP...]@START[-END]``: groups of ids or id ranges, e.g. ``1,2/3-5@2s-6s``."""
    lhs, start_ms, end_ms = _split_at_window(spec, "partition", "GROUP[/GROUP...]@START[-END]")
    groups: list[frozenset[NodeId]] = []
    for text in lhs.split("/"):
        ids: set[NodeId] = set()
        for item in text.split(","):
            match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", item)
            if not match:
                raise UsageError(
                    f"invalid partition {spec!r}: {item.strip()!r} is not a node id or range like 3-5"
                )
            first, last = int(match.group(1)), int(match.group(2) or match.group(1))
            if last < first:
                raise UsageError(f"invalid partition {spec!r}: empty range {item.strip()!r}")
            ids.update(range(first, last + 1))
        groups.append(frozenset(ids))
    partition = Partition(tuple(groups), start_ms, end_ms)
    try:
        _check_partition(partition, nodes)
    except UsageError as error:
        raise UsageError(f"invalid partition {spec!r}: {error}") from None
    return partition


def parse_crash(spec: str, nodes: int) -> Crash:
    """``ID@TIME[-RESTART]``, e.g. ``3@1s`` or ``3@1s-4s`` (node 3 is down from 1 s to 4 s)."""
    lhs, start_ms, end_ms = _split_at_window(spec, "crash", "ID@TIME[-RESTART]")
    if not lhs.strip().isdigit():
        raise UsageError(f"invalid crash {spec!r}: {lhs.strip()!r} is not a node id")
    crash = Crash(int(lhs), start_ms, end_ms)
    try:
        _check_crash(crash, nodes)
    except UsageError as error:
        raise UsageError(f"invalid crash {spec!r}: {error}") from None
    return crash


def _split_at_window(spec: str, what: str, form: str) -> tuple[str, float, float | None]:
    lhs, at, window = spec.partition("@")
    if not at or not lhs.strip() or not window.strip():
        raise UsageError(f"invalid {what} {spec!r}: use {form}, with {_TIME_WINDOW_HELP}")
    start_text, dash, end_text = window.partition("-")
    limits = RANGES["crash-leader-at"]  # simulated time: a fault must come in the run
    start_ms = parse_duration(start_text, what=f"{what} time", limits=limits) * 1000
    end_ms = (parse_duration(end_text, what=f"{what} end time", limits=limits) * 1000
              if dash else None)
    if end_ms is not None and end_ms <= start_ms:
        raise UsageError(f"invalid {what} {spec!r}: the end must come after the start")
    return lhs, start_ms, end_ms


# -- the trace ---------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    t_ms: float
    message: Message


@dataclass(frozen=True)
class Delivered:
    t_ms: float
    message: Message


@dataclass(frozen=True)
class Dropped:
    t_ms: float
    message: Message
    reason: str  # "lost" | "partition" | "crashed"


@dataclass(frozen=True)
class Happened:
    """An event a node reported."""

    t_ms: float
    event: Event


@dataclass(frozen=True)
class Crashed:
    t_ms: float
    node: NodeId
    reason: str


@dataclass(frozen=True)
class Restarted:
    t_ms: float
    node: NodeId


@dataclass(frozen=True)
class PartitionStarted:
    t_ms: float
    groups: tuple[tuple[NodeId, ...], ...]


@dataclass(frozen=True)
class PartitionHealed:
    t_ms: float
    groups: tuple[tuple[NodeId, ...], ...]


@dataclass(frozen=True)
class Agreement:
    """All live nodes now name ``leader`` (None: they stopped agreeing)."""

    t_ms: float
    leader: NodeId | None
    term: int | None


Record = (
    Sent
    | Delivered
    | Dropped
    | Happened
    | Crashed
    | Restarted
    | PartitionStarted
    | PartitionHealed
    | Agreement
)
_MESSAGE_RECORDS = (Sent, Delivered, Dropped)
_NODE_FIELDS = {"node", "leader", "src", "dst"}


def record_to_json(record: Record) -> dict[str, Any]:
    """A trace record as a JSON-able dict; node ids become strings, as in ``simulate --json``."""
    inner = getattr(record, "event", None) or getattr(record, "message", None)
    kind = type(inner if inner is not None else record).__name__
    out: dict[str, Any] = {"t_ms": round(record.t_ms, 3), "type": _snake(kind)}
    if isinstance(record, _MESSAGE_RECORDS):
        out["record"] = _snake(type(record).__name__)
    for source in (record, inner):
        if source is None:
            continue
        for f in fields(source):
            if f.name in ("t_ms", "event", "message"):
                continue
            value = getattr(source, f.name)
            if f.name in _NODE_FIELDS:
                value = None if value is None else str(value)
            elif f.name == "groups":
                value = [[str(node) for node in group] for group in value]
            out[f.name] = value
    return out


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# -- the result ----------------------------------------------------------------


@dataclass(frozen=True)
class SimResult:
    scenario: Scenario
    leader: NodeId | None  # agreed by all live nodes at the end
    term: int | None
    messages: int  # sent, including those the network then lost or dropped
    messages_to_leader: int | None  # sent until the final agreement began
    time_to_leader_ms: float | None
    failover_ms: float | None  # from the leader's crash (crash_leader_at_ms) to the next agreement
    failover_messages: int | None  # sent in that time
    crashed_leader: NodeId | None
    duration_ms: float
    trace: tuple[Record, ...]
    budget_spent: bool = False  # stopped after MESSAGE_BUDGET messages

    @property
    def events(self) -> list[Record]:
        """The trace without the message records: node events, faults, agreements."""
        return [record for record in self.trace if not isinstance(record, _MESSAGE_RECORDS)]

    def to_json(self) -> dict[str, Any]:
        """DESIGN.md's ``simulate --json`` shape, plus a few more keys."""
        return {
            "algorithm": self.scenario.algorithm,
            "nodes": self.scenario.nodes,
            "seed": self.scenario.seed,
            "leader": None if self.leader is None else str(self.leader),
            "term": self.term,
            "messages": self.messages,
            "time_to_leader_ms": _ms(self.time_to_leader_ms),
            "messages_to_leader": self.messages_to_leader,
            "failover_ms": _ms(self.failover_ms),
            "failover_messages": self.failover_messages,
            "crashed_leader": None if self.crashed_leader is None else str(self.crashed_leader),
            "duration_ms": _ms(self.duration_ms),
            "budget_spent": self.budget_spent,
            "events": [record_to_json(record) for record in self.events],
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# -- the simulator -------------------------------------------------------------

_TICK, _DELIVER, _CALL = 0, 1, 2


def make_node(scenario: Scenario, node_id: NodeId, rng: random.Random) -> Node:
    members = scenario.members
    if scenario.algorithm == "bully":
        return BullyNode(node_id, members, rng, scenario.config)
    if scenario.algorithm == "ring":
        return RingNode(node_id, scenario.ring_order or members, rng, scenario.config)
    return RaftNode(node_id, members, rng, scenario.config)


class Simulator:
    """Drives one scenario. ``run()`` plays it out; ``run_until`` and ``schedule`` let a
    test step through it and add faults as it goes."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        seed = scenario.seed
        self._nodes: dict[NodeId, Node] = {
            node: make_node(scenario, node, random.Random(f"lelect.sim/{seed}/node/{node}"))
            for node in scenario.members
        }
        self._network_rng = random.Random(f"lelect.sim/{seed}/network")
        self._tick_us = _us(scenario.tick_ms)
        self._queue: list[tuple[int, int, int, Any]] = []
        self._order = itertools.count()
        self._now = 0  # microseconds
        self._trace: list[Record] = []
        self._sent = 0
        self._alive: set[NodeId] = set(scenario.members)
        self._partitions: list[tuple[Partition, dict[NodeId, int]]] = []
        # Which leader each live node names, and how many name each: agreement in O(1).
        self._views: dict[NodeId, NodeId | None] = dict.fromkeys(scenario.members)
        self._view_counts: Counter[NodeId | None] = Counter({None: scenario.nodes})
        self._agreed: tuple[NodeId, int] | None = None
        self._agreed_since = 0
        self._sent_at_agreement = 0
        self._crash_leader_pending = False
        self._crashed_leader: NodeId | None = None
        self._crashed_leader_at = 0
        self._failover_us: int | None = None
        self._failover_messages: int | None = None
        self._sent_at_crash = 0
        self._last_fault_ms = scenario.last_fault_ms()

        for partition in scenario.partitions:
            self.schedule(partition)
        for crash in scenario.crashes:
            self.schedule(crash)
        if scenario.crash_leader_at_ms is not None:
            self._push(_us(scenario.crash_leader_at_ms), _CALL, self._crash_the_leader)
        clocks = random.Random(f"lelect.sim/{seed}/clocks")
        for node in scenario.members:
            self._push(clocks.randrange(self._tick_us), _TICK, node)

    # -- public -----------------------------------------------------------

    @property
    def now_ms(self) -> float:
        return self._now / 1000

    @property
    def nodes(self) -> Mapping[NodeId, Node]:
        return self._nodes

    @property
    def alive(self) -> frozenset[NodeId]:
        return frozenset(self._alive)

    @property
    def trace(self) -> tuple[Record, ...]:
        return tuple(self._trace)

    @property
    def agreed_leader(self) -> NodeId | None:
        return None if self._agreed is None else self._agreed[0]

    def schedule(self, fault: Partition | Crash) -> None:
        """Add a fault (times are absolute simulated ms; past times mean now)."""
        if isinstance(fault, Partition):
            _check_partition(fault, self.scenario.nodes)
            self._push(_us(fault.start_ms), _CALL, lambda: self._start_partition(fault))
            if fault.end_ms is not None:
                self._push(_us(fault.end_ms), _CALL, lambda: self._heal(fault))
            end = fault.start_ms if fault.end_ms is None else fault.end_ms
        else:
            _check_crash(fault, self.scenario.nodes)
            self._push(_us(fault.at_ms), _CALL, lambda: self._crash(fault.node, "scheduled"))
            if fault.restart_ms is not None:
                self._push(_us(fault.restart_ms), _CALL, lambda: self._restart(fault.node))
            end = fault.at_ms if fault.restart_ms is None else fault.restart_ms
        self._last_fault_ms = max(self._last_fault_ms, end)

    def run_until(self, t_ms: float) -> None:
        limit = _us(t_ms)
        while self._queue and self._queue[0][0] <= limit and self._sent < MESSAGE_BUDGET:
            self._process_next()
        if self._sent < MESSAGE_BUDGET:
            self._now = max(self._now, limit)

    def run(self) -> SimResult:
        if self.scenario.duration_ms is not None:
            self.run_until(self.scenario.duration_ms)
        else:
            self._run_until_settled()
        return self.result()

    def result(self) -> SimResult:
        leader = self.agreed_leader
        now_ms = self.now_ms
        since_ms = self._agreed_since / 1000
        return SimResult(
            scenario=self.scenario,
            leader=leader,
            term=None if leader is None else self._nodes[leader].term,
            messages=self._sent,
            messages_to_leader=None if leader is None else self._sent_at_agreement,
            time_to_leader_ms=None if leader is None else since_ms,
            failover_ms=None if self._failover_us is None else self._failover_us / 1000,
            failover_messages=self._failover_messages,
            crashed_leader=self._crashed_leader,
            duration_ms=now_ms,
            trace=self.trace,
            budget_spent=self._sent >= MESSAGE_BUDGET,
        )

    # -- the event loop -------------------------------------------------------

    def _push(self, at_us: int, kind: int, payload: Any) -> None:
        heapq.heappush(self._queue, (max(at_us, self._now), next(self._order), kind, payload))

    def _process_next(self) -> None:
        at, _, kind, payload = heapq.heappop(self._queue)
        self._now = at
        if kind == _TICK:
            self._push(at + self._tick_us, _TICK, payload)
            if payload in self._alive:
                self._apply(payload, self._nodes[payload].tick())
        elif kind == _DELIVER:
            self._deliver(payload)
        else:
            payload()

    def _run_until_settled(self) -> None:
        settle = _us(self.scenario.settle_ms)
        last_fault = _us(self._last_fault_ms)
        give_up = last_fault + _us(self.scenario.give_up_ms)
        while self._queue:
            next_at = self._queue[0][0]
            if self._agreed is not None and not self._crash_leader_pending:
                done_at = max(last_fault, self._agreed_since) + settle
                if next_at > done_at:
                    self._now = max(self._now, done_at)
                    return
            if next_at > give_up:
                self._now = give_up
                return
            if self._sent >= MESSAGE_BUDGET:
                return
            self._process_next()

    def _apply(self, node: NodeId, output: Output) -> None:
        t_ms = self.now_ms
        won = False
        for event in output.events:
            self._trace.append(Happened(t_ms, event))
            won = won or isinstance(event, BecameLeader)
        for message in output.messages:
            self._send(message)
        self._observe(node)
        if won and self._crash_leader_pending:
            self._crash_leader_pending = False
            self._crash_leader(node)

    def _send(self, message: Message) -> None:
        self._sent += 1
        t_ms = self.now_ms
        self._trace.append(Sent(t_ms, message))
        if self._cut(message.src, message.dst):
            self._trace.append(Dropped(t_ms, message, "partition"))
            return
        link = self.scenario.links.get((message.src, message.dst), self.scenario.link)
        if link.loss and self._network_rng.random() < link.loss:
            self._trace.append(Dropped(t_ms, message, "lost"))
            return
        delay_ms = link.delay_ms + self._network_rng.random() * link.jitter_ms
        self._push(self._now + _us(delay_ms), _DELIVER, message)

    def _deliver(self, message: Message) -> None:
        t_ms = self.now_ms
        if message.dst not in self._alive:
            self._trace.append(Dropped(t_ms, message, "crashed"))
        elif self._cut(message.src, message.dst):
            self._trace.append(Dropped(t_ms, message, "partition"))
        else:
            self._trace.append(Delivered(t_ms, message))
            self._apply(message.dst, self._nodes[message.dst].step(message))

    def _cut(self, a: NodeId, b: NodeId) -> bool:
        return any(group_of.get(a, -1) != group_of.get(b, -1) for _, group_of in self._partitions)

    # -- agreement ------------------------------------------------------------

    def _observe(self, node: NodeId) -> None:
        view = self._nodes[node].leader
        old = self._views[node]
        if view != old:
            self._view_counts[old] -= 1
            self._view_counts[view] += 1
            self._views[node] = view
        self._check_agreement(view)

    def _check_agreement(self, view: NodeId | None) -> None:
        """``view`` is some live node's leader: if all agree, it is the one they agree on."""
        agreed = None
        if view in self._alive and self._view_counts[view] == len(self._alive):
            agreed = (view, self._nodes[view].term)
        if agreed == self._agreed:
            return
        if agreed is None or self._agreed is None or agreed[0] != self._agreed[0]:
            self._agreed_since = self._now
            self._sent_at_agreement = self._sent
        if agreed is not None and self._crashed_leader is not None and self._failover_us is None:
            self._failover_us = self._now - self._crashed_leader_at
            self._failover_messages = self._sent - self._sent_at_crash
        self._agreed = agreed
        self._trace.append(
            Agreement(self.now_ms, *(agreed if agreed is not None else (None, None)))
        )

    # -- faults ---------------------------------------------------------------

    def _crash(self, node: NodeId, reason: str) -> None:
        if node not in self._alive:
            return
        self._alive.discard(node)
        self._view_counts[self._views.pop(node)] -= 1
        self._trace.append(Crashed(self.now_ms, node, reason))
        self._check_agreement(self._views[min(self._alive)] if self._alive else None)

    def _restart(self, node: NodeId) -> None:
        if node in self._alive:
            return
        self._alive.add(node)
        self._views[node] = None
        self._view_counts[None] += 1
        self._trace.append(Restarted(self.now_ms, node))
        self._apply(node, self._nodes[node].restart())

    def _crash_the_leader(self) -> None:
        leaders = [node for node in self._alive if self._nodes[node].leader == node]
        if not leaders:
            self._crash_leader_pending = True  # crash the next node to win instead
            return
        self._crash_leader(max(leaders, key=lambda node: (self._nodes[node].term, node)))

    def _crash_leader(self, node: NodeId) -> None:
        self._crashed_leader = node
        self._crashed_leader_at = self._now
        self._sent_at_crash = self._sent
        self._crash(node, "leader")

    def _groups(self, partition: Partition) -> tuple[tuple[NodeId, ...], ...]:
        groups = [tuple(sorted(group)) for group in partition.groups]
        rest = sorted(set(self.scenario.members).difference(*partition.groups))
        return tuple(groups + ([tuple(rest)] if rest else []))

    def _start_partition(self, partition: Partition) -> None:
        group_of = {node: i for i, group in enumerate(partition.groups) for node in group}
        self._partitions.append((partition, group_of))
        self._trace.append(PartitionStarted(self.now_ms, self._groups(partition)))

    def _heal(self, partition: Partition) -> None:
        for i, (active, _) in enumerate(self._partitions):
            if active is partition:
                del self._partitions[i]
                self._trace.append(PartitionHealed(self.now_ms, self._groups(partition)))
                return


def _us(ms: float) -> int:
    return round(ms * 1000)


def run(scenario: Scenario) -> SimResult:
    return Simulator(scenario).run()


def compare(node_counts: Iterable[int], **options: Any) -> list[SimResult]:
    """Run every algorithm for each node count, with the same options (Scenario fields: seed, ...)."""
    return [
        run(Scenario(algorithm=algorithm, nodes=nodes, **options))
        for nodes in node_counts
        for algorithm in ALGORITHMS
    ]


def exchange(
    nodes: Mapping[NodeId, Node], outputs: Iterable[Output], *, down: Collection[NodeId] = ()
) -> list[Message]:
    """Deliver messages in the order they were sent, with no clock, delay or loss, until none
    are left; messages to a node in ``down`` vanish. Returns every message sent, in order.

    The lockstep driver for unit tests of the state machines: no time passes, so no
    timeout fires unless the caller ticks the nodes itself.
    """
    queue = deque(message for output in outputs for message in output.messages)
    sent = list(queue)
    while queue:
        message = queue.popleft()
        if message.dst in down:
            continue
        replies = nodes[message.dst].step(message).messages
        queue.extend(replies)
        sent.extend(replies)
    return sent


__all__ = [
    "ALGORITHMS",
    "Agreement",
    "Crash",
    "Crashed",
    "Delivered",
    "Dropped",
    "Happened",
    "Link",
    "Partition",
    "PartitionHealed",
    "PartitionStarted",
    "Record",
    "Restarted",
    "Scenario",
    "Sent",
    "SimResult",
    "Simulator",
    "compare",
    "exchange",
    "make_node",
    "parse_crash",
    "parse_partition",
    "record_to_json",
    "run",
]
