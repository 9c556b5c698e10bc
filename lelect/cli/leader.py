"""``lelect leader NAME [--json] [--term N] [--wait [DUR]]``"""

from __future__ import annotations

import json
import math

import click

from lelect.cli import open_client
from lelect.cli.params import ELECTION, Duration, backend_option
from lelect.names import MAX_HOLDERS
from lelect.status import ExitStatus

#: ``--wait DUR`` ran out with nobody leading (as campaign's --timeout).
EXIT_WAIT_RAN_OUT = 124


class WaitDuration(Duration):
    """``--wait`` alone waits for ever; ``--wait 30s`` at most that long."""

    def convert(self, value, param, ctx):
        if value in ("forever", math.inf):
            return math.inf
        return super().convert(value, param, ctx)


@click.command("leader")
@backend_option
@click.argument("election", type=ELECTION)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--term", type=int, metavar="N",
              help="Exit 0 only if term N still leads (a job can check its LELECT_TERM).")
@click.option("--wait", type=WaitDuration("wait"), is_flag=False, flag_value="forever",
              metavar="[DUR]", help="Wait until somebody leads (at most DUR, then status 124) and"
              " print it.")
@click.option("--seat", type=click.IntRange(0, MAX_HOLDERS - 1), metavar="S",
              help="In an election with seats (campaign --holders N): only seat S.")
@click.pass_context
def leader(ctx, election, as_json, term, wait, seat):
    """Print who leads ELECTION; exit 1 when nobody does (or not --term N), 124 when
    --wait ran out. In an election with seats, every seat and its holder (--term N:
    some seat's term is N)."""
    from lelect.durations import format_duration

    with open_client(ctx, create=wait is not None) as client:
        handle = client.election(election)
        if seat is not None:
            handle = handle.seat(seat)
        elif handle.holders_count() > 1:
            return _seated(handle, as_json, term, wait)
        if wait is None:
            info = handle.leader()
        else:
            info = handle.wait_for_leader(timeout=None if math.isinf(wait) else wait)
    record = {"election": election, "leader": info.to_json() if info else None}
    if seat is not None:
        record["seat"] = seat
    if as_json:
        click.echo(json.dumps(record))
    elif info is None:
        within = "" if wait is None else f" within {format_duration(wait)}"
        click.echo(f"{election}{'' if seat is None else f' seat {seat}'}: no leader{within}")
    else:
        click.echo(_describe(info))
    if info is None:
        # Like campaign -w and resign --wait: a wait that ran out is 124.
        return ExitStatus.NO if wait is None else ExitStatus.TIMEOUT
    if term is not None and info.term != term:
        click.echo(f"lelect: {election}: term {term} does not lead (term {info.term} does)", err=True)
        return ExitStatus.NO
    return ExitStatus.OK


def _describe(info) -> str:
    from lelect.backends.records import iso8601
    from lelect.names import printable

    where = f" on {printable(info.host, 255)}" if info.host else ""
    pid = f" pid {info.pid}" if info.pid else ""
    since = f", since {iso8601(info.since)}" if info.since else ""
    value = "" if info.value is None else f" value {printable(info.value, 200)}"
    return f"{printable(info.node_id)} (term {info.term}{since}{where}{pid}){value}"


def _seated(handle, as_json: bool, term: int | None, wait: float | None) -> int:
    """``leader`` of an election with seats: every seat, held or free."""
    from lelect.durations import format_duration

    seats = handle.seats()
    if wait is not None and not any(s.holder for s in seats):
        seats = handle.wait_for_holders(timeout=None if math.isinf(wait) else wait)
    held = [s for s in seats if s.holder is not None]
    first = held[0].holder if held else None
    if as_json:
        click.echo(json.dumps({
            "election": handle.name, "leader": first.to_json() if first else None,
            "holders": [seat.to_json() for seat in seats],
        }))
    else:
        within = "" if wait is None or held else f" within {format_duration(wait)}"
        click.echo(f"{handle.name}: {len(held)} of {len(seats)} seats held{within}")
        for s in seats:
            click.echo(f"  seat {s.seat}: {_describe(s.holder) if s.holder else 'free'}")
    if not held:
        return ExitStatus.NO if wait is None else ExitStatus.TIMEOUT
    if term is not None and all(s.holder.term != term for s in held):
        click.echo(f"lelect: {handle.name}: no seat is held by term {term}", err=True)
        return ExitStatus.NO
    return ExitStatus.OK
