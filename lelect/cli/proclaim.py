"""``lelect proclaim ELECTION --term T [--seat S] VALUE``"""

from __future__ import annotations

import sys

import click

from lelect.cli import open_client
from lelect.cli.params import ELECTION, backend_option
from lelect.names import MAX_HOLDERS
from lelect.status import ExitStatus

PROCLAIM_STATUSES = """\b
Exit statuses:
  0    VALUE is published for term T, which leads
  1    term T does not lead (the line names who does); nothing written
  2    usage error (VALUE over 4 KiB or not UTF-8, no --term)
  69   backend unreachable or failing"""


def read_value(text: str) -> str:
    """VALUE as given, or stdin's for ``-`` (read at most one byte over the bound)."""
    from lelect.backends.notes import MAX_VALUE
    from lelect.errors import UsageError

    if text != "-":
        return text
    data = sys.stdin.buffer.read(MAX_VALUE + 1)
    if len(data) > MAX_VALUE:
        raise UsageError(f"a value is at most {MAX_VALUE} bytes (stdin has more)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("a value must be UTF-8 text (stdin is not)") from None


@click.command("proclaim", epilog=PROCLAIM_STATUSES, context_settings={"max_content_width": 100})
@backend_option
@click.argument("election", type=ELECTION)
@click.argument("value", metavar="VALUE")
@click.option("--term", type=int, metavar="T", required=True,
              help="The leadership whose value this is (a job's $LELECT_TERM): written only"
              " while term T leads.")
@click.option("--seat", type=click.IntRange(0, MAX_HOLDERS - 1), metavar="S",
              help="With --holders: the value of seat S's holder.")
@click.pass_context
def proclaim(ctx, election, value, term, seat):
    """Publish VALUE (text, at most 4 KiB; - reads stdin) as the value of the leader
    of ELECTION, replacing the one it had.

    Like etcd's Proclaim: only the leadership of term T may, so a job that lost its
    leadership can never overwrite its successor's value. leader --json, watch and
    observe() show the value of the term that leads now (watch --on-change runs on a
    new value too, with LELECT_EVENT=proclaimed); the leader's release forgets it.

    \b
      lelect campaign db --value "$(hostname):5432" -- ./primary.sh
      lelect proclaim db --term "$LELECT_TERM" "$(hostname):5433"   # from the job
      lelect leader db --json | jq -r .leader.value
    """
    from lelect.errors import NotLeader
    from lelect.names import printable

    value = read_value(value)
    with open_client(ctx) as client:  # a writer (the embedded backend's notes)
        try:
            handle = client.election(election)
            (handle if seat is None else handle.seat(seat)).proclaim(value, term)
        except NotLeader as refused:
            click.echo(f"lelect: {printable(refused)}", err=True)
            return ExitStatus.NO
    return ExitStatus.OK
