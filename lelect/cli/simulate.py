"""``lelect simulate``: run Bully, Ring or Raft election in the deterministic simulator.

Registered lazily in the ``lelect`` group as ``lelect.cli.simulate:simulate``.
Only click is imported at module level; the simulator and rich load when the
command runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from lelect.cli.params import DURATION

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from lelect.sim import Record, SimResult

_TIMELINE_ROWS = 60  # beyond this the timeline shows its start and end; --json has it all


@click.command("simulate")
@click.option(
    "--algorithm",
    type=click.Choice(["bully", "ring", "raft"]),
    help="Election algorithm to run (default raft; not with --compare).",
)
@click.option(
    "--nodes",
    default=None,
    metavar="N",
    help="Number of nodes, numbered 1..N (default 5). With --compare, a list: 5,10,20,50 (the default).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Seed: same seed, same run.")
@click.option(
    "--duration",
    type=DURATION,
    metavar="DUR",
    help="Simulated time to run, e.g. 5s. Default: until a leader has held for 500ms after the last fault.",
)
@click.option(
    "--crash-leader-at",
    type=DURATION,
    metavar="DUR",
    help="Crash whoever leads at this time (or the next node to win, if none does).",
)
@click.option(
    "--crash",
    "crashes",
    multiple=True,
    metavar="ID@T[-T2]",
    help="Crash node ID at T, restarting it at T2 if given, e.g. 3@1s-4s. Repeatable.",
)
@click.option(
    "--partition",
    "partitions",
    multiple=True,
    metavar="SPEC",
    help="Cut the network into groups for a while: GROUP[/GROUP...]@START[-END]. Repeatable.",
)
@click.option(
    "--loss",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Probability that any message is lost.",
)
@click.option(
    "--delay",
    type=DURATION,
    default="2ms",
    show_default=True,
    metavar="DUR",
    help="Base one-way delay.",
)
@click.option(
    "--jitter",
    type=DURATION,
    default="3ms",
    show_default=True,
    metavar="DUR",
    help="Extra delay, uniform in [0, DUR).",
)
@click.option(
    "--tick",
    type=DURATION,
    default="10ms",
    show_default=True,
    metavar="DUR",
    help="Simulated time of one tick.",
)
@click.option(
    "--compare", is_flag=True, help="Run all three algorithms for each of --nodes, side by side."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def simulate(
    algorithm: str | None,
    nodes: str | None,
    seed: int,
    duration: float | None,
    crash_leader_at: float | None,
    crashes: tuple[str, ...],
    partitions: tuple[str, ...],
    loss: float,
    delay: float,
    jitter: float,
    tick: float,
    compare: bool,
    as_json: bool,
) -> None:
    """Simulate a leader election, deterministically, and show who won and what it cost.

    The network delays each message by --delay plus up to --jitter, loses it
    with probability --loss, and drops it while a partition separates its ends
    or its destination is down. Times are simulated: a run of up to 200 nodes
    stops after 300,000 messages at most, within seconds of real time (Bully
    costs n² messages per election; a lossy Ring may never complete a round).
    Timeouts (in ticks): heartbeat 5, election or
    leader timeout 15 (randomized up to 30).

    \b
    Partitions: GROUP[/GROUP...]@START[-END]
      a GROUP is node ids and ranges joined by commas: 1,2 or 3-5
      nodes named in no group form one more group together
      without END the partition lasts to the end of the run
    \b
      --partition 1,2/3-5@2s-6s   nodes 1,2 cannot talk to 3,4,5 from 2s to 6s
      --partition 3@1s-4s         node 3 is cut off from all others
    \b
    Output: the leader all live nodes agree on at the end (or none), its term
    (Raft's term; for Bully and Ring the leader's election round, a counter
    that each winner sets one above the highest it has seen, not a fencing
    token), the messages sent, and the time to leader: when the final
    agreement began. --json prints {"algorithm", "nodes", "seed", "leader",
    "term", "messages", "time_to_leader_ms", "events", ...}; with --compare, a
    list of those.
    """
    from lelect import sim
    from lelect.errors import UsageError

    node_counts = _node_counts(nodes, compare)
    if compare and algorithm is not None:
        raise click.UsageError("--compare runs every algorithm: leave out --algorithm")
    largest = max(node_counts)  # each run's Scenario checks the ids against its own count
    options: dict[str, Any] = {
        "seed": seed,
        "duration_ms": None if duration is None else duration * 1000,
        "crash_leader_at_ms": None if crash_leader_at is None else crash_leader_at * 1000,
        "tick_ms": tick * 1000,
        "link": sim.Link(delay_ms=delay * 1000, jitter_ms=jitter * 1000, loss=loss),
        "partitions": _parse_each(sim.parse_partition, partitions, largest, "--partition"),
        "crashes": _parse_each(sim.parse_crash, crashes, largest, "--crash"),
    }
    try:
        if compare:
            results = sim.compare(node_counts, **options)
        else:
            results = [sim.run(sim.Scenario(algorithm or "raft", node_counts[0], **options))]
    except UsageError as error:
        raise click.UsageError(str(error)) from None
    for result in results:
        if result.budget_spent:
            click.echo(f"lelect: {result.scenario.algorithm} with {result.scenario.nodes} nodes"
                       f" stopped after {sim.MESSAGE_BUDGET:,} messages (the simulator's"
                       " budget)", err=True)

    if as_json:
        import json

        payload = [r.to_json() for r in results] if compare else results[0].to_json()
        click.echo(json.dumps(payload))
        return

    from rich.console import Console

    console = Console()
    if compare:
        cells = {(r.scenario.nodes, r.scenario.algorithm): election_cost(r) for r in results}
        console.print(compare_table(cells, failover=crash_leader_at is not None))
    else:
        render_run(console, results[0])


def _parse_each(
    parse: Callable[[str, int], Any], specs: tuple[str, ...], nodes: int, option: str
) -> tuple[Any, ...]:
    from lelect.errors import UsageError

    try:
        return tuple(parse(spec, nodes) for spec in specs)
    except UsageError as error:
        raise click.BadParameter(str(error), param_hint=f"'{option}'") from None


def _node_counts(text: str | None, compare: bool) -> list[int]:
    if text is None:
        return [5, 10, 20, 50] if compare else [5]
    counts = []
    for item in text.split(","):
        item = item.strip()
        if not (item.isascii() and item.isdigit() and len(item) <= 9):  # range: Scenario's
            raise click.BadParameter(f"{item[:20]!r} is not a number of nodes",
                                     param_hint="'--nodes'")
        counts.append(int(item))
    if len(counts) > 1 and not compare:
        raise click.BadParameter("a list of node counts needs --compare", param_hint="'--nodes'")
    return counts


# -- rendering (the same data --json prints) ------------------------------------


def render_run(console: Console, result: SimResult) -> None:
    from rich.table import Table

    timeline = Table(title="Timeline", show_edge=False, pad_edge=False)
    timeline.add_column("time", justify="right", style="dim")
    timeline.add_column("node", justify="right")
    timeline.add_column("what")
    algorithm = result.scenario.algorithm
    rows = [row for row in (_describe(r, algorithm) for r in result.events) if row is not None]
    shown = rows
    if len(rows) > _TIMELINE_ROWS:
        half = _TIMELINE_ROWS // 2
        shown = [
            *rows[:half],
            ("…", "", f"[dim]{len(rows) - 2 * half} more (see --json)[/]"),
            *rows[-half:],
        ]
    for row in shown:
        timeline.add_row(*row)
    console.print(timeline)

    scenario = result.scenario
    summary = Table(title="Summary", show_header=False, show_edge=False, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column()
    term_label = "term" if scenario.algorithm == "raft" else "term (election round)"
    summary.add_row("algorithm", scenario.algorithm)
    summary.add_row("nodes", str(scenario.nodes))
    summary.add_row("seed", str(scenario.seed))
    summary.add_row("leader", _or_none(result.leader, "[red]none agreed[/]"))
    summary.add_row(term_label, _or_none(result.term))
    summary.add_row("messages sent", str(result.messages))
    summary.add_row("  until leader", _or_none(result.messages_to_leader))
    summary.add_row("time to leader", _ms_text(result.time_to_leader_ms))
    if result.crashed_leader is not None:
        summary.add_row("crashed leader", str(result.crashed_leader))
        summary.add_row("failover", _ms_text(result.failover_ms))
        summary.add_row("  messages", _or_none(result.failover_messages))
    summary.add_row("simulated", _ms_text(result.duration_ms))
    console.print(summary)


def election_cost(result: SimResult) -> tuple[int | None, float | None]:
    """(messages, ms) of the election a run is about: with ``crash_leader_at_ms`` the
    failover after the crash, else the one that produced the final leader."""
    if result.scenario.crash_leader_at_ms is not None:
        return result.failover_messages, result.failover_ms
    return result.messages_to_leader, result.time_to_leader_ms


Cells = dict[tuple[int, str], tuple[float | None, float | None]]


def compare_table(cells: Cells, *, failover: bool = False, title: str = "") -> Table:
    """One row per node count, for each algorithm the (messages, ms) of ``cells``
    (keyed by (nodes, algorithm)), as ``election_cost`` gives them."""
    from rich.table import Table

    if failover:
        heading = "Messages and time to a new leader after the leader crashed"
        caption = "msgs: sent from the crash until all live nodes agreed again; ms: time that took"
    else:
        heading = "Messages and time to leader"
        caption = (
            "msgs: sent until all live nodes agreed on the leader; ms: simulated time until then"
        )
    table = Table(title=f"{heading}{title}", caption=caption)
    table.add_column("nodes", justify="right")
    algorithms = list(dict.fromkeys(algorithm for _, algorithm in cells))
    for name in algorithms:
        table.add_column(f"{name} msgs", justify="right")
        table.add_column(f"{name} ms", justify="right")
    for n in dict.fromkeys(n for n, _ in cells):
        row = [str(n)]
        for name in algorithms:
            messages, ms = cells.get((n, name), (None, None))
            row.append("no leader" if messages is None else f"{messages:.0f}")
            row.append("–" if ms is None else f"{ms:.1f}")
        table.add_row(*row)
    return table


def _describe(record: Record, algorithm: str) -> tuple[str, str, str] | None:
    from lelect import sim
    from lelect.algorithms import BecameLeader, ElectionStarted, SteppedDown

    time = f"{record.t_ms:.1f}ms"
    if isinstance(record, sim.Happened):
        event = record.event
        node = str(event.node)
        if isinstance(event, ElectionStarted):
            if algorithm != "raft":
                return time, node, "starts an election"
            if event.pre_vote:
                return time, node, f"asks for pre-votes for term {event.term}"
            return time, node, f"campaigns for term {event.term}"
        if isinstance(event, BecameLeader):
            return time, node, f"[bold green]becomes leader[/] (term {event.term})"
        if isinstance(event, SteppedDown):
            return time, node, f"[yellow]steps down[/] (term {event.term}): {event.reason}"
        return None  # per-node leader changes: too many to show, all in --json
    if isinstance(record, sim.Crashed):
        suffix = " (it led)" if record.reason == "leader" else ""
        return time, str(record.node), f"[red]crashes[/]{suffix}"
    if isinstance(record, sim.Restarted):
        return time, str(record.node), "restarts"
    if isinstance(record, sim.PartitionStarted | sim.PartitionHealed):
        groups = " | ".join(",".join(map(str, group)) for group in record.groups)
        verb = "partition" if isinstance(record, sim.PartitionStarted) else "healed"
        return time, "", f"[magenta]{verb}[/] {groups}"
    if isinstance(record, sim.Agreement):
        if record.leader is None:
            return time, "", "[dim]live nodes no longer agree on a leader[/]"
        return time, "", f"[bold]all live nodes follow {record.leader}[/] (term {record.term})"
    return None


def _or_none(value: object, none: str = "–") -> str:
    return none if value is None else str(value)


def _ms_text(value: float | None, none: str = "–") -> str:
    return none if value is None else f"{value:.1f} ms"
