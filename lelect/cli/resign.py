"""``lelect resign ELECTION [--term N] [--to NODE] [--seat S] [--wait DUR]``"""

from __future__ import annotations

import click

from lelect.cli import open_client
from lelect.cli.params import DURATION, ELECTION, NODE_ID, backend_option
from lelect.names import MAX_HOLDERS
from lelect.status import ExitStatus

RESIGN_STATUSES = """\b
Exit statuses:
  0    the leader was asked to step down (with --wait: and a new leader was elected;
       with --to: NODE)
  1    nobody leads, term N does not lead, the leader could not be asked, or NODE
       is not waiting; nothing changed. With --to and --wait: another node took over
  124  --wait ran out before a new leader was elected"""


def _refuse(message: str) -> int:
    from lelect.names import printable

    click.echo(f"lelect: {printable(message)}", err=True)
    return ExitStatus.NO


@click.command("resign", epilog=RESIGN_STATUSES, context_settings={"max_content_width": 100})
@backend_option
@click.argument("election", type=ELECTION)
@click.option("--term", type=int, metavar="N",
              help="Ask only if term N still leads, so a stale request never unseats a newer"
              " leader.")
@click.option("--to", "to", type=NODE_ID, metavar="NODE",
              help="Hand over to NODE, a live candidate waiting in line: for a while only NODE"
              " may take the leadership (then anybody may). If NODE is not waiting, nothing"
              " changes (status 1).")
@click.option("--seat", type=click.IntRange(0, MAX_HOLDERS - 1), metavar="S",
              help="With --holders: ask the holder of seat S.")
@click.option("--wait", "wait", type=DURATION, metavar="DUR",
              help="Wait up to DUR for the next leader and print it.")
@click.pass_context
def resign(ctx, election, term, to, seat, wait):
    """Ask the leader of ELECTION to step down.

    The leader stops its job gracefully (its --stop-signal, then SIGKILL after
    --grace) and stays out of the race: it exits, or with --restart rejoins after
    --resign-cooldown, so another candidate takes over. Only the leadership seen when
    the request is made is asked (its term), never a newer one.

    With --to NODE (a candidate waiting in line, with fresh heartbeats), any other
    candidate that wins before NODE steps down at once and lets NODE in, for twice the
    lease (at least 10s) plus 10s for the leader to stop its job; then anybody may.

    \b
      lelect resign nightly --wait 30s
      lelect resign nightly --term "$LELECT_TERM"
      lelect resign db --to db-2 --wait 30s        # drain this host first
    """
    from lelect.backends.records import ResignAnswer
    from lelect.durations import format_duration
    from lelect.errors import NotLeader, NotWaiting
    from lelect.names import printable

    # --to writes a note: a writer (the embedded backend's state).
    with open_client(ctx, create=to is not None) as client:
        handle = client.election(election)
        if seat is not None:
            handle = handle.seat(seat)
        info = handle.leader()
        if info is None and seat is None and handle.holders_count() > 1:
            held = ", ".join(f"{s.seat} ({printable(s.holder.node_id)})"
                             for s in handle.seats() if s.holder is not None)
            return _refuse(f"{election} has seats: name the one to resign with --seat S"
                           f" (held: {held or 'none'}); nothing changed")
        if info is None:
            return _refuse(f"{election}: no leader; nothing to resign")
        if term is not None and info.term != term:
            return _refuse(
                f"{election}: term {term} does not lead (the leader is {info.node_id},"
                f" term {info.term}); nothing changed"
            )
        try:
            answer = (handle.request_resign(info.term) if to is None
                      else handle.hand_over(to, info.term))
        except (NotLeader, NotWaiting) as refused:
            return _refuse(str(refused))
        if answer is ResignAnswer.CANNOT_ASK:
            return _refuse(
                f"{election}: the leader {info.node_id} (term {info.term}) is not a lelect"
                " campaign (an etcdctl elect or kazoo Election leader?) and cannot be asked to"
                " step down; nothing changed"
            )
        if not answer:
            now = handle.leader()
            if now is None or now.term != info.term:
                who = "nobody" if now is None else f"{now.node_id}, term {now.term}"
                return _refuse(
                    f"{election}: the leadership changed while asking (now {who}); nothing changed"
                )
            return _refuse(
                f"{election}: could not reach the leader {info.node_id} (term {info.term})"
                " to ask it to step down"
            )
        towards = "" if to is None else f" in favour of {printable(to)}"
        click.echo(f"asked {printable(info.node_id)} (term {info.term}) to step down{towards}")
        if wait is None:
            return ExitStatus.OK
        successor = (handle.wait_for_leader(info.term, wait) if to is None
                     else handle.wait_for_successor(to, info.term, wait))
    if successor is None:
        click.echo(f"lelect: {election}: no new leader within {format_duration(wait)}", err=True)
        return ExitStatus.TIMEOUT
    click.echo(f"new leader: {printable(successor.node_id)} (term {successor.term})")
    if to is not None and successor.node_id != to:
        return _refuse(f"{election}: {successor.node_id} took over, not {to}")
    return ExitStatus.OK
