"""Click parameter types shared by the commands."""

from __future__ import annotations

import click

from lelect.durations import RANGES, Range, parse_duration
from lelect.errors import UsageError
from lelect.names import validate_election, validate_node_id


class Duration(click.ParamType):
    """A duration, checked against its range in lelect.durations.RANGES (by the option's
    name, or ``limits``) when it is parsed."""

    name = "DURATION"

    def __init__(self, limits: str | Range | None = None) -> None:
        self.limits = RANGES[limits] if isinstance(limits, str) else limits

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            return value
        option = param.opts[0] if param else ""
        limits = self.limits or RANGES.get(option.lstrip("-"))
        try:
            # click says which option; the message says what is wrong with the value.
            return parse_duration(value, what="", limits=limits)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


class Listen(click.ParamType):
    """``ADDR:PORT`` to serve HTTP on (``:PORT`` is loopback)."""

    name = "ADDR:PORT"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        from lelect.httpserve import parse_listen

        try:
            return parse_listen(value)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


class CommandAfterName(click.Command):
    """``NAME [OPTIONS] [--] CMD [ARGS]...``: like flock(1), options end at the command,
    so ``lelect campaign x echo -n hi`` runs ``echo -n hi`` (``-n`` is the job's)."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, split_at_command(self, ctx, list(args)))


def split_at_command(command: click.Command, ctx: click.Context, args: list[str]) -> list[str]:
    """``args`` with a ``--`` before the second positional word (the command)."""
    takes_value = {}
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            for opt in (*param.opts, *param.secondary_opts):
                takes_value[opt] = not (param.is_flag or param.count)
    positional = 0
    index = 0
    while index < len(args):
        word = args[index]
        if word == "--":
            return args
        if word.startswith("--") and len(word) > 2:
            name = word.split("=", 1)[0]
            if takes_value.get(name) and "=" not in word:
                index += 1
        elif word.startswith("-") and len(word) > 1:
            # -qn (flags), -w5s or -w 5s (a value): stop at the first letter with a value.
            for position, letter in enumerate(word[1:], start=1):
                if takes_value.get("-" + letter):
                    if position == len(word) - 1:
                        index += 1
                    break
        else:
            positional += 1
            if positional == 2:
                return [*args[:index], "--", *args[index:]]
        index += 1
    return args


class SignalName(click.ParamType):
    name = "SIGNAL"

    def convert(self, value, param, ctx):
        from lelect.cli.quick import signal_number

        number = signal_number(value)
        if number is not None:
            return number
        self.fail(f"unknown signal {value!r}: use a name like TERM, INT, HUP or a number", param, ctx)


class ElectionName(click.ParamType):
    name = "ELECTION"

    def convert(self, value, param, ctx):
        try:
            return validate_election(value)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem

        try:
            from lelect.cli import open_client

            with open_client(ctx, create=False) as client:
                names = client.elections()
        except Exception:  # noqa: BLE001 - completion must never fail loudly
            return []
        return [CompletionItem(n) for n in names if n.startswith(incomplete)]


class NodeId(click.ParamType):
    """``--id``: printable text only (it reaches other people's terminals and hooks)."""

    name = "ID"

    def convert(self, value, param, ctx):
        try:
            return validate_node_id(value)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


DURATION = Duration()
NODE_ID = NodeId()
LISTEN = Listen()
SIGNAL = SignalName()
ELECTION = ElectionName()


def _remember_backend(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta["lelect.backend"] = value


def backend_option(command):
    """``--backend``/``-b`` after the command name too (``lelect leader x -b URL``):
    the same as the global option, and it wins over it and LELECT_BACKEND."""
    return click.option(
        "--backend", "-b", metavar="URL", expose_value=False, is_eager=True,
        callback=_remember_backend,
        help="Where elections live (as `lelect --backend`; overrides LELECT_BACKEND).",
    )(command)
