"""``lelect resign ELECTION [--term N] [--wait DUR]``"""

from __future__ import annotations

import click

from lelect.cli import open_client
from lelect.cli.params import DURATION, ELECTION, backend_option
from lelect.status import ExitStatus

RESIGN_STATUSES = """\b
Exit statuses:
  0    the leader was asked to step down (with --wait: and a new leader was elected)
  1    nobody leads, term N does not lead, or the leader could not be asked;
       nothing changed
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
@click.option("--wait", "wait", type=DURATION, metavar="DUR",
              help="Wait up to DUR for the next leader and print it.")
@click.pass_context
def resign(ctx, election, term, wait):
    """Ask the leader of ELECTION to step down.

    The leader stops its job gracefully (its --stop-signal, then SIGKILL after
    --grace) and stays out of the race: it exits, or with --restart rejoins after
    --resign-cooldown, so another candidate takes over. Only the leadership seen when
    the request is made is asked (its term), never a newer one.

    \b
      lelect resign nightly --wait 30s
      lelect resign nightly --term "$LELECT_TERM"
    """
    from lelect.backends.records import ResignAnswer
    from lelect.durations import format_duration
    from lelect.names import printable

    with open_client(ctx, create=False) as client:
        handle = client.election(election)
        info = handle.leader()
        if info is None:
            return _refuse(f"{election}: no leader; nothing to resign")
        if term is not None and info.term != term:
            return _refuse(
                f"{election}: term {term} does not lead (the leader is {info.node_id},"
                f" term {info.term}); nothing changed"
            )
        answer = handle.request_resign(info.term)
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
        click.echo(f"asked {printable(info.node_id)} (term {info.term}) to step down")
        if wait is None:
            return ExitStatus.OK
        successor = handle.wait_for_leader(info.term, wait)
    if successor is None:
        click.echo(f"lelect: {election}: no new leader within {format_duration(wait)}", err=True)
        return ExitStatus.TIMEOUT
    click.echo(f"new leader: {printable(successor.node_id)} (term {successor.term})")
    return ExitStatus.OK
